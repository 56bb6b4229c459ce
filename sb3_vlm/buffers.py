"""Rollout and replay buffers that also store each row's advice target and validity."""

from __future__ import annotations

from collections.abc import Generator, Sequence
from concurrent.futures import wait
from typing import Any, NamedTuple

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import DictReplayBuffer, DictRolloutBuffer, ReplayBuffer, RolloutBuffer
from stable_baselines3.common.type_aliases import TensorDict
from stable_baselines3.common.vec_env import VecNormalize

from sb3_vlm.advice import (
    ADVICE_INFO_KEY,
    Advice,
    PendingAdvice,
    advice_batch_from_infos,
    advice_target_dim,
    advice_to_target,
    pending_in_infos,
)


class AdvisedRolloutBufferSamples(NamedTuple):
    observations: th.Tensor
    actions: th.Tensor
    old_values: th.Tensor
    old_log_prob: th.Tensor
    advantages: th.Tensor
    returns: th.Tensor
    advice_targets: th.Tensor  # (batch, n) teacher probabilities for Discrete, (batch, dim) advised action for Box
    advice_valid: th.Tensor  # (batch,) 1.0 where the row has advice
    advice_weight: th.Tensor  # (batch,) the row's weight in the distillation term (the trust's per-state gate)


class AdvisedDictRolloutBufferSamples(NamedTuple):
    observations: TensorDict
    actions: th.Tensor
    old_values: th.Tensor
    old_log_prob: th.Tensor
    advantages: th.Tensor
    returns: th.Tensor
    advice_targets: th.Tensor
    advice_valid: th.Tensor
    advice_weight: th.Tensor


class _AdviceStorage:
    """
    Advice columns shared by the advised rollout buffers (a mixin over SB3's RolloutBuffer / DictRolloutBuffer).

    Non-blocking advice: a row whose answer is still pending is stored masked; :meth:`wait_for_advice` (called by
    the guided algorithms once the rollout is collected) waits for the missing answers until a deadline and fills
    in those that arrive; the others stay masked.
    """

    buffer_size: int
    n_envs: int
    pos: int
    generator_ready: bool
    action_space: spaces.Space
    advice_targets: np.ndarray
    advice_valid: np.ndarray
    #: per-row weight of the distillation term, set by the guided algorithm once the rollout is complete (the
    #: trust's per-state gate); ``None`` means the validity mask
    advice_weight: np.ndarray | None

    def _reset_advice(self) -> None:
        dim = advice_target_dim(self.action_space)
        self.advice_targets = np.zeros((self.buffer_size, self.n_envs, dim), dtype=np.float32)
        self.advice_valid = np.zeros((self.buffer_size, self.n_envs), dtype=np.float32)
        self.advice_weight = None
        self._pending: list[tuple[int, int, PendingAdvice]] = []

    def add_advice(
        self, targets: np.ndarray, valid: np.ndarray, pending: Sequence[tuple[int, PendingAdvice]] = ()
    ) -> None:
        """
        Store the advice of the row about to be written by ``add()`` (call it first: ``add()`` moves ``pos``).

        :param pending: ``(env index, handle)`` of the envs whose advice is still being answered (their ``valid`` is
            0 until :meth:`wait_for_advice` fills them in)
        """
        self.advice_targets[self.pos] = targets.reshape(self.n_envs, -1)
        self.advice_valid[self.pos] = valid.reshape(self.n_envs)
        for env, handle in pending:
            if handle.done():
                self._fill_advice(self.pos, env, handle.result())
            else:
                self._pending.append((self.pos, env, handle))

    def _fill_advice(self, pos: int, env: int, advice: Advice) -> None:
        self.advice_targets[pos, env], valid = advice_to_target(advice, self.action_space)
        self.advice_valid[pos, env] = float(valid)

    def wait_for_advice(self, timeout: float) -> tuple[int, int]:
        """
        Wait at most ``timeout`` seconds for the rollout's pending answers and fill in the rows of those that arrive
        (call before ``get()``); the rest stay masked.

        :return: (answers that arrived, answers that missed the deadline)
        """
        if self._pending:
            wait([handle.future for *_, handle in self._pending], timeout=max(0.0, timeout))
        arrived = [(pos, env, handle) for pos, env, handle in self._pending if handle.done()]
        for pos, env, handle in arrived:
            self._fill_advice(pos, env, handle.result())
        missed = len(self._pending) - len(arrived)
        self._pending = []
        return len(arrived), missed

    def _flatten_advice(self) -> None:
        # same (step, env) -> row layout as SB3's swap_and_flatten, done once per rollout
        if not self.generator_ready:
            weight = self.advice_valid if self.advice_weight is None else self.advice_weight
            self.advice_targets = RolloutBuffer.swap_and_flatten(self.advice_targets)
            self.advice_valid = RolloutBuffer.swap_and_flatten(self.advice_valid).reshape(-1)
            self.advice_weight = RolloutBuffer.swap_and_flatten(weight.astype(np.float32)).reshape(-1)

    def _advice_tensors(self, batch_inds: np.ndarray) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        to_torch = self.to_torch  # type: ignore[attr-defined]
        assert self.advice_weight is not None  # set by _flatten_advice
        return (
            to_torch(self.advice_targets[batch_inds]),
            to_torch(self.advice_valid[batch_inds]),
            to_torch(self.advice_weight[batch_inds]),
        )


