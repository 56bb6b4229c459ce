"""Rollout buffers that also store each row's advice target and validity."""

from __future__ import annotations

from collections.abc import Generator
from typing import NamedTuple

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import DictRolloutBuffer, RolloutBuffer
from stable_baselines3.common.type_aliases import TensorDict
from stable_baselines3.common.vec_env import VecNormalize

from sb3_vlm.advice import advice_target_dim


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
