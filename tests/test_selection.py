"""Query selection (issue 18, item 1): which views the advice wrappers ask about."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.vec_env import DummyVecEnv

from sb3_vlm.advice import Advice, AdviceRequest
from sb3_vlm.advisors.scripted import CallableAdvisor, ConstantAdvisor
from sb3_vlm.envs.pendulum import make_pendulum_env
from sb3_vlm.ppo import GuidedPPO
from sb3_vlm.sac import GuidedSAC
from sb3_vlm.wrappers import (
    AllOf,
    EveryK,
    Familiar,
    Novelty,
    Paced,
    QueryBatch,
    Uncertainty,
    VecVLMAdviceWrapper,
    VLMAdviceWrapper,
)
from sb3_vlm.wrappers.selection import policy_uncertainty
from tests.helpers import ColourEnv, CounterEnv, counter_view


def _asked(advisor: CallableAdvisor) -> list[AdviceRequest]:
    return advisor.fn.seen  # type: ignore[attr-defined]


def _recording(answer: Advice | int | None = None) -> CallableAdvisor:
    seen: list[AdviceRequest] = []

    def fn(request: AdviceRequest):  # type: ignore[no-untyped-def]
        seen.append(request)
        return answer if answer is not None else np.array([0.5, 0.5], np.float32)

    fn.seen = seen  # type: ignore[attr-defined]
    return CallableAdvisor(fn, name="recording")


def _batch(steps: list[int], views: list[AdviceRequest] | None = None, t: int | None = None) -> QueryBatch:
    built: list[int] = []

    def view(j: int) -> AdviceRequest:
        built.append(j)
        assert views is not None, "this selector should not need the view"
        return views[j]

    batch = QueryBatch(np.arange(len(steps)), np.asarray(steps), [None] * len(steps), view, t)
    batch.built = built  # type: ignore[attr-defined]
    return batch


def test_every_k_asks_on_the_kth_steps_and_counts_what_it_passed_over() -> None:
    advisor = _recording()
    env = VLMAdviceWrapper(CounterEnv(), advisor, query=EveryK(3), teacher_view=counter_view)
    env.reset(seed=0)
    infos = [env.step(np.zeros(1, np.float32))[4] for _ in range(2)]
    assert not any(i["vlm_advice"].valid for i in infos[1:])
    asked_steps = [int(r.state[1]) for r in _asked(advisor)]
    assert asked_steps and all(t % 3 == 0 for t in asked_steps)
    assert env.n_skipped == env.query_selector.considered - env.query_selector.selected > 0
    with pytest.raises(ValueError, match="not both"):
        VLMAdviceWrapper(CounterEnv(), advisor, query_every=2, query=EveryK(2))
    with pytest.raises(TypeError, match="QuerySelector"):
        VLMAdviceWrapper(CounterEnv(), advisor, query=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive int"):
        EveryK(2.5)  # type: ignore[arg-type]


def test_novelty_asks_about_each_digest_max_asks_times_and_a_coarser_key_asks_less() -> None:
    views = [AdviceRequest(image=np.full((2, 2, 3), c, np.uint8)) for c in (0, 1, 0, 0, 1, 2)]
    once = Novelty()
    assert once(_batch([0] * 6, views)).tolist() == [True, True, False, False, False, True]
    twice = Novelty(max_asks=2)
    assert twice(_batch([0] * 6, views)).tolist() == [True, True, True, False, True, True]
    coarse = Novelty(key=lambda r: int(r.image[0, 0, 0]) > 0)  # two classes of views
    assert coarse(_batch([0] * 6, views)).tolist() == [True, True, False, False, False, False]
    assert (once.selected, once.considered) == (3, 6)
    state = json.loads(json.dumps(once.state_dict()))  # JSON-able, for checkpoints
    resumed = Novelty()
    resumed.load_state_dict(state)
    assert not resumed(_batch([0] * 3, views[:3])).any()  # what it had asked about stays asked about


def test_paced_never_runs_ahead_of_its_even_schedule_nor_past_its_budget() -> None:
    paced = Paced(max_queries=100, total_steps=1000, burst=5)
    assert [paced.allowance(t) for t in (0, 500, 999, 5000)] == [5, 55, 100, 100]
    first_half = Paced(max_queries=100, total_steps=1000, burst=5, horizon=0.5)  # the budget over the first half
    assert [first_half.allowance(t) for t in (0, 250, 499, 500, 900)] == [5, 55, 100, 100, 100]
    assert paced(_batch([0] * 8, t=0)).tolist() == [True] * 5 + [False] * 3  # the burst, earliest rows first
    assert paced(_batch([0] * 8, t=10)).tolist() == [True] + [False] * 7  # 5 + 100 * 10 / 1000 = 6: one more
    advisor = _recording()
    venv = VecVLMAdviceWrapper(
        DummyVecEnv([CounterEnv for _ in range(4)]),
        advisor,
        query=Paced(max_queries=40, total_steps=400, burst=2),
        teacher_view=lambda v, i, o: counter_view(None, o),  # type: ignore[arg-type]
    )
    venv.reset()
    for step in range(1, 150):  # 596 env steps, past the 400 it was paced over
        venv.step(np.zeros((4, 1), np.float32))
        assert venv.query_selector.selected <= min(40, 2 + 40 * 4 * step / 400)
    assert len(_asked(advisor)) == venv.query_selector.selected == 40


def test_all_of_passes_each_selector_only_the_rows_the_ones_before_kept() -> None:
    views = [AdviceRequest(image=np.full((2, 2, 3), c, np.uint8)) for c in (0, 0, 1, 2, 3)]
    paced = Paced(max_queries=2, total_steps=None)  # no clock: a plain cap of 2
    both = AllOf(Novelty(), paced)
    assert both(_batch([0] * 5, views)).tolist() == [True, False, True, False, False]
    assert paced.considered == 4 and paced.selected == 2  # the repeated view never reached the budget
    only_even = AllOf(EveryK(2), Novelty())
    keep = only_even(_batch([0, 1, 2, 3, 4], views))
    assert keep.tolist() == [True, False, True, False, True] and only_even.selectors[1].considered == 3


def _ppo(venv, **kwargs) -> GuidedPPO:  # type: ignore[no-untyped-def]
    return GuidedPPO("MlpPolicy", venv, n_steps=16, batch_size=16, n_epochs=1, seed=0, **kwargs)


def test_policy_uncertainty_is_the_normalised_entropy_of_the_policy_and_the_std_of_a_gaussian() -> None:
    model = _ppo(DummyVecEnv([lambda: CounterEnv(spaces.Discrete(4))]))
    net = model.policy.action_net
    with th.no_grad():
        net.weight.zero_()
        net.bias.copy_(th.log(th.tensor([0.7, 0.1, 0.1, 0.1])))
    p = np.array([0.7, 0.1, 0.1, 0.1])
    expected = -(p * np.log(p)).sum() / math.log(4)
    u = policy_uncertainty(model.policy, [np.zeros(2, np.float32), np.ones(2, np.float32)])
    np.testing.assert_allclose(u, [expected, expected], rtol=1e-5)
    with th.no_grad():
        net.bias.copy_(th.tensor([20.0, 0.0, 0.0, 0.0]))
    assert policy_uncertainty(model.policy, [np.zeros(2, np.float32)])[0] < 1e-3
    sac = GuidedSAC("MlpPolicy", DummyVecEnv([make_pendulum_env]), learning_starts=10, seed=0)
    with th.no_grad():
        sac.policy.actor.log_std.weight.zero_()
        sac.policy.actor.log_std.bias.fill_(math.log(0.3))
    np.testing.assert_allclose(policy_uncertainty(sac.policy, [np.zeros(3, np.float32)]), [0.3], rtol=1e-5)
    broken = Uncertainty(0.5)
    broken.bind(sac)
    # an observation the policy cannot read (a wrapper between the advice wrapper and the policy changed it): a
    # logged fallback to asking, never a crash mid-training
    assert broken(QueryBatch(np.zeros(1), np.zeros(1), [np.zeros(5)], lambda j: None)).tolist() == [True]  # type: ignore[arg-type,return-value]
    assert broken.failures == 1


def test_uncertainty_is_bound_to_the_learner_when_learn_starts_and_stops_asking_where_the_policy_is_sure() -> None:
    advisor = _recording(Advice(probs=np.array([0.5, 0.5], np.float32)))
    selector = Uncertainty(threshold=0.5)
    venv = DummyVecEnv([lambda: VLMAdviceWrapper(ColourEnv(), advisor, query=selector) for _ in range(2)])
    assert selector(_batch([0])).tolist() == [True]  # no learner yet: asks
    model = _ppo(venv)
    model.learn(32)
    assert selector.policy is model.policy  # bound in the per-env wrappers of a DummyVecEnv
    asked = len(_asked(advisor))
    assert asked >= 30  # a fresh policy is unsure everywhere
    with th.no_grad():  # now it is sure everywhere
        model.policy.action_net.weight.zero_()
        model.policy.action_net.bias.copy_(th.tensor([15.0, -15.0]))
    model.learn(32, reset_num_timesteps=False)
    assert len(_asked(advisor)) <= asked + 2  # at most the observations seen before the policy changed
    vec_selector = Uncertainty(0.5)
    vec = VecVLMAdviceWrapper(DummyVecEnv([ColourEnv, ColourEnv]), advisor, query=vec_selector)
    ppo = _ppo(vec)
    ppo.learn(16)
    assert vec_selector.policy is ppo.policy and vec_selector.last_uncertainty is not None


def test_selector_counts_are_logged_and_restored_with_the_advisor_counters() -> None:
    env = VLMAdviceWrapper(CounterEnv(), _recording(), query=EveryK(2), teacher_view=counter_view)
    env.reset(seed=0)
    for _ in range(9):
        _, _, term, trunc, _ = env.step(np.zeros(1, np.float32))
        if term or trunc:
            env.reset()
    _, counters = env.advice_counters()
    assert counters["query_skips"] == env.n_skipped > 0 and counters["query_selected"] == env.query_selector.selected
    fresh = VLMAdviceWrapper(CounterEnv(), _recording(), query=EveryK(2), teacher_view=counter_view)
    fresh.restore_advice_counters(counters)
    assert fresh.n_skipped == env.n_skipped and fresh.query_selector.selected == env.query_selector.selected


def test_advice_warmup_works_behind_a_vec_env_advice_wrapper() -> None:
    """Issue 18, item 3: only the per-env wrapper had `current_advice`, so `advice_warmup` silently switched itself
    off on VecVLMAdviceWrapper."""
    venv = VecVLMAdviceWrapper(DummyVecEnv([make_pendulum_env]), ConstantAdvisor(1.5))
    model = GuidedSAC("MlpPolicy", venv, method="covr", advice_warmup=True, learning_starts=30, batch_size=16, seed=0)
    with __import__("warnings").catch_warnings():
        __import__("warnings").simplefilter("error")  # no "disabled" warning
        model.learn(30)
    np.testing.assert_allclose(model.replay_buffer.actions[:30, 0, 0], 0.75)  # 1.5 scaled to [-1, 1]
    assert model.n_advised_actions == 30


def test_selector_specs() -> None:
    from sb3_vlm.wrappers.selection import selector_from_spec

    assert isinstance(selector_from_spec("every:3"), EveryK) and selector_from_spec("every:3").k == 3
    both = selector_from_spec("uncertainty:0.3+paced:50")
    assert isinstance(both, AllOf) and both.needs_learner
    assert both.selectors[0].threshold == 0.3 and both.selectors[1].max_queries == 50
    assert selector_from_spec("novelty:2").max_asks == 2
    assert selector_from_spec("familiar:4").min_visits == 4
    front = selector_from_spec("paced:100:0.5")
    assert (front.max_queries, front.horizon) == (100, 0.5)
    for bad in ("paced", "sometimes", "every:x", "uncertainty:2", "paced:100:1.5", "paced:100:0"):
        with pytest.raises(ValueError, match="query selector spec"):
            selector_from_spec(bad)


@pytest.mark.parametrize("vectorised", [False, True])
def test_views_the_cache_answers_are_advised_without_a_query_whatever_the_selector_says(vectorised: bool) -> None:
    """A cached answer costs no query, so a query-saving selector only decides about the views the cache does not
    know: with a budget of one query, the one view asked about is advised on every later visit, the other never."""
    from sb3_vlm.advisors.cache import AdviceCache

    def colour(request: AdviceRequest) -> int:
        return int(request.image.reshape(-1)[0] > 0)  # type: ignore[union-attr]

    advisor = CallableAdvisor(colour, name="colour")
    paced = Paced(max_queries=1, total_steps=None)  # no clock: a plain cap of one selected view
    if vectorised:
        venv = VecVLMAdviceWrapper(DummyVecEnv([ColourEnv, ColourEnv]), advisor, cache=AdviceCache(), query=paced)
        venv.seed(0)
        obs = venv.reset()
        seen = []
        for _ in range(20):
            colours = [int(o.reshape(-1)[0] > 0) for o in obs]
            obs, _, _, infos = venv.step(np.zeros(2, dtype=np.int64))
            seen += [(c, info["vlm_advice"]) for c, info in zip(colours, infos, strict=True)]
        upcoming = venv.current_advice
    else:
        env = VLMAdviceWrapper(ColourEnv(), advisor, cache=AdviceCache(), query=paced)
        obs, _ = env.reset(seed=0)
        seen = []
        for _ in range(40):
            colour_now = int(obs.reshape(-1)[0] > 0)
            obs, _, term, trunc, info = env.step(0)
            seen.append((colour_now, info["vlm_advice"]))
            if term or trunc:
                obs, _ = env.reset()
        upcoming = [env.current_advice]
    assert advisor.stats.queries == 1 and paced.selected == 1
    first = seen[0][0]
    advised = [(c, a) for c, a in seen if a.valid]
    assert {c for c, _ in advised} == {first}  # only the view that was asked about, ...
    assert len(advised) == sum(c == first for c, _ in seen) >= 5  # ... on every visit (cache hits after the first)
    assert all(int(np.asarray(a.action).reshape(-1)[0]) == first for _, a in advised)
    assert all(a.source == "skipped" for c, a in seen if c != first)
    # every advised visit but the first was a hit, and so are the advised views about to be acted on
    assert advisor.stats.cache_hits == len(advised) - 1 + sum(a is not None and a.valid for a in upcoming)


def test_every_k_stays_a_schedule_with_a_cache() -> None:
    """ERPv's every-10th-frame: off-schedule steps carry no advice even where the cache knows the view."""
    from sb3_vlm.advisors.cache import AdviceCache

    advisor = CallableAdvisor(lambda r: 0, name="zero")
    env = VLMAdviceWrapper(ColourEnv(length=8), advisor, cache=AdviceCache(), query=EveryK(2))
    env.reset(seed=0)
    valid = []
    for _ in range(7):
        info = env.step(0)[4]
        valid.append(info["vlm_advice"].valid)
    assert valid == [True, False, True, False, True, False, True]
    assert advisor.stats.queries <= 2  # two colours; the scheduled repeats were cache hits


