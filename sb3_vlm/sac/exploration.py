"""Who acts during data collection: ERPv's Random Alternating Exploration (appendix D.1)."""

from __future__ import annotations

import numpy as np


class RandomAlternatingExploration:
    """
    ERPv's RAE: each episode draws a phase length ``T_switch ~ U[min_phase, max_phase]`` and alternates, every
    ``T_switch`` steps, between the RL actor and the advisor's actions; the first phase of an episode is the
    advisor's or the actor's with probability 1/2. Kept per environment so it works with ``n_envs > 1``.

    Used by :func:`~sb3_vlm.sac.pretrain_advice_critic` (through ``GuidedSAC(advice_exploration=...)``) to collect
    the data the advice critic C_V is trained on.

    :param min_phase: shortest phase (ERPv: 50 steps)
    :param max_phase: longest phase (ERPv: 400 steps)
    :param seed: seed of the phase draws
    """

    def __init__(self, min_phase: int = 50, max_phase: int = 400, seed: int | None = None):
        if not 1 <= min_phase <= max_phase:
            raise ValueError(f"Need 1 <= min_phase <= max_phase, got {min_phase}, {max_phase}")
        self.min_phase, self.max_phase = int(min_phase), int(max_phase)
        self.rng = np.random.default_rng(seed)
        self.n_envs = 0
        self.advisor_turn = np.zeros(0, dtype=bool)
        self.phase_length = np.zeros(0, dtype=np.int64)
        self.steps_in_phase = np.zeros(0, dtype=np.int64)

    def _new_episode(self, idx: np.ndarray) -> None:
        n = int(idx.sum()) if idx.dtype == bool else len(idx)
        self.phase_length[idx] = self.rng.integers(self.min_phase, self.max_phase + 1, size=n)
        self.advisor_turn[idx] = self.rng.random(n) < 0.5
        self.steps_in_phase[idx] = 0

    def reset(self, n_envs: int) -> None:
        self.n_envs = n_envs
        self.advisor_turn = np.zeros(n_envs, dtype=bool)
        self.phase_length = np.zeros(n_envs, dtype=np.int64)
        self.steps_in_phase = np.zeros(n_envs, dtype=np.int64)
        self._new_episode(np.ones(n_envs, dtype=bool))

    def advisor_mask(self, n_envs: int) -> np.ndarray:
        """Which envs act with the advisor's action on this step."""
        if self.n_envs != n_envs:
            self.reset(n_envs)
        return self.advisor_turn.copy()

    def step(self, dones: np.ndarray) -> None:
        """Advance one env step; ``dones`` start a new episode (with a new phase length)."""
        if self.n_envs == 0:
            self.reset(len(dones))
        self.steps_in_phase += 1
        switch = self.steps_in_phase >= self.phase_length
        self.advisor_turn[switch] = ~self.advisor_turn[switch]
        self.steps_in_phase[switch] = 0
        done = np.asarray(dones, dtype=bool)
        if done.any():
            self._new_episode(done)

    def __repr__(self) -> str:
        return f"RandomAlternatingExploration({self.min_phase}, {self.max_phase})"
