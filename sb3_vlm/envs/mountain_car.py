"""
MountainCarContinuous with a scripted teacher: a sparse-reward continuous task (+100 at the flag, −0.1 a² per step).

SAC with SB3's defaults rarely finds the flag: the action cost teaches it to stand still long before a random push
reaches the goal. The teacher pumps energy (full force in the direction of motion), which reaches the flag in about
100–150 steps from any start. The view is the state (position, velocity), as :class:`StateTeacherView` shows it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from sb3_vlm.advice import Advice, AdviceRequest
from sb3_vlm.advisors.base import Advisor
from sb3_vlm.envs.mujoco_state import StateTeacherView

ENV_ID = "MountainCarContinuous-v0"


class MountainCarOracle(Advisor):
    """
    Energy pumping for MountainCarContinuous: ``a = +1`` when the car moves right (or stands still), ``−1`` when it
    moves left, from the request's ``state`` ``(position, velocity)``.

    ``obs_scale`` (half the position range's width and half the speed limit) names regions of the state for
    :class:`~sb3_vlm.advisors.ProjectedGridKey`, as a trained policy teacher's ``obs_scale`` does.
    """

    obs_scale = np.array([0.5, 0.035])

    @property
    def identity(self) -> str:
        return "mountaincar-pump"

    def _advise(self, requests: Sequence[AdviceRequest]) -> list[Advice]:
        out = []
        for r in requests:
            if r.state is None or np.size(r.state) != 2:
                raise ValueError("MountainCarOracle needs the (position, velocity) state: use make_mountain_car_env")
            velocity = float(np.asarray(r.state).reshape(-1)[1])
            out.append(
                Advice(action=np.array([1.0 if velocity >= 0 else -1.0], dtype=np.float32), source=self.identity)
            )
        return out


def make_mountain_car_env(**make_kwargs: Any) -> gym.Env:
    """``MountainCarContinuous-v0`` wrapped in :class:`StateTeacherView` (the teacher sees the state)."""
    return StateTeacherView(gym.make(ENV_ID, **make_kwargs))
