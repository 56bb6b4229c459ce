from __future__ import annotations

import numpy as np
from gymnasium import spaces
from stable_baselines3.common.env_util import make_vec_env

from sb3_vlm import CallableAdvisor, GuidedPPO, VLMAdviceWrapper
from sb3_vlm.advice import AdviceRequest
from sb3_vlm.wrappers import VecVLMAdviceWrapper
from tests.helpers import CounterEnv


class BatchCounting(CallableAdvisor):
    def __init__(self) -> None:
        super().__init__(lambda r: np.array([float(r.state[0] * 100 + r.state[1])], dtype=np.float32), "id")
        self.batch_sizes: list[int] = []

    def _advise(self, requests):
        self.batch_sizes.append(len(requests))
        return super()._advise(requests)


def _view(venv, index, obs) -> AdviceRequest:
    return AdviceRequest(image=None, context={"obs": obs.tolist()}, state=obs.copy())


def test_one_batch_per_step_and_alignment_through_auto_resets() -> None:
    advisor = BatchCounting()
    venv = VecVLMAdviceWrapper(make_vec_env(CounterEnv, n_envs=4, seed=0), advisor, teacher_view=_view)
    obs = venv.reset()
    assert advisor.batch_sizes == [4]
    resets = 0
    for _ in range(30):
        acted_on = obs.copy()
        obs, _, dones, infos = venv.step(np.zeros((4, 1), dtype=np.float32))
        for i, info in enumerate(infos):
            advice = info["vlm_advice"]
            assert advice.valid and advice.action[0] == acted_on[i, 0] * 100 + acted_on[i, 1]
        resets += int(dones.sum())
    assert resets >= 8
    assert advisor.batch_sizes == [4] * 31  # every step: one call for all four envs, auto-resets included


def test_query_every_is_per_episode() -> None:
    advisor = BatchCounting()
    venv = VecVLMAdviceWrapper(make_vec_env(CounterEnv, n_envs=2, seed=0), advisor, query_every=3, teacher_view=_view)
    obs = venv.reset()
    for _ in range(20):
        acted_on = obs.copy()
        obs, _, _, infos = venv.step(np.zeros((2, 1), dtype=np.float32))
        for i, info in enumerate(infos):
            assert info["vlm_advice"].valid == (int(acted_on[i, 1]) % 3 == 0)
    assert venv.n_skipped > 0


def test_matches_the_per_env_wrapper_in_training() -> None:
    # the same advice either way: GuidedPPO's distillation sees identical buffers
    def oracle(r: AdviceRequest):
        return 1 if r.state[1] % 2 == 0 else 0

    def per_env_view(env, obs):
        return AdviceRequest(image=None, state=obs.copy(), context={"obs": obs.tolist()})

    def vec_view(venv, i, obs):
        return per_env_view(None, obs)

    kwargs = dict(n_steps=16, batch_size=16, n_epochs=1, seed=0)
    vec = VecVLMAdviceWrapper(
        make_vec_env(lambda: CounterEnv(spaces.Discrete(2)), n_envs=2, seed=0),
        CallableAdvisor(oracle, "o"),
        teacher_view=vec_view,
    )
    per = make_vec_env(
        lambda: CounterEnv(spaces.Discrete(2)),
        n_envs=2,
        seed=0,
        wrapper_class=VLMAdviceWrapper,
        wrapper_kwargs=dict(advisor=CallableAdvisor(oracle, "o"), teacher_view=per_env_view),
    )
    a = GuidedPPO("MlpPolicy", vec, **kwargs)
    b = GuidedPPO("MlpPolicy", per, **kwargs)
    a.learn(32)
    b.learn(32)
    np.testing.assert_array_equal(a.rollout_buffer.advice_targets, b.rollout_buffer.advice_targets)
    assert a.rollout_buffer.advice_valid.all()
