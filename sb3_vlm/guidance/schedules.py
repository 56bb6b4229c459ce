"""Schedules for guidance coefficients (λ), as functions of the number of policy updates done so far."""

from __future__ import annotations

import math
import numbers
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class CoefSchedule(Protocol):
    """``coef(n_updates, progress_remaining) -> λ``; ``n_updates`` counts calls to ``train()`` (policy updates)."""

    def __call__(self, n_updates: int, progress_remaining: float) -> float: ...


def check_coef(value: Any, name: str = "guidance coefficient") -> float:
    """``value`` as a float; a ``ValueError`` unless it is a finite, non-negative number (a NaN or infinite λ makes
    every later loss NaN and the run crashes updates later, far from the cause; issue 17)."""
    if not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite, non-negative number, got {value}")
    return value


class ConstantCoef:
    """Constant λ (LVLM2P uses λ = 0.01 throughout).

    :param value: the coefficient (finite, non-negative)
    """

    def __init__(self, value: float):
        self.value = check_coef(value)

    def __call__(self, n_updates: int, progress_remaining: float) -> float:
        return self.value

    def __repr__(self) -> str:
        return f"ConstantCoef({self.value})"


class KickstartingCoef:
    """
    Kickstarting-style anneal (Schmitt et al. 2018, LVLM2P's inspiration [48]): ``λ_k = max(floor, initial · decay^k)``
    after ``k`` updates, and 0 from ``cutoff`` updates on (if given). Lets a student outgrow a wrong teacher.

    :param initial: λ at the first update
    :param decay: multiplicative decay per update, in (0, 1]
    :param floor: lower bound while the teacher is still used
    :param cutoff: number of updates after which the teacher is dropped entirely (None: never)
    """

    def __init__(self, initial: float = 1.0, decay: float = 0.95, floor: float = 0.0, cutoff: int | None = None):
        if not 0.0 < decay <= 1.0:
            raise ValueError(f"decay must be in (0, 1], got {decay}")
        initial, floor = check_coef(initial, "initial"), check_coef(floor, "floor")
        self.initial, self.decay, self.floor, self.cutoff = initial, float(decay), floor, cutoff

    def __call__(self, n_updates: int, progress_remaining: float) -> float:
        if self.cutoff is not None and n_updates >= self.cutoff:
            return 0.0
        return max(self.floor, self.initial * self.decay**n_updates)

    def __repr__(self) -> str:
        return f"KickstartingCoef({self.initial}, decay={self.decay}, floor={self.floor}, cutoff={self.cutoff})"


class LinearDecayCoef:
    """
    Step-wise linear anneal: ``λ = max(floor, initial − delta · ⌊n / every⌋)`` (APL: 2 → −0.01 per 200 steps → 0.1).

    :param initial: starting λ
    :param delta: amount removed every ``every`` updates
    :param every: updates between decrements
    :param floor: lower bound
    """

    def __init__(self, initial: float = 2.0, delta: float = 0.01, every: int = 200, floor: float = 0.1):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        if not math.isfinite(delta):
            raise ValueError(f"delta must be finite, got {delta}")
        initial, floor = check_coef(initial, "initial"), check_coef(floor, "floor")
        self.initial, self.delta, self.every, self.floor = initial, float(delta), int(every), floor

    def __call__(self, n_updates: int, progress_remaining: float) -> float:
        return max(self.floor, self.initial - self.delta * (n_updates // self.every))

    def __repr__(self) -> str:
        return f"LinearDecayCoef({self.initial}, delta={self.delta}, every={self.every}, floor={self.floor})"


class CheckedCoef:
    """
    A schedule whose every value is checked: a NaN, infinite or negative λ stops training with a ``ValueError``
    that names the schedule and the update, before the value reaches a loss (issue 17).

    :param schedule: the schedule to check
    :param name: what it is, for the message
    """

    def __init__(self, schedule: CoefSchedule, name: str = "guidance coefficient"):
        self.schedule, self.name = schedule, name

    def __call__(self, n_updates: int, progress_remaining: float) -> float:
        value = self.schedule(n_updates, progress_remaining)
        try:
            return check_coef(value, self.name)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"The {self.name} schedule {self.schedule!r} gave {value!r} at update {n_updates}: {exc}"
            ) from None

    def __repr__(self) -> str:
        return f"CheckedCoef({self.schedule!r})"


def as_coef_schedule(coef: float | CoefSchedule, name: str = "guidance coefficient") -> CoefSchedule:
    """
    A number becomes :class:`ConstantCoef` (a ``ValueError`` unless finite and non-negative); the schedules of this
    module are returned as they are (their arguments are checked when they are built); any other callable comes
    wrapped in :class:`CheckedCoef`, which checks each value it gives.

    :param coef: a number or a schedule
    :param name: what it is (``"teacher_coef"``, ``"guidance_coef"``), for error messages
    """
    if isinstance(coef, numbers.Real):
        return ConstantCoef(check_coef(coef, name))
    if isinstance(coef, (ConstantCoef, KickstartingCoef, LinearDecayCoef, CheckedCoef)):
        return coef
    if callable(coef):
        return CheckedCoef(coef, name)
    raise TypeError(f"Expected a float or a CoefSchedule, got {type(coef).__name__}")
