from __future__ import annotations

from typing import Any

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


class ColourEnv(gym.Env):
    """
    A synthetic task whose right answer per image is known: the image is all black or all white (drawn each step);
    action 0 ("left") is right on black, action 1 ("right") on white; reward 1 for the right action. Episodes of
    ``length`` steps. The teacher sees the image.
    """

    def __init__(self, size: int = 8, length: int = 8):
        self.size, self.length = size, length
        self.observation_space = spaces.Box(0, 255, shape=(size, size, 3), dtype=np.uint8)
        self.action_space = spaces.Discrete(2)
        self.colour = 0
        self.t = 0

    def _obs(self) -> np.ndarray:
        return np.full((self.size, self.size, 3), 255 * self.colour, dtype=np.uint8)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.t = 0
        self.colour = int(self.np_random.integers(2))
        return self._obs(), {}

    def step(self, action):
        reward = float(int(action) == self.colour)
        self.t += 1
        self.colour = int(self.np_random.integers(2))
        return self._obs(), reward, self.t >= self.length, False, {}

    def teacher_request(self) -> AdviceRequest:
        return AdviceRequest(image=self._obs(), action_space=self.action_space)


def tiny_lora(epochs: int) -> Any:
    """LoRA settings that teach the tiny test VLMs in seconds: small rank, high lr, no dropout or smoothing."""
    from sb3_vlm.finetune.lora import LoraSettings

    return LoraSettings(
        r=8,
        alpha=16,
        dropout=0.0,
        lr=1e-2,
        batch_size=4,
        grad_accum=1,
        epochs=epochs,
        label_smoothing=0.0,
        gradient_checkpointing=False,
    )


def require_gl() -> None:
    """Choose MuJoCo's offscreen GL backend, or skip the caller when none works here (fail instead under
    ``SB3_VLM_REQUIRE_GL=1``, which ``.ci/run`` sets after installing one)."""
    import os

    import pytest

    from sb3_vlm.envs.dmc import select_mujoco_gl

    try:
        select_mujoco_gl()
    except RuntimeError as exc:
        if os.environ.get("SB3_VLM_REQUIRE_GL"):
            raise
        pytest.skip(f"no offscreen OpenGL here: {exc}", allow_module_level=True)