class AdvisedRolloutBuffer(_AdviceStorage, RolloutBuffer):
    """
    SB3's :class:`RolloutBuffer` plus, per row, the teacher's target (probabilities for ``Discrete``, the advised
    action in env units for ``Box``) and a validity flag. Rows without advice have ``advice_valid = 0``.
    """

    def reset(self) -> None:
        super().reset()
        self._reset_advice()

    def get(self, batch_size: int | None = None) -> Generator[AdvisedRolloutBufferSamples, None, None]:  # type: ignore[override]
        self._flatten_advice()
        yield from super().get(batch_size)  # type: ignore[misc]

    def _get_samples(  # type: ignore[override]
        self, batch_inds: np.ndarray, env: VecNormalize | None = None
    ) -> AdvisedRolloutBufferSamples:
        base = super()._get_samples(batch_inds, env)
        return AdvisedRolloutBufferSamples(*base, *self._advice_tensors(batch_inds))


class AdvisedDictRolloutBuffer(_AdviceStorage, DictRolloutBuffer):
    """:class:`AdvisedRolloutBuffer` for ``Dict`` observation spaces (``MultiInputPolicy``)."""

    def reset(self) -> None:
        super().reset()
        self._reset_advice()

    def get(self, batch_size: int | None = None) -> Generator[AdvisedDictRolloutBufferSamples, None, None]:  # type: ignore[override]
        self._flatten_advice()
        yield from super().get(batch_size)  # type: ignore[misc]

    def _get_samples(  # type: ignore[override]
        self, batch_inds: np.ndarray, env: VecNormalize | None = None
    ) -> AdvisedDictRolloutBufferSamples:
        base = super()._get_samples(batch_inds, env)
        return AdvisedDictRolloutBufferSamples(*base, *self._advice_tensors(batch_inds))


class AdvisedReplayBufferSamples(NamedTuple):
    observations: th.Tensor
    actions: th.Tensor
    next_observations: th.Tensor
    dones: th.Tensor
    rewards: th.Tensor
    discounts: th.Tensor | None  # kept so SB3's SAC.train() reads ``replay_data.discounts`` as for its own buffers
    advice_actions: th.Tensor  # (batch, action_dim) advised action, scaled to [-1, 1] like ``actions``
    advice_valid: th.Tensor  # (batch,) 1.0 where the row has advice


class AdvisedDictReplayBufferSamples(NamedTuple):
    observations: TensorDict
    actions: th.Tensor
    next_observations: TensorDict
    dones: th.Tensor
    rewards: th.Tensor
    discounts: th.Tensor | None
    advice_actions: th.Tensor
    advice_valid: th.Tensor


