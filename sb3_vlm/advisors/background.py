"""Non-blocking advice: requests are answered by worker threads while the environment keeps stepping."""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import weakref
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from typing import Any

from sb3_vlm.advice import Advice, AdviceRequest, PendingAdvice
from sb3_vlm.advisors.base import Advisor, advisor_chain
from sb3_vlm.advisors.cache import CachedAdvisor

logger = logging.getLogger(__name__)

#: counters a :class:`BackgroundAdvisor` adds to the advisor metrics (meanings: :data:`~sb3_vlm.advisors.base.
#: COUNTERS`)
BACKGROUND_COUNTERS = ("pending", "deduplicated", "overflow")
#: what a queued request is charged beyond its image's bytes (the request, its context, its future)
REQUEST_OVERHEAD_BYTES = 1024
#: default bounds of the queue: bytes of the requests in it (about 1,300 views of 256×256 RGB), and the longest wait
#: for an answer that must be had now (a few retries of a slow API request)
DEFAULT_MAX_QUEUED_BYTES = 256 * 2**20
DEFAULT_MAX_WAIT = 120.0


def request_nbytes(request: AdviceRequest) -> int:
    """What a queued request holds, approximately: its image's bytes (a lazy view not yet rendered: none yet) plus
    :data:`REQUEST_OVERHEAD_BYTES`."""
    image = request.image if request.rendered else None  # never renders a lazy view
    return REQUEST_OVERHEAD_BYTES + (int(image.nbytes) if image is not None else 0)


Item = tuple[str | None, AdviceRequest, "Future[Advice]", int]


class _Queue:
    """The queue and its worker threads. Kept apart from :class:`BackgroundAdvisor` so that the threads never hold
    the advisor object itself: when it is dropped, a finalizer closes the queue and the threads end."""

    def __init__(self, advisor: Advisor, max_batch: int) -> None:
        self.advisor, self.max_batch = advisor, max_batch
        self.cond = threading.Condition()
        self.items: deque[Item] = deque()
        self.in_flight: dict[str, Future[Advice]] = {}
        self.running = 0  # requests taken by a worker and not answered yet
        self.nbytes = 0  # request_nbytes of the requests queued or being answered
        self.late = 0  # see COUNTERS
        self.closed = False
        self.threads: list[threading.Thread] = []

    def start(self, workers: int) -> None:
        self.threads = [t for t in self.threads if t.is_alive()]
        while len(self.threads) < workers:
            thread = threading.Thread(target=self.work, daemon=True, name="sb3-vlm-background")
            thread.start()
            self.threads.append(thread)

    def work(self) -> None:
        while True:
            with self.cond:
                while not self.items and not self.closed:
                    self.cond.wait()
                if not self.items:
                    return  # closed and drained
                batch = [self.items.popleft() for _ in range(min(self.max_batch, len(self.items)))]
                self.running += len(batch)
            self.answer(batch)

    def answer(self, batch: list[Item]) -> None:
        try:
            answers = self.advisor.advise([request for _, request, _, _ in batch])
        except Exception as exc:  # advise() does not raise for backend failures; anything else must not hang a future
            raw = self.advisor.redact(repr(exc))
            logger.warning("Background advice batch of %d failed: %s", len(batch), raw)
            answers = [Advice.invalid(source="background", raw=raw) for _ in batch]
        with self.cond:
            for (key, _, future, nbytes), answer in zip(batch, answers, strict=True):
                if key is not None and self.in_flight.get(key) is future:
                    del self.in_flight[key]  # after the cache write: a later identical request hits the cache
                future.set_result(answer)
                self.nbytes -= nbytes
            self.running -= len(batch)
            self.cond.notify_all()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            dropped, self.items = list(self.items), deque()
            self.nbytes -= sum(item[3] for item in dropped)
            self.in_flight.clear()
            self.cond.notify_all()
        for _, _, future, _ in dropped:
            future.set_result(Advice.invalid(source="background", raw="advisor closed"))


class QueuedAdvice(PendingAdvice):
    """
    A :class:`~sb3_vlm.advice.PendingAdvice` of a :class:`BackgroundAdvisor`, whose waits are bounded: :meth:`wait`
    and pickling (a step crossing a process boundary) wait at most ``max_wait`` seconds for the answer, then give
    invalid advice instead (counted in ``late``); the answer still reaches the cache, and the advised buffers, which
    keep this handle, still fill its row in when it comes.
    """

    max_wait: float
    _queue: _Queue

    def __init__(self, future: Future[Advice], queue: _Queue, max_wait: float) -> None:
        super().__init__(future)
        object.__setattr__(self, "_queue", queue)  # frozen like any advice
        object.__setattr__(self, "max_wait", max_wait)

    def wait(self) -> Advice:
        """The answer, waiting at most ``max_wait`` seconds for it; invalid advice (counted) when it is late."""
        try:
            return self.result(self.max_wait)
        except concurrent.futures.TimeoutError:
            with self._queue.cond:
                self._queue.late += 1
                first = self._queue.late == 1
            if first:
                logger.warning("No advice within max_wait=%.3g s: going on without it (counted in late; warned once)",
                               self.max_wait)  # fmt: skip
            return Advice.invalid(source="background", raw=f"no answer within max_wait={self.max_wait:g} s")

    def __reduce__(self) -> tuple[Any, tuple[dict[str, Any]]]:
        # the future cannot cross a process boundary; the answer, or its absence after max_wait, can
        return Advice.from_dict, (self.wait().to_dict(),)


