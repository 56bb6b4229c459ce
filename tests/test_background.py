"""Non-blocking advice: the background queue, pending rows in the buffers, and training that waits only where due."""

from __future__ import annotations

import copy
import gc
import pickle
import threading
import time

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.env_util import make_vec_env

from sb3_vlm import CallableAdvisor, GuidedPPO, GuidedSAC, VLMAdviceWrapper
from sb3_vlm.advice import Advice, AdviceRequest, PendingAdvice
from sb3_vlm.advisors.background import BackgroundAdvisor, prefers_background, request_nbytes
from sb3_vlm.advisors.base import Advisor
from sb3_vlm.advisors.cache import AdviceCache, CachedAdvisor
from sb3_vlm.advisors.openai_compat import OpenAIAdvisor
from sb3_vlm.advisors.prompts import MINIGRID_PROMPT
from sb3_vlm.buffers import AdvisedReplayBuffer, AdvisedRolloutBuffer
from sb3_vlm.callbacks import AdviceMetricsCallback
from sb3_vlm.wrappers import VecVLMAdviceWrapper
from tests.helpers import CounterEnv, counter_view


class Gated(CallableAdvisor):
    """Answers ``state[1]`` (the step counter) as a continuous action once ``gate`` is set; counts backend calls."""

    def __init__(self, delay: float = 0.0, gate: threading.Event | None = None) -> None:
        super().__init__(lambda r: np.array([float(r.state[1])], dtype=np.float32), "gated")
        self.delay, self.gate = delay, gate
        self.calls = 0
        self.threads: set[str] = set()

    def _advise(self, requests):
        self.calls += len(requests)
        self.threads.add(threading.current_thread().name)
        if self.gate is not None:
            self.gate.wait(10)
        time.sleep(self.delay)
        return super()._advise(requests)


def _req(step: float, episode: float = 0.0) -> AdviceRequest:
    obs = np.array([episode, step], dtype=np.float32)
    return AdviceRequest(image=None, context={"obs": obs.tolist()}, state=obs)


def test_submit_returns_at_once_and_answers_in_a_worker_thread() -> None:
    gate = threading.Event()
    advisor = Gated(gate=gate)
    service = BackgroundAdvisor(advisor)
    start = time.perf_counter()
    answers = service.submit([_req(3), _req(4)])
    assert time.perf_counter() - start < 0.5
    assert all(isinstance(a, PendingAdvice) and not a.valid for a in answers)
    assert not answers[0].done() and service.pending == 2
    gate.set()
    assert service.drain(5)
    assert [a.result().action[0] for a in answers] == [3.0, 4.0]  # type: ignore[union-attr,index]
    assert service.pending == 0
    assert advisor.threads == {"sb3-vlm-background"}  # the caller's thread never ran the advisor


def test_cache_hits_answer_at_once_and_identical_requests_in_flight_are_sent_once() -> None:
    gate = threading.Event()
    advisor = Gated(gate=gate)
    service = BackgroundAdvisor(CachedAdvisor(advisor, AdviceCache()))
    first, again, other = service.submit([_req(1), _req(1), _req(2)])
    assert isinstance(first, PendingAdvice) and isinstance(again, PendingAdvice)
    assert again.future is first.future and service.deduplicated == 1
    assert isinstance(other, PendingAdvice) and other.future is not first.future
    gate.set()
    service.drain(5)
    assert advisor.calls == 2  # 1 and 2, not 1 twice
    hit = service.submit([_req(1)])[0]
    assert not isinstance(hit, PendingAdvice) and hit.valid and hit.action[0] == 1.0  # type: ignore[index]
    assert advisor.stats.cache_hits == 1 and advisor.calls == 2


