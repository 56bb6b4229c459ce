"""Gymnasium wrapper that attaches (cached) VLM advice to each step's ``info``."""

from __future__ import annotations

import numbers
import os
from collections.abc import Callable, Mapping
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np

from sb3_vlm.advice import ADVICE_INFO_KEY, REQUEST_INFO_KEY, Advice, AdviceRequest, PendingAdvice
from sb3_vlm.advisors.background import (
    DEFAULT_MAX_QUEUED_BYTES,
    DEFAULT_MAX_WAIT,
    BackgroundAdvisor,
    QueuedAdvice,
    prefers_background,
)
from sb3_vlm.advisors.base import (
    Advisor,
    AdvisorStats,
    advice_counters,
    counter_details,
    preferred_view_size,
    restore_counters,
)
from sb3_vlm.advisors.cache import AdviceCache, CachedAdvisor
from sb3_vlm.wrappers.selection import EveryK, QueryBatch, QuerySelector, resolve_selector, select_with_known

TeacherView = Callable[[gym.Env, Any], AdviceRequest]


def default_teacher_view(env: gym.Env, obs: Any) -> AdviceRequest:
    """
    What the teacher sees by default: an inner wrapper's ``teacher_request()`` if there is one (e.g.
    :class:`~sb3_vlm.envs.minigrid.MiniGridTeacherView`), else the observation itself when it is an RGB image,
    else ``env.render()`` when the env renders ``rgb_array``.
    """
    try:
        teacher_request = env.get_wrapper_attr("teacher_request")
    except AttributeError:
        teacher_request = None
    if teacher_request is not None:
        return teacher_request()
    if isinstance(obs, np.ndarray) and obs.ndim == 3 and obs.dtype == np.uint8:
        return AdviceRequest(image=obs)
    if env.render_mode == "rgb_array":
        return AdviceRequest(image=np.asarray(env.render()))
    raise ValueError(
        "Cannot build a teacher view: the env has no teacher_request(), its observation is not an RGB image and "
        "render_mode is not 'rgb_array'. Pass teacher_view=callable(env, obs) -> AdviceRequest."
    )


def resolve_advisor(advisor: Advisor, query_every: int, cache: AdviceCache | str | os.PathLike[str] | None) -> Advisor:
    """Check the arguments both advice wrappers share and put the cache in front of the advisor."""
    # an int only: with 2.5, `step % 2.5 == 0` silently asks on every 5th step
    if isinstance(query_every, bool) or not isinstance(query_every, numbers.Integral) or query_every < 1:
        raise ValueError(f"query_every must be a positive int, got {query_every!r}")
    if not isinstance(advisor, Advisor):
        raise TypeError(f"advisor must be an sb3_vlm Advisor, got {type(advisor).__name__}")
    return advisor if cache is None else CachedAdvisor(advisor, cache)


def known_answers(advisor: Advisor) -> Callable[[AdviceRequest], Advice | None] | None:
    """The cache's answer for a view, without asking anyone (counted as a cache hit when there is one); None where
    ``advisor`` has no cache in front."""
    if not isinstance(advisor, CachedAdvisor):
        return None
    identity = advisor.identity

    def known(request: AdviceRequest) -> Advice | None:
        return advisor.lookup(request.cache_key(identity), request.action_space)

    return known


def background_for(
    advisor: Advisor, resolved: Advisor, non_blocking: bool | None, **bounds: Any
) -> BackgroundAdvisor | None:
    """The wrappers' background queue: ``non_blocking=None`` asks VLM backends in the background and scripted
    advisors inline (:func:`~sb3_vlm.advisors.background.prefers_background`); ``bounds``: its ``max_queued``,
    ``max_queued_bytes`` and ``max_wait``."""
    if non_blocking is None:
        non_blocking = prefers_background(advisor)
    return BackgroundAdvisor(resolved, **bounds) if non_blocking else None


