"""
An advisor on any OpenAI-compatible chat-completions endpoint: OpenAI, vLLM, Ollama, llama.cpp's server and
Gemini's OpenAI-compatible endpoint.

Differences between servers that matter here (handled, or documented in the README):

- **log-probabilities**: OpenAI and vLLM return ``top_logprobs``; llama.cpp's server returns them in the same shape
  in recent versions; Ollama and Gemini's compatibility endpoint usually return none. ``distribution="auto"`` asks
  once, and when the answer carries no log-probabilities it falls back to probabilities written by the model
  for the rest of the run (logged once).
- **n > 1** (sampling several answers in one call) is honoured by OpenAI and vLLM; others return one choice, and
  the sample frequencies then come from what was returned.
- **structured output** (``response_format`` JSON schema): OpenAI, vLLM (guided decoding), llama.cpp (grammar);
  Ollama and Gemini accept ``{"type": "json_object"}`` at most. Off by default; the parsers read JSON anyway.
- **API keys**: local servers accept any key; the key is read from ``api_key`` or the ``api_key_env`` variable and
  never appears in ``repr``, logs or the cache key.
"""

from __future__ import annotations

import base64
import io
import logging
import math
import os
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import numpy as np
from gymnasium import spaces

from sb3_vlm.advice import Advice, AdviceRequest
from sb3_vlm.advisors.base import Advisor
from sb3_vlm.advisors.parsing import Parsed, parse_continuous, parse_discrete
from sb3_vlm.advisors.prompts import PromptTemplate

logger = logging.getLogger(__name__)

#: Gemini's OpenAI-compatible endpoint
GEMINI_OPENAI_URL = "https://generativelanguage.googleapis.com/v1beta/openai/"

Distribution = Literal["auto", "logprobs", "samples", "written"]


