"""COVR's fine-tuning data D_f: (teacher view, executed action, return-to-go) per queried step, per environment."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sb3_vlm.advice import REQUEST_INFO_KEY, AdviceRequest
from sb3_vlm.advisors.finetuning import Example as Example  # re-exported: its home before the leaf module
from sb3_vlm.finetune.selection import returns_to_go


@dataclass
class Sample:
    """One row of D_f: ``(o_t, a_{r,t}, g_t)`` (COVR §3, EDDF "data storage"), ``o_t`` being the teacher view."""

    request: AdviceRequest
    action: np.ndarray
    ret: float


@dataclass
class _Episode:
    requests: list[AdviceRequest | None] = field(default_factory=list)
    actions: list[np.ndarray] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)


class TrajectoryCollector:
    """
    D_f for ``n_envs`` environments stepping together (a VecEnv with auto-reset). Each env's steps are kept until
    its episode ends; then ``g_t = Σ_k γ^{k−t} r_k`` is computed for every step and the steps that were shown to the
    teacher (those whose info carries a ``"vlm_request"``) join D_f. Rewards of steps the teacher did not see
    (``query_every > 1``) still count in the returns.

    - **Truncation**: a time-limit end is treated as the episode's end (no bootstrap), like COVR's fixed 1000-step
      episodes; such returns are lower near the limit, which EDDF's z-scoring sees as worse samples.
    - **Unfinished episodes** are not in D_f yet (their returns are unknown); they stay here and join D_f when they
      end, so clearing D_f after a round loses nothing of them.
    - ``max_samples``: D_f is a uniform reservoir of that size (memory bound for long rounds: 120k CARLA frames
      are ~6 GB); None keeps everything, as the paper does.

    :param n_envs: number of environments
    :param gamma: discount of the returns (the RL algorithm's)
    :param max_samples: cap on D_f (reservoir sampling), None for no cap
    :param seed: seed of the reservoir sampling
    """

    def __init__(self, n_envs: int, gamma: float, max_samples: int | None = None, seed: int | None = None):
        if n_envs < 1:
            raise ValueError(f"n_envs must be >= 1, got {n_envs}")
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {gamma}")
        if max_samples is not None and max_samples < 1:
            raise ValueError(f"max_samples must be >= 1 or None, got {max_samples}")
        self.gamma = float(gamma)
        self.max_samples = max_samples
        self.episodes = [_Episode() for _ in range(n_envs)]
        self.samples: list[Sample] = []
        self.n_seen = 0  # samples offered to the reservoir since the last clear
        self.n_episodes = 0
        self._rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.samples)

    def add(self, infos: list[dict[str, Any]], actions: np.ndarray, rewards: np.ndarray, dones: np.ndarray) -> None:
        """One VecEnv step: ``infos[i]`` holds the teacher view of the observation ``actions[i]`` was taken on."""
        actions = np.asarray(actions)
        for i, episode in enumerate(self.episodes):
            episode.requests.append(infos[i].get(REQUEST_INFO_KEY))
            episode.actions.append(np.array(actions[i], copy=True))
            episode.rewards.append(float(rewards[i]))
            if dones[i]:
                self._finish(i)

    def _finish(self, index: int) -> None:
        episode = self.episodes[index]
        returns = returns_to_go(episode.rewards, self.gamma)
        for request, action, ret in zip(episode.requests, episode.actions, returns, strict=True):
            if request is not None:
                self._store(Sample(request, action, float(ret)))
        self.episodes[index] = _Episode()
        self.n_episodes += 1

    def _store(self, sample: Sample) -> None:
        self.n_seen += 1
        if self.max_samples is None or len(self.samples) < self.max_samples:
            self.samples.append(sample)
            return
        slot = int(self._rng.integers(self.n_seen))  # reservoir: each sample kept with probability max / seen
        if slot < self.max_samples:
            self.samples[slot] = sample

    def returns(self) -> np.ndarray:
        return np.array([s.ret for s in self.samples], dtype=np.float64)

    def clear(self) -> None:
        """Empty D_f after a fine-tuning round (COVR Alg. 1, line 16); episodes in progress are kept."""
        self.samples = []
        self.n_seen = 0
