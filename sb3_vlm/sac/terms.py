"""
GuidedSAC's guidance terms as small objects: each ``loss(batch) -> (tensor, stats)`` holds one formula, read from a
:class:`GuidanceBatch`, so ``GuidedSAC.train()`` stays SB3's ``SAC.train`` plus a few calls. The tensor maths itself
is in :mod:`sb3_vlm.guidance.actor_guidance` (pure functions). A term returns its loss *without* its coefficient
(λ1 for the actor terms, λ2 for VER): GuidedSAC applies the coefficient and its schedule.

Gates (``Q_f``, per row in [0, 1], no gradient) say how far each row's advice is trusted; one gate is shared by the
VPG term and VER, and a batch computes it once (:meth:`GuidanceBatch.gate_weights`).
"""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

import torch as th
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.type_aliases import PyTorchObs

from sb3_vlm.guidance.actor_guidance import (
    action_confidence,
    advantage_gate,
    advice_advantage,
    alpha_regulariser,
    alpha_target,
    bc_gate,
    clip_for_log_prob,
    gated_bc_loss,
    running_advantage_scale,
    value_aware_factor,
    value_gate,
    weighted_action_mse,
)
from sb3_vlm.policies.transition import TransitionModel

#: ``q(obs, actions) -> (batch, 1)`` without gradient: the min over a twin critic's Q-networks
QFunction = Callable[[PyTorchObs, th.Tensor], th.Tensor]
Stats = dict[str, float]


@dataclass
class GuidanceBatch:
    """
    What a guidance term may read about one batch.

    :param observations: the batch's observations s
    :param actions: π's reparameterised sample ``a_π`` for s, *with* gradient (the VPG / MSE terms pull it)
    :param dist_params: π(·|s)'s ``(mean_actions, log_std, kwargs)``
    :param action_dist: the actor's distribution object, to rebuild π(·|s) from ``dist_params``
    :param advice_actions: advised actions ``a_v``, scaled to [-1, 1]
    :param valid: (batch,) 1.0 where the row has advice
    :param critic: the RL critic C_R, min over its twin Q-networks, without gradient
    :param advice_critic: ERPv's frozen advice critic C_V, or None
    """

    observations: PyTorchObs
    actions: th.Tensor
    dist_params: tuple[th.Tensor, th.Tensor, dict[str, th.Tensor]]
    action_dist: Distribution
    advice_actions: th.Tensor
    valid: th.Tensor
    critic: QFunction
    advice_critic: QFunction | None = None
    _advantage: th.Tensor | None = field(default=None, init=False, repr=False)
    _gated: dict[int, tuple[th.Tensor, Stats]] = field(default_factory=dict, init=False, repr=False)

    @cached_property
    def has_advice(self) -> bool:
        return bool((self.valid > 0).any())

    @property
    def n_valid(self) -> float:
        """Number of valid rows, at least 1 (a denominator for statistics)."""
        return max(float((self.valid > 0).sum()), 1.0)

    def distribution(self) -> Distribution:
        """π(·|s), rebuilt from the parameters: SAC's target step has since pointed ``action_dist`` at π(·|s')."""
        mean_actions, log_std, kwargs = self.dist_params
        return self.action_dist.proba_distribution(mean_actions, log_std, **kwargs)

    def advantage(self) -> th.Tensor:
        """
        ``d_i = Q(s_i, a_v,i) − Q(s_i, a_π,i)`` under *one* critic, C_V when there is one, else C_R; 0 on invalid rows,
        no gradient. Computed once per batch (the advantage gate and gated BC's value gate share it); without valid
        rows no critic is run.
        """
        if self._advantage is None:
            if not self.has_advice:
                self._advantage = th.zeros_like(self.valid.reshape(-1))
            else:
                q = self.advice_critic or self.critic
                q_v = q(self.observations, self.advice_actions)
                q_pi = q(self.observations, self.actions.detach())
                self._advantage = advice_advantage(q_v, q_pi, self.valid)
        return self._advantage

    def gate_weights(self, gate: Gate) -> tuple[th.Tensor, Stats]:
        """
        ``Q_f`` of this batch under ``gate`` and its statistics, computed on first use and kept: VPG and VER see the
        same ``Q_f``, and a gate's running state moves once per batch.
        """
        if id(gate) not in self._gated:
            self._gated[id(gate)] = gate(self)
        return self._gated[id(gate)]


# ---------------------------------------------------------------------------------------------------------- gates