def test_full_queue_and_close_give_invalid_advice_never_a_hang() -> None:
    gate = threading.Event()
    service = BackgroundAdvisor(Gated(gate=gate), workers=1, max_batch=1, max_queued=2)
    answers = service.submit([_req(i) for i in range(5)])
    time.sleep(0.2)  # the worker has taken the first one and waits on the gate
    refused = [a for a in answers if not isinstance(a, PendingAdvice)]
    assert service.overflow == len(refused) >= 2
    assert all(not a.valid and a.raw == "advice queue full (2 requests)" for a in refused)
    queued = [a for a in answers if isinstance(a, PendingAdvice)][1:]
    service.close()
    assert all(a.result(1).raw == "advisor closed" for a in queued)
    gate.set()
    assert answers[0].result(5).valid  # type: ignore[union-attr]  # the one already being answered still completes
    with pytest.raises(RuntimeError, match="closed"):
        service.submit([_req(9)])


def test_an_advisor_that_raises_resolves_the_future_as_invalid() -> None:
    class Broken(Advisor):
        def _advise(self, requests):
            raise AssertionError("unreachable")

        def advise(self, requests):  # bypasses the base class's safety net on purpose
            raise ValueError("boom")

    service = BackgroundAdvisor(Broken())
    answer = service.submit([_req(0)])[0]
    assert isinstance(answer, PendingAdvice)
    result = answer.result(5)
    assert not result.valid and "boom" in result.raw


def test_pending_advice_copies_share_the_answer_and_pickling_sends_the_answer() -> None:
    gate = threading.Event()
    service = BackgroundAdvisor(Gated(gate=gate))
    pending = service.submit([_req(7)])[0]
    assert copy.deepcopy({"a": pending})["a"] is pending  # DummyVecEnv deep-copies infos
    # a SubprocVecEnv worker pickling its step waits for the answer instead of losing it
    threading.Timer(0.2, gate.set).start()
    start = time.perf_counter()
    sent = pickle.loads(pickle.dumps(pending))
    assert time.perf_counter() - start >= 0.15
    assert type(sent) is Advice and sent.valid and sent.action[0] == 7.0  # type: ignore[index]


def test_worker_threads_end_when_the_queue_is_dropped() -> None:
    service = BackgroundAdvisor(Gated(), workers=3)
    service.submit([_req(1)])
    service.drain(5)
    threads = list(service._threads)
    assert len(threads) == 3 and all(t.is_alive() for t in threads)
    del service
    gc.collect()
    for thread in threads:
        thread.join(5)
    assert not any(t.is_alive() for t in threads)


def test_default_is_background_for_vlm_backends_and_inline_for_scripted_advisors() -> None:
    api = OpenAIAdvisor("m", MINIGRID_PROMPT, base_url="http://127.0.0.1:9/v1", api_key="k")
    assert prefers_background(api) and prefers_background(CachedAdvisor(api, AdviceCache()))
    assert not prefers_background(Gated())
    env = CounterEnv()
    assert VLMAdviceWrapper(env, api, teacher_view=counter_view).non_blocking
    assert not VLMAdviceWrapper(env, Gated(), teacher_view=counter_view).non_blocking
    assert VLMAdviceWrapper(env, Gated(), teacher_view=counter_view, non_blocking=True).non_blocking


def _fake_infos(answers: list[Advice]) -> list[dict]:
    return [{"vlm_advice": a} for a in answers]


