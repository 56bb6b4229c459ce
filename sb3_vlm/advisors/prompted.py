"""What every prompted (VLM) advisor shares: prompting, the three ways to get a discrete distribution, parsing,
counted retries with backoff, bounded concurrency. Backends implement one call (:meth:`PromptedAdvisor._generate`)."""

from __future__ import annotations

import contextlib
import email.utils
import logging
import math
import random
import re
import threading
import time
from abc import abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np
from gymnasium import spaces

from sb3_vlm.advice import Advice, AdviceRequest
from sb3_vlm.advisors.base import Advisor, NotAsked
from sb3_vlm.advisors.deadline import DeadlineExceeded, request_deadline
from sb3_vlm.advisors.parsing import MAX_ANSWER_CHARS, Parsed, parse_continuous, parse_discrete
from sb3_vlm.advisors.pricing import CostBudget, Price, price_for
from sb3_vlm.advisors.prompts import PromptTemplate

logger = logging.getLogger(__name__)

Distribution = Literal["auto", "logprobs", "samples", "written"]
T = TypeVar("T")

# What ``distribution="auto"`` found out per advisor identity in this process (True: the backend returns
# log-probabilities), and one lock per identity held while the first request finds out. Two advisors with one
# identity give interchangeable answers, so a new advisor object (each env's copy, a rebuilt advisor) does not probe
# again, and the other threads of the first batch wait for the answer instead of each probing and each logging the
# fallback (issue 16).
_LOGPROBS_SUPPORT: dict[str, bool] = {}
_PROBE_LOCKS: dict[str, threading.Lock] = {}
_PROBE_LOCKS_GUARD = threading.Lock()


def forget_logprobs_support() -> None:
    """Forget what :data:`_LOGPROBS_SUPPORT` learnt (a server that changed its mind under the same identity; tests)."""
    with _PROBE_LOCKS_GUARD:
        _LOGPROBS_SUPPORT.clear()


@dataclass
class Generation:
    """One backend call's result: the answer texts (one per sample), the first token's top log-probabilities
    (None when the backend gave none) and the tokens used: in all, of the prompt and of the answers (a backend that
    reports only a total counts it as prompt tokens)."""

    texts: list[str]
    top_logprobs: list[tuple[str, float]] | None = None
    tokens: int = 0
    tokens_in: int = 0
    tokens_out: int = 0


def usage_tokens(total: Any, prompt: Any, answer: Any) -> tuple[int, int, int]:
    """``(total, prompt, answer)`` tokens from a response's usage fields (None or missing: 0); a total without a
    split counts as prompt tokens, a split without a total sums to one."""

    def count(value: Any) -> int:
        try:
            number = int(value or 0)
        except (TypeError, ValueError):
            return 0
        return max(number, 0)

    total_n, prompt_n, answer_n = count(total), count(prompt), count(answer)
    if not prompt_n and not answer_n:
        prompt_n = total_n
    return max(total_n, prompt_n + answer_n), prompt_n, answer_n


@dataclass
class Call:
    """What one backend call asks for: the rendered texts and the sampling settings."""

    system: str
    user: str
    max_tokens: int
    temperature: float
    n: int = 1  # answers to sample
    logprobs: bool = False  # return the first token's top log-probabilities
    schema: dict[str, Any] | None = None  # JSON schema of the answer (structured output)


@dataclass
class RetryDecision:
    """How a backend classifies an exception: its kind in ``http_errors`` (``"timeout"``, ``"connection"``,
    ``"HTTP <status>"``), whether to retry, the server's Retry-After (s)."""

    name: str
    retry: bool
    retry_after: float | None = None


def retry_after_seconds(exc: Exception) -> float | None:
    """
    The ``Retry-After`` header of the response ``exc`` carries, in seconds: a number, or an HTTP date (the wait until
    then); None when there is none or it is unreadable. Not clamped: :meth:`PromptedAdvisor._backoff` does that, so a
    negative, NaN or huge value never reaches ``time.sleep``.
    """
    headers: Any = getattr(getattr(exc, "response", None), "headers", None)
    value = headers.get("retry-after") if hasattr(headers, "get") else None
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return when.timestamp() - time.time()


