"""GeminiAdvisor driven through the real ``google-genai`` client against a loopback server."""

from __future__ import annotations

import math

import numpy as np
import pytest
from gymnasium import spaces

pytest.importorskip("google.genai")

from sb3_vlm.advice import AdviceRequest
from sb3_vlm.advisors.gemini import GeminiAdvisor
from sb3_vlm.advisors.prompts import COVR_HIGHWAY, MINIGRID_PROMPT
from sb3_vlm.testing.loopback import LoopbackServer, Reply

CAR = spaces.Box(-1.0, 1.0, (2,), dtype=np.float32)
IMAGE = np.zeros((8, 8, 3), dtype=np.uint8)


def _body(text: str, top: list[tuple[str, float]] | None = None) -> dict:
    candidate: dict = {"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP"}
    if top is not None:
        candidate["logprobsResult"] = {
            "topCandidates": [{"candidates": [{"token": t, "logProbability": lp} for t, lp in top]}],
            "chosenCandidates": [{"token": top[0][0], "logProbability": top[0][1]}],
        }
    return {
        "candidates": [candidate],
        "usageMetadata": {
            "promptTokenCount": 5,
            "candidatesTokenCount": 1,
            "thoughtsTokenCount": 1,
            "totalTokenCount": 7,
        },
    }


def _advisor(server: LoopbackServer, prompt=COVR_HIGHWAY, **kwargs) -> GeminiAdvisor:
    kwargs.setdefault("max_backoff", 0.05)
    return GeminiAdvisor("gemini-test", prompt, api_key="AIza-test", base_url=server.url, **kwargs)


def test_image_bytes_part_and_parsed_answer() -> None:
    with LoopbackServer([Reply(body=_body("action:[0.25, 0.5]"))]) as server:
        advisor = _advisor(server, price=(1.0, 2.0))
        advice = advisor.advise([AdviceRequest(image=IMAGE, action_space=CAR)])[0]
    assert advice.valid and np.allclose(advice.action, [0.25, 0.5]) and advisor.tokens == 7
    # thinking tokens are billed as answer tokens
    assert (advisor.tokens_in, advisor.tokens_out) == (5, 2)
    assert advisor.cost_usd == pytest.approx((5 * 1.0 + 2 * 2.0) / 1e6)
    assert server.paths[0].endswith("/models/gemini-test:generateContent")
    parts = server.requests[0]["contents"][0]["parts"]
    assert parts[0]["text"].endswith("action:[steer, throttle].")
    inline = parts[1]["inlineData"]
    assert inline.get("mimeType", inline.get("mime_type")) == "image/png" and len(inline["data"]) > 20
    assert "systemInstruction" in server.requests[0]


def test_logprobs_and_json_schema() -> None:
    top = [("forward", math.log(0.75)), ("left", math.log(0.25))]
    replies = [Reply(body=_body("forward", top)), Reply(body=_body('{"steer": 0.1, "throttle": 0.2}'))]
    with LoopbackServer(replies) as server:
        grid = _advisor(server, MINIGRID_PROMPT, concurrency=1)
        advice = grid.advise([AdviceRequest(image=IMAGE, context={"mission": "m"}, action_space=spaces.Discrete(7))])[0]
        car = _advisor(server, structured=True).advise([AdviceRequest(image=IMAGE, action_space=CAR)])[0]
    assert (
        advice.probs is not None and advice.probs[2] == pytest.approx(0.75) and advice.probs[0] == pytest.approx(0.25)
    )
    config = server.requests[0]["generationConfig"]
    assert config["responseLogprobs"] is True and config["maxOutputTokens"] == 1
    assert np.allclose(car.action, [0.1, 0.2])
    assert server.requests[1]["generationConfig"]["responseMimeType"] == "application/json"


def test_429_then_success_and_500_exhausted() -> None:
    replies = [
        Reply(status=429, body={"error": {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED"}}),
        Reply(body=_body("action:[0, 0]")),
    ]
    with LoopbackServer(replies) as server:
        advisor = _advisor(server)
        assert advisor.advise([AdviceRequest(image=IMAGE, action_space=CAR)])[0].valid
    assert advisor.retries == 1 and advisor.http_errors == {"HTTP 429": 1}
    with LoopbackServer([Reply(status=500, body={"error": {"code": 500, "message": "x", "status": "INTERNAL"}})]) as s2:
        advisor = _advisor(s2, max_retries=1)
        assert not advisor.advise([AdviceRequest(image=IMAGE, action_space=CAR)])[0].valid
    assert advisor.http_errors["HTTP 500"] == 2 and advisor.stats.errors == 1


def test_missing_key(monkeypatch) -> None:
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    with pytest.raises(ValueError, match="GEMINI_API_KEY"):
        GeminiAdvisor("gemini-2.0-flash", COVR_HIGHWAY)


def test_slow_reply_past_the_timeout_is_counted() -> None:
    import time

    with LoopbackServer([Reply(body=_body("action:[0, 0]"), delay=1.5)]) as server:
        advisor = _advisor(server, timeout=0.3, max_retries=0)
        start = time.perf_counter()
        advice = advisor.advise([AdviceRequest(image=IMAGE, action_space=CAR)])[0]
    assert not advice.valid and time.perf_counter() - start < 1.4
    assert advisor.stats.errors == 1 and sum(advisor.http_errors.values()) >= 1


def test_trickling_answer_is_cut_at_the_request_deadline_and_counted_as_a_timeout() -> None:
    """Issue 17, item 1, for Gemini's SDK: its timeout bounded each socket read, not the request."""
    import time

    from tests.test_openai_advisor import TrickleServer

    with TrickleServer(_body("action:[0, 0]"), "body", interval=0.05) as server:  # ~6 s for the whole answer
        advisor = _advisor(server, timeout=0.8, max_retries=1)
        start = time.perf_counter()
        advice = advisor.advise([AdviceRequest(image=IMAGE, action_space=CAR)])[0]
        elapsed = time.perf_counter() - start
    assert not advice.valid and 1.5 <= elapsed < 2.8 and server.requests == 2  # two tries, each cut at 0.8 s
    assert advisor.http_errors == {"timeout": 2} and advisor.retries == 1 and advisor.stats.errors == 1


def test_cache_identity_names_the_endpoint_actually_called(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 17, item 5: the identity said "google" wherever GOOGLE_GEMINI_BASE_URL sent the requests."""
    monkeypatch.delenv("GOOGLE_GEMINI_BASE_URL", raising=False)
    assert GeminiAdvisor("g", COVR_HIGHWAY, api_key="AIza-test").identity.startswith("gemini:google:g:")
    with LoopbackServer([Reply(body=_body("action:[0.25, 0.5]"))]) as server:
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", server.url)
        advisor = GeminiAdvisor("g", COVR_HIGHWAY, api_key="AIza-test")
        assert advisor.advise([AdviceRequest(image=IMAGE, action_space=CAR)])[0].valid
    assert len(server.requests) == 1 and advisor.identity.startswith(f"gemini:{server.url}:g:")
