"""
Pure loss functions for guiding a continuous (SAC) actor with advised actions, testable on hand-built tensors.

All take a ``valid`` mask (1.0 where the row has advice) and are exactly zero, not NaN, when no row is valid.
Actions are in SB3's buffer scale, [-1, 1].
"""

from __future__ import annotations

from typing import Literal

import torch as th

from sb3_vlm.guidance.distill import masked_mean

#: keeps advised actions strictly inside (-1, 1), where the tanh-squashed log-density is finite
BC_ACTION_LIMIT = 0.999


def _rows(valid: th.Tensor) -> th.Tensor:
    return valid.reshape(-1) > 0


def joint_min_max_scale(q_r: th.Tensor, q_v: th.Tensor, valid: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
    """
    ERPv §3.3 step (3): min-max normalise Q_r and Q_v *jointly* (one min, one max over both, over the valid rows) so
    the two stay comparable. When all values are equal both scale to 0.

    :param q_r: (batch,) or (batch, 1) RL critic values of the policy's actions
    :param q_v: same shape, advice critic values of the advised actions
    :param valid: (batch,) row mask
    :return: scaled (q_r, q_v), same shapes, in [0, 1] on valid rows
    """
    rows = _rows(valid)
    if not bool(rows.any()):
        return th.zeros_like(q_r), th.zeros_like(q_v)
    both = th.cat([q_r.reshape(-1)[rows], q_v.reshape(-1)[rows]])
    low, high = both.min(), both.max()
    span = (high - low).clamp(min=1e-8)
    return (q_r - low) / span, (q_v - low) / span


def value_aware_factor(q_r: th.Tensor, q_v: th.Tensor, valid: th.Tensor) -> th.Tensor:
    """
    ERPv's constraint factor ``Q_f = max(0, scale(Q_v) − scale(Q_r))`` per sample (§3.3 steps 3-4), without gradient:
    the advice is imitated only where the advice critic rates it above the policy's own action. Invalid rows get 0.

    :return: (batch,) tensor in [0, 1]
    """
    with th.no_grad():
        s_r, s_v = joint_min_max_scale(q_r.detach().reshape(-1), q_v.detach().reshape(-1), valid)
        return th.where(_rows(valid), (s_v - s_r).clamp(min=0.0), th.zeros_like(s_r))


def advice_advantage(q_advice: th.Tensor, q_policy: th.Tensor, valid: th.Tensor) -> th.Tensor:
    """
    Per-state advantage of the advice over the policy's own action under *one* critic,
    ``d_i = Q(s_i, a_v,i) − Q(s_i, a_π,i)``, without gradient; 0 on invalid rows. Judging both actions with the same
    critic makes the sign meaningful whatever the reward's sign and scale (ERPv's ``scale(Q_v) − scale(Q_r)`` compares
    two critics, which an untrained C_R wins wherever rewards are negative).

    :param q_advice: (batch,) or (batch, 1) ``Q(s, a_v)``
    :param q_policy: same shape, ``Q(s, a_π)``
    :param valid: (batch,) row mask
    :return: (batch,) advantage
    """
    with th.no_grad():
        d = q_advice.detach().reshape(-1) - q_policy.detach().reshape(-1)
        return th.where(_rows(valid), d, th.zeros_like(d))


def running_advantage_scale(
    scale: float | None, advantage: th.Tensor, valid: th.Tensor, rate: float = 0.01
) -> float | None:
    """
    ``σ ← (1 − rate) σ + rate · mean_i |d_i|`` over the valid rows; the first batch with valid rows sets ``σ``, a batch
    without any leaves it unchanged. A running scale, not the batch's: one batch's spread no longer decides how much
    of it passes the gate (a batch min-max makes Q_f tiny wherever one row has a large advantage).

    :param scale: the current ``σ`` (None before the first valid batch)
    :param advantage: (batch,) ``d`` of :func:`advice_advantage`
    :param valid: (batch,) row mask
    :param rate: EMA rate
    :return: the new ``σ``
    """
    rows = _rows(valid)
    if not bool(rows.any()):
        return scale
    batch_scale = float(advantage.detach().reshape(-1)[rows].abs().mean())
    return batch_scale if scale is None else (1.0 - rate) * scale + rate * batch_scale


def advantage_gate(advantage: th.Tensor, valid: th.Tensor, scale: float | None, eps: float = 1e-8) -> th.Tensor:
    """
    The scale-free Q-filter ``Q_f,i = clip(d_i / (σ + eps), 0, 1)`` on valid rows, 0 elsewhere, without gradient:
    Nair et al. 2018's Q-filter (imitate only where the critic prefers the demonstrated action) with a soft weight,
    rising from 0 at ``d = 0`` to 1 at an advantage of one running scale ``σ`` (:func:`running_advantage_scale`).
    Multiplying all Q values by a constant multiplies ``d`` and ``σ`` alike and leaves Q_f unchanged.

    :param advantage: (batch,) ``d`` of :func:`advice_advantage`
    :param valid: (batch,) row mask
    :param scale: ``σ`` (None: no valid row seen yet, the gate is shut)
    :return: (batch,) tensor in [0, 1]
    """
    with th.no_grad():
        d = advantage.detach().reshape(-1)
        if scale is None:
            return th.zeros_like(d)
        q_f = (d / (scale + eps)).clamp(0.0, 1.0)
        return th.where(_rows(valid), q_f, th.zeros_like(q_f))


def weighted_action_mse(
    advice_actions: th.Tensor, actions: th.Tensor, valid: th.Tensor, weights: th.Tensor | None = None
) -> th.Tensor:
    """
    ``mean_i w_i · ‖a_v,i − a_r,i‖²`` over valid rows: ERPv eq. 3 with ``w = Q_f`` (VPG), COVR eq. 4 / DPL / APL with
    ``w = 1``. The gradient flows into ``actions`` (the policy's reparameterised sample) only.

    :param advice_actions: (batch, action_dim) advised actions
    :param actions: (batch, action_dim) actions sampled from the policy, with gradient
    :param valid: (batch,) row mask
    :param weights: (batch,) per-row weights (treated as constants), or None for 1
    """
    # rows without advice compare the action with itself: zero loss *and* zero gradient, whatever they hold
    rows = _rows(valid).unsqueeze(1)
    advice = th.where(rows, advice_actions.detach(), actions.detach())
    sq = ((advice - actions) ** 2).sum(dim=1)
    if weights is not None:
        sq = weights.detach().reshape(-1) * sq
    return masked_mean(sq, valid.reshape(-1))


def bc_gate(
    advice_actions: th.Tensor, greedy_actions: th.Tensor, valid: th.Tensor, threshold: float = 0.1
) -> th.Tensor:
    """
    VARL's gate: behaviour cloning only where the advised action is *not* already what the policy would do.
    "Already does" = RMS distance between the advised and the greedy (mean) action at most ``threshold``
    (in [-1, 1] action units). Without gradient.

    :return: (batch,) 1.0 where BC applies (valid row and disagreement), else 0.0
    """
    with th.no_grad():
        rms = ((advice_actions - greedy_actions) ** 2).mean(dim=1).sqrt()
        return ((rms > threshold) & _rows(valid)).to(advice_actions.dtype)


def value_gate(advantage: th.Tensor, valid: th.Tensor) -> th.Tensor:
    """
    1.0 on valid rows where following the advice raises value under the critic (``d = Q(s, a_v) − Q(s, a_π) > 0``),
    else 0.0; without gradient. Closes VARL's BC gate where the teacher is wrong by the agent's own estimate.
    """
    with th.no_grad():
        return ((advantage.detach().reshape(-1) > 0) & _rows(valid)).to(advantage.dtype)


def gated_bc_loss(per_row_loss: th.Tensor, gate: th.Tensor, valid: th.Tensor) -> th.Tensor:
    """
    Mean of a per-row behaviour-cloning loss (``−log π(a_v|s)`` or an action MSE) over the *valid* rows, with gated-off
    rows contributing zero (so the loss shrinks as the policy comes to agree, instead of renormalising onto the few
    rows that still disagree).
    """
    return masked_mean(gate.detach().reshape(-1) * per_row_loss.reshape(-1), valid.reshape(-1))


def clip_for_log_prob(advice_actions: th.Tensor) -> th.Tensor:
    """Advised actions on the bounds have zero density under a tanh-squashed policy; pull them just inside."""
    return advice_actions.clamp(-BC_ACTION_LIMIT, BC_ACTION_LIMIT)


def gaussian_transition_loss(mu: th.Tensor, log_sigma: th.Tensor, target: th.Tensor) -> th.Tensor:
    """
    ERPv eq. 12 per row: ``((μ − s_{t+1}) / σ)² + log σ``, averaged over latent dimensions.

    :return: (batch,) loss; average it for the training objective
    """
    return (((mu - target) / log_sigma.exp()) ** 2 + log_sigma).mean(dim=1)


def action_confidence(predicted: th.Tensor, target: th.Tensor, eps: float = 1e-6) -> th.Tensor:
    """
    ERPv's action confidence ``G = 1 / ‖s_{t+1} − μ̃_{t+1}‖²`` (eq. 6 and 14) per row, without gradient.

    Choice (documented): the squared L2 distance is averaged over latent dimensions, and eq. 12's ``log σ`` term is
    left out. With it, ``L_T`` changes sign as σ shrinks, so ``1 / L_T`` jumps from −∞ to +∞ at ``L_T = 0`` and the
    confidence would not be monotone in the distance; eq. 6 and 14 themselves define G by the L2 distance.

    :param predicted: (batch, d) predicted next latent for the compared action (μ̃ of ``T(s_t, a_v)``)
    :param target: (batch, d) the reference next latent (the observed ``s_{t+1}``)
    """
    with th.no_grad():
        return 1.0 / (((predicted - target) ** 2).mean(dim=1) + eps)


def alpha_target(confidence: th.Tensor, mode: Literal["decreasing", "paper"] = "decreasing") -> th.Tensor:
    """
    VER's entropy-coefficient target ᾱ from the confidence G (ERPv §3.4), without gradient.

    ERPv writes ``ᾱ = sigmoid(G)``, but G > 0, so that target lies in (0.5, 1) and *rises* with agreement, while the
    same section says a higher G must *reduce* entropy and appendix F.2 says a useless VLM (low G) traps α *high*.
    ``"decreasing"`` (default) implements the described behaviour with the same bounded sigmoid:
    ``ᾱ = sigmoid(−G) = 1 − sigmoid(G)`` ∈ (0, 0.5), falling as agreement rises. ``"paper"`` is the printed formula.
    """
    with th.no_grad():
        if mode == "decreasing":
            return th.sigmoid(-confidence)
        if mode == "paper":
            return th.sigmoid(confidence)
        raise ValueError(f"mode must be 'decreasing' or 'paper', got {mode!r}")


def alpha_regulariser(
    alpha: th.Tensor, target: th.Tensor, valid: th.Tensor, weights: th.Tensor | None = None
) -> th.Tensor:
    """
    ERPv eq. 7's ``E[(α − ᾱ)²]`` over valid rows, each row optionally weighted (``mean_i w_i (α − ᾱ_i)²``, e.g. by
    Q_f so that advice the critic does not trust cannot hold α at its target: ERPv appendix F.2's trap). The
    gradient reaches α only (ᾱ and the weights are constants).
    """
    sq = (alpha.reshape(()) - target.detach().reshape(-1)) ** 2
    if weights is not None:
        sq = weights.detach().reshape(-1) * sq
    return masked_mean(sq, valid.reshape(-1))
