"""Environments with teacher views. MiniGrid needs the ``minigrid`` extra (imported lazily)."""

import importlib
from typing import Any

_MODULES = {
    "minigrid": ["MiniGridOracle", "MiniGridTeacherView", "make_minigrid_env"],
    "pendulum": [
        "PendulumSwingUpOracle",
        "PendulumTeacherView",
        "PixelObservation",
        "make_pendulum_env",
        "make_pixel_env",
    ],
}
__all__ = sorted(name for names in _MODULES.values() for name in names)


def __getattr__(name: str) -> Any:
    for module, names in _MODULES.items():
        if name in names:
            return getattr(importlib.import_module(f"sb3_vlm.envs.{module}"), name)
    raise AttributeError(f"module 'sb3_vlm.envs' has no attribute {name!r}")