def advice_counters_with(
    advisor: Advisor, background: BackgroundAdvisor | None, selector: QuerySelector | None = None
) -> tuple[str, dict[str, float]]:
    """A wrapper's counters for :class:`~sb3_vlm.callbacks.AdviceMetricsCallback` (and checkpoints), with its
    background queue's, its query selector's (``query_skips``: views it did not ask about) and the details a resumed
    run needs (:func:`~sb3_vlm.advisors.base.counter_details`)."""
    key, counters = advice_counters(advisor)
    counters.update(counter_details(advisor))
    if background is not None:
        counters.update(background.counters())
        key += f":{id(background)}"
    if selector is not None:
        counters["query_skips"] = float(selector.considered - selector.selected)
        counters["query_selected"] = float(selector.selected)
    return key, counters


def restore_counters_with(
    advisor: Advisor,
    background: BackgroundAdvisor | None,
    counters: Mapping[str, float],
    selector: QuerySelector | None = None,
) -> None:
    """Go on counting from ``counters`` (what :func:`advice_counters_with` gave, saved in a checkpoint)."""
    restore_counters(advisor, counters)
    if background is not None:
        background.restore_counters(counters)
    if selector is not None and "query_selected" in counters:
        selector.selected = int(counters["query_selected"])
        selector.considered = selector.selected + int(counters.get("query_skips", 0))


def settle_current(current: Advice | None) -> tuple[Advice | None, bool]:
    """What ``current_advice`` returns for ``current``: a queued answer waited for (at most its ``max_wait``), a
    foreign pending one without bound; and whether that answer is final (to keep instead of the pending one)."""
    if isinstance(current, QueuedAdvice):
        answer = current.wait()
        return answer, current.done()
    if isinstance(current, PendingAdvice):  # not ours (a subclass overrode _advice_for): unbounded, as asked
        return current.result(), True
    return current, False


def fit_teacher_view(env: gym.Env, advisor: Advisor) -> None:
    """Render the env's teacher view at the advisor's preferred size, where the view can (issue 16: one place
    decides, :attr:`~sb3_vlm.advisors.base.Advisor.preferred_view_size`; scripted advisors leave the view as it is)."""
    size = preferred_view_size(advisor)
    if size is None:
        return
    try:
        prefer = env.get_wrapper_attr("prefer_view_size")
    except AttributeError:
        return
    prefer(size)


class AdviceAsking:
    """
    What both advice wrappers share (one core for :class:`VLMAdviceWrapper` and
    :class:`~sb3_vlm.wrappers.VecVLMAdviceWrapper`): the advisor behind its cache, the background queue, the query
    selector and their counters, and one step from the observations due for advice to their answers (:meth:`_ask`).
    The wrappers only differ in how they build teacher views and where they put the answers.
    """

    advisor: Advisor
    base_advisor: Advisor
    background: BackgroundAdvisor | None
    query_every: int
    query_selector: QuerySelector
    n_batches: int

    def _setup_advice(
        self,
        advisor: Advisor,
        query_every: int,
        cache: AdviceCache | str | os.PathLike[str] | None,
        non_blocking: bool | None,
        query: QuerySelector | None,
        **bounds: Any,
    ) -> None:
        self.advisor = resolve_advisor(advisor, query_every, cache)
        self.base_advisor = advisor
        self.background = background_for(advisor, self.advisor, non_blocking, **bounds)
        self.query_every = int(query_every)
        self.query_selector = resolve_selector(query, self.query_every)
        self.n_batches = 0  # advise() calls (or background submissions) made

    @property
    def n_skipped(self) -> int:
        """Observations the query selector passed over."""
        return self.query_selector.considered - self.query_selector.selected

    @property
    def non_blocking(self) -> bool:
        return self.background is not None

    @property
    def advisor_stats(self) -> AdvisorStats:
        return self.advisor.stats

    def advice_counters(self) -> tuple[str, dict[str, float]]:
        """This wrapper's advisor counters for :class:`~sb3_vlm.callbacks.AdviceMetricsCallback`."""
        return advice_counters_with(self.advisor, self.background, self.query_selector)

    def restore_advice_counters(self, counters: Mapping[str, float]) -> None:
        """Go on counting from ``counters`` (what :meth:`advice_counters` gave, saved in a checkpoint)."""
        restore_counters_with(self.advisor, self.background, counters, self.query_selector)

    def _send(self, requests: list[AdviceRequest]) -> list[Advice]:
        """Ask about ``requests`` now: inline, or through the background queue (pending answers)."""
        self.n_batches += 1
        if self.background is not None:
            return self.background.submit(requests)
        return self.advisor.advise(requests)

    def _ask(self, batch: QueryBatch) -> tuple[list[Advice], list[AdviceRequest | None]]:
        """The advice for each row of ``batch`` and the view it was asked about (None where no view was asked
        about): the cache's answer where it has one and the selector saves queries, else asked where the selector
        keeps the row, else invalid (``source="skipped"``)."""
        keep, answered = select_with_known(self.query_selector, batch, known_answers(self.advisor))
        advice = [answered[j] if j in answered else Advice.invalid(source="skipped") for j in range(len(batch))]
        requests: list[AdviceRequest | None] = [batch.view(j) if j in answered else None for j in range(len(batch))]
        due = [j for j in range(len(batch)) if keep[j]]
        if due:
            asked = [batch.view(j) for j in due]
            for j, request, answer in zip(due, asked, self._send(asked), strict=True):
                advice[j], requests[j] = answer, request
        return advice, requests

    def _close_advice(self) -> None:
        if self.background is not None:
            self.background.close()


