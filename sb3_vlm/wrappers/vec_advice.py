"""VecEnv-level advice: the requests of all n_envs reach the advisor as ONE ``advise()`` call per step."""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvObs, VecEnvStepReturn

from sb3_vlm.advice import ADVICE_INFO_KEY, REQUEST_INFO_KEY, Advice, AdviceRequest
from sb3_vlm.advisors.background import DEFAULT_MAX_QUEUED_BYTES, DEFAULT_MAX_WAIT
from sb3_vlm.advisors.base import Advisor, preferred_view_size
from sb3_vlm.advisors.cache import AdviceCache
from sb3_vlm.wrappers.advice import (
    AdviceAsking,
    settle_current,
)
from sb3_vlm.wrappers.selection import QueryBatch, QuerySelector

VecTeacherView = Callable[[VecEnv, int, Any], AdviceRequest]


def default_vec_teacher_view(venv: VecEnv, index: int, obs: Any) -> AdviceRequest:
    """The env's ``teacher_request()`` (called in its worker process), else the observation when it is an RGB image."""
    try:
        return venv.env_method("teacher_request", indices=[index])[0]
    except AttributeError:
        pass
    if isinstance(obs, np.ndarray) and obs.ndim == 3 and obs.dtype == np.uint8:
        return AdviceRequest(image=obs)
    raise ValueError(
        "Cannot build a teacher view: the env has no teacher_request() and its observation is not an RGB image. "
        "Pass teacher_view=callable(venv, index, obs) -> AdviceRequest."
    )


class VecVLMAdviceWrapper(AdviceAsking, VecEnvWrapper):
    """
    :class:`~sb3_vlm.wrappers.VLMAdviceWrapper` for a whole VecEnv: after each ``step`` (and at ``reset``), the envs
    that need advice are asked about in one batch, so an API advisor sends them concurrently and a local VLM runs
    one forward batch. Same time alignment: ``infos[i][info_key]`` holds the advice for the observation env ``i``
    acted on, and ``infos[i]["vlm_request"]`` the teacher view it was asked about (queried steps only); after an
    auto-reset the new episode's first observation is asked about at once.

    :param venv: the vectorised env (``DummyVecEnv`` or ``SubprocVecEnv``; views come from each env's
        ``teacher_request()`` through ``env_method``)
    :param advisor: who answers
    :param query_every: ask on every k-th step of each episode (k a positive int); other steps carry invalid advice
        (shorthand for ``query=EveryK(k)``)
    :param query: which views to ask about (:mod:`sb3_vlm.wrappers.selection`); it sees all the envs due for
        advice in one batch and, being in the main process, the learner (for :class:`~sb3_vlm.wrappers.selection.
        Uncertainty`). None: ``EveryK(query_every)``
    :param teacher_view: ``f(venv, index, obs) -> AdviceRequest`` (default :func:`default_vec_teacher_view`)
    :param cache: an :class:`AdviceCache`, a path, or None
    :param info_key: the info key
    :param non_blocking: ask in the background, as :class:`~sb3_vlm.wrappers.VLMAdviceWrapper` does (None: yes
        for VLM backends, no for scripted advisors); here the queue lives in the main process, so it works around a
        ``SubprocVecEnv`` and identical views in flight from different envs are sent once (with a cache)
    :param max_queued: non-blocking advice: requests queued at most (more: invalid advice, ``advisor/overflow``)
    :param max_queued_bytes: non-blocking advice: bytes the queued requests hold at most (more: invalid advice,
        ``advisor/overflow``); None: no bound
    :param max_wait: non-blocking advice: seconds anything that must wait for a pending answer waits at most
    """

    def __init__(
        self,
        venv: VecEnv,
        advisor: Advisor,
        query_every: int = 1,
        teacher_view: VecTeacherView | None = None,
        cache: AdviceCache | str | os.PathLike[str] | None = None,
        info_key: str = ADVICE_INFO_KEY,
        non_blocking: bool | None = None,
        max_queued: int = 100_000,
        max_queued_bytes: int | None = DEFAULT_MAX_QUEUED_BYTES,
        max_wait: float = DEFAULT_MAX_WAIT,
        query: QuerySelector | None = None,
    ):
        super().__init__(venv)
        self._setup_advice(
            advisor, query_every, cache, non_blocking, query, max_queued=max_queued, max_queued_bytes=max_queued_bytes,
            max_wait=max_wait,
        )  # fmt: skip
        self.teacher_view = teacher_view or default_vec_teacher_view
        size = preferred_view_size(advisor)
        if size is not None and venv.has_attr("prefer_view_size"):  # see wrappers.advice.fit_teacher_view
            venv.env_method("prefer_view_size", size)
        self.info_key = info_key
        self.episode_steps = np.zeros(self.num_envs, dtype=np.int64)
        self.current: list[Advice] = [Advice.invalid(source="not-reset") for _ in range(self.num_envs)]
        self.current_requests: list[AdviceRequest | None] = [None] * self.num_envs
        self._env_steps = 0

    @property
    def current_advice(self) -> list[Advice]:
        """Advice for the observations the envs are about to act on, one per env (what
        :attr:`VLMAdviceWrapper.current_advice <sb3_vlm.wrappers.VLMAdviceWrapper.current_advice>` is for one env):
        a pending answer is waited for, at most ``max_wait`` seconds, then invalid advice."""
        out = []
        for i, current in enumerate(self.current):
            answer, final = settle_current(current)
            if final and answer is not None:
                self.current[i] = answer
            out.append(answer if answer is not None else Advice.invalid(source="not-reset"))
        return out

    def _view(self, obs_i: Any, i: int) -> AdviceRequest:
        request = self.teacher_view(self.venv, i, obs_i)
        if request.action_space is None:
            request.action_space = self.action_space
        return request

    def _refresh(self, obs: VecEnvObs, indices: list[int]) -> None:
        """New advice for the envs in ``indices``: the query selector picks those to ask about, one advise() call."""
        views: dict[int, AdviceRequest] = {}
        rows = [{k: v[i] for k, v in obs.items()} if isinstance(obs, dict) else obs[i] for i in indices]  # type: ignore[index]

        def view(j: int) -> AdviceRequest:
            if j not in views:
                views[j] = self._view(rows[j], indices[j])
            return views[j]

        batch = QueryBatch(
            np.asarray(indices, dtype=np.int64), self.episode_steps[indices], rows, view, self._env_steps
        )
        advice, requests = self._ask(batch)
        for j, i in enumerate(indices):
            self.current[i], self.current_requests[i] = advice[j], requests[j]

    def reset(self) -> VecEnvObs:
        obs = self.venv.reset()
        self.episode_steps[:] = 0
        self._refresh(obs, list(range(self.num_envs)))
        return obs

    def step_wait(self) -> VecEnvStepReturn:
        obs, rewards, dones, infos = self.venv.step_wait()
        for i, info in enumerate(infos):
            info[self.info_key] = self.current[i]
            if self.current_requests[i] is not None:
                info[REQUEST_INFO_KEY] = self.current_requests[i]
        self.episode_steps += 1
        self._env_steps += self.num_envs
        self.episode_steps[dones] = 0  # auto-reset: obs[i] is the next episode's first observation
        self._refresh(obs, list(range(self.num_envs)))
        return obs, rewards, dones, infos

    def close(self) -> None:
        self._close_advice()
        super().close()


