"""Who acts during data collection: ERPv's Random Alternating Exploration (appendix D.1) and teacher episodes."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np


class AdvisorTurns(ABC):
    """Which envs act with the advisor's action, per env (so ``n_envs > 1`` works): what GuidedSAC asks each step."""

    def __init__(self, seed: int | None = None) -> None:
        self.rng = np.random.default_rng(seed)
        self.n_envs = 0
        self.advisor_turn = np.zeros(0, dtype=bool)

    @abstractmethod
    def reset(self, n_envs: int) -> None:
        """Start with ``n_envs`` envs."""

    @abstractmethod
    def step(
        self,
        dones: np.ndarray,
        rewards: np.ndarray | None = None,
        allowed: bool = True,
        advised: np.ndarray | None = None,
    ) -> None:
        """Advance one env step (``dones`` end episodes; the rest is evidence a subclass may use)."""

    def advisor_mask(self, n_envs: int) -> np.ndarray:
        """Which envs act with the advisor's action on this step."""
        if self.n_envs != n_envs:
            self.reset(n_envs)
        return self.advisor_turn.copy()


class RandomAlternatingExploration(AdvisorTurns):
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
        super().__init__(seed)
        self.min_phase, self.max_phase = int(min_phase), int(max_phase)
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

    def step(
        self,
        dones: np.ndarray,
        rewards: np.ndarray | None = None,
        allowed: bool = True,
        advised: np.ndarray | None = None,
    ) -> None:
        """Advance one env step; ``dones`` start a new episode (with a new phase length). The other arguments
        (:class:`TeacherEpisodes`' evidence) are not used."""
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


class TeacherEpisodes(AdvisorTurns):
    """
    Whole episodes acted by the advisor, for as long as they return more than the learner's own (off-policy
    exploration by the teacher, with its share decided by the run's evidence).

    A teacher's actions are safest as *data*: the critic evaluates them like any other transitions, and where they
    are wrong it learns that, instead of the actor being pulled towards them. In a sparse-reward task they are also
    what finds the first rewards, which the critic-gated guidance terms cannot do by themselves (before any reward,
    the critic rates an advised action by its immediate cost alone). Each episode of each env is the advisor's with
    probability ``share`` while the mean return of the last ``window`` teacher episodes is above the mean return of
    the last ``window`` learner episodes (or either is not known yet), and ``0`` otherwise; once the learner's
    episodes return as much as the teacher's, the teacher has nothing left to show, and a teacher that is worse than
    the learner (a wrong one) gets one or a few episodes before it loses its turn. Comparing mean returns works for
    any reward sign and scale. Each env's first episode is the learner's. Rows the advisor acted on are ordinary
    replay data; the learner's episodes include its uniform warm-up during ``learning_starts``.

    ``share`` also bounds the advisor's share of env *steps*: no teacher episode starts while the advisor has acted
    more than ``share`` of the steps so far. Episodes differ in length with who acts (a teacher that balances an
    inverted pendulum plays 1,000-step episodes, a learner that drops it 20-step ones), and a share of episodes alone
    let the teacher take nearly all of a 10k-step budget there, leaving the learner too few steps of its own.

    :param share: the largest fraction of episodes, and of env steps, the advisor acts (ε)
    :param window: how many of the latest episodes of each kind are compared
    :param seed: seed of the per-episode draws (their own stream: the policy's random numbers stay SAC's)
    """

    def __init__(self, share: float = 0.5, window: int = 5, seed: int | None = None):
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"share must be in [0, 1], got {share}")
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        super().__init__(seed)
        self.share, self.window = float(share), int(window)
        self.episode_return = np.zeros(0, dtype=np.float64)
        self.episode_steps = np.zeros(0, dtype=np.int64)
        self.advised_steps = np.zeros(0, dtype=np.int64)
        self.teacher_returns: list[float] = []
        self.learner_returns: list[float] = []
        self.teacher_steps = 0  # env steps of the advisor's episodes so far
        self.learner_steps = 0

    @property
    def teacher_pays(self) -> bool:
        """Whether the latest teacher episodes returned more than the latest learner episodes (True while unknown)."""
        if not self.teacher_returns or not self.learner_returns:
            return True
        return float(np.mean(self.teacher_returns)) > float(np.mean(self.learner_returns))

    @property
    def current_share(self) -> float:
        """The probability that a new episode is the advisor's."""
        return self.share if self.teacher_pays else 0.0

    def __setstate__(self, state: dict[str, Any]) -> None:
        # a model saved before the step counts existed: they start from here
        state.setdefault("teacher_steps", 0)
        state.setdefault("learner_steps", 0)
        self.__dict__.update(state)

    @property
    def step_share(self) -> float:
        """The share of env steps so far that were the advisor's episodes'."""
        total = self.teacher_steps + self.learner_steps
        return self.teacher_steps / total if total else 0.0

    def _draw(self, n: int, allowed: bool) -> np.ndarray:
        draws = self.rng.random(n)  # drawn whatever the outcome: the stream does not depend on the evidence
        return (draws < self.current_share) & allowed & (self.step_share <= self.share)

    def reset(self, n_envs: int) -> None:
        """Start (or the envs were reset): every env's next episode is the learner's (its return is the first
        evidence to compare with, and by its end the advice's diversity is known). The returns on record stay."""
        self.n_envs = n_envs
        self.advisor_turn = np.zeros(n_envs, dtype=bool)
        self.episode_return = np.zeros(n_envs, dtype=np.float64)
        self.episode_steps = np.zeros(n_envs, dtype=np.int64)
        self.advised_steps = np.zeros(n_envs, dtype=np.int64)

    def step(
        self,
        dones: np.ndarray,
        rewards: np.ndarray | None = None,
        allowed: bool = True,
        advised: np.ndarray | None = None,
    ) -> None:
        """
        Advance one env step: add ``rewards`` to the episodes' returns; a done episode's return joins its kind's
        record and the env draws who acts next (the advisor only if ``allowed``, e.g. its advice depends on the view).

        :param advised: which envs acted on the advice this step (default: those whose episode is the advisor's).
            An advisor's episode in which the advice acted on fewer than half the steps (pending, failed or invalid
            answers, where the actor acts) is the advisor's no more than the learner's: its return counts for neither
        """
        dones = np.asarray(dones, dtype=bool).reshape(-1)
        if self.n_envs != len(dones):
            self.reset(len(dones))
        if rewards is not None:
            self.episode_return += np.asarray(rewards, dtype=np.float64).reshape(self.n_envs)
        self.episode_steps += 1
        teacher = int(self.advisor_turn.sum())
        self.teacher_steps += teacher
        self.learner_steps += self.n_envs - teacher
        self.advised_steps += self.advisor_turn if advised is None else np.asarray(advised, dtype=bool)
        for i in np.flatnonzero(dones):
            if not self.advisor_turn[i]:
                record: list[float] | None = self.learner_returns
            else:
                record = self.teacher_returns if 2 * self.advised_steps[i] >= self.episode_steps[i] else None
            if record is not None:
                record.append(float(self.episode_return[i]))
                del record[: -self.window]
            self.episode_return[i], self.episode_steps[i], self.advised_steps[i] = 0.0, 0, 0
            self.advisor_turn[i] = self._draw(1, allowed)[0]

    def __repr__(self) -> str:
        return f"TeacherEpisodes(share={self.share}, window={self.window})"
