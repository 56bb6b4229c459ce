"""Fault injection: a loopback VLM server that fails in every way the issue lists (429 with Retry-After, 5xx,
timeouts, malformed JSON, empty answers, NaN and wrong-shape actions) plus a refused connection. Training completes,
the counters match the injected faults, nothing crashes."""

from __future__ import annotations

import socket

import numpy as np
import pytest
from gymnasium import spaces
from stable_baselines3.common.vec_env import DummyVecEnv

from sb3_vlm import CallableAdvisor, GuidedPPO, VLMAdviceWrapper
from sb3_vlm.advice import Advice, AdviceRequest
from sb3_vlm.advisors.openai_compat import OpenAIAdvisor
from sb3_vlm.advisors.prompts import PENDULUM_PROMPT
from sb3_vlm.callbacks import AdviceMetricsCallback
from sb3_vlm.envs.pendulum import make_pendulum_env
from sb3_vlm.sac import GuidedSAC
from sb3_vlm.testing import LoopbackServer, Reply, chat_completion
from tests.helpers import ColourEnv

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
    # one failed attempt each (no retries), by kind; the malformed body the client cannot decode is no HTTP error
    assert advisor.http_errors == {"HTTP 429": count["rate_limit"], "HTTP 503": count["server_error"],
                                   "timeout": count["timeout"]}  # fmt: skip
    # requests that got no answer, whatever the reason
    failed = count["rate_limit"] + count["server_error"] + count["timeout"] + count["malformed_json"]
    assert advisor.stats.errors == failed
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
    assert advisor.http_errors == {"connection": 2 * tried}
    assert advisor.circuit_skips == 21 - tried  # every other request was held back by the open breaker
    if non_blocking:
        # requests already in flight on the advisor's 8 threads when the third failure opened the breaker still ran
        assert 3 <= tried <= 3 + advisor.concurrency - 1
    else:
        assert tried == 3  # one at a time: the breaker opened after exactly three


def test_unusable_answers_are_counted_as_invalid_and_warned_once(caplog: pytest.LogCaptureFixture) -> None:
    """Issue 16, item 4: NaN, inf, wrong-shape, out-of-range and wrong-length answers were masked in the buffer, but
    advisor/invalid stayed 0 and nothing was logged."""
    bad = [
        Advice(probs=np.array([np.nan, 1.0])),
        Advice(probs=np.array([np.inf, 0.0])),
        Advice(probs=np.array([0.2, 0.3, 0.5])),  # three probabilities for two actions
        Advice(action=np.array([5])),  # not an action of Discrete(2)
        Advice(action=np.array([0, 1])),  # wrong shape
        Advice(action=np.asarray(["left"])),
    ]
    answers = [*bad, Advice(probs=np.array([0.9, 0.1]))]  # six unusable answers of every seven
    asked: list[int] = []

    def answer(request: AdviceRequest) -> Advice:
        asked.append(1)
        return answers[(len(asked) - 1) % len(answers)]

    advisor = CallableAdvisor(answer, name="unusable")
    advisor.unusable_window = 14
    venv = DummyVecEnv([lambda: VLMAdviceWrapper(ColourEnv(), advisor) for _ in range(2)])
    model = GuidedPPO("MlpPolicy", venv, n_steps=16, batch_size=32, n_epochs=1, seed=0)
    metrics = AdviceMetricsCallback()
    with caplog.at_level("WARNING", "sb3_vlm.advisors.base"):
        model.learn(64, callback=metrics)
    queries = advisor.stats.queries
    assert queries == len(asked) > 2 * advisor.unusable_window
    unusable = sum(1 for i in range(queries) if i % len(answers) < len(bad))
    assert advisor.stats.malformed == unusable == advisor.stats.invalid
    assert metrics.latest["advisor/invalid"] == metrics.latest["advisor/malformed"] == unusable
    assert caplog.text.count("gave no usable advice") == 1  # the first window of mostly unusable answers, once

    # a Box action space: NaN, inf and a wrong length
    box = spaces.Box(-1.0, 1.0, (2,), dtype=np.float32)
    values = iter([np.array([np.nan, 0.0]), np.array([np.inf, 0.0]), np.array([0.1, 0.2, 0.3]), np.array([5.0, 0.0])])
    continuous = CallableAdvisor(lambda r: next(values), name="box")
    out = continuous.advise([AdviceRequest(action_space=box) for _ in range(4)])
    assert [a.valid for a in out] == [False, False, False, True]  # out of the bounds is clipped later, not refused
    assert continuous.stats.invalid == continuous.stats.malformed == 3 and all(a.refused for a in out[:3])


def test_every_counter_has_one_documented_meaning() -> None:
    """Issue 17, item 4: counters meant several things and were explained in several places, partly not at all."""
    from sb3_vlm.advisors.base import COUNTERS

    advisor = OpenAIAdvisor("m", PENDULUM_PROMPT, base_url="http://127.0.0.1:9/v1", api_key="none")
    env = VLMAdviceWrapper(make_pendulum_env(), advisor, non_blocking=True)
    _, counters = env.advice_counters()
    names = {key.split(".", 1)[0] for key in counters}  # "http_errors.<kind>": the kinds of one counter
    assert {"queries", "http_errors", "oversized", "overflow", "late", "circuit_skips"} <= names
    assert names <= set(COUNTERS), names - set(COUNTERS)
    assert all(len(meaning) > 20 for meaning in COUNTERS.values())
    env.close()