class Gate(ABC):
    """``Q_f``: per-row trust in [0, 1] of the advice, without gradient; 0 on rows without advice."""

    @abstractmethod
    def weights(self, batch: GuidanceBatch) -> th.Tensor:
        """(batch,) ``Q_f``; only called on a batch with at least one valid row."""

    def stats(self) -> Stats:
        """Gate state worth logging."""
        return {}

    def __call__(self, batch: GuidanceBatch) -> tuple[th.Tensor, Stats]:
        if not batch.has_advice:
            return th.zeros_like(batch.valid.reshape(-1)), {}
        q_f = self.weights(batch)
        stats = {
            "q_f_mean": float(q_f.sum()) / batch.n_valid,
            "q_f_active_frac": float(((q_f > 0) & (batch.valid.reshape(-1) > 0)).sum()) / batch.n_valid,
        }
        return q_f, {**stats, **self.stats()}


class AdvantageGate(Gate):
    """
    The default: a scale-free, soft Q-filter (the Q-filter of Nair et al. 2018, "Overcoming Exploration in
    Reinforcement Learning with Demonstrations", arXiv:1709.10089, clones a demonstration only where the critic
    prefers it to the policy's action; here the 0/1 filter becomes a weight)::

        d_i   = Q(s_i, a_v,i) − Q(s_i, a_π,i)                  Q = C_V if given, else min of the twin RL critics
        σ     ← (1 − rate) σ + rate · mean_valid |d_i|        (the first batch with advice sets σ)
        Q_f,i = clip(d_i / (σ + eps), 0, 1) on valid rows, 0 elsewhere

    Both actions are judged by the same critic, so the sign of ``d`` means "the advice is better here" for any reward
    sign; dividing by a running scale rather than the batch's min-max makes ``Q_f`` independent of the reward scale
    without letting one extreme row shrink the rest. ``scale`` (σ) is state: it is saved with the model.

    :param rate: EMA rate of σ
    :param eps: keeps the division finite when every advantage is 0
    """

    def __init__(self, rate: float = 0.01, eps: float = 1e-8):
        if not 0.0 < rate <= 1.0:
            raise ValueError(f"rate must be in (0, 1], got {rate}")
        self.rate, self.eps = float(rate), float(eps)
        self.scale: float | None = None

    def weights(self, batch: GuidanceBatch) -> th.Tensor:
        d = batch.advantage()
        self.scale = running_advantage_scale(self.scale, d, batch.valid, self.rate)
        return advantage_gate(d, batch.valid, self.scale, self.eps)

    def stats(self) -> Stats:
        return {} if self.scale is None else {"advice_adv_scale": self.scale}

    def __repr__(self) -> str:
        return f"AdvantageGate(rate={self.rate}, scale={self.scale})"


class MinMaxGate(Gate):
    """
    ERPv's constraint factor (§3.3, eq. 3-4): ``Q_f = max(0, scale(Q_v) − scale(Q_r))`` with one min-max over
    ``Q_v = C_V(s, a_v)`` and ``Q_r`` jointly over the valid rows of the batch. Without a C_V, ``Q_v`` comes from the
    RL critic (ablation M9).

    :param reference: who scores the policy's action: ``"rl"`` (ERPv: ``Q_r = C_R(s, a_π)``) or ``"advice"``
        (``Q_r = C_V(s, a_π)``, both actions judged by C_V)
    """

    def __init__(self, reference: Literal["rl", "advice"] = "rl"):
        if reference not in ("rl", "advice"):
            raise ValueError(f"vpg_reference must be 'rl' or 'advice', got {reference!r}")
        self.reference = reference

    def weights(self, batch: GuidanceBatch) -> th.Tensor:
        advice_q = batch.advice_critic or batch.critic
        q_v = advice_q(batch.observations, batch.advice_actions)
        q_r = (batch.critic if self.reference == "rl" else advice_q)(batch.observations, batch.actions.detach())
        return value_aware_factor(q_r, q_v, batch.valid)

    def __repr__(self) -> str:
        return f"MinMaxGate(reference={self.reference!r})"


class RandomGate(Gate):
    """ERPv's RSF baseline: ``Q_f ~ U[0, 1]`` per valid row (random numbers are drawn only for batches with advice)."""

    def weights(self, batch: GuidanceBatch) -> th.Tensor:
        valid = batch.valid.reshape(-1)
        return th.rand(valid.shape, device=valid.device) * (valid > 0)

    def __repr__(self) -> str:
        return "RandomGate()"


# ---------------------------------------------------------------------------------------------------- actor terms


class GuidanceTerm(ABC):
    """A term added, times its coefficient λ, to the actor loss."""

    @abstractmethod
    def loss(self, batch: GuidanceBatch) -> tuple[th.Tensor, Stats]:
        """The term on one batch (exactly 0 without valid rows) and statistics to log."""


