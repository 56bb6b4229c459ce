"""A training run for the checkpoint tests: GuidedSAC on Pendulum with the oracle asked every 2nd step, a crash-safe
checkpoint every 100 steps. ``python -m tests.checkpoint_job OUT TOTAL``; prints ``done N`` when learn() returns."""

from __future__ import annotations

import sys

import torch as th

from sb3_vlm import VLMAdviceWrapper
from sb3_vlm.checkpoint import VLMCheckpointCallback
from sb3_vlm.envs.pendulum import PendulumSwingUpOracle, make_pendulum_env
from sb3_vlm.sac import GuidedSAC

SAC_KWARGS = dict(learning_starts=100, batch_size=32, buffer_size=5_000, policy_kwargs=dict(net_arch=[32]), seed=0)


def make_env() -> VLMAdviceWrapper:
    return VLMAdviceWrapper(make_pendulum_env(), PendulumSwingUpOracle(), query_every=2)


if __name__ == "__main__":
    th.set_num_threads(1)
    out, total = sys.argv[1], int(sys.argv[2])
    model = GuidedSAC("MlpPolicy", make_env(), method="dpl", **SAC_KWARGS)
    model.learn(total, callback=VLMCheckpointCallback(out, save_freq=100, keep=2))
    print("done", model.num_timesteps, flush=True)
