"""COVR's loop: D_f collection, the fine-tunable table advisor, the callback with GuidedPPO / GuidedA2C / GuidedSAC."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv

from sb3_vlm import GuidedA2C, GuidedPPO, GuidedSAC
from sb3_vlm.advice import REQUEST_INFO_KEY, AdviceRequest
from sb3_vlm.advisors import AdviceCache, CachedAdvisor, CallableAdvisor, ConstantAdvisor, NearestNeighbourAdvisor
from sb3_vlm.advisors.prompts import MINIGRID_PROMPT, PENDULUM_PROMPT, PromptTemplate
from sb3_vlm.finetune import (
    Example,
    FineTuneResult,
    TrajectoryCollector,
    VLMFineTuneCallback,
    policy_entropy,
)
from sb3_vlm.wrappers import VecVLMAdviceWrapper, VLMAdviceWrapper
from tests.helpers import ColourEnv


def _request(i: int) -> AdviceRequest:
    return AdviceRequest(image=np.full((2, 2, 3), i, dtype=np.uint8), action_space=spaces.Discrete(2))


# ---------------------------------------------------------------------- D_f


def test_returns_to_go_across_auto_resets_with_two_envs() -> None:
    collector = TrajectoryCollector(n_envs=2, gamma=0.5)
    # env 0: episode A = rewards 1, 2 (ends at step 2), then episode B = 4 (ends at step 3), then an unfinished C
    # env 1: one episode of rewards 0, 0, 8 (ends at step 3); its second step was not shown to the teacher
    steps = [
        ([_request(1), _request(11)], [1.0, 0.0], [False, False]),
        ([_request(2), {}], [2.0, 0.0], [True, False]),
        ([_request(3), _request(13)], [4.0, 8.0], [True, True]),
        ([_request(4), _request(14)], [16.0, 0.0], [False, False]),
    ]
    for requests, rewards, dones in steps:
        infos = [{REQUEST_INFO_KEY: r} if isinstance(r, AdviceRequest) else {} for r in requests]
        collector.add(infos, np.array([0, 1]), np.array(rewards), np.array(dones))
    got = {int(s.request.image[0, 0, 0]): s.ret for s in collector.samples}
    assert got == {1: 1 + 0.5 * 2, 2: 2.0, 3: 4.0, 11: 0 + 0.5 * 0 + 0.25 * 8, 13: 8.0}  # step 12 had no view
    assert collector.n_episodes == 3
    collector.clear()
    assert len(collector) == 0
    collector.add([{}, {}], np.array([0, 0]), np.array([32.0, 0.0]), np.array([True, False]))
    # the unfinished episode survived the clear: its first step (view 4) now has g = 16 + 0.5 * 32
    assert [(int(s.request.image[0, 0, 0]), s.ret) for s in collector.samples] == [(4, 32.0)]


def test_reservoir_caps_df_uniformly() -> None:
    collector = TrajectoryCollector(n_envs=1, gamma=0.0, max_samples=50, seed=0)
    for i in range(1000):
        collector.add([{REQUEST_INFO_KEY: _request(i % 256)}], np.array([0]), np.array([float(i)]), np.array([True]))
    assert len(collector) == 50 and collector.n_seen == 1000
    assert 300 < collector.returns().mean() < 700  # a uniform sample of 0..999, not the first or last 50


def test_collector_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="gamma"):
        TrajectoryCollector(1, gamma=1.5)
    with pytest.raises(ValueError, match="n_envs"):
        TrajectoryCollector(0, gamma=0.9)


# ---------------------------------------------------------------------- answer format


def test_format_answer_is_the_prompts_format_and_parses_back() -> None:
    box = spaces.Box(-2.0, 2.0, shape=(1,))
    assert PENDULUM_PROMPT.format_answer(np.array([1.23456]), box) == "action:[1.23]"
    assert PENDULUM_PROMPT.format_answer(np.array([-0.001]), box) == "action:[0.00]"  # no "-0.00"
    assert PENDULUM_PROMPT.format_answer(np.array([7.0]), box) == "action:[2.00]"  # clipped to the space
    assert MINIGRID_PROMPT.format_answer(np.array(2), spaces.Discrete(7)) == "forward"
    named = PromptTemplate(
        "t", "u", action_names=("steer", "throttle"), answer_template="throttle:{throttle}\nsteer:{steer}"
    )
    assert named.format_answer([-0.5, 0.25], spaces.Box(-1, 1, shape=(2,))) == "throttle:0.25\nsteer:-0.50"
    assert named.identity != named.with_(answer_template="").identity
    with pytest.raises(ValueError, match="non-finite"):
        PENDULUM_PROMPT.format_answer(np.array([np.nan]), box)
    with pytest.raises(ValueError, match="no label"):
        MINIGRID_PROMPT.format_answer(np.array(9), spaces.Discrete(10))


# ---------------------------------------------------------------------- the fine-tunable table advisor


def test_table_advisor_learns_weighted_votes_and_changes_identity() -> None:
    base = ConstantAdvisor(1)
    table = NearestNeighbourAdvisor(base)
    a, b = _request(1), _request(2)
    assert [int(x.action[0]) for x in table.advise([a, b])] == [1, 1]  # all from the base
    identity = table.identity
    result = table.finetune([Example(a, np.array(0), 0.9), Example(a, np.array(1), 0.3), Example(b, np.array(1), 0.0)])
    assert result.ok and result.examples == 2 and result.loss == pytest.approx((0.9 * 1 + 0.3 * 0) / 1.2)
    answers = table.advise([a, b])
    np.testing.assert_allclose(answers[0].probs, [0.75, 0.25])  # the weighted vote: 0.9 vs 0.3
    assert int(answers[1].action[0]) == 1  # weight 0 was not stored: b still comes from the base
    assert table.identity != identity and table.n_from_table == 1
    soft = NearestNeighbourAdvisor(base, smoothing=0.2)
    soft.finetune([Example(a, np.array(0), 0.9), Example(a, np.array(1), 0.3)])
    np.testing.assert_allclose(soft.advise([a])[0].probs, [0.8 * 0.75 + 0.1, 0.8 * 0.25 + 0.1], rtol=1e-6)
    assert soft.identity != table.identity


def test_table_advisor_nearest_neighbour_and_continuous_mean() -> None:
    box = spaces.Box(-1, 1, shape=(1,))
    table = NearestNeighbourAdvisor(
        ConstantAdvisor(0.0), features=lambda r: np.array(r.context["x"], dtype=float), radius=0.5
    )
    near, far = (AdviceRequest(image=None, context={"x": [x]}, action_space=box) for x in (0.2, 3.0))
    table.finetune([Example(AdviceRequest(None, {"x": [0.0]}, box), np.array([0.6]), 1.0)])
    table.finetune([Example(AdviceRequest(None, {"x": [0.1]}, box), np.array([0.0]), 0.5)])  # same view (radius)
    got = table.advise([near, far])
    assert got[0].action[0] == pytest.approx((0.6 * 1.0 + 0.0 * 0.5) / 1.5)
    assert got[1].action[0] == 0.0 and table.rounds == 2


# ---------------------------------------------------------------------- the callback


def _colour_oracle(request: AdviceRequest) -> int:
    return int(request.image[0, 0, 0] > 127)


def _accuracy(advisor: NearestNeighbourAdvisor) -> float:
    env = ColourEnv()
    requests = []
    for colour in (0, 1):
        env.colour = colour
        requests.append(env.teacher_request())
    answers = advisor.advise(requests)
    return float(
        np.mean(
            [
                int(np.argmax(a.probs)) == c if a.probs is not None else int(a.action[0]) == c
                for c, a in enumerate(answers)
            ]
        )
    )


@pytest.mark.parametrize("algo", [GuidedPPO, GuidedA2C])
def test_callback_rounds_schedule_cold_start_and_better_advice(tmp_path: Path, algo: type) -> None:
    table = NearestNeighbourAdvisor(ConstantAdvisor(0))  # always "left": right on black only
    env = make_vec_env(ColourEnv, n_envs=2, seed=0, wrapper_class=VLMAdviceWrapper, wrapper_kwargs={"advisor": table})
    ft = VLMFineTuneCallback(table, psi0=64, gamma=0.5, start_guidance_after=2, save_dir=tmp_path, seed=0)
    assert _accuracy(table) == 0.5
    kwargs = {"n_steps": 16} if algo is GuidedPPO else {"n_steps": 8}
    model = algo("MlpPolicy", env, seed=0, teacher_coef=1.0, **kwargs)
    model.learn(64 + 64 + 128 + 8, callback=[ft])
    history = ft.history
    assert [h["round"] for h in history] == [1, 2, 3]
    assert [h["next_interval"] for h in history] == [64, 128, 384]  # ψ: 64, 64, 128, 384 (ψ0 = 64)
    assert [h["timesteps"] for h in history] == [64, 128, 256]
    assert [h["guidance_enabled"] for h in history] == [False, True, True]
    for h in history:
        assert h["ok"] and h["selected"] > 0 and 0 < h["mean_weight"] <= 1
        assert h["df_size"] >= h["selected"]
    # g > 1 exactly when the step was rewarded (γ = 0.5): EDDF keeps right actions, so the table now knows white too
    assert _accuracy(table) == 1.0
    lines = [json.loads(line) for line in (tmp_path / "rounds.jsonl").read_text().splitlines()]
    assert [line["round"] for line in lines] == [1, 2, 3]
    kept = len(ft.collector)
    model.learn(8, callback=[ft], reset_num_timesteps=False)  # a second learn() call goes on, D_f included
    assert len(ft.history) == 3 and len(ft.collector) >= kept and ft.steps_since_round > 8


def test_callback_with_sac_continuous_and_vec_wrapper(tmp_path: Path) -> None:
    class Reach(gym.Env):
        """Reward −|a − target| with a per-episode target the teacher sees as context."""

        observation_space = spaces.Box(-1, 1, shape=(1,))
        action_space = spaces.Box(-1, 1, shape=(1,))

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            self.target, self.t = float(self.np_random.choice([-0.5, 0.5])), 0
            return np.array([self.target], dtype=np.float32), {}

        def step(self, action):
            self.t += 1
            reward = -abs(float(action[0]) - self.target)
            return np.array([self.target], dtype=np.float32), reward, False, self.t >= 5, {}

        def teacher_request(self):
            return AdviceRequest(image=None, context={"target": self.target}, action_space=self.action_space)

    table = NearestNeighbourAdvisor(ConstantAdvisor(0.0))
    venv = VecVLMAdviceWrapper(DummyVecEnv([Reach, Reach]), table)
    ft = VLMFineTuneCallback(table, psi0=40, start_guidance_after=1, save_dir=tmp_path)
    model = GuidedSAC("MlpPolicy", venv, method="covr", learning_starts=20, seed=0, policy_kwargs={"net_arch": [16]})
    assert model.guidance_enabled
    model.learn(90, callback=ft)
    assert [h["timesteps"] for h in ft.history] == [40, 80]
    assert all(h["ok"] for h in ft.history) and np.isfinite(ft.history[0]["entropy"])
    assert model.guidance_enabled and ft.history[0]["guidance_enabled"]
    assert len(table) > 0 and table.n_from_table > 0  # the env's advice now comes from what was stored


def test_policy_entropy_of_a_fresh_discrete_policy_is_near_log_n() -> None:
    env = make_vec_env(ColourEnv, n_envs=1, seed=0)
    model = GuidedPPO("MlpPolicy", env, n_steps=16, seed=0)
    assert np.isnan(policy_entropy(model))  # nothing collected yet
    model.learn(16)
    assert policy_entropy(model) == pytest.approx(np.log(2), abs=0.05)


class _Failing:
    def __init__(self) -> None:
        self.calls = 0

    def finetune(self, examples: list[Example], round_dir: Path | None = None) -> FineTuneResult:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("backend exploded")
        return FineTuneResult(ok=False, message="job failed")


def test_failed_rounds_keep_training_and_df(tmp_path: Path) -> None:
    oracle = CallableAdvisor(_colour_oracle, name="colour")
    env = make_vec_env(ColourEnv, n_envs=1, seed=0, wrapper_class=VLMAdviceWrapper, wrapper_kwargs={"advisor": oracle})
    backend = _Failing()
    ft = VLMFineTuneCallback(oracle, psi0=32, gamma=0.0, backend=backend, start_guidance_after=1, save_dir=tmp_path)
    model = GuidedPPO("MlpPolicy", env, n_steps=32, seed=0)
    model.learn(96, callback=ft)
    assert model.num_timesteps == 96 and backend.calls == 2
    assert ft.failed_rounds == 2 and not any(h["ok"] for h in ft.history)
    assert "backend exploded" in ft.history[0]["message"]
    assert ft.history[1]["df_size"] > ft.history[0]["df_size"]  # D_f kept after the failures
    assert not model.guidance_enabled  # failed rounds do not end the cold start


def test_callback_refuses_what_it_cannot_do(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(TypeError, match="Cannot fine-tune"):
        VLMFineTuneCallback(ConstantAdvisor(0))
    table = NearestNeighbourAdvisor(ConstantAdvisor(0))
    assert VLMFineTuneCallback(CachedAdvisor(table, AdviceCache())).advisor is table  # the cache is not fine-tuned
    with pytest.raises(ValueError, match="psi0"):
        VLMFineTuneCallback(NearestNeighbourAdvisor(ConstantAdvisor(0)), psi0=0)
    from stable_baselines3 import PPO

    table = NearestNeighbourAdvisor(ConstantAdvisor(0))
    env = make_vec_env(ColourEnv, n_envs=1, seed=0)  # no advice wrapper at all
    with pytest.raises(TypeError, match="guided algorithm"):
        PPO("MlpPolicy", env, n_steps=16).learn(
            16, callback=VLMFineTuneCallback(table, start_guidance_after=1, save_dir=tmp_path)
        )
    with caplog.at_level("WARNING"):
        PPO("MlpPolicy", env, n_steps=16).learn(16, callback=VLMFineTuneCallback(table, psi0=8, save_dir=tmp_path))
    assert "not the advisor being fine-tuned" in caplog.text
    assert "none of their steps carried a teacher view" in caplog.text


def test_round_selects_with_eddf_select_not_an_inline_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 17 item 16: the callback's selection is :func:`eddf_select` itself (one definition of EDDF)."""
    import sb3_vlm.finetune.callback as callback_module
    from sb3_vlm.finetune.selection import eddf_select

    calls: list[tuple[np.ndarray, float]] = []

    def spy(returns: np.ndarray, entropy: float) -> np.ndarray:
        calls.append((returns, entropy))
        return eddf_select(returns, entropy)

    monkeypatch.setattr(callback_module, "eddf_select", spy)
    table = NearestNeighbourAdvisor(ConstantAdvisor(0))
    env = make_vec_env(ColourEnv, n_envs=1, seed=0, wrapper_class=VLMAdviceWrapper, wrapper_kwargs={"advisor": table})
    ft = VLMFineTuneCallback(table, psi0=32, gamma=0.5, save_dir=tmp_path, seed=0)
    GuidedPPO("MlpPolicy", env, n_steps=32, seed=0).learn(32, callback=ft)
    assert len(calls) == 1 == len(ft.history)
    assert ft.history[0]["selected"] == eddf_select(*calls[0]).size
