from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from sb3_vlm.advice import AdviceRequest


class CounterEnv(gym.Env):
    """Observation = [episode id, step within episode]; episodes of seeded random length (3-7 steps)."""

    def __init__(self, action_space: spaces.Space | None = None):
        self.observation_space = spaces.Box(-1e6, 1e6, shape=(2,), dtype=np.float32)
        self.action_space = action_space or spaces.Box(-1e6, 1e6, shape=(1,), dtype=np.float32)
        self.episode = -1
        self.t = 0
        self.length = 0

    def _obs(self) -> np.ndarray:
        return np.array([self.episode, self.t], dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.episode += 1
        self.t = 0
        self.length = int(self.np_random.integers(3, 8))
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        return self._obs(), 0.0, self.t >= self.length, False, {}


def counter_view(env: gym.Env, obs: np.ndarray) -> AdviceRequest:
    """Teacher view of CounterEnv: the observation itself as context and state."""
    return AdviceRequest(image=None, context={"obs": obs.tolist()}, state=obs.copy())
