"""Non-blocking advice: requests are answered by worker threads while the environment keeps stepping."""

from __future__ import annotations

import logging
import threading
import weakref
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

from sb3_vlm.advice import Advice, AdviceRequest, PendingAdvice
from sb3_vlm.advisors.base import Advisor, advisor_chain
from sb3_vlm.advisors.cache import CachedAdvisor

logger = logging.getLogger(__name__)

#: counters a :class:`BackgroundAdvisor` adds to the advisor metrics
BACKGROUND_COUNTERS = ("pending", "deduplicated", "overflow")


Item = tuple[str | None, AdviceRequest, "Future[Advice]"]


class _Queue:
    """The queue and its worker threads. Kept apart from :class:`BackgroundAdvisor` so that the threads never hold
    the advisor object itself: when it is dropped, a finalizer closes the queue and the threads end."""

    def __init__(self, advisor: Advisor, max_batch: int) -> None:
        self.advisor, self.max_batch = advisor, max_batch
        self.cond = threading.Condition()
        self.items: deque[Item] = deque()
        self.in_flight: dict[str, Future[Advice]] = {}
        self.running = 0  # requests taken by a worker and not answered yet
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
            answers = self.advisor.advise([request for _, request, _ in batch])
        except Exception as exc:  # advise() does not raise for backend failures; anything else must not hang a future
            logger.warning("Background advice batch of %d failed: %r", len(batch), exc)
            answers = [Advice.invalid(source="background", raw=repr(exc)) for _ in batch]
        with self.cond:
            for (key, _, future), answer in zip(batch, answers, strict=True):
                if key is not None and self.in_flight.get(key) is future:
                    del self.in_flight[key]  # after the cache write: a later identical request hits the cache
                future.set_result(answer)
            self.running -= len(batch)
            self.cond.notify_all()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            dropped, self.items = list(self.items), deque()
            self.in_flight.clear()
            self.cond.notify_all()
        for _, _, future in dropped:
            future.set_result(Advice.invalid(source="background", raw="advisor closed"))


class BackgroundAdvisor:
    """
    Answer advice requests in the background.

    :meth:`submit` returns at once: a cache hit is answered on the spot, a request identical to one already in
    flight (same content address) shares its answer, and the rest are queued for ``workers`` threads, each of which
    takes up to ``max_batch`` queued requests per ``advise()`` call. Each unanswered request is a
    :class:`PendingAdvice`.

    Requests are content-addressed only when ``advisor`` is a :class:`CachedAdvisor`: the cache key is what
    "identical" means (without a cache a scripted advisor may read privileged ``state`` the key does not cover).

    :param advisor: who answers (typically a :class:`CachedAdvisor`)
    :param workers: threads calling the advisor; default: the advisor's ``concurrency`` (API advisors: as many
        requests in flight as the advisor allows a batch), else 1
    :param max_batch: most requests per ``advise()`` call; default: the advisor's ``batch_size`` (a local VLM's
        forward batch), else 1 (an API advisor then has exactly ``workers`` requests in flight)
    :param max_queued: requests waiting beyond this many get invalid advice at once (counted in ``overflow``),
        so a backend far slower than the env cannot grow the queue without bound
    """

    def __init__(
        self, advisor: Advisor, workers: int | None = None, max_batch: int | None = None, max_queued: int = 100_000
    ) -> None:
        base = advisor.advisor if isinstance(advisor, CachedAdvisor) else advisor
        workers = workers if workers is not None else int(getattr(base, "concurrency", 1) or 1)
        max_batch = max_batch if max_batch is not None else int(getattr(base, "batch_size", 1) or 1)
        if workers < 1 or max_batch < 1 or max_queued < 1:
            raise ValueError("workers, max_batch and max_queued must be >= 1")
        self.advisor = advisor
        self.workers, self.max_batch, self.max_queued = workers, max_batch, max_queued
        self.deduplicated = 0  # requests that shared the answer of an identical one in flight
        self.overflow = 0  # requests refused because the queue was full
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

    def counters(self) -> dict[str, float]:
        return {key: float(getattr(self, key)) for key in BACKGROUND_COUNTERS}

    def submit(self, requests: Sequence[AdviceRequest]) -> list[Advice]:
        """One answer per request: the advice itself (cache hit) or a :class:`PendingAdvice`."""
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
                elif len(queue.items) >= self.max_queued:
                    self.overflow += 1
                    if self.overflow == 1:
                        logger.warning("Advice queue full (%d requests): new requests get no advice until it drains",
                                       self.max_queued)  # fmt: skip
                    out.append(Advice.invalid(source="background", raw="advice queue full"))
                    continue
                else:
                    future = Future()
                    future.set_running_or_notify_cancel()
                    queue.items.append((key, request, future))
                    if key is not None:
                        queue.in_flight[key] = future
                    queue.cond.notify()
            out.append(PendingAdvice(future))
        return out

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every submitted request is answered; False if ``timeout`` seconds passed first."""
        queue = self._queue
        with queue.cond:
            return queue.cond.wait_for(lambda: not queue.items and queue.running == 0, timeout)

    def close(self) -> None:
        """Stop the workers; requests still queued get invalid advice (``"advisor closed"``)."""
        self._queue.close()

    def __getstate__(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k in ("advisor", "workers", "max_batch", "max_queued")}
        return {**state, "deduplicated": 0, "overflow": 0, "submitted": 0}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_queue()

    def __repr__(self) -> str:
        return f"BackgroundAdvisor({self.advisor!r}, workers={self.workers}, pending={self.pending})"


def prefers_background(advisor: Advisor) -> bool:
    """Whether wrappers ask ``advisor`` in the background by default: yes for VLM backends (API or local model),
    whose answers take from milliseconds to seconds; no for scripted advisors, which answer in microseconds and keep
    runs exactly reproducible when asked inline (see the README's non-blocking advice measurements)."""
    from sb3_vlm.advisors.prompted import PromptedAdvisor

    return any(isinstance(a, PromptedAdvisor) for a in advisor_chain(advisor))
