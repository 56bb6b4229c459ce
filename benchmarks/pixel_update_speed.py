"""Pixel SAC update speed, side by side in one process: SB3's ``CnnPolicy`` SAC against GuidedSAC's pixel options.

Every variant trains on the same kind of replay buffer (84×84 frame stacks of 9 channels, uint8, filled by a
random policy on a stand-in env, so no rendering is timed), at the same batch size, with guidance off. Rounds of
``--steps`` gradient steps alternate between the variants, so the machine's load hits them alike; the median
round gives updates/s. A breakdown of one DrQPolicy update (augmentation, encoder, sampling) is timed the same way.

Usage::

    python benchmarks/pixel_update_speed.py            # writes benchmarks/results/pixels/update_speed.json
    python benchmarks/pixel_update_speed.py --quick    # CI smoke: tiny frames and rounds
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3 import SAC

from sb3_vlm import GuidedSAC
from sb3_vlm.sac.augmentation import RandomShift

ROOT = Path(__file__).resolve().parent.parent


class RandomFrames(gym.Env):
    """Channel-first uint8 frames of noise: what the update costs does not depend on what the frames show."""

    def __init__(self, size: int, channels: int = 9, action_dim: int = 2) -> None:
        self.observation_space = spaces.Box(0, 255, (channels, size, size), np.uint8)
        self.action_space = spaces.Box(-1.0, 1.0, (action_dim,), np.float32)
        self._rng = np.random.default_rng(0)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        return self._frame(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        return self._frame(), float(self._rng.standard_normal()), False, False, {}

    def _frame(self) -> np.ndarray:
        return self._rng.integers(0, 256, self.observation_space.shape, dtype=np.uint8)


VARIANTS: dict[str, tuple[type, str, dict[str, Any]]] = {
    "sb3_cnn": (SAC, "CnnPolicy", {}),
    "guided_cnn": (GuidedSAC, "CnnPolicy", dict(method="sac")),
    "drq_shift": (GuidedSAC, "DrQPolicy", dict(method="sac", augmentation="shift")),
}


def build(name: str, size: int, batch_size: int, fill: int) -> Any:
    cls, policy, extra = VARIANTS[name]
    model = cls(
        policy, RandomFrames(size), buffer_size=fill + 10, learning_starts=fill, batch_size=batch_size, seed=0, **extra
    )
    model.learn(fill)  # random actions only: the buffer is filled, nothing is trained yet
    return model


def time_rounds(models: dict[str, Any], steps: int, rounds: int, batch_size: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            start = time.perf_counter()
            model.train(gradient_steps=steps, batch_size=batch_size)
            times[name].append((time.perf_counter() - start) / steps)
    return times


def breakdown(model: Any, batch_size: int, repeats: int) -> dict[str, float]:
    """Seconds per call of the parts of one DrQPolicy update."""
    buffer, policy = model.replay_buffer, model.policy
    shift = RandomShift(model.observation_space, pad=4)
    encoder = policy.critic.features_extractor
    samples = buffer.sample(batch_size)
    parts: dict[str, list[float]] = {"sample": [], "augment": [], "encoder_forward": [], "encoder_forward_backward": []}
    for _ in range(repeats):
        t0 = time.perf_counter()
        samples = buffer.sample(batch_size)
        t1 = time.perf_counter()
        obs = shift(samples.observations)
        t2 = time.perf_counter()
        with th.no_grad():
            encoder(obs.float() / 255.0)
        t3 = time.perf_counter()
        encoder(obs.float() / 255.0).sum().backward()
        t4 = time.perf_counter()
        for key, value in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            parts[key].append(value)
    return {key: float(np.median(values)) for key, values in parts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=84)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10, help="gradient steps per timed round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/pixels/update_speed.json")
    args = parser.parse_args()
    if args.quick:
        args.size, args.batch_size, args.steps, args.rounds = 40, 16, 2, 2
    th.set_num_threads(1)
    fill = max(2 * args.batch_size, 64)
    models = {name: build(name, args.size, args.batch_size, fill) for name in VARIANTS}
    times = time_rounds(models, args.steps, args.rounds, args.batch_size)
    median = {name: float(np.median(t)) for name, t in times.items()}
    result = dict(
        command="python benchmarks/pixel_update_speed.py" + (" --quick" if args.quick else ""),
        frames=[9, args.size, args.size],
        batch_size=args.batch_size,
        steps_per_round=args.steps,
        rounds=args.rounds,
        torch_threads=th.get_num_threads(),
        machine=platform.processor() or platform.machine(),
        seconds_per_update=median,
        updates_per_second={name: 1.0 / s for name, s in median.items()},
        speedup_vs_sb3_cnn={name: median["sb3_cnn"] / s for name, s in median.items()},
        parameters={name: int(sum(p.numel() for p in m.policy.parameters())) for name, m in models.items()},
        drq_breakdown_seconds=breakdown(models["drq_shift"], args.batch_size, max(3, args.rounds)),
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