def current_advice_of(env: VecEnv) -> list[Advice]:
    """
    The advice for the observations each env of ``env`` is about to act on: from a
    :class:`VecVLMAdviceWrapper` in ``env``'s wrapper stack, else from each env's
    :class:`~sb3_vlm.wrappers.VLMAdviceWrapper` (``current_advice``).

    :raises AttributeError: ``env`` has no advice wrapper
    """
    current: Any = env
    while isinstance(current, VecEnvWrapper):
        if isinstance(current, VecVLMAdviceWrapper):
            return current.current_advice
        current = current.venv
    return env.get_attr("current_advice")


def restore_advice_counters(env: VecEnv, saved: Mapping[str, Mapping[str, float]]) -> int:
    """
    Give the advice wrappers of ``env`` the counters a checkpoint saved (``state.json``'s ``advisor_counters``, from
    :func:`~sb3_vlm.callbacks.collect_advice_counters`), so that a resumed run goes on counting. Their keys name
    objects of the saving process, so counter sets are matched in the order ``collect_advice_counters`` lists them
    (VecEnv-level wrappers outermost first, then each env's, an advisor shared by several envs once): the same
    env, built the same way, matches. Returns how many sets were restored; with a different number of advice
    wrappers it warns and restores none.
    """
    restorers: dict[str, Callable[[Mapping[str, float]], Any]] = {}
    current: Any = env
    while isinstance(current, VecEnvWrapper):
        if callable(getattr(current, "advice_counters", None)):
            restorers.setdefault(current.advice_counters()[0], current.restore_advice_counters)
        current = current.venv
    try:
        per_env = env.env_method("advice_counters")
    except AttributeError:  # no env-level advice wrapper
        per_env = []
    for index, (key, _) in enumerate(per_env):
        restorers.setdefault(key, functools.partial(env.env_method, "restore_advice_counters", indices=[index]))
    if len(restorers) != len(saved):
        if saved:
            warnings.warn(f"The checkpoint saved {len(saved)} advisor counter sets and the env has {len(restorers)} "
                          "advice wrappers: advisor counters start from zero", stacklevel=2)  # fmt: skip
        return 0
    for restore, counters in zip(restorers.values(), saved.values(), strict=True):
        restore(counters)
    return len(saved)
