"""An advisor on Google's ``google-genai`` SDK (Gemini API), with image bytes parts, JSON output and log-probs."""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Any

from sb3_vlm.advice import AdviceRequest
from sb3_vlm.advisors.deadline import deadline_transport
from sb3_vlm.advisors.openai_compat import encode_image
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

#: the Gemini API, where neither ``base_url`` nor ``GOOGLE_GEMINI_BASE_URL`` names another endpoint
GEMINI_URL = "https://generativelanguage.googleapis.com/"


def _genai_http_module() -> ModuleType | None:
    """The HTTP package ``google-genai`` uses (``httpx2``, else ``httpx``; ``GOOGLE_GENAI_HTTP_CLIENT`` decides where
    it names one), None when neither is installed."""
    preferred = os.environ.get("GOOGLE_GENAI_HTTP_CLIENT", "").strip().lower()
    for name in ["httpx", "httpx2"] if preferred == "httpx" else ["httpx2", "httpx"]:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


class GeminiAdvisor(PromptedAdvisor):
    """
    Ask a Gemini model through ``google-genai``. Log-probabilities use ``response_logprobs`` (``distribution="auto"``
    falls back to written probabilities where the model does not return them); ``structured=True`` asks for JSON
    with a response schema.

    :param model: e.g. ``"gemini-2.0-flash"``
    :param prompt: the :class:`~sb3_vlm.advisors.prompts.PromptTemplate`
    :param api_key: the key; None reads ``api_key_env``
    :param api_key_env: environment variable holding the key (``GEMINI_API_KEY``; ``GOOGLE_API_KEY`` also works)
    :param base_url: another endpoint (a proxy; the tests' loopback server); None: ``GOOGLE_GEMINI_BASE_URL``, else
        the Gemini API
    :param structured: JSON output with a response schema
    :param timeout: seconds each HTTP request may take in all (connect, send, the whole answer); a request past it is
        cut and counted and retried as a timeout
    :param kwargs: ``distribution``, ``n_samples``, ``temperature``, ``max_tokens``, ``max_retries``,
        ``max_backoff``, ``concurrency``, ``max_answer_chars``, the breaker and the budget
        (:class:`~sb3_vlm.advisors.prompted.PromptedAdvisor`)
    """

    def __init__(
        self,
        model: str,
        prompt: PromptTemplate,
        api_key: str | None = None,
        api_key_env: str = "GEMINI_API_KEY",
        base_url: str | None = None,
        distribution: Distribution = "auto",
        structured: bool = False,
        timeout: float = 30.0,
        **kwargs: Any,
    ):
        super().__init__(prompt, distribution=distribution, structured=structured, timeout=timeout, **kwargs)
        try:
            from google import genai
            from google.genai import errors, types
        except ImportError as exc:
            raise ImportError("GeminiAdvisor needs the 'api' extra: pip install 'sb3-vlm[api]'") from exc
        key = api_key if api_key is not None else os.environ.get(api_key_env) or os.environ.get("GOOGLE_API_KEY")
        if key is None:
            raise ValueError(f"No API key: pass api_key=... or set {api_key_env}")
        self.model, self.base_url = model, base_url
        self._check_pricing()
        self._set_secret(key)
        # retries are PromptedAdvisor's (attempts=1) so each one is counted; the SDK's timeout is in milliseconds and
        # bounds each socket operation, the transport each whole request (where this version of the SDK takes one)
        settings: dict[str, Any] = dict(
            base_url=base_url, timeout=int(timeout * 1000), retry_options=types.HttpRetryOptions(attempts=1)
        )
        httpx = _genai_http_module()
        if httpx is not None and "client_args" in types.HttpOptions.model_fields:
            settings["client_args"] = {"transport": deadline_transport(httpx, self.called_url)}
        self._client = genai.Client(api_key=key, http_options=types.HttpOptions(**settings))
        self._types, self._errors = types, errors

    @property
    def called_url(self) -> str:
        """The endpoint this advisor calls: ``base_url``, else ``GOOGLE_GEMINI_BASE_URL``, else the Gemini API."""
        return self.base_url or os.environ.get("GOOGLE_GEMINI_BASE_URL") or GEMINI_URL

    @property
    def identity(self) -> str:
        url = self.called_url
        return f"gemini:{'google' if url == GEMINI_URL else url}:{self.model}:{self.settings_identity()}"

    def __repr__(self) -> str:
        return f"GeminiAdvisor(model={self.model!r}, prompt={self.prompt.name!r})"

    def _classify(self, exc: Exception) -> RetryDecision | None:
        if isinstance(exc, self._errors.APIError):
            code = int(getattr(exc, "code", 0) or 0)
            return RetryDecision(f"HTTP {code}", code == 429 or code >= 500, retry_after_seconds(exc))
        # the SDK's transport (httpx or its successor) raises its own timeout / connection classes
        name = type(exc).__name__
        if isinstance(exc, TimeoutError) or "Timeout" in name:
            return RetryDecision("timeout", True)
        if isinstance(exc, ConnectionError) or "ConnectError" in name:
            return RetryDecision("connection", True)
        return None

    def _generate(self, request: AdviceRequest, call: Call) -> Generation:
        types = self._types
        parts: list[Any] = [types.Part.from_text(text=call.user)]
        if request.image is not None:
            parts.append(types.Part.from_bytes(data=encode_image(request.image), mime_type="image/png"))
        config: dict[str, Any] = dict(temperature=call.temperature, max_output_tokens=call.max_tokens)
        if call.system:
            config["system_instruction"] = call.system
        if call.n > 1:
            config["candidate_count"] = call.n
        if call.logprobs:
            config.update(response_logprobs=True, logprobs=20)
        if call.schema is not None:
            config.update(response_mime_type="application/json", response_json_schema=call.schema)
        with self._request_deadline():  # an answer after it is a timeout, never used
            response = self._client.models.generate_content(
                model=self.model,
                contents=[types.Content(role="user", parts=parts)],
                config=types.GenerateContentConfig(**config),
            )
        candidates = response.candidates or []
        texts = ["".join(p.text or "" for p in (c.content.parts or [])) if c.content else "" for c in candidates]
        top = None
        if call.logprobs and candidates and candidates[0].logprobs_result is not None:
            tops = candidates[0].logprobs_result.top_candidates or []
            if tops and tops[0].candidates:
                top = [(c.token or "", float(c.log_probability or 0.0)) for c in tops[0].candidates]
        usage = response.usage_metadata
        # thinking tokens are billed as output
        answer = int(getattr(usage, "candidates_token_count", 0) or 0) + int(
            getattr(usage, "thoughts_token_count", 0) or 0
        )
        total, tokens_in, tokens_out = usage_tokens(
            getattr(usage, "total_token_count", 0), getattr(usage, "prompt_token_count", 0), answer
        )
        return Generation(texts, top, total, tokens_in, tokens_out)
