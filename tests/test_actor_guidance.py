"""The SAC guidance losses on hand-built tensors: values, masking, and where gradients may and may not flow."""

from __future__ import annotations

import pytest
import torch as th

from sb3_vlm.guidance.actor_guidance import (
    action_confidence,
    alpha_regulariser,
    alpha_target,
    bc_gate,
    gated_bc_loss,
    gaussian_transition_loss,
    joint_min_max_scale,
    value_aware_factor,
    weighted_action_mse,
)


def test_joint_min_max_uses_one_min_and_one_max_over_both() -> None:
    q_r, q_v = th.tensor([1.0, 3.0, 100.0]), th.tensor([2.0, 5.0, -100.0])
    valid = th.tensor([1.0, 1.0, 0.0])  # the invalid row's extreme values must not enter the scaling
    s_r, s_v = joint_min_max_scale(q_r, q_v, valid)
    assert th.allclose(s_r[:2], th.tensor([0.0, 0.5]))
    assert th.allclose(s_v[:2], th.tensor([0.25, 1.0]))


def test_q_f_is_zero_where_advice_is_not_better_and_positive_elsewhere() -> None:
    q_r = th.tensor([[1.0], [3.0], [2.0], [0.0]], requires_grad=True)
    q_v = th.tensor([[2.0], [3.0], [1.0], [9.0]], requires_grad=True)
    valid = th.tensor([1.0, 1.0, 1.0, 0.0])
    q_f = value_aware_factor(q_r, q_v, valid)
    # valid rows span [1, 3]: scaled q_r = [0, 1, .5], q_v = [.5, 1, 0]
    assert th.allclose(q_f, th.tensor([0.5, 0.0, 0.0, 0.0]))
    assert not q_f.requires_grad


def test_vpg_loss_values_and_gradient_direction() -> None:
    advice = th.tensor([[0.5, -0.5], [1.0, 1.0], [0.0, 0.0]], requires_grad=True)
    actions = th.zeros(3, 2, requires_grad=True)
    weights = th.tensor([0.5, 1.0, 1.0], requires_grad=True)
    valid = th.tensor([1.0, 1.0, 0.0])
    loss = weighted_action_mse(advice, actions, valid, weights)
    # (0.5 * 0.5 + 1.0 * 2.0) / 2 valid rows
    assert loss.item() == pytest.approx(1.125)
    loss.backward()
    assert actions.grad is not None
    # descending the loss moves the policy's action toward the advice, only on valid rows, scaled by Q_f
    step = -actions.grad
    assert th.all(th.sign(step[0]) == th.sign(advice[0].detach()))
    assert th.allclose(step[0], 0.5 * advice[0].detach())  # -d/da of 0.5 * ||a_v - a||^2 / 2 = 0.5 (a_v - a)
    assert th.all(step[2] == 0)
    assert advice.grad is None and weights.grad is None  # no gradient into the advice or through Q_f


def test_losses_are_exactly_zero_and_differentiable_without_valid_rows() -> None:
    actions = th.zeros(4, 2, requires_grad=True)
    none = th.zeros(4)
    loss = weighted_action_mse(th.full((4, 2), float("nan")), actions, none)
    assert loss.item() == 0.0
    loss.backward()
    assert th.all(actions.grad == 0)
    assert alpha_regulariser(th.tensor(0.3), th.full((4,), 0.1), none).item() == 0.0
    assert gated_bc_loss(th.full((4,), float("inf")), th.ones(4), none).item() == 0.0
    s_r, s_v = joint_min_max_scale(th.ones(4), th.ones(4), none)
    assert th.all(s_r == 0) and th.all(s_v == 0)


def test_bc_gate_is_off_where_the_policy_already_agrees() -> None:
    advice = th.tensor([[0.5], [0.5], [-0.9], [0.9]])
    greedy = th.tensor([[0.52], [-0.5], [0.9], [-0.9]])
    valid = th.tensor([1.0, 1.0, 1.0, 0.0])
    gate = bc_gate(advice, greedy, valid, threshold=0.1)
    assert gate.tolist() == [0.0, 1.0, 1.0, 0.0]
    per_row = th.tensor([10.0, 2.0, 4.0, 100.0], requires_grad=True)
    loss = gated_bc_loss(per_row, gate, valid)
    assert loss.item() == pytest.approx((2.0 + 4.0) / 3)
    loss.backward()
    assert per_row.grad is not None and per_row.grad[0] == 0 and per_row.grad[3] == 0


def test_transition_loss_matches_eq_12() -> None:
    mu, log_sigma, target = th.tensor([[1.0, 0.0]]), th.tensor([[0.0, th.log(th.tensor(2.0))]]), th.tensor([[0.0, 1.0]])
    # dim 1: (1/1)^2 + 0 ; dim 2: (-1/2)^2 + log 2
    expected = (1.0 + 0.25 + float(th.log(th.tensor(2.0)))) / 2
    assert gaussian_transition_loss(mu, log_sigma, target).item() == pytest.approx(expected)


def test_alpha_target_falls_as_agreement_rises_and_is_bounded() -> None:
    target = th.zeros(1, 3)
    far, near = th.full((1, 3), 3.0), th.full((1, 3), 0.5)
    g_far, g_near = action_confidence(far, target), action_confidence(near, target)
    assert g_near > g_far > 0
    a_far, a_near = alpha_target(g_far), alpha_target(g_near)
    assert 0 < a_near < a_far < 0.5  # more agreement: less entropy (ERPv §3.4, F.2)
    assert alpha_target(g_near, "paper") > alpha_target(g_far, "paper") > 0.5  # the printed sigmoid(G)
    with pytest.raises(ValueError):
        alpha_target(g_far, "nope")  # type: ignore[arg-type]


def test_alpha_regulariser_trains_alpha_only() -> None:
    log_alpha = th.tensor(0.0, requires_grad=True)  # α = 1
    target = th.tensor([0.2, 0.4], requires_grad=True)
    loss = alpha_regulariser(log_alpha.exp(), target, th.ones(2))
    assert loss.item() == pytest.approx((0.8**2 + 0.6**2) / 2)
    loss.backward()
    assert log_alpha.grad is not None and log_alpha.grad > 0  # descending lowers α toward the targets
    assert target.grad is None
