"""
Wrappers the pixel environments share: action repeat and channel-wise frame stacking (the RAD / ERPv / COVR
pixel pipeline), both passing an inner ``teacher_request()`` through unchanged.
"""

from __future__ import annotations

from collections import deque
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class ActionRepeat(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """
    Repeat each action ``repeat`` times and sum the rewards (RAD's action repeat: COVR table 8, ERPv table 6).
    Stops early when the episode ends; the info is the last inner step's, with ``info["action_repeat_steps"]`` the
    number of inner steps taken. Episode lengths of the inner env are in inner steps (DMC: 1000), so an agent sees
    ``1000 / repeat`` steps per episode.

    :param env: the env to wrap
    :param repeat: inner steps per agent step (>= 1)
    """

    def __init__(self, env: gym.Env, repeat: int):
        gym.utils.RecordConstructorArgs.__init__(self, repeat=repeat)
        super().__init__(env)
        if repeat < 1:
            raise ValueError(f"repeat must be >= 1, got {repeat}")
        self.repeat = int(repeat)

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        total, steps = 0.0, 0
        while True:
            obs, reward, terminated, truncated, info = self.env.step(action)
            total += float(reward)
            steps += 1
            if terminated or truncated or steps == self.repeat:
                break
        info["action_repeat_steps"] = steps
        return obs, total, terminated, truncated, info


class ChannelFrameStack(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """
    Stack the last ``n`` image observations along the channel axis: ``(H, W, C)`` becomes ``(H, W, C·n)``, oldest
    first, what SB3's ``CnnPolicy`` takes (Gymnasium's ``FrameStackObservation`` adds a leading axis instead, which
    SB3 does not treat as an image). ERPv/COVR stack 3 frames (``s_t = {o_t, o_{t-1}, o_{t-2}}``). At reset the first
    frame fills the stack.

    :param env: an env with ``(H, W, C)`` uint8 observations
    :param n: frames to stack (>= 1)
    """

    def __init__(self, env: gym.Env, n: int = 3):
        gym.utils.RecordConstructorArgs.__init__(self, n=n)
        super().__init__(env)
        space = env.observation_space
        if not (isinstance(space, spaces.Box) and len(space.shape) == 3):
            raise ValueError(f"ChannelFrameStack needs (H, W, C) image observations, got {space}")
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self.n = int(n)
        low = np.repeat(space.low, n, axis=-1)
        high = np.repeat(space.high, n, axis=-1)
        self.observation_space = spaces.Box(low, high, dtype=space.dtype)  # type: ignore[arg-type]
        self._frames: deque[np.ndarray] = deque(maxlen=n)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        self._frames.clear()
        for _ in range(self.n):
            self._frames.append(obs)
        return self._stacked(), info

    def observation(self, observation: Any) -> np.ndarray:
        self._frames.append(observation)
        return self._stacked()

    def _stacked(self) -> np.ndarray:
        return np.concatenate(list(self._frames), axis=-1)