def encode_image(image: np.ndarray, fmt: str = "png") -> str:
    """An (H, W, 3) uint8 image as a base64 ``data:`` URL."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buffer, format=fmt.upper())
    return f"data:image/{fmt};base64,{base64.b64encode(buffer.getvalue()).decode()}"


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
        if t in keys and math.isfinite(logprob):
            mass[keys.index(t)] += math.exp(logprob)
    if mass.sum() <= 0:
        return None
    return (mass / mass.sum()).astype(np.float32)


class OpenAIAdvisor(Advisor):
    """
    Ask a VLM behind an OpenAI-compatible ``/chat/completions`` endpoint.

    :param model: model name as the server knows it (``"gpt-4o-mini"``, ``"Qwen/Qwen2.5-VL-3B-Instruct"`` ...)
    :param prompt: the :class:`~sb3_vlm.advisors.prompts.PromptTemplate`
    :param base_url: the server (None: OpenAI's); e.g. ``"http://gpu-box:8000/v1"`` for vLLM, ``GEMINI_OPENAI_URL``
    :param api_key: the key; None reads ``api_key_env`` (local servers need none)
    :param api_key_env: environment variable holding the key
    :param detail: image detail (``"low"``, ``"high"``, ``"auto"``)
    :param distribution: discrete actions: ``"logprobs"`` (one call, ``max_tokens=1``, probabilities of single-token
        labels), ``"samples"`` (``n_samples`` answers → frequencies), ``"written"`` (the model writes
        probabilities, LVLM2P), ``"auto"`` (log-probs, falling back to written when the server returns none)
    :param n_samples: answers per request for ``"samples"``
    :param temperature: sampling temperature (``"samples"`` uses at least 0.7)
    :param max_tokens: answer budget for written answers
    :param structured: ask for JSON-schema output (where the server supports it)
    :param timeout: seconds per HTTP request
    :param max_retries: retries after a 429, a 5xx, a timeout or a connection error (backoff 0.5 s · 2^k with
        jitter, or the server's ``Retry-After`` when it sends one, capped at ``max_backoff``)
    :param max_backoff: longest wait between retries
    :param concurrency: requests of one batch in flight at once
    :param image_format: ``"png"`` (lossless) or ``"jpeg"``
    """

    def __init__(
        self,
        model: str,
        prompt: PromptTemplate,
        base_url: str | None = None,
        api_key: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        detail: Literal["low", "high", "auto"] = "auto",
        distribution: Distribution = "auto",
        n_samples: int = 8,
        temperature: float = 0.0,
        max_tokens: int = 256,
        structured: bool = False,
        timeout: float = 30.0,
        max_retries: int = 3,
        max_backoff: float = 30.0,
        concurrency: int = 8,
        image_format: str = "png",
    ):
        super().__init__()
        try:
            import openai
        except ImportError as exc:
            raise ImportError("OpenAIAdvisor needs the 'api' extra: pip install 'sb3-vlm[api]'") from exc
        if distribution not in ("auto", "logprobs", "samples", "written"):
            raise ValueError(f"distribution must be auto, logprobs, samples or written, got {distribution!r}")
        if concurrency < 1 or n_samples < 1 or max_retries < 0:
            raise ValueError("concurrency and n_samples must be >= 1, max_retries >= 0")
        self.model, self.prompt, self.base_url = model, prompt, base_url
        self.detail, self.distribution, self.n_samples = detail, distribution, n_samples
        self.temperature, self.max_tokens, self.structured = temperature, max_tokens, structured
        self.timeout, self.max_retries, self.max_backoff = timeout, max_retries, max_backoff
        self.concurrency, self.image_format = concurrency, image_format
        self._api_key_env = api_key_env
        key = api_key if api_key is not None else os.environ.get(api_key_env)
        if key is None and base_url is None:
            raise ValueError(f"No API key: pass api_key=... or set {api_key_env}")
        # our own retry loop (max_retries=0 here) so every retry and failure is counted
        self._client = openai.OpenAI(api_key=key or "none", base_url=base_url, timeout=timeout, max_retries=0)
        self._openai = openai
        self._logprobs_supported: bool | None = None
        self._lock = threading.Lock()
        self.tokens = 0
        self.retries = 0
        self.parse_failures = 0
        self.http_errors: dict[str, int] = {}

    @property
    def identity(self) -> str:
        # everything that changes answers; never the key
        return (
            f"openai:{self.base_url or 'api.openai.com'}:{self.model}:{self.prompt.identity}:t={self.temperature}:"
            f"dist={self.distribution}:n={self.n_samples}:max={self.max_tokens}:detail={self.detail}:"
            f"json={self.structured}"
        )

    def __repr__(self) -> str:
        return f"OpenAIAdvisor(model={self.model!r}, base_url={self.base_url!r}, prompt={self.prompt.name!r})"

    # ------------------------------------------------------------------ HTTP

    def _count(self, key: str) -> None:
        with self._lock:
            self.http_errors[key] = self.http_errors.get(key, 0) + 1

    def _retry_after(self, exc: Exception) -> float | None:
        response = getattr(exc, "response", None)
        if response is None:
            return None
        value = response.headers.get("retry-after")
        try:
            return float(value) if value is not None else None
        except ValueError:
            return None

    def _create(self, **kwargs: Any) -> Any:
        """``chat.completions.create`` with counted retries; raises the last error when they run out."""
        openai = self._openai
        for attempt in range(self.max_retries + 1):
            try:
                response = self._client.chat.completions.create(model=self.model, **kwargs)
                usage = getattr(response, "usage", None)
                with self._lock:
                    self.tokens += int(getattr(usage, "total_tokens", 0) or 0)
                return response
            except (
                openai.RateLimitError,
                openai.InternalServerError,
                openai.APITimeoutError,
                openai.APIConnectionError,
            ) as exc:
                name = type(exc).__name__
                self._count(name)
                if attempt == self.max_retries:
                    raise
                wait = self._retry_after(exc)
                if wait is None:
                    wait = 0.5 * 2**attempt * (1 + random.random() * 0.25)
                with self._lock:
                    self.retries += 1
                time.sleep(min(wait, self.max_backoff))
            except openai.APIStatusError as exc:  # 4xx other than 429: a bad request will not improve
                self._count(f"HTTP {exc.status_code}")
                raise
        raise AssertionError("unreachable")

    def _messages(self, request: AdviceRequest, user: str, system: str) -> list[dict[str, Any]]:
        content: list[dict[str, Any]] = [{"type": "text", "text": user}]
        if request.image is not None:
            url = encode_image(request.image, self.image_format)
            content.append({"type": "image_url", "image_url": {"url": url, "detail": self.detail}})
        messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": content})
        return messages

    # ------------------------------------------------------------------ one request

    def _answer(self, request: AdviceRequest) -> Advice:
        space = request.action_space
        description = ""
        if self.prompt.describe_first:
            first = self._create(
                messages=self._messages(request, self.prompt.render_describe(request), self.prompt.render(request)[0]),
                max_tokens=self.max_tokens,
                temperature=self.temperature,
            )
            description = first.choices[0].message.content or ""
        system, user = self.prompt.render(request, description)
        messages = self._messages(request, user, system)
        if isinstance(space, spaces.Discrete) and self._use_logprobs():
            response = self._create(messages=messages, max_tokens=1, temperature=0.0, logprobs=True, top_logprobs=20)
            choice = response.choices[0]
            top = self._top_logprobs(choice)
            if top is not None:
                self._logprobs_supported = True
                probs = probs_from_top_logprobs(top, self.prompt.labels)
                if probs is not None:
                    return Advice(probs=probs, source=self.identity, raw=choice.message.content or "")
                return self._failed("no action label among the top log-probabilities", choice.message.content or "")
            if self.distribution == "logprobs":
                return self._failed("the server returned no log-probabilities", choice.message.content or "")
            if self._logprobs_supported is None:
                logger.warning("%s returns no log-probabilities; using written probabilities instead", self.base_url)
            self._logprobs_supported = False
        extra: dict[str, Any] = {}
        if self.structured:
            extra["response_format"] = self._schema(space)
        if isinstance(space, spaces.Discrete) and self.distribution == "samples":
            response = self._create(
                messages=messages,
                max_tokens=self.max_tokens,
                temperature=max(self.temperature, 0.7),
                n=self.n_samples,
                **extra,
            )
            texts = [c.message.content or "" for c in response.choices]
            return self._from_samples(texts, len(self.prompt.labels))
        response = self._create(messages=messages, max_tokens=self.max_tokens, temperature=self.temperature, **extra)
        text = response.choices[0].message.content or ""
        return self._from_text(text, space)

    def _use_logprobs(self) -> bool:
        if self.distribution == "logprobs":
            return True
        return self.distribution == "auto" and self._logprobs_supported is not False

    @staticmethod
    def _top_logprobs(choice: Any) -> list[tuple[str, float]] | None:
        logprobs = getattr(choice, "logprobs", None)
        content = getattr(logprobs, "content", None) if logprobs is not None else None
        if not content:
            return None
        first = content[0]
        tops = getattr(first, "top_logprobs", None) or []
        pairs = [(t.token, float(t.logprob)) for t in tops]
        return pairs or [(first.token, float(first.logprob))]

    def _failed(self, why: str, raw: str) -> Advice:
        with self._lock:
            self.parse_failures += 1
        logger.debug("%s: %s (answer: %r)", self.model, why, raw[:200])
        return Advice.invalid(source=self.identity, raw=raw)

    def _from_parsed(self, parsed: Parsed, raw: str) -> Advice:
        if not parsed.ok:
            return self._failed(parsed.error, raw)
        return Advice(action=parsed.action, probs=parsed.probs, source=self.identity, raw=raw)

    def _from_text(self, text: str, space: spaces.Space | None) -> Advice:
        if isinstance(space, spaces.Discrete):
            return self._from_parsed(parse_discrete(text, self.prompt.labels), text)
        if isinstance(space, spaces.Box):
            return self._from_parsed(parse_continuous(text, space, self.prompt.action_names or None), text)
        raise ValueError("OpenAIAdvisor needs a Discrete or Box AdviceRequest.action_space")

    def _from_samples(self, texts: list[str], n: int) -> Advice:
        counts = np.zeros(n, dtype=np.float64)
        for text in texts:
            parsed = parse_discrete(text, self.prompt.labels)
            if parsed.probs is not None:
                counts += parsed.probs
            elif parsed.action is not None:
                counts[int(parsed.action[0])] += 1
        if counts.sum() == 0:
            return self._failed("no sample named an action", "\n---\n".join(texts))
        return Advice(probs=(counts / counts.sum()).astype(np.float32), source=self.identity, raw="\n---\n".join(texts))

    def _schema(self, space: spaces.Space | None) -> dict[str, Any]:
        if isinstance(space, spaces.Discrete):
            labels = list(self.prompt.labels)
            schema: dict[str, Any] = {
                "type": "object",
                "properties": {
                    "probabilities": {"type": "object", "properties": {lb: {"type": "number"} for lb in labels}}
                },
                "required": ["probabilities"],
            }
        else:
            names = list(self.prompt.action_names) or ["action"]
            schema = {"type": "object", "properties": {n: {"type": "number"} for n in names}, "required": names}
        return {"type": "json_schema", "json_schema": {"name": "advice", "schema": schema}}

    # ------------------------------------------------------------------ batch

    def _advise(self, requests: Sequence[AdviceRequest]) -> list[Advice]:
        def one(request: AdviceRequest) -> Advice:
            try:
                return self._answer(request)
            except Exception as exc:  # one failed request must not fail its whole batch
                self._count("failed")
                logger.warning("%s: request failed after retries: %r", self.model, exc)
                with self._lock:
                    self.stats.errors += 1
                return Advice.invalid(source=self.identity, raw=repr(exc))

        if len(requests) == 1 or self.concurrency == 1:
            return [one(r) for r in requests]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests))) as pool:
            return list(pool.map(one, requests))