class _ReplayAdviceStorage:
    """
    Advice columns for the advised replay buffers. ``add()`` reads the advice out of the ``infos`` SB3 already passes
    (the info of the step that *left* ``obs``, so it holds the advice for ``obs``: the time alignment of
    :class:`~sb3_vlm.wrappers.VLMAdviceWrapper`), scales Box actions to [-1, 1] the way SB3 scales buffer actions,
    and never keeps the ``Advice`` objects themselves: only two numeric arrays are stored, so pickling the buffer
    (``save_replay_buffer``) never pickles an advisor or a key.

    Non-blocking advice: a transition whose answer is still pending is stored masked and filled in by
    :meth:`resolve_pending` (GuidedSAC calls it before every training phase) once the answer has arrived, unless the
    row has been overwritten meanwhile (the buffer wrapped around: counted in ``advice_expired``). Pending handles are
    not pickled: a saved buffer holds the rows answered so far.
    """

    _pending: list[tuple[int, int, int, PendingAdvice]]
    _n_added: int = 0  # add() calls in this process: tells whether a pending row has been overwritten
    advice_answered_late: int = 0  # pending rows filled in after they were stored
    advice_expired: int = 0  # pending rows overwritten before their answer arrived

    buffer_size: int
    n_envs: int
    pos: int
    action_space: spaces.Space
    actions: np.ndarray
    rewards: np.ndarray
    dones: np.ndarray
    timeouts: np.ndarray
    optimize_memory_usage: bool
    full: bool
    _samples_class: type[AdvisedReplayBufferSamples] | type[AdvisedDictReplayBufferSamples]
    advice_actions: np.ndarray
    advice_valid: np.ndarray
    advice_key: str

    def _init_advice(self, advice_key: str) -> None:
        if not isinstance(self.action_space, spaces.Box):
            raise NotImplementedError("The advised replay buffers support Box action spaces (SAC/TD3)")
        self.advice_key = advice_key
        dim = advice_target_dim(self.action_space)
        self.advice_actions = np.zeros((self.buffer_size, self.n_envs, dim), dtype=np.float32)
        self.advice_valid = np.zeros((self.buffer_size, self.n_envs), dtype=np.float32)
        self._pending = []

    def scale_advice(self, targets: np.ndarray) -> np.ndarray:
        """Env-unit advised actions (already clipped to the bounds) to SB3's buffer scale [-1, 1]."""
        assert isinstance(self.action_space, spaces.Box)
        low, high = self.action_space.low.reshape(-1), self.action_space.high.reshape(-1)
        return (2.0 * ((targets - low) / (high - low)) - 1.0).astype(np.float32)

    def _store_advice(self, infos: list[dict]) -> None:
        targets, valid = advice_batch_from_infos(infos, self.action_space, self.advice_key)
        # invalid rows hold zeros in env units; store a neutral 0 in scaled units instead
        self.advice_actions[self.pos] = np.where(valid[:, None] > 0, self.scale_advice(targets), 0.0)
        self.advice_valid[self.pos] = valid
        for env, handle in pending_in_infos(infos, self.advice_key):
            if handle.done():
                self._fill_advice(self.pos, env, handle.result())
            else:
                self._pending.append((self.pos, env, self._n_added, handle))
        self._n_added += 1

    def _fill_advice(self, pos: int, env: int, advice: Advice) -> None:
        target, valid = advice_to_target(advice, self.action_space)
        self.advice_actions[pos, env] = self.scale_advice(target) if valid else 0.0
        self.advice_valid[pos, env] = float(valid)

    @property
    def n_pending(self) -> int:
        """Stored transitions whose (non-blocking) advice has not arrived yet."""
        return len(self._pending)

    def resolve_pending(self) -> int:
        """Fill in the rows whose pending advice has arrived; returns how many were filled."""
        still: list[tuple[int, int, int, PendingAdvice]] = []
        filled = 0
        for pos, env, added, handle in self._pending:
            if self._n_added - added > self.buffer_size:  # the row now holds a newer transition
                self.advice_expired += 1
            elif handle.done():
                self._fill_advice(pos, env, handle.result())
                filled += 1
            else:
                still.append((pos, env, added, handle))
        self._pending = still
        self.advice_answered_late += filled
        return filled

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_pending"] = []  # futures live in this process only; their rows stay masked in the copy
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("_pending", [])  # buffers saved before non-blocking advice existed

    def sample_advised(
        self, batch_size: int, env: VecNormalize | None = None
    ) -> AdvisedReplayBufferSamples | AdvisedDictReplayBufferSamples | None:
        """
        A batch drawn uniformly from the transitions that carry advice (VARL's guidance buffer, without copying any
        observation); None while there is none. Lets rare queries (``query_every`` large) still fill whole batches.
        """
        upper = self.buffer_size if self.full else self.pos
        valid = self.advice_valid[:upper] > 0
        if self.optimize_memory_usage and self.full:
            valid[self.pos] = False  # its next observation has been overwritten (as in SB3's sample())
        rows = np.flatnonzero(valid.reshape(-1))
        if rows.size == 0:
            return None
        batch_inds, env_indices = np.divmod(rows[np.random.randint(0, rows.size, size=batch_size)], self.n_envs)
        return self._samples_class(*self._sample_with_advice(batch_inds, env, env_indices))

    def _sample_with_advice(
        self, batch_inds: np.ndarray, env: VecNormalize | None, env_indices: np.ndarray | None = None
    ) -> tuple:
        """
        The fields of SB3's ``ReplayBuffer._get_samples`` / ``DictReplayBuffer._get_samples`` (adapted, one code path
        for both) plus the advice columns, read with the *same* random env indices, which SB3 draws internally.
        """
        if env_indices is None:
            env_indices = np.random.randint(0, high=self.n_envs, size=(len(batch_inds),))
        normalize_obs = self._normalize_obs  # type: ignore[attr-defined]
        to_torch = self.to_torch  # type: ignore[attr-defined]

        def take(arr: np.ndarray | dict[str, np.ndarray], inds: np.ndarray) -> th.Tensor | TensorDict:
            if isinstance(arr, dict):
                normed = normalize_obs({k: v[inds, env_indices] for k, v in arr.items()}, env)
                return {k: to_torch(v) for k, v in normed.items()}
            return to_torch(normalize_obs(arr[inds, env_indices], env))

        observations = self.observations  # type: ignore[attr-defined]
        if self.optimize_memory_usage:
            next_obs = take(observations, (batch_inds + 1) % self.buffer_size)
        else:
            next_obs = take(self.next_observations, batch_inds)  # type: ignore[attr-defined]
        rewards = self._normalize_reward(self.rewards[batch_inds, env_indices].reshape(-1, 1), env)  # type: ignore[attr-defined]
        return (
            take(observations, batch_inds),
            to_torch(self.actions[batch_inds, env_indices]),
            next_obs,
            # only dones that are not due to timeouts (as SB3)
            to_torch(
                (self.dones[batch_inds, env_indices] * (1 - self.timeouts[batch_inds, env_indices])).reshape(-1, 1)
            ),
            to_torch(rewards),
            None,
            to_torch(self.advice_actions[batch_inds, env_indices]),
            to_torch(self.advice_valid[batch_inds, env_indices]),
        )