def test_replay_rows_are_masked_while_pending_and_filled_scaled_once_answered() -> None:
    space = spaces.Box(-2.0, 2.0, shape=(1,), dtype=np.float32)
    buffer = AdvisedReplayBuffer(8, spaces.Box(-1, 1, (2,)), space, device="cpu", n_envs=2)
    gate = threading.Event()
    service = BackgroundAdvisor(Gated(gate=gate))
    obs = np.zeros((2, 2), dtype=np.float32)
    act = np.zeros((2, 1), dtype=np.float32)
    ready = Advice(action=np.array([1.0], dtype=np.float32))
    buffer.add(obs, obs, act, np.zeros(2), np.zeros(2), _fake_infos([service.submit([_req(1)])[0], ready]))
    assert buffer.n_pending == 1
    assert buffer.advice_valid[0].tolist() == [0.0, 1.0] and buffer.advice_actions[0, 1, 0] == pytest.approx(0.5)
    assert buffer.resolve_pending() == 0  # not answered yet: stays masked, stays pending
    gate.set()
    service.drain(5)
    assert buffer.resolve_pending() == 1 and buffer.n_pending == 0
    assert buffer.advice_valid[0].tolist() == [1.0, 1.0]
    assert buffer.advice_actions[0, 0, 0] == pytest.approx(0.5)  # 1.0 in [-2, 2] is 0.5 in SB3's [-1, 1]
    assert buffer.advice_answered_late == 1


def test_a_pending_row_overwritten_before_its_answer_is_dropped_not_filled() -> None:
    space = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
    buffer = AdvisedReplayBuffer(2, spaces.Box(-1, 1, (2,)), space, device="cpu", n_envs=1)
    gate = threading.Event()
    service = BackgroundAdvisor(Gated(gate=gate))
    obs, act, zero = np.zeros((1, 2), dtype=np.float32), np.zeros((1, 1), dtype=np.float32), np.zeros(1)
    buffer.add(obs, obs, act, zero, zero, _fake_infos(service.submit([_req(0.5)])))  # row 0, pending
    buffer.add(obs, obs, act, zero, zero, _fake_infos([Advice.invalid()]))  # row 1
    assert pickle.loads(pickle.dumps(buffer)).n_pending == 0  # handles are not pickled (checkpoints)
    buffer.add(obs, obs, act, zero, zero, _fake_infos([Advice.invalid()]))  # row 0 again: the pending row is gone
    gate.set()
    service.drain(5)
    assert buffer.resolve_pending() == 0 and buffer.advice_expired == 1
    assert buffer.advice_valid[0, 0] == 0.0  # the newer transition keeps its own (absent) advice


def test_rollout_waits_until_the_deadline_then_leaves_rows_masked() -> None:
    space = spaces.Discrete(3)
    buffer = AdvisedRolloutBuffer(2, spaces.Box(-1, 1, (2,)), space, device="cpu", n_envs=2)
    buffer.reset()
    never = threading.Event()
    slow = BackgroundAdvisor(CallableAdvisor(lambda r: 2, "two"))
    stuck = BackgroundAdvisor(Gated(gate=never))
    for _ in range(2):
        answers = [slow.submit([_req(0)])[0], stuck.submit([_req(1)])[0]]
        targets = np.zeros((2, 3), dtype=np.float32)
        pending = [(i, a) for i, a in enumerate(answers) if isinstance(a, PendingAdvice)]
        buffer.add_advice(targets, np.zeros(2, dtype=np.float32), pending)
        buffer.add(np.zeros((2, 2)), np.zeros((2, 1)), np.zeros(2), np.zeros(2), th.zeros(2), th.zeros(2))
    start = time.perf_counter()
    arrived, missed = buffer.wait_for_advice(0.3)
    waited = time.perf_counter() - start
    assert 0.25 <= waited < 2.0  # waited for the stuck ones up to the deadline, not beyond
    assert missed == 2 and arrived <= 2  # the instant advisor's answers were mostly filled in at add time
    assert buffer.advice_valid[:, 1].tolist() == [0.0, 0.0]  # the stuck env's rows stay masked
    assert buffer.advice_valid[:, 0].tolist() == [1.0, 1.0] and buffer.advice_targets[:, 0].argmax(1).tolist() == [2, 2]
    never.set()


