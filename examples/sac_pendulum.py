"""GuidedSAC on Pendulum with a scripted advisor: ERPv (pre-trained advice critic), VARL and COVR.

    python examples/sac_pendulum.py            # state observations, MlpPolicy (a few minutes on a CPU)
    python examples/sac_pendulum.py --pixels   # 64x64x9 rendered frames, CnnPolicy (slow on a CPU)

Swap the advisor for a VLM (e.g. an OpenAI-compatible one) once the advisors issue lands; nothing else changes.
"""

from __future__ import annotations

import argparse

import torch as th
from stable_baselines3.common.evaluation import evaluate_policy

from sb3_vlm import GuidedSAC, NoisyAdvisor, VLMAdviceWrapper, pretrain_advice_critic
from sb3_vlm.envs.pendulum import PendulumSwingUpOracle, make_pendulum_env, make_pixel_env


def main() -> None:
    th.set_num_threads(1)  # small networks: one thread is fastest, and far faster on a loaded machine
    parser = argparse.ArgumentParser()
    parser.add_argument("--pixels", action="store_true")
    parser.add_argument("--steps", type=int, default=8_000)
    args = parser.parse_args()

    def make_env():
        return make_pixel_env("Pendulum-v1") if args.pixels else make_pendulum_env()

    policy = "CnnPolicy" if args.pixels else "MlpPolicy"
    sac_kwargs = dict(learning_rate=1e-3, buffer_size=50_000, policy_kwargs=dict(net_arch=[64, 64]))
    advisor = NoisyAdvisor(PendulumSwingUpOracle(), reliability=0.8, seed=0)  # a VLM that is right 80 % of the time

    # ERPv: pre-train the advice critic C_V by Random Alternating Exploration, then VPG + VER
    critic = pretrain_advice_critic(make_env(), advisor=advisor, steps=3_000, policy=policy, **sac_kwargs)
    env = VLMAdviceWrapper(make_env(), advisor=advisor, query_every=1)
    for method, extra in (("erpv", dict(advice_critic=critic)), ("varl", dict(guidance_cutoff=3_000)), ("covr", {})):
        model = GuidedSAC(policy, env, method=method, verbose=0, **extra, **sac_kwargs)
        model.learn(args.steps, progress_bar=True)
        mean, std = evaluate_policy(model, make_env(), n_eval_episodes=10)
        print(f"{method}: mean return {mean:.0f} ± {std:.0f} (no advisor needed at test time)")


if __name__ == "__main__":
    main()
