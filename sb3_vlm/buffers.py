"""Rollout and replay buffers that also store each row's advice target and validity."""

from __future__ import annotations

from collections.abc import Generator
from typing import NamedTuple

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import DictReplayBuffer, DictRolloutBuffer, ReplayBuffer, RolloutBuffer
from stable_baselines3.common.type_aliases import TensorDict
from stable_baselines3.common.vec_env import VecNormalize

from sb3_vlm.advice import ADVICE_INFO_KEY, advice_batch_from_infos, advice_target_dim


class AdvisedRolloutBufferSamples(NamedTuple):
    observations: th.Tensor
    actions: th.Tensor
    old_values: th.Tensor
    old_log_prob: th.Tensor
    advantages: th.Tensor
    returns: th.Tensor
    advice_targets: th.Tensor  # (batch, n) teacher probabilities for Discrete, (batch, dim) advised action for Box
    advice_valid: th.Tensor  # (batch,) 1.0 where the row has advice


class AdvisedDictRolloutBufferSamples(NamedTuple):
    observations: TensorDict
    actions: th.Tensor
    old_values: th.Tensor
    old_log_prob: th.Tensor
    advantages: th.Tensor
    returns: th.Tensor
    advice_targets: th.Tensor
    advice_valid: th.Tensor


class _AdviceStorage:
    """Advice columns shared by the advised rollout buffers (a mixin over SB3's RolloutBuffer / DictRolloutBuffer)."""

    buffer_size: int
    n_envs: int
    pos: int
    generator_ready: bool
    action_space: spaces.Space
    advice_targets: np.ndarray
    advice_valid: np.ndarray

    def _reset_advice(self) -> None:
        dim = advice_target_dim(self.action_space)
        self.advice_targets = np.zeros((self.buffer_size, self.n_envs, dim), dtype=np.float32)
        self.advice_valid = np.zeros((self.buffer_size, self.n_envs), dtype=np.float32)

    def add_advice(self, targets: np.ndarray, valid: np.ndarray) -> None:
        """Store the advice of the row about to be written by ``add()`` (call it first: ``add()`` moves ``pos``)."""
        self.advice_targets[self.pos] = targets.reshape(self.n_envs, -1)
        self.advice_valid[self.pos] = valid.reshape(self.n_envs)

    def _flatten_advice(self) -> None:
        # same (step, env) -> row layout as SB3's swap_and_flatten, done once per rollout
        if not self.generator_ready:
            self.advice_targets = RolloutBuffer.swap_and_flatten(self.advice_targets)
            self.advice_valid = RolloutBuffer.swap_and_flatten(self.advice_valid).reshape(-1)

    def _advice_tensors(self, batch_inds: np.ndarray) -> tuple[th.Tensor, th.Tensor]:
        to_torch = self.to_torch  # type: ignore[attr-defined]
        return to_torch(self.advice_targets[batch_inds]), to_torch(self.advice_valid[batch_inds])


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
    (the info of the step that *left* ``obs``, so it holds the advice for ``obs``: DESIGN.md's time alignment), scales
    Box actions to [-1, 1] the way SB3 scales buffer actions, and never keeps the ``Advice`` objects themselves: only
    two numeric arrays are stored, so pickling the buffer (``save_replay_buffer``) never pickles an advisor or a key.
    """

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
