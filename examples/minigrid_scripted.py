"""GuidedPPO on MiniGrid with a scripted teacher: the MiniGrid oracle made only 80 % reliable.

Run: python examples/minigrid_scripted.py   (about two minutes on 2 CPU cores)
"""

from __future__ import annotations

import torch as th
from stable_baselines3 import PPO
from stable_baselines3.common.evaluation import evaluate_policy

from sb3_vlm import GuidedPPO, NoisyAdvisor, VLMAdviceWrapper
from sb3_vlm.envs.minigrid import MiniGridOracle, make_minigrid_env

if __name__ == "__main__":
    th.set_num_threads(1)  # small networks: one thread is fastest, and far faster on a loaded machine
    env = make_minigrid_env("MiniGrid-GoToDoor-6x6-v0")  # student: 56x56 egocentric RGB; teacher: full render
    env = VLMAdviceWrapper(
        env, advisor=NoisyAdvisor(MiniGridOracle(), reliability=0.8, seed=0), cache="runs/advice.sqlite"
    )
    model = GuidedPPO("CnnPolicy", env, n_steps=512, verbose=1).learn(20_000, progress_bar=True)
    model.save("runs/ppo_student")
    print("advisor:", env.advisor_stats.as_dict())

    # the saved student is a plain PPO policy: no advisor, no wrapper
    student = PPO.load("runs/ppo_student")
    mean, std = evaluate_policy(student, make_minigrid_env("MiniGrid-GoToDoor-6x6-v0"), n_eval_episodes=20)
    print(f"student return without the teacher: {mean:.2f} ± {std:.2f}")
