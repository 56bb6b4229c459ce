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
import os
from typing import Any, Literal

import numpy as np

from sb3_vlm.advice import AdviceRequest
from sb3_vlm.advisors.prompted import Call, Distribution, Generation, PromptedAdvisor, RetryDecision
from sb3_vlm.advisors.prompts import PromptTemplate

#: Gemini's OpenAI-compatible endpoint
GEMINI_OPENAI_URL = "https://generativelanguage.googleapis.com/v1beta/openai/"


def encode_image(image: np.ndarray, fmt: str = "png") -> bytes:
    """An (H, W, 3) uint8 image as PNG (or JPEG) bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buffer, format=fmt.upper())
    return buffer.getvalue()


def image_data_url(image: np.ndarray, fmt: str = "png") -> str:
    """An (H, W, 3) uint8 image as a base64 ``data:`` URL."""
    return f"data:image/{fmt};base64,{base64.b64encode(encode_image(image, fmt)).decode()}"


class OpenAIAdvisor(PromptedAdvisor):
    """
    Ask a VLM behind an OpenAI-compatible ``/chat/completions`` endpoint (see the module docstring for the
    differences between servers). Prompting, distributions, parsing, retries and concurrency are
    :class:`~sb3_vlm.advisors.prompted.PromptedAdvisor`'s.

    :param model: model name as the server knows it (``"gpt-4o-mini"``, ``"Qwen/Qwen2.5-VL-3B-Instruct"`` ...)
    :param prompt: the :class:`~sb3_vlm.advisors.prompts.PromptTemplate`
    :param base_url: the server (None: OpenAI's); e.g. ``"http://gpu-box:8000/v1"`` for vLLM, ``GEMINI_OPENAI_URL``
    :param api_key: the key; None reads ``api_key_env`` (local servers need none)
    :param api_key_env: environment variable holding the key
    :param detail: image detail (``"low"``, ``"high"``, ``"auto"``)
    :param structured: ask for JSON-schema output (where the server supports it)
    :param timeout: seconds per HTTP request
    :param image_format: ``"png"`` (lossless) or ``"jpeg"``
    :param kwargs: ``distribution``, ``n_samples``, ``temperature``, ``max_tokens``, ``max_retries``,
        ``max_backoff``, ``concurrency`` (:class:`~sb3_vlm.advisors.prompted.PromptedAdvisor`)
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
        structured: bool = False,
        timeout: float = 30.0,
        image_format: str = "png",
        **kwargs: Any,
    ):
        super().__init__(prompt, distribution=distribution, structured=structured, **kwargs)
        try:
            import openai
        except ImportError as exc:
            raise ImportError("OpenAIAdvisor needs the 'api' extra: pip install 'sb3-vlm[api]'") from exc
        self.model, self.base_url, self.detail = model, base_url, detail
        self.timeout, self.image_format = timeout, image_format
        key = api_key if api_key is not None else os.environ.get(api_key_env)
        if key is None and base_url is None:
            raise ValueError(f"No API key: pass api_key=... or set {api_key_env}")
        # retries are PromptedAdvisor's (max_retries=0 here) so every retry and failure is counted
        self._client = openai.OpenAI(api_key=key or "none", base_url=base_url, timeout=timeout, max_retries=0)
        self._openai = openai

    @property
    def identity(self) -> str:
        # everything that changes answers; never the key
        return (
            f"openai:{self.base_url or 'api.openai.com'}:{self.model}:{self.settings_identity()}:detail={self.detail}"
        )

    def __repr__(self) -> str:
        return f"OpenAIAdvisor(model={self.model!r}, base_url={self.base_url!r}, prompt={self.prompt.name!r})"

    def _classify(self, exc: Exception) -> RetryDecision | None:
        openai = self._openai
        retryable = (
            openai.RateLimitError,
            openai.InternalServerError,
            openai.APITimeoutError,
            openai.APIConnectionError,
        )
        if isinstance(exc, retryable):
            return RetryDecision(type(exc).__name__, True, _retry_after(exc))
        if isinstance(exc, openai.APIStatusError):  # other 4xx: a bad request will not improve
            return RetryDecision(f"HTTP {exc.status_code}", False)
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
        response = self._client.chat.completions.create(model=self.model, **kwargs)
        usage = getattr(response, "usage", None)
        texts = [c.message.content or "" for c in response.choices]
        top = _top_logprobs(response.choices[0]) if call.logprobs and response.choices else None
        return Generation(texts, top, int(getattr(usage, "total_tokens", 0) or 0))


def _retry_after(exc: Exception) -> float | None:
    response = getattr(exc, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _top_logprobs(choice: Any) -> list[tuple[str, float]] | None:
    logprobs = getattr(choice, "logprobs", None)
    content = getattr(logprobs, "content", None) if logprobs is not None else None
    if not content:
        return None
    first = content[0]
    pairs = [(t.token, float(t.logprob)) for t in (getattr(first, "top_logprobs", None) or [])]
    return pairs or [(first.token, float(first.logprob))]
