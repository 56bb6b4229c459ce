"""Cost accounting (issue 18, item 2): prices, tokens in and out, and a dollar budget that is never exceeded."""

from __future__ import annotations

import argparse
import pickle
import threading

import numpy as np
import pytest
from gymnasium import spaces

from sb3_vlm.advice import AdviceRequest
from sb3_vlm.advisors.base import advisor_counters, restore_counters
from sb3_vlm.advisors.pricing import PRICES, CostBudget, Price, price_for
from sb3_vlm.advisors.prompted import Call, Generation, PromptedAdvisor, RetryDecision, usage_tokens
from sb3_vlm.advisors.prompts import COVR_HIGHWAY
from sb3_vlm.testing.loopback import LoopbackServer, Reply, chat_completion

CAR = spaces.Box(-1.0, 1.0, (2,), dtype=np.float32)


def _car(i: int = 0) -> AdviceRequest:
    return AdviceRequest(image=np.full((8, 8, 3), i % 256, np.uint8), context={}, action_space=CAR)


def test_prices_are_found_by_exact_name_dated_name_and_provider_prefix_and_unknown_models_have_none() -> None:
    assert price_for("gpt-4o-mini") == PRICES["gpt-4o-mini"] == Price(0.15, 0.60)
    # the longest matching key: a dated gpt-4o-mini is not priced as gpt-4o
    assert price_for("gpt-4o-mini-2024-07-18") == PRICES["gpt-4o-mini"]
    assert price_for("gpt-4o-2024-08-06") == PRICES["gpt-4o"]
    assert price_for("models/Gemini-2.0-Flash-001") == PRICES["gemini-2.0-flash"]
    assert price_for("gemini-2.0-flash-lite") == PRICES["gemini-2.0-flash-lite"]
    assert price_for("gemini-2.0-flash-exp") == PRICES["gemini-2.0-flash"]
    assert price_for("Qwen/Qwen2.5-VL-3B-Instruct") is None and price_for("gpt-4o-minix") is None
    assert price_for("gpt-4o-audio-preview") is None  # another model, not a version of gpt-4o
    assert price_for("anything", (1.0, 3.0)) == Price(1.0, 3.0)  # an override wins


def test_cost_is_per_million_tokens_and_bad_prices_are_refused() -> None:
    assert Price(0.15, 0.60).cost(1_000_000, 0) == pytest.approx(0.15)
    assert Price(2.0, 8.0).cost(1500, 250) == pytest.approx((1500 * 2.0 + 250 * 8.0) / 1e6)
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="USD per million tokens"):
            Price(bad, 1.0)


def test_usage_tokens_splits_and_totals() -> None:
    assert usage_tokens(120, 100, 20) == (120, 100, 20)
    assert usage_tokens(50, None, None) == (50, 50, 0)  # a total without a split: prompt tokens
    assert usage_tokens(None, 30, 5) == (35, 30, 5)
    assert usage_tokens("x", -3, None) == (0, 0, 0)  # unreadable or negative fields count nothing


def test_cost_budget_reserves_the_most_a_request_may_cost_and_serialises_the_first_request() -> None:
    budget = CostBudget(1.0, Price(1_000.0, 1_000.0), prompt_margin=0.25)  # $0.001 per token
    first = budget.reserve(calls=1, answer_tokens=10)
    assert first == pytest.approx(0.01)  # nothing is known of the prompt yet: the answer's bound
    started = threading.Event()
    second: list[float | None] = []

    def other() -> None:
        started.set()
        second.append(budget.reserve(calls=1, answer_tokens=10))

    thread = threading.Thread(target=other)
    thread.start()
    started.wait()
    thread.join(timeout=0.2)
    assert thread.is_alive() and not second  # waits until the first answer shows the prompt's size
    assert budget.settle(first, tokens_in=400, tokens_out=8) == pytest.approx(0.408)
    thread.join(timeout=2)
    assert second == [pytest.approx((501 + 10) * 0.001)]  # 400 x 1.25 + 1 prompt tokens, 10 answer tokens
    assert budget.spent == pytest.approx(0.408) and budget.reserved == pytest.approx(0.511)
    assert budget.reserve(calls=1, answer_tokens=10) is None  # 0.408 + 0.511 + 0.511 > 1.0: not sent
    budget.settle(second[0], tokens_in=0, tokens_out=0)  # a failed request costs nothing and frees its share
    assert budget.reserved == pytest.approx(0.0) and not budget.exceeded
    with pytest.raises(ValueError, match="max_cost_usd"):
        CostBudget(float("nan"), Price(1.0, 1.0))


class _Billing:
    """A loopback chat-completions responder that bills each request's usage like a provider: prompts of
    900-1000 tokens, answers of up to the request's max_tokens; it keeps the tokens it reported."""

    def __init__(self) -> None:
        self.rng = np.random.default_rng(0)
        self.tokens_in: list[int] = []
        self.tokens_out: list[int] = []

    def __call__(self, path: str, body: dict) -> Reply:
        prompt = int(self.rng.integers(900, 1001))
        answer = int(self.rng.integers(1, int(body["max_tokens"]) + 1))
        self.tokens_in.append(prompt)
        self.tokens_out.append(answer)
        reply = chat_completion("action:[0.1, 0.9]")
        reply["usage"] = {"prompt_tokens": prompt, "completion_tokens": answer, "total_tokens": prompt + answer}
        return Reply(body=reply, delay=0.01)


def _advisor(server: LoopbackServer, **kwargs):
    from sb3_vlm.advisors.openai_compat import OpenAIAdvisor

    return OpenAIAdvisor(
        kwargs.pop("model", "test-model"), COVR_HIGHWAY, base_url=f"{server.url}/v1", api_key="sk-test", **kwargs
    )