class AdvisedReplayBuffer(_ReplayAdviceStorage, ReplayBuffer):
    """
    SB3's :class:`ReplayBuffer` plus, per transition, the advised action (scaled to [-1, 1] like the stored actions)
    and its validity, read from ``infos[advice_key]``. Correct with ``n_envs > 1`` (advice and transition are read
    with the same env index), with timeouts (SB3's handling is unchanged) and through ``save_replay_buffer``.

    :param advice_key: the info key the advice wrapper writes (default ``"vlm_advice"``); the other arguments are
        SB3's
    """

    _samples_class = AdvisedReplayBufferSamples

    def __init__(
        self,
        buffer_size: int,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        device: th.device | str = "auto",
        n_envs: int = 1,
        optimize_memory_usage: bool = False,
        handle_timeout_termination: bool = True,
        advice_key: str = ADVICE_INFO_KEY,
    ):
        super().__init__(
            buffer_size,
            observation_space,  # type: ignore[arg-type]
            action_space,
            device,
            n_envs,
            optimize_memory_usage,
            handle_timeout_termination,
        )
        self._init_advice(advice_key)

    def add(self, obs, next_obs, action, reward, done, infos) -> None:  # type: ignore[no-untyped-def]
        self._store_advice(infos)  # before super().add(), which moves ``pos``
        super().add(obs, next_obs, action, reward, done, infos)

    def _get_samples(  # type: ignore[override]
        self, batch_inds: np.ndarray, env: VecNormalize | None = None
    ) -> AdvisedReplayBufferSamples | AdvisedDictReplayBufferSamples:
        return self._samples_class(*self._sample_with_advice(batch_inds, env))


class AdvisedDictReplayBuffer(AdvisedReplayBuffer, DictReplayBuffer):  # type: ignore[misc]
    """:class:`AdvisedReplayBuffer` for ``Dict`` observation spaces (``MultiInputPolicy``); the MRO runs SB3's
    ``DictReplayBuffer`` storage under the same advice columns."""

    _samples_class = AdvisedDictReplayBufferSamples  # type: ignore[assignment]
