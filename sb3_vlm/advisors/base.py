"""The advisor protocol: batch-first, never raises into training."""

from __future__ import annotations

import logging
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, TypeVar

from sb3_vlm.advice import Advice, AdviceRequest, advice_problem

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: What each advisor counter means: the one place they are defined. :class:`~sb3_vlm.callbacks.AdviceMetricsCallback`
#: logs them as ``advisor/<name>`` (summed over the training env's advisors), checkpoints save them and
#: :func:`~sb3_vlm.checkpoint.load_checkpoint` restores them. Each counts requests unless it says otherwise; "part of
#: X" marks a counter whose requests are also counted in X.
COUNTERS: dict[str, str] = {
    # AdvisorStats: every advisor
    "queries": "requests sent to the backend, each once whatever its retries; not cache hits, nor requests the "
    "circuit breaker or the query budget held back",
    "invalid": "answers that gave no usable advice, whatever the reason (failed or held-back requests, refusals, "
    "unparseable, oversized or malformed answers)",
    "errors": "requests that got no answer from the backend (an exception after the last retry); part of queries "
    "and of invalid",
    "malformed": "answers marked valid that could not be used (NaN, a wrong shape, a string action), made invalid; "
    "part of invalid",
    "cache_hits": "requests answered from the cache, remembered refusals included",
    "refusal_hits": "requests answered by a remembered refusal without asking; part of cache_hits",
    "cache_misses": "requests the cache could not answer",
    "cache_corrupt": "cached rows that failed their checksum or validation; part of cache_misses",
    "total_latency": "seconds the backend spent on the queries",
    "mean_latency": "total_latency / queries (seconds)",
    # PromptedAdvisor: API and local VLM backends
    "tokens": "tokens the backend reported (not requests)",
    "tokens_in": "prompt tokens (text and images) the backend reported; part of tokens",
    "tokens_out": "answer tokens the backend reported (thinking tokens included); part of tokens",
    "cost_usd": "US dollars the reported tokens cost at the model's price (0 where the price is unknown; "
    "sb3_vlm.advisors.pricing)",
    "retries": "attempts repeated after a retryable failure (not requests); each follows one of http_errors",
    "http_errors": "failed attempts (not requests), each once, retries included; by kind in the advisor's "
    "``http_errors`` dict: 'timeout' (the request's deadline passed), 'connection', 'HTTP <status>'",
    "parse_failures": "answers that named no usable action: refusals, hedges, unparseable or oversized answers; part "
    "of invalid",
    "oversized": "answers longer than the advisor's max_answer_chars, refused unread; part of parse_failures",
    "circuit_skips": "requests the open circuit breaker held back, never sent; part of invalid, not of queries",
    "budget_skips": "requests held back once the query or dollar budget was spent (or the next request could exceed "
    "it), never sent; part of invalid, not of queries",
    # BackgroundAdvisor: the non-blocking queue
    "pending": "requests queued or being answered now (a level, not a count)",
    "deduplicated": "requests that shared the answer of an identical request in flight",
    "overflow": "requests refused at once because the queue was full (max_queued requests, or max_queued_bytes of "
    "teacher views: the reason is in the answer's raw text and the log)",
    "late": "pending answers given up on after max_wait by something that had to wait for them (current_advice, a "
    "step crossing a process boundary); the answer still reaches the cache when it comes",
    # the advice wrappers' query selector (sb3_vlm.wrappers.selection)
    "query_skips": "observations the query selector passed over: never asked about, not even looked up in the cache",
    "query_selected": "observations the query selector chose to ask about (cache hits included)",
}


@dataclass
class AdvisorStats:
    """Counters every advisor keeps (meanings: :data:`COUNTERS`)."""

    queries: int = 0
    invalid: int = 0
    errors: int = 0
    malformed: int = 0
    cache_hits: int = 0
    refusal_hits: int = 0
    cache_misses: int = 0
    cache_corrupt: int = 0
    total_latency: float = 0.0

    @property
    def mean_latency(self) -> float:
        return self.total_latency / self.queries if self.queries else 0.0

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "mean_latency": self.mean_latency}


class NotAsked(Advice):
    """Invalid advice given without asking the backend (an open circuit breaker, a spent query budget): not counted
    in ``queries``."""


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
    #: pixels of the longer side of the teacher image this advisor reads well; None: the env's cheap default. Views
    #: that can render at several sizes (:class:`~sb3_vlm.envs.minigrid.MiniGridTeacherView`) use it when no size was
    #: asked for (issue 16): scripted advisors read the state, a VLM needs sprites it can see
    preferred_view_size: int | None = None

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
            raw = self.redact(repr(exc))
            logger.warning("Advisor %s failed on a batch of %d: %s", self.identity, len(requests), raw)
            answers = [Advice.invalid(source=self.identity, raw=raw) for _ in requests]
        elapsed = time.perf_counter() - start
        answers = [self._usable(a, r) for a, r in zip(answers, requests, strict=True)]
        self.stats.queries += sum(not isinstance(a, NotAsked) for a in answers)
        self.stats.total_latency += elapsed
        per_request = elapsed / len(requests)
        invalid = sum(not advice.valid for advice in answers)
        self.stats.invalid += invalid
        self._watch_unusable(len(answers), invalid)
        # advice is immutable: an answer that did not time itself gets a copy with the batch's share
        return [replace(a, latency=per_request) if a.latency == 0.0 else a for a in answers]

    def redact(self, text: str) -> str:
        """``text`` without secrets, before it is logged or kept: advisors holding an API key override this, and
        wrappers (cache, noise ...) redact as the advisor they wrap does."""
        for current in advisor_chain(self):
            if current is not self and type(current).redact is not Advisor.redact:
                return current.redact(text)
        return text

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


