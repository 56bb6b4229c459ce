"""Schedules for guidance coefficients (λ), as functions of the number of policy updates done so far."""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class CoefSchedule(Protocol):
    """``coef(n_updates, progress_remaining) -> λ``; ``n_updates`` counts calls to ``train()`` (policy updates)."""

    def __call__(self, n_updates: int, progress_remaining: float) -> float: ...


class ConstantCoef:
    """Constant λ (LVLM2P uses λ = 0.01 throughout).

    :param value: the coefficient
    """

    def __init__(self, value: float):
        self.value = float(value)

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
        if floor < 0 or initial < 0:
            raise ValueError("initial and floor must be non-negative")
        self.initial, self.decay, self.floor, self.cutoff = float(initial), float(decay), float(floor), cutoff

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
        self.initial, self.delta, self.every, self.floor = float(initial), float(delta), int(every), float(floor)

    def __call__(self, n_updates: int, progress_remaining: float) -> float:
        return max(self.floor, self.initial - self.delta * (n_updates // self.every))

    def __repr__(self) -> str:
        return f"LinearDecayCoef({self.initial}, delta={self.delta}, every={self.every}, floor={self.floor})"


def as_coef_schedule(coef: float | CoefSchedule) -> CoefSchedule:
    """A float becomes :class:`ConstantCoef`; a schedule is returned as is."""
    if isinstance(coef, (int, float)):
        if coef < 0:
            raise ValueError(f"A guidance coefficient must be non-negative, got {coef}")
        return ConstantCoef(float(coef))
    if callable(coef):
        return coef
    raise TypeError(f"Expected a float or a CoefSchedule, got {type(coef).__name__}")