def _redactor(key: str | None) -> re.Pattern[str] | None:
    """A pattern of what looks like ``key`` in a text: the key itself and, for a long key, any token that starts
    like it (a server may echo it cut short or with more after it). None for no key, or a placeholder too short to
    be a secret (local servers take any key, e.g. ``"none"``)."""
    if not key or len(key) < 8:
        return None
    alternatives = [re.escape(key)]
    if len(key) >= 16:  # the key's first 8 characters, then more key-like characters
        alternatives.append(re.escape(key[:8]) + r"[\w\-.~+/=]*")
    return re.compile("|".join(alternatives))


def probs_from_top_logprobs(top_logprobs: Sequence[tuple[str, float]], labels: Sequence[str]) -> np.ndarray | None:
    """
    A distribution over ``labels`` from the first generated token's top log-probabilities: each label takes the
    probability mass of the tokens that spell it (case and surrounding spaces ignored), renormalised over the labels.
    None when no label is among the returned tokens.
    """
    mass = np.zeros(len(labels), dtype=np.float64)
    keys = [label.strip().lower() for label in labels]
    for token, logprob in top_logprobs:
        t = token.strip().lower()
        if t in keys and np.isfinite(logprob):
            mass[keys.index(t)] += float(np.exp(logprob))
    if mass.sum() <= 0:
        return None
    return (mass / mass.sum()).astype(np.float32)


