"""
MuJoCo state tasks (Gymnasium's ``InvertedPendulum-v5``, ``Reacher-v5`` ...) with trained-policy teachers.

The teacher of such a task is an SB3 SAC actor trained once by ``benchmarks/train_teachers.py`` and shipped as
``sb3_vlm/envs/teachers/<env id>.npz`` (see :class:`~sb3_vlm.advisors.PolicyAdvisor`), the state-task counterpart of
the MiniGrid oracle. No rendering is needed: the teacher reads the observation vector.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np

from sb3_vlm.advice import AdviceRequest
from sb3_vlm.advisors.policy import PolicyAdvisor

#: where the trained teachers are kept (package data)
TEACHERS_DIR = Path(__file__).resolve().parent / "teachers"


class StateTeacherView(gym.Wrapper):
    """
    What a state teacher is shown: the observation the agent acts on, as the request's ``state``. The request's
    content key is a digest of the state's bytes, so a cache keys each state exactly (the state *is* the view).

    :param env: an env with flat Box observations
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self._state: np.ndarray | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        self._state = np.array(obs, dtype=np.float64)  # a copy: the env may reuse its buffer
        return obs, info

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._state = np.array(obs, dtype=np.float64)
        return obs, reward, terminated, truncated, info

    def teacher_request(self) -> AdviceRequest:
        if self._state is None:
            raise gym.error.ResetNeeded("Call reset() before asking for a teacher view")
        digest = hashlib.sha256(self._state.tobytes()).hexdigest()
        return AdviceRequest(action_space=self.env.action_space, state=self._state, content_key=f"state:{digest}")


def make_state_env(env_id: str, **make_kwargs: Any) -> gym.Env:
    """``gym.make(env_id)`` (state observations) wrapped in :class:`StateTeacherView`."""
    return StateTeacherView(gym.make(env_id, **make_kwargs))


def teacher_path(env_id: str, directory: str | Path | None = None) -> Path:
    """The teacher file of ``env_id``: ``<directory>/<env_id>.npz`` (default :data:`TEACHERS_DIR`)."""
    return Path(directory or TEACHERS_DIR) / f"{env_id}.npz"


def load_teacher(env_id: str, directory: str | Path | None = None) -> PolicyAdvisor:
    """
    The trained teacher of ``env_id`` (:func:`teacher_path`).

    :raises FileNotFoundError: when it was not trained yet, saying how to train it
    """
    path = teacher_path(env_id, directory)
    if not path.exists():
        raise FileNotFoundError(
            f"No teacher for {env_id} at {path}: train it once with `python benchmarks/train_teachers.py --envs "
            f"{env_id}` (writes {path.name} and teachers.json into {path.parent})"
        )
    teacher = PolicyAdvisor(path)
    if teacher.env_id != env_id:
        raise ValueError(f"{path} holds a teacher for {teacher.env_id}, not {env_id}")
    return teacher