class VLMAdviceWrapper(AdviceAsking, gym.Wrapper):
    """
    Ask an advisor about the observations the agent acts on and put the answer in ``info``.

    **Time alignment**: the info returned by ``step(a_t)`` carries, under ``info_key``, the advice for
    ``o_t``, the observation ``a_t`` was chosen on, i.e. the one SB3 stores next to that info. The advice for an
    episode's first observation is computed at ``reset()`` and delivered with the first step, so vector-env
    auto-resets cannot misalign it. Terminal observations are never queried (nobody acts on them).

    Steps that are not queried (``query_every > 1``) carry ``Advice(valid=False, source="skipped")``. Queried steps
    also carry the teacher view itself under ``"vlm_request"`` (for COVR's fine-tuning data, see
    :class:`~sb3_vlm.finetune.VLMFineTuneCallback`).

    **Non-blocking advice**: the request is submitted when the observation is seen and answered by a background
    :class:`~sb3_vlm.advisors.background.BackgroundAdvisor` while the env keeps stepping; an answer not ready when
    the step returns is a :class:`~sb3_vlm.advice.PendingAdvice`, which the advised buffers store masked and fill in
    once it arrives. Inside a ``SubprocVecEnv`` worker a pending answer cannot cross the process boundary, so the
    worker waits for it when it sends its step; put a :class:`~sb3_vlm.wrappers.VecVLMAdviceWrapper` around the
    ``SubprocVecEnv`` to overlap the answers with the agent's steps.

    :param env: the environment
    :param advisor: who answers (scripted, API or local VLM)
    :param query_every: ask on every k-th step of an episode (k a positive int), starting with its first observation
        (ERPv queries every 10 frames); other steps carry invalid advice. Shorthand for ``query=EveryK(k)``
    :param query: which views to ask about (:mod:`sb3_vlm.wrappers.selection`: novelty, the learner's uncertainty, a
        paced budget ...); the views it passes over carry invalid advice and cost nothing. None:
        ``EveryK(query_every)``
    :param teacher_view: ``f(env, obs) -> AdviceRequest``: what the teacher sees (default:
        :func:`default_teacher_view`)
    :param cache: an :class:`AdviceCache`, a path to one, or None for no cache
    :param info_key: the info key (default ``"vlm_advice"``)
    :param non_blocking: ask in the background (see above); None (default): yes for VLM backends (API or local
        model), no for scripted advisors, which answer in microseconds and then keep runs exactly reproducible
    :param max_queued: non-blocking advice: requests queued at most; more get invalid advice at once (counted in
        ``advisor/overflow``)
    :param max_queued_bytes: non-blocking advice: bytes the queued requests (mostly their images) hold at most; more
        get invalid advice at once (``advisor/overflow``); None: no bound
    :param max_wait: non-blocking advice: seconds ``current_advice``, and a step sent from a ``SubprocVecEnv``
        worker, wait for a pending answer at most; then invalid advice (counted in the queue's ``late``)
    """

    def __init__(
        self,
        env: gym.Env,
        advisor: Advisor,
        query_every: int = 1,
        teacher_view: TeacherView | None = None,
        cache: AdviceCache | str | os.PathLike[str] | None = None,
        info_key: str = ADVICE_INFO_KEY,
        non_blocking: bool | None = None,
        max_queued: int = 100_000,
        max_queued_bytes: int | None = DEFAULT_MAX_QUEUED_BYTES,
        max_wait: float = DEFAULT_MAX_WAIT,
        query: QuerySelector | None = None,
    ):
        # Not a RecordConstructorArgs wrapper on purpose: Gymnasium deep-copies recorded arguments whenever `env.spec`
        # is read, and an advisor may hold a multi-GB model or an API client. So the env spec cannot re-create it.
        super().__init__(env)
        self._setup_advice(
            advisor, query_every, cache, non_blocking, query, max_queued=max_queued, max_queued_bytes=max_queued_bytes,
            max_wait=max_wait,
        )  # fmt: skip
        self.teacher_view = teacher_view or default_teacher_view
        fit_teacher_view(env, advisor)
        self.info_key = info_key
        self._episode_step = 0
        self._env_steps = 0
        self._current: Advice | None = None
        self._current_request: AdviceRequest | None = None

    @property
    def current_advice(self) -> Advice | None:
        """Advice for the observation the agent is about to act on (e.g. to execute the VLM's action, VBE); waits for
        a pending answer, since the caller is about to act on it, but at most ``max_wait`` seconds: then invalid
        advice, while the step's info keeps the pending answer (the buffers fill its row in if it comes)."""
        answer, final = settle_current(self._current)
        if final:
            self._current = answer
        return answer

    def _view(self, obs: Any) -> AdviceRequest:
        if self.teacher_view is default_teacher_view:
            # the env's teacher_request() found once, not by walking the wrapper chain on every step
            if "_teacher_request" not in self.__dict__:
                try:
                    self._teacher_request: Callable[[], AdviceRequest] | None = self.env.get_wrapper_attr(
                        "teacher_request"
                    )
                except AttributeError:
                    self._teacher_request = None
            found = self._teacher_request
            request = found() if found is not None else default_teacher_view(self.env, obs)
        else:
            request = self.teacher_view(self.env, obs)
        if request.action_space is None:
            request.action_space = self.env.action_space
        return request

    def _advice_for(self, obs: Any) -> Advice:
        self._current_request = None
        selector = self.query_selector
        if type(selector) is EveryK:  # the default: no batch to build on every step
            if not selector.due(self._episode_step):
                return Advice.invalid(source="skipped")
            self._current_request = self._view(obs)
            return self._send([self._current_request])[0]
        views: list[AdviceRequest] = []

        def view(_: int) -> AdviceRequest:
            if not views:
                views.append(self._view(obs))
            return views[0]

        steps = np.array([self._episode_step])
        advice, requests = self._ask(QueryBatch(np.zeros(1, dtype=np.int64), steps, [obs], view, self._env_steps))
        self._current_request = requests[0]
        return advice[0]

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        self._episode_step = 0
        self._current = self._advice_for(obs)
        return obs, info

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        if self._current is None:
            raise gym.error.ResetNeeded("Call reset() before step()")
        obs, reward, terminated, truncated, info = self.env.step(action)
        info[self.info_key] = self._current
        if self._current_request is not None:
            info[REQUEST_INFO_KEY] = self._current_request
        self._episode_step += 1
        self._env_steps += 1
        self._current = None if (terminated or truncated) else self._advice_for(obs)
        return obs, reward, terminated, truncated, info

    def close(self) -> None:
        self._close_advice()
        super().close()
