"""Dependency floors checked at import."""

import stable_baselines3

# The oldest Stable-Baselines3 this package works with, kept equal to pyproject.toml's floor (a test checks):
# GuidedSAC passes SAC's ``n_steps`` argument, new in 2.7.0. Failing here names the fix; an older SB3 would
# otherwise fail later with a bare TypeError inside a constructor.
MIN_SB3_VERSION = (2, 7, 0)


def _version_tuple(version: str) -> tuple[int, ...]:
    """``"2.10.1a0+cpu"`` → ``(2, 10, 1)``: the leading digits of the first three fields."""
    parts = []
    for part in version.split("+")[0].split(".")[:3]:
        digits = ""
        for ch in part:
            if not ch.isdigit():
                break
            digits += ch
        parts.append(int(digits or 0))
    return tuple(parts)


if _version_tuple(stable_baselines3.__version__) < MIN_SB3_VERSION:
    raise ImportError(
        f"sb3-vlm needs stable-baselines3>={'.'.join(map(str, MIN_SB3_VERSION))}, "
        f"found {stable_baselines3.__version__}: pip install -U stable-baselines3"
    )
