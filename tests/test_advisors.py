from __future__ import annotations

import numpy as np
import pytest
from gymnasium import spaces

from sb3_vlm.advice import Advice, AdviceRequest
from sb3_vlm.advisors import CallableAdvisor, ConstantAdvisor, NoisyAdvisor, RandomAdvisor
from sb3_vlm.advisors.base import Advisor

DISCRETE = spaces.Discrete(4)
BOX = spaces.Box(np.array([-1.0, 0.0]), np.array([1.0, 2.0]))


def _requests(space: spaces.Space, n: int) -> list[AdviceRequest]:
    return [AdviceRequest(image=None, context={"i": i}, action_space=space) for i in range(n)]


def _oracle(space: spaces.Space) -> CallableAdvisor:
    def fn(r: AdviceRequest) -> Advice:
        if isinstance(space, spaces.Discrete):
            probs = np.full(4, 0.025)
            probs[r.context["i"] % 4] = 0.925
            return Advice(probs=probs, source="oracle")
        return Advice(action=np.array([0.5, 1.5], dtype=np.float32), source="oracle")

    return CallableAdvisor(fn, name="test-oracle")


def test_noisy_reliability_one_is_identity_zero_is_always_wrong() -> None:
    reqs = _requests(DISCRETE, 200)
    exact = NoisyAdvisor(_oracle(DISCRETE), reliability=1.0, seed=0).advise(reqs)
    assert all(a.probs.argmax() == i % 4 for i, a in enumerate(exact))
    wrong = NoisyAdvisor(_oracle(DISCRETE), reliability=0.0, seed=0).advise(reqs)
    assert all(a.probs.argmax() != i % 4 for i, a in enumerate(wrong))
    # the corrupted answer keeps the base's smoothing and is a distribution
    for a in wrong:
        np.testing.assert_allclose(a.probs.sum(), 1.0, rtol=1e-6)
        np.testing.assert_allclose(np.sort(a.probs), [0.025, 0.025, 0.025, 0.925], rtol=1e-5)
    # every wrong action is used
    assert {int(a.probs.argmax()) for a in wrong} == {0, 1, 2, 3}


def test_noisy_reliability_rate_and_seed() -> None:
    reqs = _requests(DISCRETE, 2000)
    advisor = NoisyAdvisor(_oracle(DISCRETE), reliability=0.8, seed=1)
    answers = advisor.advise(reqs)
    wrong = np.mean([a.probs.argmax() != i % 4 for i, a in enumerate(answers)])
    assert 0.17 < wrong < 0.23
    assert advisor.n_corrupted == round(wrong * 2000)
    again = NoisyAdvisor(_oracle(DISCRETE), reliability=0.8, seed=1).advise(reqs)
    assert all(np.array_equal(a.probs, b.probs) for a, b in zip(answers, again, strict=True))


def test_noisy_continuous_modes() -> None:
    reqs = _requests(BOX, 50)
    adversarial = NoisyAdvisor(_oracle(BOX), reliability=0.0, mode="adversarial").advise(reqs)
    for a in adversarial:  # mirrored through the centre of the box
        np.testing.assert_allclose(a.action, [-0.5, 0.5])
    rand = NoisyAdvisor(_oracle(BOX), reliability=0.0, seed=0, mode="random").advise(reqs)
    acts = np.stack([a.action for a in rand])
    assert np.all(acts >= BOX.low) and np.all(acts <= BOX.high)
    assert acts.std(axis=0).min() > 0.1
    with pytest.raises(ValueError):
        NoisyAdvisor(_oracle(BOX), reliability=1.5)


def test_constant_and_random_advisors() -> None:
    zeros = ConstantAdvisor().advise(_requests(BOX, 3))
    assert all(np.array_equal(a.action, [0.0, 0.0]) for a in zeros)
    disc = ConstantAdvisor(2).advise(_requests(DISCRETE, 2))
    assert all(int(a.action[0]) == 2 for a in disc)
    rand = RandomAdvisor(seed=0).advise(_requests(DISCRETE, 100))
    assert {int(a.action[0]) for a in rand} == {0, 1, 2, 3}


def test_callable_advisor_conversions() -> None:
    req = _requests(DISCRETE, 1)[0]
    assert CallableAdvisor(lambda r: 3).advise_one(req).action[0] == 3
    np.testing.assert_allclose(CallableAdvisor(lambda r: np.ones(4) / 4).advise_one(req).probs, np.ones(4) / 4)
    assert not CallableAdvisor(lambda r: None).advise_one(req).valid


class _Broken(Advisor):
    def _advise(self, requests):
        raise ConnectionError("teacher down")


class _Short(Advisor):
    def _advise(self, requests):
        return [Advice(action=np.zeros(1))]


def test_backend_failures_become_counted_invalid_advice() -> None:
    broken = _Broken()
    answers = broken.advise(_requests(DISCRETE, 3))
    assert [a.valid for a in answers] == [False] * 3
    assert "teacher down" in answers[0].raw
    assert broken.stats.errors == 3 and broken.stats.invalid == 3 and broken.stats.queries == 3
    short = _Short()
    assert [a.valid for a in short.advise(_requests(DISCRETE, 2))] == [False, False]
    assert short.stats.errors == 2
