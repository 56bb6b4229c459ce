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
  never appears in ``repr``, logs or the cache key; an error body that echoes it is redacted before it is logged.
- **The URL**: ``base_url=None`` is what the ``openai`` client makes of it (``OPENAI_BASE_URL``, else OpenAI's), and
  the cache identity names that URL.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from sb3_vlm.advice import AdviceRequest, image_as_uint8
from sb3_vlm.advisors.deadline import deadline_transport, http_module
from sb3_vlm.advisors.prompted import (
    Call,
    Distribution,
    Generation,
    PromptedAdvisor,
    RetryDecision,
    retry_after_seconds,
    usage_tokens,
)
from sb3_vlm.advisors.prompts import PromptTemplate

logger = logging.getLogger(__name__)

#: Gemini's OpenAI-compatible endpoint
GEMINI_OPENAI_URL = "https://generativelanguage.googleapis.com/v1beta/openai/"
#: the URL the ``openai`` client calls when neither ``base_url`` nor ``OPENAI_BASE_URL`` names one
OPENAI_URL = "https://api.openai.com/v1"


def encode_image(image: np.ndarray, fmt: str = "png") -> bytes:
    """An (H, W, 3) image as PNG (or JPEG) bytes: uint8, or float in [0, 1] (scaled by 255, see
    :func:`~sb3_vlm.advice.image_as_uint8`; other ranges raise ``ValueError``)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image_as_uint8(image))).save(buffer, format=fmt.upper())
    return buffer.getvalue()


def image_data_url(image: np.ndarray, fmt: str = "png") -> str:
    """An (H, W, 3) image (as :func:`encode_image` takes it) as a base64 ``data:`` URL."""
    return f"data:image/{fmt};base64,{base64.b64encode(encode_image(image, fmt)).decode()}"


@dataclass
class _Endpoint:
    """One replica: its client, requests in flight, failures in a row and until when it is skipped."""

    url: str | None
    client: Any
    in_flight: int = 0
    failures: int = 0
    open_until: float = 0.0
    served: int = 0


class NoEndpointAvailable(RuntimeError):
    """Every replica is cooling down after repeated failures."""


class OpenAIAdvisor(PromptedAdvisor):
    """
    Ask a VLM behind an OpenAI-compatible ``/chat/completions`` endpoint (see the module docstring for the
    differences between servers). Prompting, distributions, parsing, retries and concurrency are
    :class:`~sb3_vlm.advisors.prompted.PromptedAdvisor`'s.

    :param model: model name as the server knows it (``"gpt-4o-mini"``, ``"Qwen/Qwen2.5-VL-3B-Instruct"`` ...)
    :param prompt: the :class:`~sb3_vlm.advisors.prompts.PromptTemplate`
    :param base_url: the server (None: OpenAI's); e.g. ``"http://gpu-box:8000/v1"`` for vLLM, ``GEMINI_OPENAI_URL``;
        a list of URLs of replicas serving the same model: each call goes to the replica with the fewest requests in
        flight, a replica whose calls failed ``breaker_failures`` times in a row is skipped for ``breaker_cooldown``
        seconds (a retry then goes to another one)
    :param endpoint_concurrency: requests in flight per replica at most (None: no limit beyond ``concurrency``)
    :param api_key: the key; None reads ``api_key_env`` (local servers need none)
    :param api_key_env: environment variable holding the key
    :param detail: image detail (``"low"``, ``"high"``, ``"auto"``)
    :param structured: ask for JSON-schema output (where the server supports it)
    :param timeout: seconds each HTTP request may take in all (connect, send, the whole answer); a request past it is
        cut and counted and retried as a timeout
    :param image_format: ``"png"`` (lossless) or ``"jpeg"``
    :param kwargs: ``distribution``, ``n_samples``, ``temperature``, ``max_tokens``, ``max_retries``,
        ``max_backoff``, ``concurrency``, ``max_answer_chars``, the breaker and the budget
        (:class:`~sb3_vlm.advisors.prompted.PromptedAdvisor`)
    """

    def __init__(
        self,
        model: str,
        prompt: PromptTemplate,
        base_url: str | Sequence[str] | None = None,
        api_key: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        detail: Literal["low", "high", "auto"] = "auto",
        distribution: Distribution = "auto",
        structured: bool = False,
        timeout: float = 30.0,
        image_format: str = "png",
        endpoint_concurrency: int | None = None,
        **kwargs: Any,
    ):
        super().__init__(prompt, distribution=distribution, structured=structured, timeout=timeout, **kwargs)
        try:
            import openai
        except ImportError as exc:
            raise ImportError("OpenAIAdvisor needs the 'api' extra: pip install 'sb3-vlm[api]'") from exc
        urls = [base_url] if base_url is None or isinstance(base_url, str) else list(base_url)
        if not urls:
            raise ValueError("base_url must be a URL, a non-empty list of URLs, or None")
        if endpoint_concurrency is not None and endpoint_concurrency < 1:
            raise ValueError(f"endpoint_concurrency must be >= 1, got {endpoint_concurrency}")
        self.model, self.detail = model, detail
        self._check_pricing()
        self.base_url = urls[0] if len(urls) == 1 else ",".join(str(u) for u in urls)
        self.image_format = image_format
        key = api_key if api_key is not None else os.environ.get(api_key_env)
        if key is None and base_url is None:
            raise ValueError(f"No API key: pass api_key=... or set {api_key_env}")
        self._set_secret(key)
        httpx = http_module(openai.DefaultHttpxClient)

        def client(url: str | None) -> Any:
            # retries are PromptedAdvisor's (max_retries=0 here) so every retry and failure is counted; the transport
            # bounds each whole request by `timeout` (the client's own timeout bounds each socket operation only)
            transport = deadline_transport(httpx, url or os.environ.get("OPENAI_BASE_URL") or OPENAI_URL)
            return openai.OpenAI(
                api_key=key or "none", base_url=url, timeout=timeout, max_retries=0,
                http_client=openai.DefaultHttpxClient(transport=transport),
            )  # fmt: skip

        self.endpoints = [_Endpoint(url, client(url)) for url in urls]
        url = str(self.client.base_url).rstrip("/")
        # what the cache identity names: base_url as given, else what the client made of it (OPENAI_BASE_URL)
        self._called_url = self.base_url or ("api.openai.com" if url == OPENAI_URL else url)
        self.endpoint_concurrency = endpoint_concurrency
        self._dispatch = threading.Condition()
        self._turn = 0
        self._openai = openai

    @property
    def client(self) -> Any:
        """The ``openai`` client of the first endpoint (file uploads and fine-tuning jobs go there)."""
        return self.endpoints[0].client

    @property
    def called_url(self) -> str:
        """The server this advisor calls: ``base_url`` as given, else the ``openai`` client's (``OPENAI_BASE_URL``, or
        ``"api.openai.com"`` for OpenAI's own, as cache identities always named it)."""
        return self._called_url

    @property
    def identity(self) -> str:
        # everything that changes answers; never the key
        return f"openai:{self.called_url}:{self.model}:{self.settings_identity()}:detail={self.detail}"

    def __repr__(self) -> str:
        return f"OpenAIAdvisor(model={self.model!r}, base_url={self.base_url!r}, prompt={self.prompt.name!r})"

    def _classify(self, exc: Exception) -> RetryDecision | None:
        openai = self._openai
        if isinstance(exc, openai.APITimeoutError):  # the request's deadline (or a socket operation's) passed
            return RetryDecision("timeout", True)
        if isinstance(exc, openai.APIConnectionError):
            return RetryDecision("connection", True)
        if isinstance(exc, openai.APIStatusError):  # 429 and 5xx are retried; other 4xx: a bad request will not improve
            retry = isinstance(exc, (openai.RateLimitError, openai.InternalServerError))
            return RetryDecision(f"HTTP {exc.status_code}", retry, retry_after_seconds(exc))
        return None

    def messages(self, request: AdviceRequest, system: str, user: str, image_format: str | None = None) -> list[Any]:
        """The chat messages for ``request``: system (if any), then the user text with the image as a data URL."""
        content: list[dict[str, Any]] = [{"type": "text", "text": user}]
        if request.image is not None:
            url = image_data_url(request.image, image_format or self.image_format)
            content.append({"type": "image_url", "image_url": {"url": url, "detail": self.detail}})
        messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": content})
        return messages

    def _acquire(self) -> _Endpoint:
        """The least-loaded replica that is not cooling down and has room (waits for room)."""
        with self._dispatch:
            while True:
                now = time.monotonic()
                healthy = [e for e in self.endpoints if now >= e.open_until]
                if not healthy:
                    raise NoEndpointAvailable(f"all {len(self.endpoints)} endpoints are cooling down after failures")
                limit = self.endpoint_concurrency
                free = [e for e in healthy if limit is None or e.in_flight < limit]
                if free:
                    self._turn += 1  # ties go round-robin
                    n = len(self.endpoints)
                    chosen = min(free, key=lambda e: (e.in_flight, (self.endpoints.index(e) - self._turn) % n))
                    chosen.in_flight += 1
                    chosen.served += 1
                    return chosen
                self._dispatch.wait(timeout=0.05)

    def _release(self, endpoint: _Endpoint, ok: bool) -> None:
        with self._dispatch:
            endpoint.in_flight -= 1
            endpoint.failures = 0 if ok else endpoint.failures + 1
            # one replica: the advisor's own breaker decides (after retries); several: skip the failing one
            if (
                not ok
                and len(self.endpoints) > 1
                and self.breaker_failures
                and endpoint.failures >= self.breaker_failures
            ):
                endpoint.open_until = time.monotonic() + self.breaker_cooldown
                endpoint.failures = 0
                logger.warning("%s: endpoint %s failed %d times in a row; skipped for %.0f s", self.model, endpoint.url,
                               self.breaker_failures, self.breaker_cooldown)  # fmt: skip
            self._dispatch.notify_all()

    def _generate(self, request: AdviceRequest, call: Call) -> Generation:
        messages = self.messages(request, call.system, call.user)
        kwargs: dict[str, Any] = dict(messages=messages, max_tokens=call.max_tokens, temperature=call.temperature)
        if call.n > 1:
            kwargs["n"] = call.n
        if call.logprobs:
            kwargs.update(logprobs=True, top_logprobs=20)
        if call.schema is not None:
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "advice", "schema": call.schema},
            }
        endpoint = self._acquire()
        try:
            with self._request_deadline():  # an answer after it is a timeout, never used
                response = endpoint.client.chat.completions.create(model=self.model, **kwargs)
        except Exception:
            self._release(endpoint, ok=False)
            raise
        self._release(endpoint, ok=True)
        usage = getattr(response, "usage", None)
        texts = [c.message.content or "" for c in response.choices]
        top = top_logprobs(response.choices[0]) if call.logprobs and response.choices else None
        total, tokens_in, tokens_out = usage_tokens(
            getattr(usage, "total_tokens", 0),
            getattr(usage, "prompt_tokens", 0),
            getattr(usage, "completion_tokens", 0),
        )
        return Generation(texts, top, total, tokens_in, tokens_out)


def top_logprobs(choice: Any) -> list[tuple[str, float]] | None:
    """
    The first answer token's top log-probabilities of a chat-completion choice, as ``(token, logprob)`` pairs (the
    token itself when the server sent no alternatives); None without log-probabilities. Reads the client's objects
    and the same fields as JSON dicts (a Batch API's output file).
    """

    def field(obj: Any, name: str) -> Any:
        return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)

    def pair(token: Any) -> tuple[str, float]:
        logprob = field(token, "logprob")
        return str(field(token, "token") or ""), float(-np.inf if logprob is None else logprob)

    logprobs = field(choice, "logprobs") if choice is not None else None
    content = field(logprobs, "content") if logprobs is not None else None
    if not content:
        return None
    first = content[0]
    return [pair(t) for t in field(first, "top_logprobs") or []] or [pair(first)]
