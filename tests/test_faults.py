"""Fault injection: a loopback VLM server that fails in every way the issue lists (429 with Retry-After, 5xx,
timeouts, malformed JSON, empty answers, NaN and wrong-shape actions) plus a refused connection. Training completes,
the counters match the injected faults, nothing crashes."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from sb3_vlm import VLMAdviceWrapper
from sb3_vlm.advisors.openai_compat import OpenAIAdvisor
from sb3_vlm.advisors.prompts import PENDULUM_PROMPT
from sb3_vlm.callbacks import AdviceMetricsCallback
from sb3_vlm.envs.pendulum import make_pendulum_env
from sb3_vlm.sac import GuidedSAC
from sb3_vlm.testing import LoopbackServer, Reply, chat_completion

# one reply per request, in this order, over and over (no retries, so each request meets exactly one fault)
FAULTS = [
    ("rate_limit", Reply(status=429, body={"error": {"message": "slow down"}}, headers={"retry-after": "0"})),
    ("server_error", Reply(status=503, body={"error": {"message": "overloaded"}})),
    ("timeout", Reply(body=chat_completion("action:[0.5]"), delay=0.6)),
    ("malformed_json", Reply(body='{"choices": [ {"message": ')),
    ("empty", Reply(body=chat_completion(""))),
    ("nan", Reply(body=chat_completion("action:[nan]"))),
    ("wrong_shape", Reply(body=chat_completion("action:[0.1, 0.2, 0.3]"))),
    ("ok", Reply(body=chat_completion("action:[0.5]"))),
]


@pytest.mark.parametrize("non_blocking", [False, True])
def test_training_survives_every_fault_and_counts_them(non_blocking: bool) -> None:
    served: list[str] = []

    def responder(path: str, body: dict) -> Reply:
        name, reply = FAULTS[len(served) % len(FAULTS)]
        served.append(name)
        return reply

    with LoopbackServer(responder=responder) as server:
        advisor = OpenAIAdvisor(
            "m", PENDULUM_PROMPT, base_url=f"{server.url}/v1", api_key="none", timeout=0.3, max_retries=0,
            breaker_failures=0,
        )  # fmt: skip
        env = VLMAdviceWrapper(make_pendulum_env(), advisor, non_blocking=non_blocking)
        model = GuidedSAC("MlpPolicy", env, method="dpl", learning_starts=16, batch_size=8, buffer_size=200, seed=0)
        metrics = AdviceMetricsCallback()
        model.learn(48, callback=metrics)  # every step asks; 48 steps + the reset's request
        if non_blocking:  # learn() returns with requests still in flight: let them land, then count
            assert env.background is not None and env.background.drain(10)
            model.replay_buffer.resolve_pending()
            metrics.record()
        last = env.current_advice  # the 49th request's answer: the final observation, never stored
    assert model.num_timesteps == 48
    count = {name: served.count(name) for name, _ in FAULTS}
    assert len(served) == advisor.stats.queries == 49 and min(count.values()) >= 6
    errors = advisor.http_errors
    assert errors["RateLimitError"] == count["rate_limit"]
    assert errors["InternalServerError"] == count["server_error"]
    assert errors["APITimeoutError"] == count["timeout"]
    # transport-level failures (incl. the malformed body the client cannot decode) end as failed requests
    failed = count["rate_limit"] + count["server_error"] + count["timeout"] + count["malformed_json"]
    assert errors["failed"] == advisor.stats.errors == failed
    assert advisor.parse_failures == count["empty"] + count["nan"] + count["wrong_shape"]
    assert advisor.stats.invalid == len(served) - count["ok"]
    stored = model.replay_buffer.advice_valid[:48, 0]
    assert last is not None
    assert stored.sum() + last.valid == count["ok"]  # only usable answers became advice
    assert np.all(np.isfinite(model.replay_buffer.advice_actions[:48]))
    assert metrics.latest["advisor/parse_failures"] == advisor.parse_failures
    assert metrics.latest["advisor/errors"] == failed


@pytest.mark.parametrize("non_blocking", [False, True])
def test_connection_refused_is_counted_and_training_goes_on(non_blocking: bool) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    advisor = OpenAIAdvisor(
        "m", PENDULUM_PROMPT, base_url=f"http://127.0.0.1:{port}/v1", api_key="none", timeout=1.0, max_retries=1,
        max_backoff=0.01, breaker_failures=3, breaker_cooldown=3600,
    )  # fmt: skip
    env = VLMAdviceWrapper(make_pendulum_env(), advisor, non_blocking=non_blocking)
    model = GuidedSAC("MlpPolicy", env, method="dpl", learning_starts=8, batch_size=8, buffer_size=100, seed=0)
    model.learn(20)
    if env.background is not None:
        assert env.background.drain(10)
        model.replay_buffer.resolve_pending()
    assert model.num_timesteps == 20 and model.replay_buffer.advice_valid[:20].sum() == 0
    tried = advisor.stats.errors  # requests that reached the (absent) server, each with 1 try + 1 retry
    assert advisor.http_errors["APIConnectionError"] == 2 * tried
    assert advisor.circuit_skips == 21 - tried  # every other request was held back by the open breaker
    if non_blocking:
        # requests already in flight on the advisor's 8 threads when the third failure opened the breaker still ran
        assert 3 <= tried <= 3 + advisor.concurrency - 1
    else:
        assert tried == 3  # one at a time: the breaker opened after exactly three
