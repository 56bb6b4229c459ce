"""The advisor protocol: batch-first, never raises into training."""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, TypeVar

from sb3_vlm.advice import Advice, AdviceRequest

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class AdvisorStats:
    """Counters every advisor keeps (logged by the algorithms and shown by the demo)."""

    queries: int = 0  # requests answered by the backend (cache hits excluded)
    invalid: int = 0  # answers with valid=False (parse failures, no plan, ...)
    errors: int = 0  # backend exceptions turned into invalid advice
    cache_hits: int = 0
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
    """

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
        self.stats.queries += len(requests)
        self.stats.total_latency += elapsed
        per_request = elapsed / len(requests)
        self.stats.invalid += sum(not advice.valid for advice in answers)
        # advice is immutable: an answer that did not time itself gets a copy with the batch's share
        return [replace(a, latency=per_request) if a.latency == 0.0 else a for a in answers]

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
