"""LVLM2P's distillation term and its continuous-action counterpart, as pure functions on tensors."""

from __future__ import annotations

import numpy as np
import torch as th


def masked_mean(values: th.Tensor, valid: th.Tensor) -> th.Tensor:
    """
    Mean of ``values`` over rows with ``valid > 0``; exactly zero (not NaN) when no row is valid.

    The result stays attached to the graph in both cases, so ``backward()`` always works.
    """
    mask = valid > 0
    # where(), not values * mask: a masked row holding inf/NaN must not poison the mean
    return th.where(mask, values, th.zeros_like(values)).sum() / mask.sum().clamp(min=1).to(values.dtype)


def teacher_targets(teacher_probs: th.Tensor, target: str = "soft") -> th.Tensor:
    """
    Distillation target from the teacher's probabilities.

    :param teacher_probs: (batch, n_actions), rows sum to one
    :param target: ``"soft"`` keeps the distribution (LVLM2P default); ``"hard"`` is the one-hot of its argmax
        (LVLM2P's ablation, Fig. 4 left)
    """
    if target == "soft":
        return teacher_probs
    if target == "hard":
        return th.nn.functional.one_hot(teacher_probs.argmax(dim=-1), teacher_probs.shape[-1]).to(teacher_probs.dtype)
    raise ValueError(f"target must be 'soft' or 'hard', got {target!r}")


def kl_distill_loss(
    teacher_probs: th.Tensor,
    student_log_probs: th.Tensor,
    valid: th.Tensor,
    weights: th.Tensor | None = None,
    cap: float | None = None,
) -> th.Tensor:
    """
    LVLM2P eq. 1's distillation term ``D_KL(π_T(·|o) ‖ π_θ(·|s))``, averaged over valid rows.

    ``KL(p ‖ π) = Σ_a p(a) (log p(a) − log π(a|s))``, with ``0 · log 0 = 0`` so hard (one-hot) targets work.
    Computed from the student's log-probabilities (numerically stable). Gradient flows into the student only.

    :param teacher_probs: (batch, n_actions) teacher distribution (no gradient)
    :param student_log_probs: (batch, n_actions) ``log π_θ(a|s)``
    :param valid: (batch,) 1 where the row has advice, 0 where it is masked out
    :param weights: (batch,) per-row weights (the trust's per-state gate), constants; None for 1. The mean stays
        over *all* valid rows, so gated-off rows lower the term instead of renormalising it onto the others
    :param cap: the imitation cap ``c`` in (0, 1] (None or 1: LVLM2P's term). Rows where the student already takes
        the teacher's top action ``a_v`` with probability ``≥ c`` (and the teacher gives it more than ``c``) get the
        binary KL ``KL(Bern(c) ‖ Bern(π_θ(a_v|s)))`` instead, which pulls ``π_θ(a_v|s)`` back to ``c`` and moves the
        rest in proportion to the student's own preferences (:func:`capped_rows`); the others keep the full KL
    :return: scalar loss; zero when no row is valid
    """
    p = teacher_probs.detach()
    per_row = (th.xlogy(p, p) - p * student_log_probs).sum(dim=-1)
    if cap is not None:
        over = capped_rows(p, student_log_probs, cap)  # validates the cap
        if cap < 1.0:  # a cap of 1 holds nothing back
            log_pv = student_log_probs.gather(-1, p.argmax(dim=-1, keepdim=True)).squeeze(-1)
            # log(1 − π_v) from the log-probabilities, stable where π_v is close to 1
            log_rest = th.log1p(-th.exp(log_pv).clamp(max=1.0 - 1e-6))
            binary = cap * (np.log(cap) - log_pv) + (1.0 - cap) * (float(np.log1p(-cap)) - log_rest)
            per_row = th.where(over, binary, per_row)
    return masked_mean(_weighted(per_row, weights), valid)


def capped_rows(teacher_probs: th.Tensor, student_log_probs: th.Tensor, cap: float) -> th.Tensor:
    """
    The rows past the imitation cap: the teacher gives its top action ``a_v`` more than ``c`` and the student
    already takes it with probability ``≥ c``. There imitation pulls ``π_θ(a_v|s)`` back to ``c`` instead of on to
    the teacher's, so a teacher can hold the student at no more than ``c`` on its advice and the rest of the time the
    student explores: the only way a wrong teacher can be found out in a sparse-reward task. A one-sided cap (no
    pull back) is not enough: with one network, rows still below the cap drag the others past it, and PPO's
    normalised-advantage noise ratchets them up (our measurements, README "Trust that adapts").

    :param teacher_probs: (batch, n_actions)
    :param student_log_probs: (batch, n_actions) ``log π_θ(a|s)``
    :param cap: ``c`` in (0, 1]; 1 caps nothing
    :return: (batch,) boolean, no gradient
    """
    if not 0.0 < cap <= 1.0:
        raise ValueError(f"the imitation cap must be in (0, 1], got {cap}")
    top_p, top = teacher_probs.max(dim=-1, keepdim=True)
    if cap >= 1.0:
        return th.zeros(student_log_probs.shape[0], dtype=th.bool, device=student_log_probs.device)
    log_pv = student_log_probs.detach().gather(-1, top).squeeze(-1)
    return (top_p.squeeze(-1) > cap) & (log_pv >= float(np.log(cap)))


def _weighted(per_row: th.Tensor, weights: th.Tensor | None) -> th.Tensor:
    return per_row if weights is None else weights.detach().reshape(per_row.shape) * per_row


def advised_action_nll(advised_log_prob: th.Tensor, valid: th.Tensor, weights: th.Tensor | None = None) -> th.Tensor:
    """
    Continuous-action counterpart of the KL term: ``−log π_θ(a_v|s)`` for the advised action ``a_v`` (the KL to
    a point-mass teacher, up to a constant), averaged over valid rows.

    :param advised_log_prob: (batch,) ``log π_θ(a_v|s)``
    :param valid: (batch,) validity mask
    :param weights: (batch,) per-row weights, as in :func:`kl_distill_loss`
    """
    return masked_mean(_weighted(-advised_log_prob, weights), valid)


def continuous_agreement(
    mean_actions: th.Tensor, advised: th.Tensor, valid: th.Tensor, scale: th.Tensor, tol: float = 0.1
) -> th.Tensor:
    """
    Box counterpart of :func:`teacher_agreement` (a diagnostic): the fraction of valid rows whose policy mean lies
    within ``tol · scale`` of the advised action in every coordinate (``scale``: the action range per coordinate).
    """
    close = ((mean_actions - advised).abs() <= tol * scale).all(dim=-1).float()
    return masked_mean(close, valid).detach()


def teacher_agreement(teacher_probs: th.Tensor, student_log_probs: th.Tensor, valid: th.Tensor) -> th.Tensor:
    """Fraction of valid rows where the student's most likely action is the teacher's (a diagnostic)."""
    same = (teacher_probs.argmax(dim=-1) == student_log_probs.argmax(dim=-1)).float()
    return masked_mean(same, valid).detach()
