"""
Adaptive trust in the teacher for on-policy distillation (GuidedPPO / GuidedA2C): pure functions on arrays.

LVLM2P's eq. 1 weighs the teacher by a fixed λ, so a wrong teacher is imitated for as long as λ lasts. Here the
weight follows the evidence the run itself produces, from the GAE advantages the algorithm computes anyway:

- **over time**, a trust level ``τ ∈ [0, 1]`` moves by the evidence that following the advice pays, each time a
  window of at least ``window`` advised rows has been collected (one PPO rollout, or several of A2C's short ones).
  Each advised row scores the advice by an importance-weighted contrast of its advantage,

  ``d_t = A_t · (1[f_t] / p_t − 1[¬f_t] / (1 − p_t))``,

  with ``f_t`` "the agent took the advised action" and ``p_t`` the probability that it would (``π(a_v|s_t)``;
  ½ for Box actions, see below), clipped to [0.05, 0.95]. Per state, ``E[d] = Q(s, a_v) − E[Q(s, a) | a ≠ a_v]``:
  the advice's advantage over what the agent does without it, and any state-dependent error ``b(s)`` of the value
  baseline cancels (a pooled "followed vs not" comparison of advantages does not have that property: an under-fit
  critic made it flip sign in our tests, Simpson's paradox over states). The window's evidence is the t statistic
  ``z = mean(d) / (std(d) / sqrt(n))`` and

  ``τ ← clip(τ + η · clip(shrink(z, z_0), −1, 1), 0, 1)`` with ``shrink(z, z_0) = sign(z) · max(|z| − z_0, 0)``.

  ``z`` is scale-free (any reward sign and scale); inside the dead zone ``|z| ≤ z_0`` τ stays (optionally it decays
  by ``idle_decay · η · φ``, φ the fraction of rows that followed the advice: see :class:`TrustSettings`). A window
  in which the agent (almost) never takes the advice although the distillation term pulls it there moves τ down by
  ``η / 2``: what the agent learned from the rewards overrides the teacher, and the advice can no longer be
  measured. The distillation weight is
  ``λ · τ`` (times the fade below) with λ the user's ``teacher_coef`` (a float or a schedule).

- **per state**, a row's distillation term is switched off where the rollout contradicts the advice there: the
  agent took the advised action and did clearly worse than expected (``Â < −m``), or took another action and did
  clearly better (``Â > m``), with ``Â`` the advantage divided by the rollout's advantage standard deviation. The
  policy gradient then acts alone on those rows instead of being fought by the KL term; systematic teacher errors
  (a whole class of views) are exactly the rows that keep producing such evidence.

- **an imitation cap** (discrete actions): imitation raises the probability of the teacher's top action no higher
  than ``c(τ) = c_0 + (1 − c_0) · τ``, ``c_0 = 1 / n_actions`` by default (an untrusted teacher adds no preference
  over a uniform policy); rows past it are pulled back to ``c`` (:func:`~sb3_vlm.guidance.distill.capped_rows`).
  The evidence needs rewards, and in a sparse-reward task a teacher that the policy copies outright (a constant
  "turn left") blocks the exploration that would ever produce one, so τ never learns that it is wrong. Under the cap
  the policy keeps a share ``1 − c`` of its own choices until the teacher has earned more; the policy gradient may
  still raise the advised action beyond ``c``. Box actions: the imitation term moves the Gaussian's mean but holds
  its std constant, so it never narrows the exploration noise.

- **advice that ignores the view is not imitated**: over the last ``window`` advised rows, the *diversity* of the
  advice is the share of rows whose advice differs from the most common one (:func:`advice_diversity`). Below
  ``min_diversity`` (5 % by default) the distillation weight is 0. Such a teacher (ERPv's constant "worst model", or
  a VLM whose answer does not depend on the image) can teach nothing a state-independent bias would not, and
  the rewards teach a bias by themselves; but imitating it before any reward arrives skews the exploration that
  would find one, and the damage outlives τ's fall (measured: README, "Trust that adapts").

- **a fade**: the weight is multiplied by :func:`fade_factor`, 1 for the first half of ``learn()`` and then linearly
  down to 0 at its end, so the views a systematic teacher gets wrong (which τ, an average, cannot single out) are
  corrected by the rewards before training ends.

"Took the advised action": Discrete, the action is the teacher's most probable one (rows where the teacher is
uniform carry no advice to follow and are left out of the evidence); Box, the sampled action lies closer to the
advised action than the policy's mean does (the exploration noise moved it towards the advice, which for a
Gaussian happens with probability about ½ whatever the advice, hence ``p_t = ½``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class TrustSettings:
    """
    Settings of the adaptive trust (see :mod:`sb3_vlm.guidance.trust` for the equations).

    :param initial: τ at the start of training: a small start, so an unknown teacher gets a small say until the run
        shows whether it pays
    :param rate: η, the most τ moves per evidence window (``1 / rate`` windows of strong evidence take τ from 0 to 1)
    :param dead_zone: z_0, the part of the t statistic treated as noise (in standard errors; 2 is about the 95 %
        level, so with no real effect τ moves on one window in twenty, and then by little)
    :param window: the fewest informative advised rows an evidence window holds
    :param idle_decay: how much of η τ loses per window with no evidence either way, times the fraction of rows
        that followed the advice (0: off, the default). Meant for a large λ, where a wrong teacher can be copied
        before any reward arrives and then blocks the exploration that would expose it; with the default λ it cost
        the good teacher more than it saved (README, "Trust that adapts")
    :param row_margin: m, how far (in advantage standard deviations) a row's advantage must contradict the advice
        for its distillation term to be switched off; ``None`` disables the per-state gate
    :param min_rows: the fewest rows each of F and N needs for the rollout to count as evidence
    :param cap: the imitation cap (discrete actions): the distillation term pulls ``π(a_v|s)`` no higher than
        ``c(τ) = c_0 + (1 − c_0) · τ`` (:func:`imitation_cap`), so before the run has evidence a teacher cannot take
        over the policy and the rest of the time it explores; False: off (LVLM2P's term)
    :param cap_floor: c_0, the cap at τ = 0; None (default): ``1 / n_actions``, a uniform policy's probability, so an
        untrusted teacher may raise its advice no higher than no preference at all would
    :param min_diversity: the least share of recent advised rows whose advice differs from the most common advice
        (:func:`advice_diversity`) for the teacher to be imitated at all; 0 disables the check. Box advice
        "differs" where a coordinate is more than ``diversity_tol`` of the action range (or of 1 for an unbounded
        coordinate) away from the recent median
    :param diversity_tol: see ``min_diversity``
    :param fade_start: the fraction of ``learn()``'s budget after which the teacher's weight fades linearly to 0 at
        its end (:func:`fade_factor`); None: no fade. The trust is an average over states and cannot single out the
        views a systematic teacher gets wrong; a copied wrong view is harmless to a sampling policy but traps the
        deterministic one in a loop. Letting go over the second half leaves the rewards time to correct those
        views, so the final policy is RL's own (a training-time teacher, as kickstarting's schedule has it)
    """

    initial: float = 0.2
    rate: float = 0.1
    dead_zone: float = 2.0
    window: int = 512
    idle_decay: float = 0.0
    row_margin: float | None = 0.5
    min_rows: int = 4
    cap: bool = True
    cap_floor: float | None = None
    min_diversity: float = 0.05
    diversity_tol: float = 0.05
    fade_start: float | None = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.initial <= 1.0:
            raise ValueError(f"initial trust must be in [0, 1], got {self.initial}")
        if not self.rate > 0:
            raise ValueError(f"rate must be > 0, got {self.rate}")
        if not self.dead_zone >= 0:
            raise ValueError(f"dead_zone must be >= 0, got {self.dead_zone}")
        if self.row_margin is not None and not self.row_margin >= 0:
            raise ValueError(f"row_margin must be >= 0 or None, got {self.row_margin}")
        if not self.idle_decay >= 0:
            raise ValueError(f"idle_decay must be >= 0, got {self.idle_decay}")
        if self.cap_floor is not None and not 0.0 < self.cap_floor <= 1.0:
            raise ValueError(f"cap_floor must be in (0, 1] or None (1 / n_actions), got {self.cap_floor}")
        if self.fade_start is not None and not 0.0 <= self.fade_start < 1.0:
            raise ValueError(f"fade_start must be in [0, 1) or None, got {self.fade_start}")
        if not 0.0 <= self.min_diversity < 1.0:
            raise ValueError(f"min_diversity must be in [0, 1), got {self.min_diversity}")
        if not self.diversity_tol > 0:
            raise ValueError(f"diversity_tol must be > 0, got {self.diversity_tol}")
        if self.window < 1:
            raise ValueError(f"window must be >= 1 row, got {self.window}")
        if self.min_rows < 2:
            raise ValueError(f"min_rows must be >= 2 (a variance needs two rows), got {self.min_rows}")


def imitation_cap(trust: float, settings: TrustSettings, n_actions: int) -> float | None:
    """
    ``c(τ) = c_0 + (1 − c_0) · τ``, the most probability imitation may give the advised action (None: no cap);
    ``c_0`` is ``settings.cap_floor``, by default ``1 / n_actions``.
    """
    if not settings.cap:
        return None
    floor = settings.cap_floor if settings.cap_floor is not None else 1.0 / n_actions
    return float(floor + (1.0 - floor) * float(np.clip(trust, 0.0, 1.0)))


def fade_factor(progress_remaining: float, settings: TrustSettings) -> float:
    """
    ``min(1, (1 − p) / (1 − p_0))`` with ``p = 1 − progress_remaining`` the fraction of ``learn()`` done and
    ``p_0 = settings.fade_start``: 1 until ``p_0``, then linearly down to 0 at the end (1 without a fade).
    """
    if settings.fade_start is None:
        return 1.0
    return float(np.clip(progress_remaining / (1.0 - settings.fade_start), 0.0, 1.0))


def advice_diversity(advice: np.ndarray, discrete: bool, scale: np.ndarray | float = 1.0, tol: float = 0.05) -> float:
    """
    The share of advised rows whose advice differs from the most common advice: 0 for a teacher that says the same
    whatever the view.

    :param advice: (rows, k): teacher probabilities (discrete; a row's advice is its most probable action) or
        advised actions (Box; "differs" means some coordinate is more than ``tol · scale`` from the rows' median)
    :param discrete: which of the two
    :param scale: (k,) or one value: the action range per coordinate (Box)
    :param tol: see ``advice``
    :return: in [0, 1); 1.0 (no evidence of sameness) for fewer than two rows
    """
    advice = np.asarray(advice, dtype=np.float64)
    if advice.shape[0] < 2:
        return 1.0
    if discrete:
        counts = np.bincount(advice.argmax(axis=1), minlength=advice.shape[1])
        return float(1.0 - counts.max() / advice.shape[0])
    far = np.abs(advice - np.median(advice, axis=0)) > tol * np.asarray(scale, dtype=np.float64)
    return float(far.any(axis=1).mean())


def followed_discrete(
    actions: np.ndarray, teacher_probs: np.ndarray, valid: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """
    Which advised rows took the teacher's most probable action.

    :param actions: (rows,) integer actions taken
    :param teacher_probs: (rows, n) teacher probabilities
    :param valid: (rows,) advice mask
    :return: ``(followed, informative)``: boolean (rows,) arrays; ``informative`` is False where there is no advice
        or the teacher ranks all actions equally (nothing to follow)
    """
    probs = np.asarray(teacher_probs, dtype=np.float64)
    top = probs.max(axis=1)
    informative = (np.asarray(valid) > 0) & (top - probs.min(axis=1) > 1e-6)
    followed = informative & (np.asarray(actions).reshape(-1).astype(np.int64) == probs.argmax(axis=1))
    return followed, informative


def followed_continuous(
    actions: np.ndarray, mean_actions: np.ndarray, advised: np.ndarray, valid: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """
    Which advised rows moved towards the advice: the sampled action is closer to the advised action than the
    policy's mean is (all in the same units).

    :return: ``(followed, informative)`` as :func:`followed_discrete`
    """
    d_taken = np.linalg.norm(np.asarray(actions) - np.asarray(advised), axis=1)
    d_mean = np.linalg.norm(np.asarray(mean_actions) - np.asarray(advised), axis=1)
    informative = np.asarray(valid) > 0
    return informative & (d_taken < d_mean), informative


def advice_scores(advantages: np.ndarray, followed: np.ndarray, follow_prob: np.ndarray | float) -> np.ndarray:
    """Each row's ``d = A · (1[f] / p − 1[¬f] / (1 − p))``, ``p`` clipped to [0.05, 0.95] (module docstring)."""
    p = np.clip(np.asarray(follow_prob, dtype=np.float64), 0.05, 0.95)
    weight = np.where(np.asarray(followed, dtype=bool), 1.0 / p, -1.0 / (1.0 - p))
    return np.asarray(advantages, dtype=np.float64) * weight


def advice_evidence(
    advantages: np.ndarray,
    followed: np.ndarray,
    informative: np.ndarray,
    follow_prob: np.ndarray | float = 0.5,
    min_rows: int = 4,
) -> float:
    """
    The t statistic of the importance-weighted advice contrast ``d = A · (1[f] / p − 1[¬f] / (1 − p))`` over the
    informative rows (see the module docstring). 0.0 (no evidence) when fewer than ``min_rows`` rows followed the
    advice or fewer than ``min_rows`` did not, or the scores do not vary.

    :param follow_prob: ``p``, the probability of having taken the advised action, per row or one value
    """
    keep = np.asarray(informative, dtype=bool).reshape(-1)
    f = np.asarray(followed, dtype=bool).reshape(-1)[keep]
    if f.sum() < min_rows or (~f).sum() < min_rows:
        return 0.0
    adv = np.asarray(advantages, dtype=np.float64).reshape(-1)[keep]
    p = np.broadcast_to(np.asarray(follow_prob, dtype=np.float64), keep.shape)[keep]
    scores = advice_scores(adv, f, p)
    se = scores.std(ddof=1) / np.sqrt(scores.size)
    if not np.isfinite(se) or se < 1e-12:
        return 0.0
    return float(scores.mean() / se)


def updated_trust(trust: float, evidence: float, settings: TrustSettings) -> float:
    """``τ ← clip(τ + η · clip(shrink(z, z_0), −1, 1), 0, 1)``; NaN evidence leaves τ unchanged."""
    if not np.isfinite(evidence):
        return trust
    shrunk = np.sign(evidence) * max(abs(evidence) - settings.dead_zone, 0.0)
    return float(np.clip(trust + settings.rate * np.clip(shrunk, -1.0, 1.0), 0.0, 1.0))


class TrustEstimator:
    """
    τ and the evidence window it is updated from: :meth:`observe` takes one rollout's advised rows and updates τ once
    the window holds ``settings.window`` informative rows. Plain attributes only, so it pickles with the model.

    :param settings: the trust's settings
    """

    def __init__(self, settings: TrustSettings):
        self.settings = settings
        self.trust = settings.initial
        self.last_evidence = 0.0
        self.diversity = 1.0
        self._window: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._recent_advice: np.ndarray | None = None

    def observe_advice(self, advice: np.ndarray, discrete: bool, scale: np.ndarray | float = 1.0) -> float:
        """
        Add a rollout's advice (informative rows only, (rows, k)) to the last ``settings.window`` rows and return
        their :func:`advice_diversity` (also kept as ``self.diversity``).
        """
        if len(advice) == 0:
            return self.diversity
        advice = np.asarray(advice, dtype=np.float32).reshape(len(advice), -1)
        recent = advice if self._recent_advice is None else np.concatenate([self._recent_advice, advice])
        self._recent_advice = recent[-max(self.settings.window, advice.shape[0]) :]
        self.diversity = advice_diversity(self._recent_advice, discrete, scale, self.settings.diversity_tol)
        return self.diversity

    @property
    def imitates(self) -> bool:
        """False while the recent advice hardly depends on the view (``diversity < settings.min_diversity``)."""
        return self.diversity >= self.settings.min_diversity

    def observe(
        self,
        advantages: np.ndarray,
        followed: np.ndarray,
        informative: np.ndarray,
        follow_prob: np.ndarray | float = 0.5,
    ) -> float | None:
        """Add a rollout's rows; return the window's evidence z when τ was updated, else None."""
        keep = np.asarray(informative, dtype=bool).reshape(-1)
        if not keep.any():
            return None
        adv = np.asarray(advantages, dtype=np.float64).reshape(-1)[keep]
        prob = np.broadcast_to(np.asarray(follow_prob, dtype=np.float64), keep.shape)[keep]
        self._window.append((adv, np.asarray(followed, dtype=bool).reshape(-1)[keep], prob))
        if sum(part[0].size for part in self._window) < self.settings.window:
            return None
        adv_w, followed_w, prob_w = (np.concatenate(cols) for cols in zip(*self._window, strict=True))
        self._window = []
        self.last_evidence = advice_evidence(
            adv_w, followed_w, np.ones(adv_w.size, dtype=bool), prob_w, self.settings.min_rows
        )
        followed_frac = float(followed_w.mean())
        if followed_w.sum() < self.settings.min_rows <= (~followed_w).sum():
            # the agent has stopped taking the advice although the KL term pulls it there: what it learned from
            # the rewards overrides the teacher, which is itself evidence against it (and no longer measurable)
            self.trust = max(0.0, self.trust - 0.5 * self.settings.rate)
        elif abs(self.last_evidence) <= self.settings.dead_zone and self.settings.idle_decay > 0:
            # imitated without paying: the more the agent follows the advice while its returns show no gain, the
            # faster τ falls, so a wrong teacher that is copied (and so blocks the exploration that would expose
            # it) loses its hold; a teacher the agent hardly follows yet keeps its say
            self.trust = max(0.0, self.trust - self.settings.idle_decay * self.settings.rate * followed_frac)
        else:
            self.trust = updated_trust(self.trust, self.last_evidence, self.settings)
        return self.last_evidence


def row_gate(
    advantages: np.ndarray, followed: np.ndarray, informative: np.ndarray, valid: np.ndarray, margin: float | None
) -> np.ndarray:
    """
    Per-row weight of the distillation term: 0 where the row's own advantage contradicts the advice
    (followed and ``Â < −m``, or not followed and ``Â > m``), 1 on other advised rows, 0 without advice.
    ``Â = A / std(A)`` over the rollout, so the margin is scale-free. ``margin=None``: 1 on every advised row.
    """
    weight = (np.asarray(valid) > 0).astype(np.float32)
    if margin is None:
        return weight
    adv = np.asarray(advantages, dtype=np.float64).reshape(-1)
    std = adv.std()
    if not np.isfinite(std) or std < 1e-12:
        return weight
    normalised = adv / std
    contradicted = informative & ((followed & (normalised < -margin)) | (~followed & (normalised > margin)))
    weight[contradicted] = 0.0
    return weight


__all__ = [
    "TrustEstimator",
    "TrustSettings",
    "advice_diversity",
    "advice_evidence",
    "advice_scores",
    "fade_factor",
    "followed_continuous",
    "followed_discrete",
    "imitation_cap",
    "row_gate",
    "updated_trust",
]
