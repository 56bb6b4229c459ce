from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.vec_env import DummyVecEnv

from sb3_vlm import GuidedPPO
from sb3_vlm.advice import Advice, AdviceRequest
from sb3_vlm.advisors import CallableAdvisor
from sb3_vlm.wrappers import VecVLMAdviceWrapper, VLMAdviceWrapper
from tests.helpers import CounterEnv, counter_view


def _echo(request: AdviceRequest) -> Advice:
    """Advice that names the observation it was computed for: action = episode * 100 + step."""
    episode, t = request.state
    return Advice(action=np.array([episode * 100 + t], dtype=np.float32), source="echo")


def _collect(query_every: int, n_envs: int = 2, n_steps: int = 40) -> GuidedPPO:
    def make(i: int):
        def _init():
            env = CounterEnv()
            env.reset(seed=i)
            return VLMAdviceWrapper(
                env, CallableAdvisor(_echo, "echo"), query_every=query_every, teacher_view=counter_view
            )

        return _init

    vec = DummyVecEnv([make(i) for i in range(n_envs)])
    vec.seed(0)
    model = GuidedPPO("MlpPolicy", vec, n_steps=n_steps, batch_size=n_steps * n_envs, seed=0, device="cpu")
    _, callback = model._setup_learn(n_steps * n_envs, None)
    assert model.collect_rollouts(model.env, callback, model.rollout_buffer, n_rollout_steps=n_steps)
    return model


def test_advice_is_aligned_with_the_observation_acted_on_across_auto_resets() -> None:
    model = _collect(query_every=1)
    buf = model.rollout_buffer
    obs = buf.observations  # (n_steps, n_envs, 2): the observation each action was taken on
    assert buf.episode_starts[1:].sum() >= 8  # several auto-resets happened in both envs
    assert buf.advice_valid.all()
    np.testing.assert_array_equal(buf.advice_targets[..., 0], obs[..., 0] * 100 + obs[..., 1])


def test_query_every_masks_skipped_steps() -> None:
    model = _collect(query_every=3)
    buf = model.rollout_buffer
    t = buf.observations[..., 1]
    np.testing.assert_array_equal(buf.advice_valid, (t % 3 == 0).astype(np.float32))
    valid = buf.advice_valid > 0
    np.testing.assert_array_equal(buf.advice_targets[valid][:, 0], (buf.observations[..., 0] * 100 + t)[valid])


def test_terminal_observations_are_not_queried() -> None:
    seen: list[tuple[float, float]] = []

    def record(request: AdviceRequest) -> Advice:
        seen.append(tuple(request.state))
        return _echo(request)

    env = CounterEnv()
    wrapped = VLMAdviceWrapper(env, CallableAdvisor(record, "rec"), teacher_view=counter_view)
    wrapped.reset(seed=0)
    done, steps = False, 0
    while not done:
        _, _, done, _, info = wrapped.step(env.action_space.sample())
        steps += 1
        assert info["vlm_advice"].action[0] == seen[steps - 1][0] * 100 + seen[steps - 1][1]
    assert len(seen) == steps  # one query per observation acted on, none for the terminal one
    assert wrapped.current_advice is None


def test_wrapper_passes_check_env_and_validates_arguments() -> None:
    def view(env, obs):
        return AdviceRequest(image=None, context={"obs": obs.tolist()})

    # the render and close checks re-create the env from its spec, which deliberately does not record the advisor
    env = VLMAdviceWrapper(gym.make("CartPole-v1"), CallableAdvisor(lambda r: 1, "one"), teacher_view=view)
    check_env(env, skip_render_check=True, skip_close_check=True)
    for bad in (0, 2.5, 2.0, True, "2"):  # a float k used to ask on the steps where step % k == 0
        with pytest.raises(ValueError, match="positive int"):
            VLMAdviceWrapper(CounterEnv(), CallableAdvisor(_echo), query_every=bad)  # type: ignore[arg-type]
    assert VLMAdviceWrapper(CounterEnv(), CallableAdvisor(_echo), query_every=np.int64(3)).query_every == 3
    with pytest.raises(ValueError, match="positive int"):
        VecVLMAdviceWrapper(DummyVecEnv([CounterEnv]), CallableAdvisor(_echo), query_every=2.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        VLMAdviceWrapper(CounterEnv(), advisor=lambda r: None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="teacher view"):
        VLMAdviceWrapper(CounterEnv(), CallableAdvisor(_echo)).reset()


def test_advisor_counters_saved_in_a_checkpoint_are_restored_on_resume(tmp_path) -> None:
    """Issue 17, item 4: state.json saved the advisor counters, but a resumed run started them from zero."""
    pytest.importorskip("openai")
    from sb3_vlm.advisors.openai_compat import OpenAIAdvisor
    from sb3_vlm.advisors.prompts import PENDULUM_PROMPT
    from sb3_vlm.checkpoint import VLMCheckpointCallback, load_checkpoint
    from sb3_vlm.envs.pendulum import make_pendulum_env
    from sb3_vlm.sac import GuidedSAC
    from sb3_vlm.testing import LoopbackServer, Reply, chat_completion

    ok = Reply(body=chat_completion("action:[0.5]", tokens=7))
    down = Reply(status=503, body={"error": {"message": "x"}})
    with LoopbackServer([ok, down, ok, down, down, ok]) as server:  # the last one repeats

        def make_env() -> VLMAdviceWrapper:
            advisor = OpenAIAdvisor("m", PENDULUM_PROMPT, base_url=f"{server.url}/v1", api_key="none", max_retries=1,
                                    max_backoff=0.01)  # fmt: skip
            return VLMAdviceWrapper(make_pendulum_env(), advisor, non_blocking=False)

        env = make_env()
        model = GuidedSAC("MlpPolicy", env, learning_starts=1000, buffer_size=100, seed=0)  # no updates: fast
        model.learn(6, callback=VLMCheckpointCallback(tmp_path, save_freq=0, handle_signals=False))
        _, saved = env.advice_counters()
        resumed = make_env()
        load_checkpoint(tmp_path, GuidedSAC, resumed)
    # 7 requests (6 steps and the reset's): the 2nd answered on its retry, the 3rd failed after its retry
    assert (saved["queries"], saved["errors"], saved["retries"], saved["tokens"]) == (7, 1, 2, 6 * 7)
    advisor: Any = resumed.base_advisor
    assert (advisor.stats.queries, advisor.stats.errors, advisor.retries, advisor.tokens) == (7, 1, 2, 42)
    assert advisor.http_errors == env.base_advisor.http_errors and sum(advisor.http_errors.values()) == 3  # by kind
    assert resumed.advice_counters()[1] == saved  # every counter, latency included
