"""
Environments with teacher views: the papers' suite through :func:`make` (DMControl pixels, CarRacing, CARLA, MiniGrid),
Pendulum for quick continuous-control runs, MuJoCo state tasks with trained-policy teachers (``mujoco_state``).
Optional dependencies are imported only when an env is made.
"""

import importlib
import os
from typing import Any

# pygame's SDL installs its own SIGTERM handler when it initialises (gymnasium's classic-control and Box2D envs
# render through it, even off screen), and a run then ignores SIGTERM for minutes (issue 16). Set before any env
# here can initialise pygame; a value the user set is kept.
os.environ.setdefault("SDL_NO_SIGNAL_HANDLERS", "1")

from sb3_vlm.envs.registry import MINIGRID_SUITE, EnvBundle, gym_id, make, make_env, names, register_envs

_MODULES = {
    "common": ["ActionRepeat", "ChannelFrameStack"],
    "dmc": ["DMC_TASKS", "DMCPixels", "DMCTask", "make_dmc_env", "select_mujoco_gl"],
    "carracing": [
        "CARRACING_PROMPT",
        "CarRacingPursuitAdvisor",
        "CarRacingState",
        "CarRacingTeacherView",
        "ResizeFrame",
        "make_carracing_env",
    ],
    "carla": ["CarlaEnv", "action_to_control", "highway_reward", "jaywalk_reward", "make_carla_env"],
    "minigrid": ["MiniGridOracle", "MiniGridTeacherView", "make_minigrid_env"],
    "mountain_car": ["MountainCarOracle", "make_mountain_car_env"],
    "mujoco_state": ["TEACHERS_DIR", "StateTeacherView", "load_teacher", "make_state_env", "teacher_path"],
    "pendulum": [
        "PendulumSwingUpOracle",
        "PendulumTeacherView",
        "PixelObservation",
        "make_pendulum_env",
        "make_pixel_env",
    ],
}
__all__ = [  # the registry's names, then the lazily imported ones
    "MINIGRID_SUITE",
    "EnvBundle",
    "gym_id",
    "make",
    "make_env",
    "names",
    "register_envs",
    *sorted(name for names_ in _MODULES.values() for name in names_),
]

register_envs()


def __getattr__(name: str) -> Any:
    for module, names_ in _MODULES.items():
        if name in names_:
            return getattr(importlib.import_module(f"sb3_vlm.envs.{module}"), name)
    raise AttributeError(f"module 'sb3_vlm.envs' has no attribute {name!r}")