def test_familiar_asks_about_a_view_from_its_min_visits_th_visit_on() -> None:
    views = [AdviceRequest(image=np.full((2, 2, 3), c, np.uint8)) for c in (0, 1, 0, 2, 0, 1, 1)]
    familiar = Familiar(min_visits=2)
    assert familiar(_batch([0] * 7, views)).tolist() == [False, False, True, False, True, True, True]
    state = json.loads(json.dumps(familiar.state_dict()))
    resumed = Familiar(min_visits=2)
    resumed.load_state_dict(state)
    assert resumed(_batch([0], views[3:4])).tolist() == [True]  # its one earlier visit was kept
    with pytest.raises(ValueError):
        Familiar(min_visits=0)


def test_paced_shared_by_per_env_wrappers_keeps_the_learners_clock() -> None:
    """A selector shared by the per-env wrappers of a DummyVecEnv sees each env's own step count in its batches;
    bound to the learner, a Paced budget follows the run's clock instead (it spent an n_envs-th of it before)."""
    paced = Paced(max_queries=100, burst=1)
    venv = DummyVecEnv([lambda: VLMAdviceWrapper(CounterEnv(), _recording(), query=paced, teacher_view=counter_view)
                        for _ in range(4)])  # fmt: skip
    model = _ppo(venv)
    model.learn(400)
    assert paced.total_steps == 400
    assert paced.selected == 100  # the whole budget by the run's end (it stopped at ~1 + 100 / 4 before)
