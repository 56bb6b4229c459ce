"""OpenAIAdvisor driven through the real ``openai`` client against a loopback server."""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from typing import Any

import numpy as np
import pytest
from gymnasium import spaces

pytest.importorskip("openai")

from sb3_vlm.advice import AdviceRequest
from sb3_vlm.advisors.cache import AdviceCache, CachedAdvisor
from sb3_vlm.advisors.openai_compat import OpenAIAdvisor
from sb3_vlm.advisors.prompted import probs_from_top_logprobs
from sb3_vlm.advisors.prompts import COVR_HIGHWAY, MINIGRID_PROMPT, MINIGRID_TWO_STAGE
from sb3_vlm.testing.loopback import LoopbackServer, Reply, chat_completion

CAR = spaces.Box(-1.0, 1.0, (2,), dtype=np.float32)
GRID = spaces.Discrete(7)
IMAGE = np.zeros((8, 8, 3), dtype=np.uint8)


def _car() -> AdviceRequest:
    return AdviceRequest(image=IMAGE, context={}, action_space=CAR)


def _grid() -> AdviceRequest:
    return AdviceRequest(image=IMAGE, context={"mission": "get to the green goal square"}, action_space=GRID)


def _advisor(server: LoopbackServer | TrickleServer, prompt=COVR_HIGHWAY, **kwargs) -> OpenAIAdvisor:
    kwargs.setdefault("max_backoff", 0.05)
    return OpenAIAdvisor("test-model", prompt, base_url=f"{server.url}/v1", api_key="sk-test", **kwargs)