class BackgroundAdvisor:
    """
    Answer advice requests in the background.

    :meth:`submit` returns at once: a cache hit is answered on the spot, a request identical to one already in
    flight (same content address) shares its answer, and the rest are queued for ``workers`` threads, each of which
    takes up to ``max_batch`` queued requests per ``advise()`` call. Each unanswered request is a
    :class:`QueuedAdvice` (a :class:`~sb3_vlm.advice.PendingAdvice` whose waits are bounded).

    Requests are content-addressed only when ``advisor`` is a :class:`CachedAdvisor`: the cache key is what
    "identical" means (without a cache a scripted advisor may read privileged ``state`` the key does not cover).

    :param advisor: who answers (typically a :class:`CachedAdvisor`)
    :param workers: threads calling the advisor; default: the advisor's ``concurrency`` (API advisors: as many
        requests in flight as the advisor allows a batch), else 1
    :param max_batch: most requests per ``advise()`` call; default: the advisor's ``batch_size`` (a local VLM's
        forward batch), else 1 (an API advisor then has exactly ``workers`` requests in flight)
    :param max_queued: requests waiting beyond this many get invalid advice at once (counted in ``overflow``),
        so a backend far slower than the env cannot grow the queue without bound
    :param max_queued_bytes: the same bound in bytes: a request that would take the requests queued or being
        answered past this many bytes (:func:`request_nbytes`: mostly their images) gets invalid advice at once
        (counted in ``overflow``; an empty queue always takes one request, so progress never stops). None: no bound
    :param max_wait: seconds :meth:`QueuedAdvice.wait` waits for an answer that something must have now (the
        wrappers' ``current_advice``, a step that a ``SubprocVecEnv`` worker sends), then invalid advice (counted in
        ``late``)
    """

    def __init__(
        self,
        advisor: Advisor,
        workers: int | None = None,
        max_batch: int | None = None,
        max_queued: int = 100_000,
        max_queued_bytes: int | None = DEFAULT_MAX_QUEUED_BYTES,
        max_wait: float = DEFAULT_MAX_WAIT,
    ) -> None:
        base = advisor.advisor if isinstance(advisor, CachedAdvisor) else advisor
        workers = workers if workers is not None else int(getattr(base, "concurrency", 1) or 1)
        max_batch = max_batch if max_batch is not None else int(getattr(base, "batch_size", 1) or 1)
        if workers < 1 or max_batch < 1 or max_queued < 1 or (max_queued_bytes is not None and max_queued_bytes < 1):
            raise ValueError("workers, max_batch, max_queued and max_queued_bytes must be >= 1")
        if not max_wait >= 0:  # NaN too
            raise ValueError(f"max_wait must be >= 0, got {max_wait}")
        self.advisor = advisor
        self.workers, self.max_batch, self.max_queued = workers, max_batch, max_queued
        self.max_queued_bytes, self.max_wait = max_queued_bytes, float(max_wait)
        self.deduplicated = 0
        self.overflow = 0
        #: requests refused by each bound (``"requests"``, ``"bytes"``): together, ``overflow``
        self.refused: dict[str, int] = {"requests": 0, "bytes": 0}
        self.submitted = 0
        self._init_queue()

    def _init_queue(self) -> None:
        self._queue = _Queue(self.advisor, self.max_batch)
        weakref.finalize(self, self._queue.close)  # dropped without close(): the threads still end

    @property
    def _threads(self) -> list[threading.Thread]:
        return self._queue.threads

    @property
    def pending(self) -> int:
        """Requests queued or being answered."""
        with self._queue.cond:
            return len(self._queue.items) + self._queue.running

    @property
    def pending_bytes(self) -> int:
        """What the requests queued or being answered hold (:func:`request_nbytes`)."""
        with self._queue.cond:
            return self._queue.nbytes

    @property
    def late(self) -> int:
        """Answers :meth:`QueuedAdvice.wait` gave up on after ``max_wait``."""
        with self._queue.cond:
            return self._queue.late

    def counters(self) -> dict[str, float]:
        """The queue's counters: :data:`BACKGROUND_COUNTERS`, and ``late``."""
        return {key: float(getattr(self, key)) for key in (*BACKGROUND_COUNTERS, "late")}

    def restore_counters(self, counters: Mapping[str, float]) -> None:
        """Go on counting from ``counters`` (what :meth:`counters` gave, e.g. in a checkpoint); ``pending`` is a
        level and is not restored."""
        self.deduplicated = int(counters.get("deduplicated", self.deduplicated))
        self.overflow = int(counters.get("overflow", self.overflow))
        with self._queue.cond:
            self._queue.late = int(counters.get("late", self._queue.late))

    def _full(self, queue: _Queue, nbytes: int) -> tuple[str, str] | None:
        """Which bound keeps the queue from taking a request of ``nbytes`` now, and how it reads in the log (None: it
        can take it); called holding ``queue.cond``."""
        if len(queue.items) >= self.max_queued:
            return "requests", f"{self.max_queued:,} requests"
        busy = queue.items or queue.running
        if self.max_queued_bytes is not None and busy and queue.nbytes + nbytes > self.max_queued_bytes:
            return "bytes", f"{self.max_queued_bytes / 2**20:,.1f} MiB of teacher views"
        return None

    def submit(self, requests: Sequence[AdviceRequest]) -> list[Advice]:
        """One answer per request: the advice itself (cache hit) or a :class:`QueuedAdvice`."""
        queue = self._queue
        cached = self.advisor if isinstance(self.advisor, CachedAdvisor) else None
        identity = cached.advisor.identity if cached is not None else ""
        with queue.cond:
            if queue.closed:
                raise RuntimeError("BackgroundAdvisor is closed")
            queue.start(self.workers)  # lazily, and again in a forked process
        out: list[Advice] = []
        for request in requests:
            self.submitted += 1
            key = request.cache_key(identity) if cached is not None else None
            if cached is not None and key is not None:
                hit = cached.lookup(key, request.action_space)
                if hit is not None:
                    out.append(hit)
                    continue
            with queue.cond:
                future = queue.in_flight.get(key) if key is not None else None
                if future is not None:
                    self.deduplicated += 1
                else:
                    nbytes = request_nbytes(request)
                    full = self._full(queue, nbytes)
                    if full is not None:
                        out.append(self._refuse(*full))
                        continue
                    future = Future()
                    future.set_running_or_notify_cancel()
                    queue.items.append((key, request, future, nbytes))
                    queue.nbytes += nbytes
                    if key is not None:
                        queue.in_flight[key] = future
                    queue.cond.notify()
            out.append(QueuedAdvice(future, queue, self.max_wait))
        return out

    def _refuse(self, bound: str, description: str) -> Advice:
        """Invalid advice for a request the full queue cannot take, counted per bound and logged once per bound."""
        self.overflow += 1
        self.refused[bound] += 1
        if self.refused[bound] == 1:
            logger.warning("Advice queue full (%s): new requests get no advice until it drains (advisor/overflow)",
                           description)  # fmt: skip
        return Advice.invalid(source="background", raw=f"advice queue full ({description})")

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every submitted request is answered; False if ``timeout`` seconds passed first."""
        queue = self._queue
        with queue.cond:
            return queue.cond.wait_for(lambda: not queue.items and queue.running == 0, timeout)

    def close(self) -> None:
        """Stop the workers; requests still queued get invalid advice (``"advisor closed"``)."""
        self._queue.close()

    def __getstate__(self) -> dict[str, Any]:
        settings = ("advisor", "workers", "max_batch", "max_queued", "max_queued_bytes", "max_wait")
        state = {k: v for k, v in self.__dict__.items() if k in settings}
        return {**state, "deduplicated": 0, "overflow": 0, "submitted": 0}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # queues pickled before the bytes bound and max_wait get their defaults
        self.__dict__.update({"max_queued_bytes": DEFAULT_MAX_QUEUED_BYTES, "max_wait": DEFAULT_MAX_WAIT, **state})
        self.refused = {"requests": 0, "bytes": 0}
        self._init_queue()

    def __repr__(self) -> str:
        return f"BackgroundAdvisor({self.advisor!r}, workers={self.workers}, pending={self.pending})"


def prefers_background(advisor: Advisor) -> bool:
    """Whether wrappers ask ``advisor`` in the background by default: yes for VLM backends (API or local model),
    whose answers take from milliseconds to seconds; no for scripted advisors, which answer in microseconds and keep
    runs exactly reproducible when asked inline (see the README's non-blocking advice measurements)."""
    from sb3_vlm.advisors.prompted import PromptedAdvisor

    return any(isinstance(a, PromptedAdvisor) for a in advisor_chain(advisor))