def _ppo(
    non_blocking: bool, delay: float, seed: int = 0, advice_wait: float = 10.0
) -> tuple[GuidedPPO, VecVLMAdviceWrapper]:
    def teacher(r: AdviceRequest):
        return int(r.state[1]) % 2  # depends on the observation: a misaligned row would show

    advisor = CallableAdvisor(teacher, "parity")
    inner = advisor._advise
    advisor._advise = lambda requests: (time.sleep(delay), inner(requests))[1]  # type: ignore[method-assign]
    venv = make_vec_env(lambda: CounterEnv(spaces.Discrete(2)), n_envs=3, seed=seed)
    venv = VecVLMAdviceWrapper(
        venv, advisor, teacher_view=lambda v, i, o: counter_view(None, o), non_blocking=non_blocking
    )
    model = GuidedPPO(
        "MlpPolicy", venv, n_steps=16, batch_size=24, n_epochs=2, teacher_coef=1.0, seed=seed, advice_wait=advice_wait
    )
    return model, venv


def test_on_policy_training_is_identical_to_blocking_advice_when_answers_meet_the_deadline() -> None:
    blocking, _ = _ppo(non_blocking=False, delay=0.0)
    blocking.learn(96)
    background, venv = _ppo(non_blocking=True, delay=0.01)
    metrics = AdviceMetricsCallback()
    background.learn(96, callback=metrics)
    assert venv.background is not None and venv.background.drain(5)  # the last step's requests may be in flight
    latest = metrics.record()
    assert latest["advisor/queries"] == venv.background.submitted and latest["advisor/pending"] == 0
    assert latest["advisor/overflow"] == 0 and latest["advisor/deduplicated"] == 0
    assert venv.background is not None and venv.background.submitted > 0
    assert np.array_equal(blocking.rollout_buffer.advice_valid, background.rollout_buffer.advice_valid)
    assert np.array_equal(blocking.rollout_buffer.advice_targets, background.rollout_buffer.advice_targets)
    for a, b in zip(blocking.policy.parameters(), background.policy.parameters(), strict=True):
        assert th.equal(a, b)
    assert background.logger.name_to_value.get("train/advice_missed", 0) == 0


def test_on_policy_rows_past_the_deadline_stay_masked_and_training_goes_on() -> None:
    model, _ = _ppo(non_blocking=True, delay=0.05, advice_wait=0.0)
    with pytest.warns(UserWarning, match="raise advice_wait"):  # most rows missed: said once, not silently
        model.learn(48)
    valid = model.rollout_buffer.advice_valid
    assert valid.mean() < 1.0  # some answers missed the (zero) deadline
    assert model._advice_missed > 0 and model.num_timesteps == 48


def test_guided_sac_fills_pending_rows_before_training_and_in_checkpoints() -> None:
    advisor = Gated(delay=0.02)
    env = VLMAdviceWrapper(CounterEnv(), advisor, teacher_view=counter_view, non_blocking=True)
    model = GuidedSAC("MlpPolicy", env, method="dpl", learning_starts=16, batch_size=8, buffer_size=1000, seed=0)
    model.learn(120)
    buffer = model.replay_buffer
    assert env.background is not None
    env.background.drain(5)
    buffer.resolve_pending()
    n = buffer.pos
    assert buffer.n_pending == 0 and buffer.advice_valid[:n].mean() == 1.0
    # every row holds the advice for its own observation (the step counter), scaled like SB3's actions
    expected = buffer.scale_advice(buffer.observations[:n, 0, 1:2])
    assert np.allclose(buffer.advice_actions[:n, 0], expected)
    assert buffer.advice_answered_late > 0  # some answers arrived after their step was stored


def test_per_env_non_blocking_wrappers_in_subprocess_workers_send_answers_not_handles() -> None:
    from stable_baselines3.common.vec_env import SubprocVecEnv

    venv = make_vec_env(
        CounterEnv,
        n_envs=2,
        seed=0,
        vec_env_cls=SubprocVecEnv,
        wrapper_class=VLMAdviceWrapper,
        wrapper_kwargs=dict(advisor=Gated(delay=0.01), teacher_view=counter_view, non_blocking=True),
    )
    try:
        obs = venv.reset()
        for _ in range(6):
            acted_on = obs.copy()
            obs, _, _, infos = venv.step(np.zeros((2, 1), dtype=np.float32))
            for i, info in enumerate(infos):
                advice = info["vlm_advice"]
                assert type(advice) is Advice and advice.valid and advice.action[0] == acted_on[i, 1]
    finally:
        venv.close()