class TrickleServer:
    """
    A loopback HTTP server (127.0.0.1 only) that answers every request with ``body`` (200, JSON) and trickles
    ``part`` of it, ``"headers"`` or ``"body"``, one byte every ``interval`` seconds; after ``limit`` seconds on one
    answer it hangs up. Stopped, its threads joined, on leaving the ``with`` block.
    """

    def __init__(self, body: dict[str, Any], part: str = "body", interval: float = 0.05, limit: float = 3.0):
        self.body, self.part, self.interval, self.limit = json.dumps(body).encode(), part, interval, limit
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.requests = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._serve, daemon=True)]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}"

    def __enter__(self) -> TrickleServer:
        self._threads[0].start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        self.listener.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            thread = threading.Thread(target=self._answer, args=(conn,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.settimeout(self.limit)
                self._read_request(conn)
                self.requests += 1
                head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
                head %= len(self.body)
                fast, slow, rest = (b"", head, self.body) if self.part == "headers" else (head, self.body, b"")
                conn.sendall(fast)
                start = time.monotonic()
                for i in range(len(slow)):
                    if self._stop.is_set() or time.monotonic() - start > self.limit:
                        return  # hang up
                    conn.sendall(slow[i : i + 1])
                    time.sleep(self.interval)
                conn.sendall(rest)
            except OSError:  # the client hung up: its deadline passed
                pass

    @staticmethod
    def _read_request(conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                raise ConnectionError("the client left")
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        fields = [line.split(b":", 1) for line in head.split(b"\r\n")[1:] if b":" in line]
        length = next((int(v) for k, v in fields if k.strip().lower() == b"content-length"), 0)
        while len(body) < length:
            chunk = conn.recv(65536)
            if not chunk:
                raise ConnectionError("the client left")
            body += chunk


def test_continuous_answer_with_image_and_usage() -> None:
    with LoopbackServer([Reply(body=chat_completion("Describe: clear. action:[0.1, 0.9]", tokens=42))]) as server:
        advisor = _advisor(server, detail="low")
        advice = advisor.advise([_car()])[0]
    assert advice.valid and np.allclose(advice.action, [0.1, 0.9])
    assert advisor.tokens == 42 and advisor.stats.queries == 1
    body = server.requests[0]
    assert body["model"] == "test-model" and body["messages"][0]["role"] == "system"
    parts = body["messages"][1]["content"]
    assert parts[0]["type"] == "text" and parts[0]["text"].endswith("action:[steer, throttle].")
    assert (
        parts[1]["image_url"]["url"].startswith("data:image/png;base64,") and parts[1]["image_url"]["detail"] == "low"
    )
    assert server.paths[0] == "/v1/chat/completions"
    assert server.headers[0]["authorization"] == "Bearer sk-test"


def test_logprob_scoring_one_token_call() -> None:
    top = [("forward", math.log(0.6)), (" left", math.log(0.2)), ("Right", math.log(0.1)), ("xyz", math.log(0.1))]
    with LoopbackServer([Reply(body=chat_completion("forward", top_logprobs=top))]) as server:
        advice = _advisor(server, MINIGRID_PROMPT).advise([_grid()])[0]
    assert advice.valid and advice.probs is not None
    np.testing.assert_allclose(advice.probs[[0, 1, 2]], np.array([0.2, 0.1, 0.6]) / 0.9, rtol=1e-5)
    body = server.requests[0]
    assert body["max_tokens"] == 1 and body["logprobs"] is True and body["top_logprobs"] == 20


def test_falls_back_to_written_probabilities_when_no_logprobs() -> None:
    written = "left: 0.1, right: 0.1, forward: 0.8"
    replies = [Reply(body=chat_completion("forward")), Reply(body=chat_completion(written))]
    with LoopbackServer(replies) as server:
        advisor = _advisor(server, MINIGRID_PROMPT)
        first = advisor.advise([_grid()])[0]
        second = advisor.advise([_grid()])[0]
    assert first.valid and second.valid and first.probs is not None
    assert first.probs[2] == pytest.approx(0.8)
    # the second request went straight to the written form: one call, not two
    assert len(server.requests) == 3 and server.requests[2].get("max_tokens") == 256
    assert "logprobs" not in server.requests[2]


def test_no_logprobs_is_probed_and_logged_once_per_advisor_identity(caplog: pytest.LogCaptureFixture) -> None:
    """Issue 16, item 4: each of a batch's threads probed for log-probabilities and logged the fallback (7-8 notices,
    8 probe calls per advisor), and every new advisor object of the same identity probed again."""
    written = "left: 0.1, right: 0.1, forward: 0.8"

    def responder(path: str, body: dict) -> Reply:
        if body.get("logprobs"):  # the probe: answered slowly, so that the whole batch is in flight meanwhile
            return Reply(body=chat_completion("forward"), delay=0.3)
        return Reply(body=chat_completion(written))

    with LoopbackServer(responder=responder) as server, caplog.at_level("WARNING", "sb3_vlm.advisors.prompted"):
        answers = _advisor(server, MINIGRID_PROMPT, concurrency=8).advise([_grid() for _ in range(8)])
        # another object of the same identity (another env's advisor, a rebuilt one): knows already
        answers += _advisor(server, MINIGRID_PROMPT, concurrency=8).advise([_grid() for _ in range(8)])
    probes = [body for body in server.requests if body.get("logprobs")]
    assert len(probes) == 1 and len(server.requests) == 1 + 16  # one probe, then one written answer per request
    assert caplog.text.count("returns no log-probabilities") == 1
    assert all(a.valid and a.probs is not None and a.probs[2] == pytest.approx(0.8) for a in answers)


def test_refusals_and_negations_count_as_parse_failures() -> None:
    """Issue 16, item 1: these answers became confident advice (forward, done, forward, forward), valid=True."""
    answers = [
        "I cannot determine whether the agent should move forward…",
        "I can't tell which way… I'm done.",
        "I don't think moving forward is safe here: there is lava ahead.",
        "Definitely not forward: that's lava.",
    ]
    with LoopbackServer([Reply(body=chat_completion(a)) for a in answers]) as server:
        advisor = _advisor(server, MINIGRID_PROMPT, distribution="written")
        advice = [advisor.advise([_grid()])[0] for _ in answers]
    assert [a.raw for a in advice] == answers and len(server.requests) == 4
    assert not any(a.valid for a in advice) and all(a.refused for a in advice)
    assert advisor.parse_failures == 4 == advisor.stats.invalid and advisor.stats.errors == 0


def test_samples_become_frequencies() -> None:
    with LoopbackServer([Reply(body=chat_completion(["forward", "Action: left", "forward", "???"]))]) as server:
        advice = _advisor(server, MINIGRID_PROMPT, distribution="samples", n_samples=4).advise([_grid()])[0]
    assert advice.probs is not None
    np.testing.assert_allclose(advice.probs[[0, 2]], [1 / 3, 2 / 3], rtol=1e-5)
    assert server.requests[0]["n"] == 4 and server.requests[0]["temperature"] >= 0.7


def test_two_stage_prompt_sends_the_description() -> None:
    replies = [
        Reply(body=chat_completion("The agent is at (1, 1) facing east.")),
        Reply(body=chat_completion("forward")),
    ]
    with LoopbackServer(replies) as server:
        advice = _advisor(server, MINIGRID_TWO_STAGE, distribution="written").advise([_grid()])[0]
    assert advice.valid and int(advice.action[0]) == 2
    second_text = server.requests[1]["messages"][-1]["content"][0]["text"]
    assert second_text.startswith("Scene description: The agent is at (1, 1)")


def test_structured_output_requests_a_schema() -> None:
    with LoopbackServer([Reply(body=chat_completion('{"steer": -0.2, "throttle": 0.4}'))]) as server:
        advice = _advisor(server, structured=True).advise([_car()])[0]
    assert np.allclose(advice.action, [-0.2, 0.4])
    schema = server.requests[0]["response_format"]
    assert schema["type"] == "json_schema" and schema["json_schema"]["schema"]["required"] == ["steer", "throttle"]


def test_429_retry_after_is_honoured_and_counted() -> None:
    replies = [
        Reply(status=429, body={"error": {"message": "slow down"}}, headers={"retry-after": "0.3"}),
        Reply(body=chat_completion("action:[0, 1]")),
    ]
    with LoopbackServer(replies) as server:
        advisor = _advisor(server, max_backoff=5.0)
        start = time.perf_counter()
        advice = advisor.advise([_car()])[0]
        waited = time.perf_counter() - start
    assert advice.valid and waited >= 0.3
    assert advisor.retries == 1 and advisor.http_errors == {"HTTP 429": 1}


def test_persistent_500_gives_counted_invalid_advice() -> None:
    with LoopbackServer([Reply(status=500, body={"error": {"message": "boom"}})]) as server:
        advisor = _advisor(server, max_retries=2)
        advice = advisor.advise([_car(), _car()])
    assert not any(a.valid for a in advice)
    assert advisor.http_errors == {"HTTP 500": 6} and advisor.retries == 4
    assert advisor.stats.errors == 2 and advisor.stats.invalid == 2 and len(server.requests) == 6


def test_slow_reply_past_the_timeout() -> None:
    with LoopbackServer([Reply(body=chat_completion("action:[0, 1]"), delay=1.0)]) as server:
        advisor = _advisor(server, timeout=0.2, max_retries=1)
        start = time.perf_counter()
        advice = advisor.advise([_car()])[0]
    assert not advice.valid and time.perf_counter() - start < 1.5
    assert advisor.http_errors == {"timeout": 2}


def test_400_is_not_retried() -> None:
    with LoopbackServer([Reply(status=400, body={"error": {"message": "bad"}})]) as server:
        advisor = _advisor(server)
        advice = advisor.advise([_car()])[0]
    assert not advice.valid and len(server.requests) == 1 and advisor.http_errors == {"HTTP 400": 1}


def test_unparseable_and_nan_answers_are_counted_not_raised() -> None:
    replies = [Reply(body=chat_completion("I cannot help with that.")), Reply(body=chat_completion("action:[nan, 1]"))]
    with LoopbackServer(replies) as server:
        advisor = _advisor(server, concurrency=1)
        advice = advisor.advise([_car(), _car()])
    assert not any(a.valid for a in advice) and advisor.parse_failures == 2 and advisor.stats.errors == 0
    assert advice[0].raw == "I cannot help with that."


def test_batch_runs_concurrently() -> None:
    with LoopbackServer([Reply(body=chat_completion("action:[0, 1]"), delay=0.3)]) as server:
        advisor = _advisor(server, concurrency=8)
        start = time.perf_counter()
        advice = advisor.advise([_car() for _ in range(8)])
        elapsed = time.perf_counter() - start
    assert all(a.valid for a in advice) and elapsed < 1.2  # 8 x 0.3 s in sequence would be 2.4 s


def test_identity_covers_model_prompt_and_sampling_and_hides_the_key(monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-SECRET-VALUE")
    a = OpenAIAdvisor("m", COVR_HIGHWAY, base_url="http://127.0.0.1:9/v1")
    assert "SECRET" not in a.identity and "SECRET" not in repr(a)
    others = [
        OpenAIAdvisor("m2", COVR_HIGHWAY, base_url="http://127.0.0.1:9/v1"),
        OpenAIAdvisor("m", COVR_HIGHWAY.with_(version="2"), base_url="http://127.0.0.1:9/v1"),
        OpenAIAdvisor("m", COVR_HIGHWAY, base_url="http://127.0.0.1:9/v1", temperature=0.5),
    ]
    assert len({a.identity, *(o.identity for o in others)}) == 4


def test_missing_key_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        OpenAIAdvisor("gpt-4o-mini", COVR_HIGHWAY)


def test_probs_from_top_logprobs_helper() -> None:
    assert probs_from_top_logprobs([("xyz", 0.0)], ["a", "b"]) is None
    np.testing.assert_allclose(probs_from_top_logprobs([("A", 0.0), ("b", 0.0)], ["a", "b"]), [0.5, 0.5])


def test_cli_advise_shows_prompt_answer_and_parsed_advice(capsys, monkeypatch) -> None:
    from sb3_vlm.cli import main

    monkeypatch.setenv("OPENAI_API_KEY", "sk-cli-test")
    written = "left: 0.1, right: 0.1, forward: 0.8"
    replies = [Reply(body=chat_completion("forward")), Reply(body=chat_completion(written))]
    with LoopbackServer(replies) as server:
        code = main(
            ["advise", "--env", "MiniGrid-LavaGapS7-v0", "--advisor", "openai:test", "--base-url", f"{server.url}/v1"]
        )
    out = capsys.readouterr().out
    assert code == 0
    assert "Mission: avoid the lava and get to the green goal square" in out and written in out
    assert '"valid": true' in out and "sk-cli-test" not in out
    with LoopbackServer([Reply(body=chat_completion("no idea"))]) as server:
        code = main(["advise", "--env", "Pendulum-v1", "--advisor", "openai:test", "--base-url", f"{server.url}/v1"])
    assert code == 1 and "angular velocity" in capsys.readouterr().out  # unusable answer: exit code 1


def test_missing_optional_dependency_names_the_extra(monkeypatch) -> None:
    import sys

    from sb3_vlm.advisors.gemini import GeminiAdvisor

    monkeypatch.setitem(sys.modules, "openai", None)  # as if not installed
    with pytest.raises(ImportError, match=r"sb3-vlm\[api\]"):
        OpenAIAdvisor("m", COVR_HIGHWAY, base_url="http://127.0.0.1:9/v1")
    monkeypatch.setitem(sys.modules, "google.genai", None)
    with pytest.raises(ImportError, match=r"sb3-vlm\[api\]"):
        GeminiAdvisor("m", COVR_HIGHWAY, api_key="k")


def test_circuit_breaker_stops_calling_a_failing_endpoint_and_retries_after_the_cooldown() -> None:
    failure = Reply(status=500, body={"error": {"message": "down"}})
    with LoopbackServer([failure, failure, Reply(body=chat_completion("action:[0.1, 0.9]"))]) as server:
        advisor = _advisor(server, max_retries=0, concurrency=1, breaker_failures=2, breaker_cooldown=0.5)
        first = advisor.advise([_car() for _ in range(5)])
        assert not any(a.valid for a in first)
        assert len(server.requests) == 2 and advisor.circuit_skips == 3 and advisor.circuit_open
        assert advisor.stats.errors == 2 and advisor.stats.invalid == 5  # every request counted, none crashed
        time.sleep(0.6)
        again = advisor.advise([_car(), _car()])
    assert all(a.valid for a in again) and len(server.requests) == 4  # half-open try succeeded: closed again
    assert not advisor.circuit_open and advisor.circuit_skips == 3


def test_replicas_least_loaded_dispatch_and_a_failing_replica_is_skipped() -> None:
    ok = Reply(body=chat_completion("action:[0.1, 0.9]"), delay=0.2)
    down = Reply(status=500, body={"error": {"message": "down"}})
    with LoopbackServer([ok]) as a, LoopbackServer([ok]) as b:
        advisor = OpenAIAdvisor(
            "m", COVR_HIGHWAY, base_url=[f"{a.url}/v1", f"{b.url}/v1"], api_key="none", concurrency=8,
            endpoint_concurrency=4,
        )  # fmt: skip
        start = time.perf_counter()
        answers = advisor.advise([_car() for _ in range(16)])
        elapsed = time.perf_counter() - start
    assert all(x.valid for x in answers) and len(a.requests) + len(b.requests) == 16
    assert 6 <= len(a.requests) <= 10  # both replicas share the load
    assert elapsed < 1.2  # 16 requests, 8 in flight (4 per replica), 0.2 s each: about 0.4 s
    with LoopbackServer([down]) as bad, LoopbackServer([Reply(body=chat_completion("action:[0, 1]"))]) as good:
        advisor = OpenAIAdvisor(
            "m", COVR_HIGHWAY, base_url=[f"{bad.url}/v1", f"{good.url}/v1"], api_key="none", concurrency=1,
            max_retries=2, max_backoff=0.01, breaker_failures=2, breaker_cooldown=60,
        )  # fmt: skip
        answers = advisor.advise([_car() for _ in range(10)])
    assert all(x.valid for x in answers)  # retries went to the healthy replica
    assert len(bad.requests) == 2 and len(good.requests) == 10  # then the failing one was skipped
    assert advisor.identity.startswith(f"openai:{bad.url}/v1,{good.url}/v1:m:")


def test_query_budget_and_rate_limit() -> None:
    with LoopbackServer([Reply(body=chat_completion("action:[0.1, 0.9]"))]) as server:
        advisor = _advisor(server, concurrency=1, max_queries=3)
        answers = advisor.advise([_car() for _ in range(5)])
        assert [x.valid for x in answers] == [True, True, True, False, False]
        assert len(server.requests) == 3 and advisor.budget_skips == 2
        limited = _advisor(server, concurrency=4, rate_limit=10.0)
        start = time.perf_counter()
        assert all(x.valid for x in limited.advise([_car() for _ in range(6)]))
        assert time.perf_counter() - start >= 0.45  # six calls at 10/s: the last starts 0.5 s after the first


@pytest.mark.parametrize("part", ["headers", "body"])
def test_trickling_answer_is_cut_at_the_request_deadline_counted_as_a_timeout_and_opens_the_breaker(part: str) -> None:
    """Issue 17, item 1: `timeout` bounded each socket read, so a server trickling a byte every 0.5 s held one request
    for 40 s with timeout=1, its answer then counted as valid and the circuit breaker never opened."""
    with TrickleServer(chat_completion("action:[0.1, 0.9]"), part, interval=0.05) as server:  # ~4 s per answer
        advisor = _advisor(server, timeout=0.8, max_retries=0, concurrency=1, breaker_failures=2, breaker_cooldown=60)
        start = time.perf_counter()
        answers = advisor.advise([_car() for _ in range(3)])
        elapsed = time.perf_counter() - start
    assert 1.5 <= elapsed < 2.8  # two requests cut at 0.8 s each, the third held back by the open breaker
    assert not any(a.valid for a in answers) and server.requests == 2
    assert advisor.http_errors == {"timeout": 2} and advisor.stats.errors == 2
    assert advisor.circuit_open and advisor.circuit_skips == 1 and advisor.stats.queries == 2


def test_oversized_answer_is_refused_counted_and_only_a_prefix_of_any_answer_is_kept(tmp_path) -> None:
    """Issue 17, item 2: the answer size was not configurable on the advisor, and the raw text of a 30-50 MB answer
    was kept whole in Advice.raw and in the cache."""
    huge = "action:[0.1, 0.9] " + "lorem ipsum " * 200_000  # 2.4 MB
    long_valid = "Reasoning: " + "the road bends. " * 600 + "action:[0.3, 0.4]"  # 9.6 kB: under the default cap
    replies = [Reply(body=chat_completion(text)) for text in (huge, long_valid, "action:[0.5, 0.5] " + "x" * 300)]
    with LoopbackServer(replies) as server:
        advisor = _advisor(server, concurrency=1)
        advisor.raw_chars = 1_000
        cached = CachedAdvisor(advisor, AdviceCache(tmp_path / "cache.sqlite"))
        requests = [AdviceRequest(image=np.full((8, 8, 3), i, np.uint8), action_space=CAR) for i in range(2)]
        oversized, valid = cached.advise(requests)
        strict = _advisor(server, max_answer_chars=200)
        refused = strict.advise([_car()])[0]
    assert not oversized.valid and oversized.refused and advisor.oversized == 1 == advisor.parse_failures
    assert valid.valid and np.allclose(valid.action, [0.3, 0.4])
    for advice in (oversized, valid):
        assert 1_000 <= len(advice.raw) < 1_100 and advice.raw.endswith("more characters]")
    stored, corrupt = cached.cache.read(requests[1].cache_key(advisor.identity), CAR)
    assert stored is not None and not corrupt and stored.raw == valid.raw  # the cache keeps the prefix too
    assert not refused.valid and strict.oversized == 1 and refused.raw.startswith("action:[0.5, 0.5]")  # 318 > 200


def test_negative_nan_and_infinite_retry_after_are_clamped_and_the_retries_happen() -> None:
    """Issue 17, item 4: a negative or NaN Retry-After went straight to time.sleep, whose ValueError dropped the retry
    that had been counted."""
    replies = [
        Reply(status=429, body={"error": {"message": "slow down"}}, headers={"retry-after": value})
        for value in ("-5", "nan", "inf")
    ]
    with LoopbackServer([*replies, Reply(body=chat_completion("action:[0, 1]"))]) as server:
        advisor = _advisor(server, max_retries=3, max_backoff=0.05)
        start = time.perf_counter()
        advice = advisor.advise([_car()])[0]
    assert advice.valid and len(server.requests) == 4 and time.perf_counter() - start < 2.0
    assert advisor.retries == 3 and advisor.http_errors == {"HTTP 429": 3} and advisor.stats.errors == 0


def test_requests_held_back_are_not_queries_and_http_errors_count_failed_attempts_only() -> None:
    """Issue 17, item 4: `queries` counted requests the breaker or the budget skipped, and `http_errors` mixed in
    one "failed" per failed request."""
    with LoopbackServer([Reply(body=chat_completion("action:[0.1, 0.9]"))]) as server:
        budget = _advisor(server, concurrency=1, max_queries=2)
        budget.advise([_car() for _ in range(5)])
    assert budget.stats.queries == 2 == len(server.requests) and budget.budget_skips == 3
    assert budget.stats.invalid == 3 and budget.http_errors == {}
    with LoopbackServer([Reply(status=500, body={"error": {"message": "down"}})]) as server:
        breaker = _advisor(server, concurrency=1, max_retries=1, breaker_failures=1, breaker_cooldown=60)
        breaker.advise([_car() for _ in range(4)])
    assert breaker.stats.queries == 1 and breaker.circuit_skips == 3 and len(server.requests) == 2
    assert breaker.http_errors == {"HTTP 500": 2} and breaker.retries == 1 and breaker.stats.errors == 1
    assert breaker.stats.mean_latency == breaker.stats.total_latency  # over the one query, not over four