def test_a_dollar_budget_is_never_exceeded_with_concurrent_requests_and_the_cost_matches_the_servers_usage() -> None:
    pytest.importorskip("openai")
    price = Price(1_000.0, 4_000.0)  # $1e-3 per prompt token, $4e-3 per answer token: a request costs ~$1-1.3
    billing = _Billing()
    with LoopbackServer(responder=billing) as server:
        advisor = _advisor(server, price=price, max_cost_usd=20.0, max_tokens=64, concurrency=8)
        answers = advisor.advise([_car(i) for i in range(60)])
    billed = price.cost(sum(billing.tokens_in), sum(billing.tokens_out))
    sent = len(billing.tokens_in)
    assert billed <= 20.0  # never exceeded, by what the server reported
    assert advisor.cost_usd == pytest.approx(billed) and advisor.tokens_in == sum(billing.tokens_in)
    assert advisor.tokens_out == sum(billing.tokens_out) and advisor.tokens == advisor.tokens_in + advisor.tokens_out
    # it stopped near the budget, not at the first sign of it: 8 reservations of at most 1.25 x 1000 + 64 x 4 = 1.51
    assert billed > 20.0 - 8 * 1.51 and sent >= 8
    assert sum(a.valid for a in answers) == sent == advisor.stats.queries
    assert advisor.budget_skips == 60 - sent and "cost budget spent" in answers[-1].raw
    counters = advisor_counters(advisor)
    assert counters["cost_usd"] == pytest.approx(billed) and counters["tokens_in"] == sum(billing.tokens_in)


def test_the_table_prices_a_known_model_and_a_budget_without_a_price_is_refused() -> None:
    pytest.importorskip("openai")
    with LoopbackServer([Reply(body=chat_completion("action:[0.1, 0.9]", tokens=1001))]) as server:
        known = _advisor(server, model="gpt-4o-mini")
        known.advise([_car()])
        with pytest.raises(ValueError, match="price=\\(input, output\\)"):
            _advisor(server, model="Qwen/Qwen2.5-VL-3B-Instruct", max_cost_usd=1.0)
        local = _advisor(server, model="Qwen/Qwen2.5-VL-3B-Instruct")  # no budget: tokens counted, cost unknown
        local.advise([_car()])
    assert known.price == PRICES["gpt-4o-mini"]
    assert known.tokens_in == 1000 and known.tokens_out == 1
    assert known.cost_usd == pytest.approx((1000 * 0.15 + 0.60) / 1e6)
    assert local.price is None and local.tokens == 1001 and local.cost_usd == 0.0


def test_a_resumed_run_goes_on_spending_from_what_it_had_spent() -> None:
    pytest.importorskip("openai")
    price = Price(1_000.0, 0.0)
    with LoopbackServer([Reply(body=chat_completion("action:[0.1, 0.9]", tokens=101))]) as server:
        first = _advisor(server, price=price, max_cost_usd=0.5, concurrency=1)
        first.advise([_car(i) for i in range(3)])  # 3 x $0.1
        saved = advisor_counters(first)
        resumed = _advisor(server, price=price, max_cost_usd=0.5, concurrency=1)
        restore_counters(resumed, saved)
        answers = resumed.advise([_car(i) for i in range(5)])
    assert saved["cost_usd"] == pytest.approx(0.3) and resumed.cost_usd == pytest.approx(0.4)
    # $0.3 spent before: one more ~$0.1 request fits, a second would not (its bound is 1.25 x 100 prompt tokens)
    assert [a.valid for a in answers] == [True, False, False, False, False] and resumed.budget_skips == 4


class _Fixed(PromptedAdvisor):
    """A backend that answers at once with fixed usage (no HTTP client, so it pickles)."""

    model = "gpt-4o-mini"

    def _generate(self, request: AdviceRequest, call: Call) -> Generation:
        return Generation(["action:[0.1, 0.9]"], None, 110, 100, 10)

    def _classify(self, exc: Exception) -> RetryDecision | None:
        return None


def test_a_budgeted_advisor_refuses_to_be_copied_into_another_process_and_one_without_a_budget_copies() -> None:
    budgeted = _Fixed(COVR_HIGHWAY, max_cost_usd=1.0)
    assert budgeted.advise([_car()])[0].valid  # the budget is set up at the first request
    with pytest.raises(TypeError, match="spend the whole budget"):
        pickle.dumps(budgeted)
    unpriced = _Fixed(COVR_HIGHWAY, max_cost_usd=1.0)
    unpriced.model = "my-local-model"
    assert not unpriced.advise([_car()])[0].valid and unpriced.budget_skips == 1 and unpriced.stats.queries == 0
    plain = pickle.loads(pickle.dumps(_Fixed(COVR_HIGHWAY)))
    assert plain.advise([_car()])[0].valid and plain.cost_usd == pytest.approx((100 * 0.15 + 10 * 0.60) / 1e6)


def test_cli_max_cost_usd_is_checked() -> None:
    from sb3_vlm.cli import _dollars
    from sb3_vlm.experiments.runs import advisor_kwargs

    assert _dollars("2.5") == 2.5
    for bad in ("-1", "nan", "inf", "five"):
        with pytest.raises(argparse.ArgumentTypeError):
            _dollars(bad)
    assert advisor_kwargs("openai:gpt-4o-mini", max_cost_usd=2.0) == {"max_cost_usd": 2.0}
    with pytest.raises(ValueError, match="--max-cost-usd"):
        advisor_kwargs("oracle", max_cost_usd=2.0)