def test_queue_is_bounded_by_bytes_too_and_refusals_are_counted_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    """Issue 17, item 3: the queue was bounded by count only (100,000, not settable from the wrappers): with a hanging
    server and 256×256 views, 3,070 pending requests held 965 MB."""
    gate = threading.Event()
    views = [AdviceRequest(image=np.full((256, 256, 3), i, np.uint8), state=np.array([0.0, i])) for i in range(10)]
    each = request_nbytes(views[0])
    assert each == 256 * 256 * 3 + 1024
    service = BackgroundAdvisor(Gated(gate=gate), workers=1, max_batch=1, max_queued_bytes=3 * each)
    with caplog.at_level("WARNING", "sb3_vlm.advisors.background"):
        answers = service.submit(views)
    refused = [a for a in answers if not isinstance(a, PendingAdvice)]
    assert len(refused) == 7 == service.overflow == service.refused["bytes"] and service.refused["requests"] == 0
    assert all(a.raw == "advice queue full (0.6 MiB of teacher views)" for a in refused)
    assert service.pending == 3 and service.pending_bytes == 3 * each
    assert caplog.text.count("Advice queue full (0.6 MiB of teacher views)") == 1  # logged once, with its reason
    gate.set()
    assert service.drain(5) and service.pending_bytes == 0  # answered requests give their bytes back
    assert len([a for a in service.submit(views[3:6]) if isinstance(a, PendingAdvice)]) == 3
    # the wrappers expose the bounds
    env = VLMAdviceWrapper(CounterEnv(), Gated(), teacher_view=counter_view, non_blocking=True, max_queued=7,
                           max_queued_bytes=12_345, max_wait=0.5)  # fmt: skip
    venv = VecVLMAdviceWrapper(make_vec_env(CounterEnv, n_envs=2), Gated(), non_blocking=True, max_queued_bytes=None)
    assert env.background is not None and venv.background is not None
    assert (env.background.max_queued, env.background.max_queued_bytes, env.background.max_wait) == (7, 12_345, 0.5)
    assert venv.background.max_queued_bytes is None


def test_waits_for_a_pending_answer_are_bounded_by_max_wait() -> None:
    """Issue 17, item 1: current_advice and a pending answer crossing a process boundary waited with no deadline."""
    never = threading.Event()
    service = BackgroundAdvisor(Gated(gate=never), max_wait=0.3)
    pending = service.submit([_req(7)])[0]
    start = time.perf_counter()
    sent = pickle.loads(pickle.dumps(pending))  # what a SubprocVecEnv worker does with its step's info
    assert 0.25 <= time.perf_counter() - start < 2.0
    assert type(sent) is Advice and not sent.valid and "max_wait=0.3" in sent.raw and service.late == 1

    gate = threading.Event()
    env = VLMAdviceWrapper(CounterEnv(), Gated(gate=gate), teacher_view=counter_view, non_blocking=True, max_wait=0.3)
    env.reset(seed=0)
    start = time.perf_counter()
    current = env.current_advice
    assert current is not None and not current.valid and time.perf_counter() - start < 2.0
    assert env.background is not None and env.background.late == 1
    gate.set()
    _, _, _, _, info = env.step(np.zeros(1, dtype=np.float32))
    handle = info["vlm_advice"]
    assert isinstance(handle, PendingAdvice) and handle.result(5).valid  # the late answer still fills its row
    assert handle.result(5).action[0] == 0.0  # type: ignore[index]  # for the reset's observation (step 0)
    never.set()
    service.close()
    env.close()
