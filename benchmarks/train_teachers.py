"""Train the teachers of the suite's MuJoCo state tasks once: one SB3 SAC policy per env, kept as a small ``.npz``.

Each teacher is SB3 SAC with its defaults but ``net_arch=[64, 64]`` (so the file stays small: ~20 KB) and a
1000-step warm-up, trained with a fixed seed for a step budget chosen so that it is good, not necessarily optimal
(rl-baselines3-zoo has no SAC entry for these tasks; SAC balances InvertedPendulum within ~10k steps,
InvertedDoublePendulum within ~30-50k, and Reacher gets most of the way to its plateau by ~60k). It is then
evaluated as the exported numpy teacher (:class:`~sb3_vlm.advisors.PolicyAdvisor`, deterministic, mean return over
``--eval-episodes``), and written under ``--out``:

- ``<env id>.npz``: the actor (see :mod:`sb3_vlm.advisors.policy` for the format);
- ``teachers.json``: per env id, the steps, seed, evaluation return, SAC arguments, content digest, versions and the
  command that made it.

Resumable per env: an env whose ``.npz`` exists is skipped unless ``--force`` (the ``.npz`` is moved into place only
after its ``teachers.json`` entry is written, so an interrupted run leaves no file without its record).

Usage::

    python benchmarks/train_teachers.py                               # the three suite teachers (130k steps: 15-30 min)
    python benchmarks/train_teachers.py --envs Hopper-v5              # the optional Hopper teacher (300k steps)
    python benchmarks/train_teachers.py --steps 300 --out /tmp/teach  # smoke test: tiny runs elsewhere
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "sb3_vlm" / "envs" / "teachers"

#: env id -> SAC steps (and any per-env SAC arguments). Hopper is off by default (the zoo's 10k warm-up; 300k steps
#: give a hopping, not a top, policy)
TEACHERS: dict[str, dict[str, Any]] = {
    "InvertedPendulum-v5": dict(steps=20_000),
    "InvertedDoublePendulum-v5": dict(steps=50_000),
    "Reacher-v5": dict(steps=60_000),
    "Hopper-v5": dict(steps=300_000, learning_starts=10_000),
}
DEFAULT_ENVS = ["InvertedPendulum-v5", "InvertedDoublePendulum-v5", "Reacher-v5"]
#: SB3 SAC defaults but for these (the student runs of the suite use SB3's default 256-unit nets)
SAC_KWARGS: dict[str, Any] = dict(learning_starts=1000, policy_kwargs=dict(net_arch=[64, 64]))


def evaluate(teacher: Any, env_id: str, episodes: int, seed: int) -> tuple[float, float]:
    """Mean and std of the return of ``teacher`` (a :class:`PolicyAdvisor`) over ``episodes`` seeded episodes."""
    import gymnasium as gym

    env = gym.make(env_id)
    returns = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(teacher.predict(obs))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return float(np.mean(returns)), float(np.std(returns))


def train_one(env_id: str, steps: int, seed: int, out: Path, eval_episodes: int, command: str) -> dict[str, Any]:
    """Train, export and evaluate the teacher of ``env_id``; record it in ``teachers.json``; return the record."""
    import gymnasium
    import mujoco
    import stable_baselines3
    from stable_baselines3 import SAC
    from stable_baselines3.common.monitor import Monitor

    from sb3_vlm.advisors.policy import PolicyAdvisor, export_sac_actor

    start = time.time()
    extra = {k: v for k, v in TEACHERS[env_id].items() if k != "steps"}
    kwargs: dict[str, Any] = dict(SAC_KWARGS, **extra)
    # a smoke run shorter than the warm-up still trains a little, so every step of the pipeline runs
    kwargs["learning_starts"] = min(kwargs["learning_starts"], steps // 2)
    # a copy: SB3 adds its own entries to policy_kwargs in place
    model = SAC("MlpPolicy", Monitor(gymnasium.make(env_id)), seed=seed, verbose=0, **copy.deepcopy(kwargs))
    model.learn(steps)
    final = out / f"{env_id}.npz"
    partial = out / f"{env_id}.partial.npz"
    export_sac_actor(model, partial, env_id=env_id)
    teacher = PolicyAdvisor(partial)
    mean, std = evaluate(teacher, env_id, eval_episodes, seed=10_000 + seed)
    record = dict(
        env_id=env_id,
        file=final.name,
        steps=steps,
        seed=seed,
        eval_return=mean,
        eval_std=std,
        eval_episodes=eval_episodes,
        sac_kwargs=kwargs,
        identity=teacher.identity,
        digest=teacher.digest,
        versions=dict(
            stable_baselines3=stable_baselines3.__version__,
            gymnasium=gymnasium.__version__,
            mujoco=mujoco.__version__,
            numpy=np.__version__,
        ),
        command=command,
        wall_time=time.time() - start,
    )
    index_path = out / "teachers.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {}
    index[env_id] = record
    index_path.write_text(json.dumps(dict(sorted(index.items())), indent=1) + "\n")
    os.replace(partial, final)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=DEFAULT_ENVS, choices=list(TEACHERS))
    parser.add_argument("--steps", type=int, default=None, help="override every env's step budget (smoke tests)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--force", action="store_true", help="retrain envs whose teacher file exists")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (small nets: 1 is usually fastest)")
    args = parser.parse_args()

    import torch as th

    th.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", "benchmarks/train_teachers.py", *sys.argv[1:]])
    for env_id in args.envs:
        if (args.out / f"{env_id}.npz").exists() and not args.force:
            print(f"{env_id}: {args.out / f'{env_id}.npz'} exists, skipped (--force retrains it)")
            continue
        steps = args.steps or TEACHERS[env_id]["steps"]
        r = train_one(env_id, steps, args.seed, args.out, args.eval_episodes, command)
        print(
            f"{env_id}: {steps} steps, eval return {r['eval_return']:.1f} ± {r['eval_std']:.1f}"
            f" over {args.eval_episodes} episodes ({r['wall_time']:.0f}s) -> {args.out / r['file']}"
        )


if __name__ == "__main__":
    main()
