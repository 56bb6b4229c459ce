"""Environments with teacher views. MiniGrid needs the ``minigrid`` extra (imported lazily)."""

from typing import Any

__all__ = ["MiniGridOracle", "MiniGridTeacherView", "make_minigrid_env"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from sb3_vlm.envs import minigrid

        return getattr(minigrid, name)
    raise AttributeError(f"module 'sb3_vlm.envs' has no attribute {name!r}")
