"""The advisor protocol: batch-first, never raises into training."""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, TypeVar

from sb3_vlm.advice import Advice, AdviceRequest, advice_problem

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class AdvisorStats:
    """Counters every advisor keeps (logged by the algorithms and shown by the demo)."""

    queries: int = 0  # requests answered by the backend (cache hits excluded)
    invalid: int = 0  # answers with valid=False (parse failures, no plan, malformed answers, ...)
    errors: int = 0  # backend exceptions turned into invalid advice
    malformed: int = 0  # answers marked valid that could not be used (NaN, wrong shape ...): made invalid, in invalid
    cache_hits: int = 0
    refusal_hits: int = 0  # requests answered by a remembered refusal without asking (also in cache_hits)
    cache_misses: int = 0
    cache_corrupt: int = 0  # cached rows that failed their checksum or validation (also in cache_misses)
    total_latency: float = 0.0  # seconds spent in the backend

    @property
    def mean_latency(self) -> float:
        return self.total_latency / self.queries if self.queries else 0.0

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "mean_latency": self.mean_latency}


class Advisor(ABC):
    """
    Base class of every advisor (scripted, API-hosted or local VLM).

    Subclasses implement :meth:`_advise`; callers use :meth:`advise`, which times the batch, keeps
    :class:`AdvisorStats`, checks the answer count and turns any backend exception into invalid advice
    (counted and logged) so that a misbehaving teacher never crashes a training run.

    It also checks each answer against its request's action space (:func:`~sb3_vlm.advice.advice_problem`): an
    answer marked valid that cannot be used (NaN/inf, a wrong shape or length, a discrete action outside the space,
    a string action) becomes invalid advice (``refused``: asking again would most likely give the same), counted in
    ``stats.invalid`` and ``stats.malformed`` instead of being masked silently further down. When more than half of
    the answers of a window of :attr:`unusable_window` are invalid, it warns once: training then runs mostly
    unguided.
    """

    #: answers per window of the "most advice is unusable" warning
    unusable_window: int = 100

    def __init__(self) -> None:
        self.stats = AdvisorStats()

    @property
    def identity(self) -> str:
        """Stable description of what answers (part of the cache key): two advisors with the same identity must
        give interchangeable answers."""
        return type(self).__name__

    @abstractmethod
    def _advise(self, requests: Sequence[AdviceRequest]) -> list[Advice]:
        """Answer a batch of requests, one :class:`Advice` per request, in order."""

    def advise(self, requests: Sequence[AdviceRequest]) -> list[Advice]:
        """Answer a batch of requests; never raises for backend failures."""
        if len(requests) == 0:
            return []
        start = time.perf_counter()
        try:
            answers = self._advise(requests)
            if len(answers) != len(requests):
                raise RuntimeError(f"{self.identity} returned {len(answers)} answers for {len(requests)} requests")
        except Exception as exc:  # a bad teacher must not lose the run: count, log, mask
            self.stats.errors += len(requests)
            logger.warning("Advisor %s failed on a batch of %d: %r", self.identity, len(requests), exc)
            answers = [Advice.invalid(source=self.identity, raw=repr(exc)) for _ in requests]
        elapsed = time.perf_counter() - start
        answers = [self._usable(a, r) for a, r in zip(answers, requests, strict=True)]
        self.stats.queries += len(requests)
        self.stats.total_latency += elapsed
        per_request = elapsed / len(requests)
        invalid = sum(not advice.valid for advice in answers)
        self.stats.invalid += invalid
        self._watch_unusable(len(answers), invalid)
        # advice is immutable: an answer that did not time itself gets a copy with the batch's share
        return [replace(a, latency=per_request) if a.latency == 0.0 else a for a in answers]

    def _usable(self, advice: Advice, request: AdviceRequest) -> Advice:
        """``advice``, or invalid advice (counted) when it is marked valid but cannot be used for ``request``."""
        problem = advice_problem(advice, request.action_space)
        if problem is None:
            return advice
        self.stats.malformed += 1
        logger.debug("%s: unusable answer masked (%s): %r", self.identity, problem, advice)
        return Advice.invalid(source=advice.source, raw=advice.raw or problem, refused=True)

    def _watch_unusable(self, answers: int, invalid: int) -> None:
        """Warn once when most answers of a window are invalid (state kept lazily: subclasses need not call
        ``__init__`` for it, and advisors unpickled from older versions lack it)."""
        seen, bad, warned = self.__dict__.get("_unusable_window", (0, 0, False))
        seen, bad = seen + answers, bad + invalid
        if not warned and seen >= self.unusable_window:
            if 2 * bad > seen:
                warned = True
                logger.warning(
                    "%s: %d of the last %d answers gave no usable advice (refused, unparseable or malformed answers, "
                    "or failed requests: see advisor/invalid, advisor/malformed, advisor/parse_failures and "
                    "advisor/errors); their rows are masked, so training runs mostly unguided. Warned once",
                    self.identity, bad, seen,
                )  # fmt: skip
            seen = bad = 0
        self.__dict__["_unusable_window"] = (seen, bad, warned)

    def advise_one(self, request: AdviceRequest) -> Advice:
        return self.advise([request])[0]

    #: batches of at least this many requests show a progress bar on stderr (API and local VLM advisors); None: never
    progress_threshold: int | None = 64

    def _progress(self, items: Iterable[T], total: int, n_requests: int, unit: str = "request") -> Iterable[T]:
        """``items`` (``total`` of them) with a tqdm bar when the batch has at least :attr:`progress_threshold`
        requests."""
        if self.progress_threshold is None or n_requests < self.progress_threshold:
            return items
        from tqdm.auto import tqdm

        return tqdm(items, total=total, desc=f"advising ({type(self).__name__})", unit=unit, leave=False)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.identity})"


def advisor_chain(advisor: Advisor) -> Iterator[Advisor]:
    """``advisor`` and the advisors it wraps (cache, noise ...), outermost first, each once."""
    seen: set[int] = set()
    current: Any = advisor
    while isinstance(current, Advisor) and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = getattr(current, "advisor", None) or getattr(current, "base", None)