def preferred_view_size(advisor: Advisor) -> int | None:
    """The first :attr:`Advisor.preferred_view_size` set in ``advisor`` and the advisors it wraps (None: none is)."""
    for current in advisor_chain(advisor):
        if current.preferred_view_size is not None:
            return current.preferred_view_size
    return None


def advisor_chain(advisor: Advisor) -> Iterator[Advisor]:
    """``advisor`` and the advisors it wraps (cache, noise ...), outermost first, each once."""
    seen: set[int] = set()
    current: Any = advisor
    while isinstance(current, Advisor) and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = getattr(current, "advisor", None) or getattr(current, "base", None)


#: API counters an advisor keeps as attributes, beyond its :class:`AdvisorStats` (see :data:`COUNTERS`)
ATTRIBUTE_COUNTERS = (
    "tokens",
    "tokens_in",
    "tokens_out",
    "cost_usd",
    "retries",
    "parse_failures",
    "oversized",
    "circuit_skips",
    "budget_skips",
)


#: what :func:`advisor_counters` sums over the advisor chain, beside the stats (``oversized`` is a detail)
_EXTRA = tuple(name for name in ATTRIBUTE_COUNTERS if name != "oversized")


def advisor_counters(advisor: Advisor) -> dict[str, float]:
    """
    An advisor's counters as plain numbers: its :class:`~sb3_vlm.advisors.base.AdvisorStats` plus, summed over the
    advisors it wraps (cache, noise ...), the API counters ``tokens`` (``tokens_in``, ``tokens_out``),
    ``cost_usd``, ``retries``, ``parse_failures``, ``circuit_skips``, ``budget_skips`` and ``http_errors`` where an
    advisor keeps them.
    """
    out: dict[str, float] = {k: float(v) for k, v in advisor.stats.as_dict().items()}
    out.update({k: 0.0 for k in (*_EXTRA, "http_errors")})
    for current in advisor_chain(advisor):
        for key in _EXTRA:
            out[key] += float(getattr(current, key, 0) or 0)
        errors = getattr(current, "http_errors", None)
        if isinstance(errors, dict):
            out["http_errors"] += float(sum(errors.values()))
    return out


def advice_counters(advisor: Advisor) -> tuple[str, dict[str, float]]:
    """``(key, counters)``: the key identifies the advisor's counters across envs that share it (same process, same
    stats object), so that :class:`~sb3_vlm.callbacks.AdviceMetricsCallback` counts a shared advisor once."""
    return f"{os.getpid()}:{id(advisor.stats)}", advisor_counters(advisor)


def counter_details(advisor: Advisor) -> dict[str, float]:
    """
    What :func:`advisor_counters` leaves out and a resumed run needs to go on counting, summed over
    ``advisor`` and the advisors it wraps: ``oversized``, and ``http_errors`` by kind as ``"http_errors.<kind>"``.
    """
    out: dict[str, float] = {"oversized": 0.0}
    for current in advisor_chain(advisor):
        out["oversized"] += float(getattr(current, "oversized", 0) or 0)
        errors = getattr(current, "http_errors", None)
        for kind, n in errors.items() if isinstance(errors, dict) else ():
            out[f"http_errors.{kind}"] = out.get(f"http_errors.{kind}", 0.0) + float(n)
    return out


def restore_counters(advisor: Advisor, counters: Mapping[str, float]) -> None:
    """
    Set the counters of ``advisor`` to ``counters`` (what its wrapper's ``advice_counters()`` gave, e.g. saved in a
    checkpoint's ``state.json``): the :class:`AdvisorStats` fields, and each of :data:`ATTRIBUTE_COUNTERS` and the
    ``http_errors`` kinds on the first advisor of the chain that keeps it. Levels (``mean_latency``) are derived, and
    keys it does not know are ignored.
    """
    for field in fields(AdvisorStats):
        if field.name in counters:
            setattr(advisor.stats, field.name, type(getattr(advisor.stats, field.name))(counters[field.name]))
    chain = list(advisor_chain(advisor))
    for name in ATTRIBUTE_COUNTERS:
        kind = float if name == "cost_usd" else int
        holder = next((a for a in chain if type(getattr(a, name, None)) is kind), None)
        if holder is not None and name in counters:
            setattr(holder, name, kind(counters[name]))
            if name == "cost_usd" and getattr(holder, "_budget", None) is not None:
                holder._budget.spent = float(counters[name])  # type: ignore[attr-defined]  # a resumed run goes on spending
    kinds = {key.split(".", 1)[1]: int(n) for key, n in counters.items() if key.startswith("http_errors.")}
    holder = next((a for a in chain if isinstance(getattr(a, "http_errors", None), dict)), None)
    if holder is not None and kinds:
        holder.http_errors.clear()  # type: ignore[attr-defined]
        holder.http_errors.update(kinds)  # type: ignore[attr-defined]