class VPGTerm(GuidanceTerm):
    """
    ERPv's value-aware policy guidance (eq. 3-4): ``mean_valid Q_f,i ‖a_v,i − a_π,i‖²``, the gradient into ``a_π``
    only. With :class:`RandomGate` it is ERPv's RSF baseline.

    :param gate: who computes ``Q_f`` (:class:`AdvantageGate`, :class:`MinMaxGate`, :class:`RandomGate`)
    """

    def __init__(self, gate: Gate):
        self.gate = gate

    def loss(self, batch: GuidanceBatch) -> tuple[th.Tensor, Stats]:
        q_f, stats = batch.gate_weights(self.gate)
        return weighted_action_mse(batch.advice_actions, batch.actions, batch.valid, q_f), stats


class ActionMSETerm(GuidanceTerm):
    """COVR eq. 4 / DPL: ``mean_valid ‖a_v,i − a_π,i‖²`` (APL is this term under an annealed λ)."""

    def loss(self, batch: GuidanceBatch) -> tuple[th.Tensor, Stats]:
        return weighted_action_mse(batch.advice_actions, batch.actions, batch.valid), {}


class GatedBCTerm(GuidanceTerm):
    """
    VARL's gated behaviour cloning: ``mean_valid g_i · ℓ_i`` with ``ℓ_i = −log π(a_v,i|s_i)`` (``"nll"``, advised
    actions pulled 1e-3 inside the bounds) or ``‖a_v,i − μ(s_i)‖²`` (``"mse"``, to the greedy action μ), and the gate
    ``g_i = 1`` where the greedy action is more than ``threshold`` (RMS, [-1, 1] units) from the advice, i.e. the
    policy does not already follow it. With ``value_gate`` (default) ``g_i`` also needs
    ``Q(s_i, a_v,i) > Q(s_i, a_π,i)`` (:meth:`GuidanceBatch.advantage`): no cloning of advice the critic says is
    worse than the policy's own action. ``value_gate=False`` is VARL's gate.

    :param threshold: agreement distance below which BC is off
    :param per_row: ``"nll"`` or ``"mse"``
    :param value_gate: close the gate where the advice does not raise value
    """

    def __init__(self, threshold: float = 0.1, per_row: Literal["nll", "mse"] = "nll", value_gate: bool = True):
        if per_row not in ("nll", "mse"):
            raise ValueError(f"bc_loss must be 'nll' or 'mse', got {per_row!r}")
        self.threshold, self.per_row, self.value_gate = float(threshold), per_row, bool(value_gate)

    def loss(self, batch: GuidanceBatch) -> tuple[th.Tensor, Stats]:
        dist = batch.distribution()
        greedy = dist.mode()
        # rows without advice score the greedy action instead: finite whatever they hold (the distribution validates)
        rows = (batch.valid.reshape(-1, 1) > 0).expand_as(greedy)
        advice = th.where(rows, batch.advice_actions, greedy.detach())
        gate = bc_gate(advice, greedy, batch.valid, self.threshold)
        stats: Stats = {}
        if self.value_gate and batch.has_advice:
            better = value_gate(batch.advantage(), batch.valid)
            stats["bc_value_gate_frac"] = float(better.sum()) / batch.n_valid
            gate = gate * better
        if self.per_row == "nll":
            per_row = -dist.log_prob(clip_for_log_prob(advice))
        else:
            per_row = ((advice - greedy) ** 2).sum(dim=1)
        stats["bc_gate_frac"] = float(gate.sum()) / batch.n_valid
        return gated_bc_loss(per_row, gate, batch.valid), stats


# ------------------------------------------------------------------------------------------------------------ VER


