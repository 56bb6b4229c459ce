"""An advisor on Google's ``google-genai`` SDK (Gemini API), with image bytes parts, JSON output and log-probs."""

from __future__ import annotations

import os
from typing import Any

from sb3_vlm.advice import AdviceRequest
from sb3_vlm.advisors.openai_compat import encode_image
from sb3_vlm.advisors.prompted import Call, Distribution, Generation, PromptedAdvisor, RetryDecision
from sb3_vlm.advisors.prompts import PromptTemplate


class GeminiAdvisor(PromptedAdvisor):
    """
    Ask a Gemini model through ``google-genai``. Log-probabilities use ``response_logprobs`` (``distribution="auto"``
    falls back to written probabilities where the model does not return them); ``structured=True`` asks for JSON
    with a response schema.

    :param model: e.g. ``"gemini-2.0-flash"``
    :param prompt: the :class:`~sb3_vlm.advisors.prompts.PromptTemplate`
    :param api_key: the key; None reads ``api_key_env``
    :param api_key_env: environment variable holding the key (``GEMINI_API_KEY``; ``GOOGLE_API_KEY`` also works)
    :param base_url: another endpoint (a proxy; the tests' loopback server)
    :param structured: JSON output with a response schema
    :param timeout: seconds per HTTP request
    :param kwargs: ``distribution``, ``n_samples``, ``temperature``, ``max_tokens``, ``max_retries``,
        ``max_backoff``, ``concurrency`` (:class:`~sb3_vlm.advisors.prompted.PromptedAdvisor`)
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
        super().__init__(prompt, distribution=distribution, structured=structured, **kwargs)
        try:
            from google import genai
            from google.genai import errors, types
        except ImportError as exc:
            raise ImportError("GeminiAdvisor needs the 'api' extra: pip install 'sb3-vlm[api]'") from exc
        key = api_key if api_key is not None else os.environ.get(api_key_env) or os.environ.get("GOOGLE_API_KEY")
        if key is None:
            raise ValueError(f"No API key: pass api_key=... or set {api_key_env}")
        self.model, self.base_url, self.timeout = model, base_url, timeout
        # retries are PromptedAdvisor's (attempts=1) so each one is counted; the SDK's timeout is in milliseconds
        options = types.HttpOptions(
            base_url=base_url, timeout=int(timeout * 1000), retry_options=types.HttpRetryOptions(attempts=1)
        )
        self._client = genai.Client(api_key=key, http_options=options)
        self._types, self._errors = types, errors

    @property
    def identity(self) -> str:
        return f"gemini:{self.base_url or 'google'}:{self.model}:{self.settings_identity()}"

    def __repr__(self) -> str:
        return f"GeminiAdvisor(model={self.model!r}, prompt={self.prompt.name!r})"

    def _classify(self, exc: Exception) -> RetryDecision | None:
        if isinstance(exc, self._errors.APIError):
            code = int(getattr(exc, "code", 0) or 0)
            retry = code == 429 or code >= 500
            response = getattr(exc, "response", None)
            headers = getattr(response, "headers", None) or {}
            after = headers.get("retry-after") if hasattr(headers, "get") else None
            try:
                wait = float(after) if after is not None else None
            except ValueError:
                wait = None
            return RetryDecision(f"HTTP {code}", retry, wait)
        # the SDK's transport (httpx or its successor) raises its own timeout / connection classes
        name = type(exc).__name__
        if isinstance(exc, (TimeoutError, ConnectionError)) or "Timeout" in name or "ConnectError" in name:
            return RetryDecision(name, True)
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
        return Generation(texts, top, int(getattr(usage, "total_token_count", 0) or 0))
