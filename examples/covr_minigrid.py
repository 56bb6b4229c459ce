"""COVR's collaborative loop on a CPU: GuidedPPO with a poor teacher that is fine-tuned on the agent's own steps.

The teacher is the MiniGrid oracle made 20 % reliable, behind a NearestNeighbourAdvisor (a scripted advisor that
"fine-tunes" by storing the weighted (view, action) pairs it is given). Swap in an HFAdvisor (LoRA rounds) or an
OpenAIAdvisor (provider fine-tuning jobs) for a real VLM; the callback is the same.

    python examples/covr_minigrid.py [--steps 30000]
"""

from __future__ import annotations

import argparse

import torch as th
from stable_baselines3.common.env_util import make_vec_env

from sb3_vlm import GuidedPPO, NearestNeighbourAdvisor, NoisyAdvisor, VLMAdviceWrapper, VLMFineTuneCallback
from sb3_vlm.envs.minigrid import MiniGridOracle, make_minigrid_env
from sb3_vlm.experiments.covr import advice_accuracy, probe_views


def main() -> None:
    th.set_num_threads(1)  # small networks: one thread is fastest, and far faster on a loaded machine
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30_000)
    parser.add_argument("--env-id", default="MiniGrid-Empty-Random-6x6-v0")
    args = parser.parse_args()

    teacher = NearestNeighbourAdvisor(NoisyAdvisor(MiniGridOracle(), reliability=0.2, seed=0))
    env = make_vec_env(
        make_minigrid_env,  # type: ignore[arg-type]
        n_envs=8,
        seed=0,
        env_kwargs=dict(env_id=args.env_id, student_obs="symbolic_partial"),
        wrapper_class=VLMAdviceWrapper,  # type: ignore[arg-type]
        wrapper_kwargs=dict(advisor=teacher, cache="covr_example_cache.sqlite"),
    )
    views = probe_views(args.env_id)
    print(f"advice accuracy before: {advice_accuracy(teacher, views):.2f}")
    finetune = VLMFineTuneCallback(teacher, psi0=2_500, start_guidance_after=1, save_dir="covr_example", verbose=1)
    model = GuidedPPO("MlpPolicy", env, n_steps=128, batch_size=64, seed=0)  # the default guidance
    model.learn(args.steps, callback=finetune, progress_bar=True)
    print(f"advice accuracy after {len(finetune.history)} rounds: {advice_accuracy(teacher, views):.2f}")
    model.save("covr_example/student")  # a plain PPO policy: it never needs the teacher


if __name__ == "__main__":
    main()