class PromptedAdvisor(Advisor):
    """
    Base of the VLM advisors. Per request: optional first stage (``prompt.describe_first``), then

    - ``Box`` actions: one written answer, parsed by :func:`~sb3_vlm.advisors.parsing.parse_continuous`;
    - ``Discrete`` actions, ``distribution=``: ``"logprobs"`` (one call, one token, the labels' probabilities),
      ``"samples"`` (``n_samples`` answers → frequencies), ``"written"`` (the model writes probabilities, LVLM2P),
      ``"auto"`` (log-probs, and written for the rest of the run once the backend turns out to give none; found out
      once per advisor identity and process, by the first request, while the other requests wait for it).

    Failures are counted (``http_errors`` per failed attempt, ``stats.errors`` per failed request, ``parse_failures``
    per unusable answer) and become invalid advice; nothing raises into training. Texts that reach a log, an
    answer's ``raw`` text or the cache are redacted of the API key (:meth:`redact`).

    :param prompt: the prompt template
    :param distribution: see above
    :param n_samples: answers per request for ``"samples"``
    :param temperature: sampling temperature (``"samples"`` uses at least 0.7)
    :param max_tokens: answer budget for written answers
    :param max_retries: retries of a retryable failure (rate limit, 5xx, timeout, connection)
    :param max_backoff: longest wait between retries (exponential 0.5 s · 2^k with jitter, or the server's
        Retry-After)
    :param concurrency: requests of one batch in flight at once
    :param structured: ask the backend for JSON output following :meth:`schema` (where it supports it)
    :param breaker_failures: after this many requests in a row failed (after their retries), stop calling the
        backend for ``breaker_cooldown`` seconds: requests then get invalid advice at once (counted in
        ``circuit_skips``) and training goes on unguided; the first request after the pause tries again (one more
        failure re-opens the circuit, a success closes it). 0 disables the breaker
    :param breaker_cooldown: seconds the circuit stays open
    :param max_queries: a budget of backend requests for the advisor's life; once spent, requests get invalid advice
        at once (counted in ``budget_skips``, logged once). None: no budget
    :param rate_limit: at most this many backend calls per second (retries included), across all threads; callers
        wait for their turn. None: no limit
    :param timeout: seconds each backend call may take in all, from connecting to the end of the answer (a slow
        answer is cut there, however steadily it trickles in, and counted and retried as a timeout); None: no
        deadline (the API advisors default to 30 s)
    :param max_answer_chars: longer answers are refused unread (invalid advice, counted in ``oversized`` and
        ``parse_failures``); None: no limit. :attr:`raw_chars` bounds what an answer keeps of its text
    :param price: the model's price, a :class:`~sb3_vlm.advisors.pricing.Price` or ``(input, output)`` US dollars
        per million tokens; None: the backend's model in :data:`~sb3_vlm.advisors.pricing.PRICES` (dated list
        prices), else unknown (tokens are counted, ``cost_usd`` stays 0)
    :param max_cost_usd: a hard budget in US dollars for the advisor's life: a request is sent only while what was
        spent plus what the requests in flight and this one may cost at most stays within it
        (:class:`~sb3_vlm.advisors.pricing.CostBudget`); afterwards requests get invalid advice at once (counted in
        ``budget_skips``, logged once). Needs a price. None: no budget

    Every counter is explained in :data:`~sb3_vlm.advisors.base.COUNTERS`.
    """

    #: VLMs read small sprites poorly: MiniGrid renders 32-pixel tiles for them (224×224 for a 7x7 grid, LVLM2P shows
    #: the full render) instead of the scripted teachers' 8
    preferred_view_size: int | None = 224

    #: characters of an answer's text kept in :attr:`Advice.raw <sb3_vlm.advice.Advice.raw>` (and so in the cache)
    raw_chars: int = 4_096

    def __init__(
        self,
        prompt: PromptTemplate,
        distribution: Distribution = "auto",
        n_samples: int = 8,
        temperature: float = 0.0,
        max_tokens: int = 256,
        max_retries: int = 3,
        max_backoff: float = 30.0,
        concurrency: int = 8,
        structured: bool = False,
        breaker_failures: int = 5,
        breaker_cooldown: float = 60.0,
        max_queries: int | None = None,
        rate_limit: float | None = None,
        timeout: float | None = None,
        max_answer_chars: int | None = MAX_ANSWER_CHARS,
        price: Price | tuple[float, float] | None = None,
        max_cost_usd: float | None = None,
    ):
        super().__init__()
        if distribution not in ("auto", "logprobs", "samples", "written"):
            raise ValueError(f"distribution must be auto, logprobs, samples or written, got {distribution!r}")
        if concurrency < 1 or n_samples < 1 or max_retries < 0:
            raise ValueError("concurrency and n_samples must be >= 1, max_retries >= 0")
        self.prompt, self.distribution, self.n_samples = prompt, distribution, n_samples
        self.temperature, self.max_tokens = temperature, max_tokens
        self.max_retries, self.max_backoff, self.concurrency = max_retries, max_backoff, concurrency
        self.structured = structured
        self._logprobs_supported: bool | None = None
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self.tokens = 0
        self.retries = 0
        self.parse_failures = 0
        self.http_errors: dict[str, int] = {}
        if breaker_failures < 0 or breaker_cooldown < 0:
            raise ValueError("breaker_failures and breaker_cooldown must be >= 0")
        self.breaker_failures, self.breaker_cooldown = breaker_failures, breaker_cooldown
        self.circuit_skips = 0
        self._failures_in_a_row = 0
        self._open_until = 0.0
        if (max_queries is not None and max_queries < 0) or (rate_limit is not None and rate_limit <= 0):
            raise ValueError("max_queries must be >= 0 and rate_limit > 0 (or None)")
        self.max_queries, self.rate_limit = max_queries, rate_limit
        self.budget_skips = 0
        self._sent = 0  # requests admitted against the budget
        self._next_call = 0.0  # monotonic time of the next call the rate limit allows
        if (timeout is not None and timeout <= 0) or (max_answer_chars is not None and max_answer_chars < 1):
            raise ValueError("timeout must be > 0 and max_answer_chars >= 1 (or None)")
        self.timeout, self.max_answer_chars = timeout, max_answer_chars
        self.oversized = 0
        self._redact_pattern: re.Pattern[str] | None = None
        self.tokens_in = 0
        self.tokens_out = 0
        self.cost_usd = 0.0
        self._price_override = None if price is None else price_for("", price)
        if max_cost_usd is not None and not (isinstance(max_cost_usd, int | float) and 0 <= max_cost_usd < math.inf):
            raise ValueError(f"max_cost_usd must be a finite number >= 0 (US dollars) or None, got {max_cost_usd!r}")
        self.max_cost_usd = max_cost_usd
        self._budget: CostBudget | None = None
        self._usage = threading.local()  # the tokens of the request this thread is answering

    # ------------------------------------------------------------------ backend interface

    @abstractmethod
    def _generate(self, request: AdviceRequest, call: Call) -> Generation:
        """One backend call (no retries: :meth:`_with_retries` wraps it); the request itself goes inside
        :meth:`_request_deadline`."""

    @abstractmethod
    def _classify(self, exc: Exception) -> RetryDecision | None:
        """How to treat ``exc``; None for exceptions that are not the backend's (they propagate)."""

    def settings_identity(self) -> str:
        """The prompt and every sampling setting that changes answers (each backend prefixes its model)."""
        return (
            f"{self.prompt.identity}:t={self.temperature}:dist={self.distribution}:n={self.n_samples}:"
            f"max={self.max_tokens}:json={self.structured}"
        )

    # ------------------------------------------------------------------ machinery

    def _set_secret(self, key: str | None) -> None:
        """Remember what the API key looks like, so that :meth:`redact` can take it out of texts (never the key's
        own attribute: only a compiled pattern, which no repr, identity or log shows)."""
        self._redact_pattern = _redactor(key)

    def redact(self, text: str) -> str:
        """``text`` with anything that looks like the configured API key replaced by ``[redacted]`` (a server that
        echoes the key in an error body must not put it into logs, exceptions' texts or advice)."""
        pattern = self.__dict__.get("_redact_pattern")
        return text if pattern is None else pattern.sub("[redacted]", text)

    def _raw(self, text: str) -> str:
        """What an answer keeps of its text: at most :attr:`raw_chars` characters, redacted."""
        # redacted with a margin before the cut, so that no key cut in two survives in part
        head = self.redact(text[: self.raw_chars + 256])
        if len(text) <= self.raw_chars:
            return head
        return f"{head[: self.raw_chars]}… [{len(text) - self.raw_chars:,} more characters]"

    def _request_deadline(self) -> contextlib.AbstractContextManager[None]:
        """Around one HTTP request (not the wait for a slot or a retry): ``timeout`` for all of it, and
        :class:`~sb3_vlm.advisors.deadline.DeadlineExceeded` (a timeout) when it ends later."""
        return request_deadline(self.timeout)

    def _count(self, key: str) -> None:
        with self._lock:
            self.http_errors[key] = self.http_errors.get(key, 0) + 1

    def _backoff(self, decision: RetryDecision, attempt: int) -> float:
        """Seconds to wait before retry ``attempt + 1``: the server's Retry-After, else exponential with jitter, in
        [0, max_backoff] either way (a negative or NaN Retry-After falls back to the exponential wait)."""
        wait = decision.retry_after
        if wait is None or math.isnan(wait) or wait < 0:
            wait = 0.5 * 2**attempt * (1 + random.random() * 0.25)
        return min(wait, self.max_backoff)

    def _with_retries(self, call: Callable[[], T]) -> T:
        for attempt in range(self.max_retries + 1):
            try:
                return call()
            except Exception as exc:
                decision = RetryDecision("timeout", True) if isinstance(exc, DeadlineExceeded) else self._classify(exc)
                if decision is None:
                    raise
                self._count(decision.name)
                if not decision.retry or attempt == self.max_retries:
                    raise
                with self._lock:
                    self.retries += 1
                time.sleep(self._backoff(decision, attempt))
        raise AssertionError("unreachable")

    def _throttle(self) -> None:
        """Wait for this call's slot under ``rate_limit`` (slots are handed out in order, one per 1/rate s)."""
        if self.rate_limit is None:
            return
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next_call)
            self._next_call = slot + 1.0 / self.rate_limit
        if slot > now:
            time.sleep(slot - now)

    def _call(self, request: AdviceRequest, system: str, user: str, **settings: Any) -> Generation:
        call = Call(system, user, **settings)

        def attempt() -> Generation:
            self._throttle()
            return self._generate(request, call)

        generation = self._with_retries(attempt)
        cost = 0.0 if self.price is None else self.price.cost(generation.tokens_in, generation.tokens_out)
        self.record_usage(generation.tokens_in, generation.tokens_out, cost, tokens=generation.tokens)
        usage = self._usage.__dict__
        if "tokens_in" in usage:  # a request under a dollar budget: settled when it ends
            usage["tokens_in"] += generation.tokens_in
            usage["tokens_out"] += generation.tokens_out
            usage["calls"] += 1
        return generation

    def _use_logprobs(self) -> bool:
        if self.distribution == "logprobs":
            return True
        if self.distribution != "auto":
            return False
        if self._logprobs_supported is None:
            self._logprobs_supported = _LOGPROBS_SUPPORT.get(self.identity)
        return self._logprobs_supported is not False

    def _probe_lock(self) -> contextlib.AbstractContextManager[Any]:
        """While ``"auto"`` does not know yet whether the backend gives log-probabilities: the identity's lock, so
        that one request finds out and the others wait for it; afterwards nothing to wait for."""
        if self.distribution != "auto" or self._logprobs_supported is not None:
            return contextlib.nullcontext()
        with _PROBE_LOCKS_GUARD:
            return _PROBE_LOCKS.setdefault(self.identity, threading.Lock())

    def _learn_logprobs_support(self, supported: bool) -> None:
        """Record what a log-probability call showed, for this advisor and its identity; log the fallback once."""
        self._logprobs_supported = supported
        with _PROBE_LOCKS_GUARD:
            first = self.identity not in _LOGPROBS_SUPPORT
            _LOGPROBS_SUPPORT[self.identity] = supported
        if first and not supported:
            logger.warning("%s returns no log-probabilities; using written probabilities instead", self.identity)

    def _failed(self, why: str, text: str) -> Advice:
        raw = self._raw(text)
        with self._lock:
            self.parse_failures += 1
        logger.debug("%s: %s (answer: %r)", self.identity, why, raw[:200])
        return Advice.invalid(source=self.identity, raw=raw, refused=True)

    def _oversized(self, text: str) -> bool:
        """Whether the parsers refuse ``text`` unread for its length (counted in ``oversized``)."""
        if self.max_answer_chars is None or len(text) <= self.max_answer_chars:
            return False
        with self._lock:
            self.oversized += 1
        return True

    def _from_parsed(self, parsed: Parsed, text: str) -> Advice:
        if not parsed.ok:
            self._oversized(text)
            return self._failed(parsed.error, text)
        return Advice(action=parsed.action, probs=parsed.probs, source=self.identity, raw=self._raw(text))

    def parse(self, text: str, space: spaces.Space | None) -> Advice:
        """Parse one written answer for ``space`` (what ``sb3-vlm advise`` shows)."""
        limit = self.max_answer_chars
        if isinstance(space, spaces.Discrete):
            return self._from_parsed(parse_discrete(text, self.prompt.labels, max_chars=limit), text)
        if isinstance(space, spaces.Box):
            names = self.prompt.action_names or None
            return self._from_parsed(parse_continuous(text, space, names, max_chars=limit), text)
        raise ValueError("A prompted advisor needs a Discrete or Box AdviceRequest.action_space")

    def _from_samples(self, texts: list[str]) -> Advice:
        counts = np.zeros(len(self.prompt.labels), dtype=np.float64)
        for text in texts:
            parsed = parse_discrete(text, self.prompt.labels, max_chars=self.max_answer_chars)
            if parsed.probs is not None:
                counts += parsed.probs
            elif parsed.action is not None:
                counts[int(parsed.action[0])] += 1
            else:
                self._oversized(text)
        raw = "\n---\n".join(text[: self.raw_chars] for text in texts)
        if counts.sum() == 0:
            return self._failed("no sample named an action", raw)
        return Advice(probs=(counts / counts.sum()).astype(np.float32), source=self.identity, raw=self._raw(raw))

    def schema(self, space: spaces.Space | None) -> dict[str, Any]:
        """JSON schema of the answer (structured output)."""
        if isinstance(space, spaces.Discrete):
            props = {label: {"type": "number"} for label in self.prompt.labels}
            return {
                "type": "object",
                "properties": {"probabilities": {"type": "object", "properties": props}},
                "required": ["probabilities"],
            }
        names = list(self.prompt.action_names) or ["action"]
        return {"type": "object", "properties": {n: {"type": "number"} for n in names}, "required": names}

    # ------------------------------------------------------------------ one request, a batch

    def answer(self, request: AdviceRequest) -> Advice:
        """Everything for one request (may raise after retries; :meth:`_advise` turns that into invalid advice)."""
        space = request.action_space
        description = ""
        if self.prompt.describe_first:
            system, _ = self.prompt.render(request)
            first = self._call(
                request,
                system,
                self.prompt.render_describe(request),
                max_tokens=self.max_tokens,
                temperature=self.temperature,
            )
            description = first.texts[0] if first.texts else ""
        system, user = self.prompt.render(request, description)
        if isinstance(space, spaces.Discrete) and self._use_logprobs():
            with self._probe_lock():
                advice = self._logprob_answer(request, system, user) if self._use_logprobs() else None
            if advice is not None:
                return advice
        schema = self.schema(space) if self.structured else None
        if isinstance(space, spaces.Discrete) and self.distribution == "samples":
            gen = self._call(
                request,
                system,
                user,
                max_tokens=self.max_tokens,
                temperature=max(self.temperature, 0.7),
                n=self.n_samples,
                schema=schema,
            )
            return self._from_samples(gen.texts)
        gen = self._call(request, system, user, max_tokens=self.max_tokens, temperature=self.temperature, schema=schema)
        return self.advice_from_generation(gen, space)

    def advice_from_generation(self, gen: Generation, space: spaces.Space | None, logprobs: bool = False) -> Advice:
        """
        The advice of one answer that came back from this advisor's prompt, however it was sent (a call of its own,
        or a line of a Batch API's output file): its parser, refusal rules and counters.

        :param gen: the answer texts (several: ``distribution="samples"``) and, for ``logprobs``, the first
            token's top log-probabilities
        :param space: the action space
        :param logprobs: the answer was a one-token call asking for log-probabilities
        """
        raw = gen.texts[0] if gen.texts else ""
        if logprobs:
            probs = probs_from_top_logprobs(gen.top_logprobs, self.prompt.labels) if gen.top_logprobs else None
            if probs is None:
                return self._failed("no action label among the top log-probabilities", raw)
            return Advice(probs=probs, source=self.identity, raw=self._raw(raw))
        if isinstance(space, spaces.Discrete) and self.distribution == "samples":
            return self._from_samples(gen.texts)
        return self.parse(raw, space)

    def record_usage(self, tokens_in: int, tokens_out: int, cost_usd: float, tokens: int | None = None) -> None:
        """Add tokens and dollars spent on this advisor's prompt (by its own calls, or a batch run for it);
        ``tokens``: the total the backend reported (default: prompt plus answer tokens)."""
        with self._lock:
            self.tokens += tokens_in + tokens_out if tokens is None else tokens
            self.tokens_in += tokens_in
            self.tokens_out += tokens_out
            self.cost_usd += cost_usd

    def _logprob_answer(self, request: AdviceRequest, system: str, user: str) -> Advice | None:
        """The labels' probabilities from one one-token call; None when the backend gave no log-probabilities and
        ``"auto"`` falls back to written ones."""
        gen = self._call(request, system, user, max_tokens=1, temperature=0.0, logprobs=True)
        raw = gen.texts[0] if gen.texts else ""
        if gen.top_logprobs is not None:
            if self.distribution == "auto":
                self._learn_logprobs_support(True)
            return self.advice_from_generation(gen, request.action_space, logprobs=True)
        if self.distribution == "logprobs":
            return self._failed("the backend returned no log-probabilities", raw)
        self._learn_logprobs_support(False)
        return None

    @property
    def price(self) -> Price | None:
        """The model's price: ``price=``, else the table's entry for the backend's model name (None: unknown)."""
        if self._price_override is not None:
            return self._price_override
        name = getattr(self, "model", "")
        return price_for(name) if isinstance(name, str) else None

    def _check_pricing(self) -> None:
        """Backends call this in ``__init__`` once ``model`` is set: a dollar budget needs a price (a clear error
        at construction rather than an unbounded bill later; a backend that does not call it sends nothing under a
        budget it cannot price)."""
        if self.max_cost_usd is None:
            return
        price = self.price
        if price is None:
            raise ValueError(
                f"max_cost_usd needs the price of {getattr(self, 'model', None)!r}, which "
                "sb3_vlm.advisors.pricing.PRICES does not list: pass price=(input, output) in US dollars per million "
                "tokens"
            )
        self._budget = CostBudget(self.max_cost_usd, price)

    def _request_bound(self, request: AdviceRequest) -> tuple[int, int]:
        """``(calls, answer tokens)`` one request may take at most: a describe-first stage adds a call, and for
        discrete actions ``"auto"`` may need a written answer after a log-probability call."""
        calls = 2 if self.prompt.describe_first else 1
        discrete = isinstance(request.action_space, spaces.Discrete)
        if discrete and self.distribution == "auto" and self._logprobs_supported is not True:
            calls += 1
        answers = self.n_samples if self.distribution == "samples" else 1
        return calls, calls * answers * self.max_tokens

    @property
    def circuit_open(self) -> bool:
        """Whether the breaker is holding requests back now (see ``breaker_failures``)."""
        return time.monotonic() < self._open_until

    def _admit(self) -> bool:
        """Take one request from the query budget (False once it is spent)."""
        with self._lock:
            if self.max_queries is not None and self._sent >= self.max_queries:
                self.budget_skips += 1
                if self.budget_skips == 1:
                    logger.warning("%s: query budget of %d spent; training continues unguided", self.identity,
                                   self.max_queries)  # fmt: skip
                return False
            self._sent += 1
            return True

    def _skip_for_cost(self) -> None:
        with self._lock:
            self.budget_skips += 1
            first = self.budget_skips == 1
        if first:
            logger.warning("%s: the budget of $%.4f is spent (or the next request could exceed it); training "
                           "continues unguided", self.identity, self.max_cost_usd)  # fmt: skip

    def _answer_within_budget(self, request: AdviceRequest) -> Advice:
        """:meth:`_answer_one` under the dollar budget: reserve the request's most cost, answer, charge its usage."""
        if self._budget is None and self.max_cost_usd is not None:  # a backend that did not call _check_pricing
            with self._lock:
                if self._budget is None and self.price is not None:
                    self._check_pricing()
            if self._budget is None:  # nothing can be priced: nothing is sent
                self._skip_for_cost()
                return NotAsked.invalid(source=self.identity, raw="cost budget without a price: not sent")
        budget = self._budget
        if budget is None:
            return self._answer_one(request)
        if self.circuit_open:  # the breaker's skip, not the budget's
            return self._answer_one(request)
        reserved = budget.reserve(*self._request_bound(request))
        if reserved is None:
            self._skip_for_cost()
            return NotAsked.invalid(source=self.identity, raw="cost budget spent")
        usage = self._usage.__dict__
        usage.update(tokens_in=0, tokens_out=0, calls=0)
        try:
            return self._answer_one(request)
        finally:
            budget.settle(reserved, usage.pop("tokens_in"), usage.pop("tokens_out"), max(usage.pop("calls"), 1))
            if budget.exceeded:
                logger.error("%s: spent $%.4f of a $%.4f budget: one request costs more than the whole budget",
                             self.identity, budget.spent, budget.max_usd)  # fmt: skip

    def _answer_one(self, request: AdviceRequest) -> Advice:
        if self.circuit_open:
            with self._lock:
                self.circuit_skips += 1
            return NotAsked.invalid(source=self.identity, raw="circuit open: the backend keeps failing")
        if not self._admit():
            return NotAsked.invalid(source=self.identity, raw="query budget spent")
        try:
            advice = self.answer(request)
        except Exception as exc:  # one failed request must not fail its whole batch
            raw = self._raw(repr(exc))  # an error body may echo the key, and be megabytes long
            logger.warning("%s: request failed after retries: %s", self.identity, raw)
            with self._lock:
                self.stats.errors += 1
                self._failures_in_a_row += 1
                if self.breaker_failures and self._failures_in_a_row >= self.breaker_failures and not self.circuit_open:
                    self._open_until = time.monotonic() + self.breaker_cooldown
                    logger.warning(
                        "%s: %d requests in a row failed; no requests for %.0f s (training continues unguided)",
                        self.identity,
                        self._failures_in_a_row,
                        self.breaker_cooldown,
                    )
            return Advice.invalid(source=self.identity, raw=raw)
        with self._lock:
            self._failures_in_a_row = 0  # the backend answered (even if the answer did not parse)
        return advice

    def _advise(self, requests: Sequence[AdviceRequest]) -> list[Advice]:
        if len(requests) == 1 or self.concurrency == 1:
            return [self._answer_within_budget(r) for r in requests]
        if self._pool is None:  # kept across batches: thread start-up is not free at 32 requests a step
            self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="sb3-vlm-advisor")
        answers = self._pool.map(self._answer_within_budget, requests)
        return list(self._progress(answers, len(requests), len(requests)))

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_pool"], state["_lock"], state["_usage"] = None, None, None  # recreated where it is unpickled
        if state.get("_budget") is not None:  # a copy of the budget in another process would spend it twice
            raise TypeError(
                "a PromptedAdvisor with max_cost_usd cannot be copied into another process (each copy would spend "
                "the whole budget): wrap the VecEnv with VecVLMAdviceWrapper, or use max_queries"
            )
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        # an advisor pickled before cost accounting existed counts from zero, with no dollar budget
        for name, value in (("tokens_in", 0), ("tokens_out", 0), ("cost_usd", 0.0), ("_price_override", None),
                            ("max_cost_usd", None), ("_budget", None)):  # fmt: skip
            self.__dict__.setdefault(name, value)
        self._lock = threading.Lock()
        self._usage = threading.local()