@dataclass
class VERSettings:
    """
    ERPv's VLM-guided entropy regularisation (VER, eq. 5-7 and 12-14): a transition model T on the RL critic's
    features gives the confidence ``G = 1/‖s_{t+1} − T(s_t, a_v)‖²``, a target ``ᾱ`` and the α loss
    ``L_α + λ2 · mean_valid Q_f,i (α − ᾱ_i)²``. Needs ``ent_coef="auto"``.

    Choice (``gated``, default on): each row is weighted by the same ``Q_f`` as the VPG term, so advice the critic
    does not trust cannot hold α at its target (ERPv appendix F.2: with a useless VLM, VER traps α high). The rows
    are averaged over all valid rows, so VER's pull shrinks with the share of trusted advice. ``gated=False`` is the
    paper's unweighted eq. 7.

    :param coef: λ2 of eq. 7 (ERPv: 10); finite and non-negative
    :param alpha_target: ``"decreasing"`` (``ᾱ = sigmoid(−G)``, the behaviour ERPv describes) or ``"paper"``
        (the printed ``sigmoid(G)``); see :func:`~sb3_vlm.guidance.actor_guidance.alpha_target`
    :param confidence: ``"transition"`` (eq. 6), ``"action_mse"`` (ablation M4: ``G = 1/‖a_v − a_π‖²``) or
        ``"policy_action"`` (M5: the policy's action in place of a_v)
    :param next_state: ``"observed"`` s_{t+1} (default) or ``"predicted"`` ``T(s_t, a_π)`` (M8)
    :param alpha_loss: keep SAC's own α loss next to the VER term (``False`` is M7)
    :param gated: weight each row by ``Q_f`` (see above)
    :param alpha_zero_after: force α to 0 from this many environment steps on (M6); None: never
    :param transition_net_arch: hidden layers of T (about ERPv's decoder size)
    """

    coef: float = 10.0
    alpha_target: Literal["decreasing", "paper"] = "decreasing"
    confidence: Literal["transition", "action_mse", "policy_action"] = "transition"
    next_state: Literal["observed", "predicted"] = "observed"
    alpha_loss: bool = True
    gated: bool = True
    alpha_zero_after: int | None = None
    transition_net_arch: list[int] = field(default_factory=lambda: [256])

    def __post_init__(self) -> None:
        for name, allowed in (
            ("alpha_target", ("decreasing", "paper")),
            ("confidence", ("transition", "action_mse", "policy_action")),
            ("next_state", ("observed", "predicted")),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"VERSettings.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not (isinstance(self.coef, numbers.Real) and math.isfinite(self.coef) and self.coef >= 0):
            raise ValueError(f"VERSettings.coef must be a finite, non-negative number, got {self.coef!r}")


def ver_settings(ver: bool | VERSettings | None, default: bool) -> VERSettings | None:
    """``ver=`` as GuidedSAC takes it: None = ``default``, True = default settings, False = off."""
    if ver is None:
        ver = default
    if isinstance(ver, VERSettings):
        return ver
    if isinstance(ver, bool):
        return VERSettings() if ver else None
    raise TypeError(f"ver must be a bool, a VERSettings or None, got {type(ver).__name__}")


class VERTerm:
    """
    VER's term of the α loss, ``mean_valid w_i (α − ᾱ_i)²`` (ERPv eq. 7) with ``ᾱ`` from the transition model
    (eq. 6, 14; the M4/M5/M8 variants by :class:`VERSettings`) and ``w = Q_f`` of ``gate`` when ``settings.gated``.

    :param settings: the VER settings
    :param transition_model: T, trained by GuidedSAC on the critic's features (eq. 12)
    :param gate: the gate shared with the VPG term
    """

    def __init__(self, settings: VERSettings, transition_model: TransitionModel, gate: Gate | None):
        self.settings, self.transition_model, self.gate = settings, transition_model, gate

    def alpha_target(self, batch: GuidanceBatch, features: th.Tensor, next_features: th.Tensor) -> th.Tensor:
        """ᾱ per row, without gradient."""
        s = self.settings
        with th.no_grad():
            actions_pi = batch.actions.detach()
            if s.confidence == "action_mse":  # M4
                confidence = action_confidence(batch.advice_actions, actions_pi)
            else:
                compared = actions_pi if s.confidence == "policy_action" else batch.advice_actions  # M5 / eq. 6
                predicted, _ = self.transition_model(features, compared)
                reference = next_features
                if s.next_state == "predicted":  # M8: T's prediction for the policy's action, not the observed s'
                    reference, _ = self.transition_model(features, actions_pi)
                confidence = action_confidence(predicted, reference)
            return alpha_target(confidence, s.alpha_target)

    def loss(
        self, batch: GuidanceBatch, alpha: th.Tensor, features: th.Tensor, next_features: th.Tensor
    ) -> tuple[th.Tensor, Stats]:
        """
        :param alpha: the entropy coefficient α, with gradient
        :param features: the critic's features of s_t (detached)
        :param next_features: and of s_{t+1}
        """
        target = self.alpha_target(batch, features, next_features)
        stats: Stats = {"alpha_target": float(target[batch.valid.reshape(-1) > 0].mean())} if batch.has_advice else {}
        weights = None
        if self.settings.gated and self.gate is not None:
            weights, gate_stats = batch.gate_weights(self.gate)
            stats.update(gate_stats)
        return alpha_regulariser(alpha, target, batch.valid, weights), stats
