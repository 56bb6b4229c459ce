"""The SAC guidance losses and term objects on hand-built tensors: values, masking, gates, and where gradients may and
may not flow."""

from __future__ import annotations

import pytest
import torch as th
from stable_baselines3.common.distributions import SquashedDiagGaussianDistribution

from sb3_vlm.guidance.actor_guidance import (
    action_confidence,
    advantage_gate,
    advice_advantage,
    alpha_regulariser,
    alpha_target,
    bc_gate,
    gated_bc_loss,
    gaussian_transition_loss,
    joint_min_max_scale,
    running_advantage_scale,
    value_aware_factor,
    value_gate,
    weighted_action_mse,
)
from sb3_vlm.policies.transition import TransitionModel
from sb3_vlm.sac.terms import (
    ActionMSETerm,
    AdvantageGate,
    Gate,
    GatedBCTerm,
    GuidanceBatch,
    MinMaxGate,
    RandomGate,
    VERSettings,
    VERTerm,
    VPGTerm,
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


# ------------------------------------------------------------------------------------------- the advantage gate


def test_advantage_gate_handles_all_negative_values_where_min_max_stays_shut() -> None:
    # Pendulum-like: every Q is negative; the advice beats the policy's action on row 0 only
    q_v, q_pi = th.tensor([-10.0, -20.0, -5.0, -1.0]), th.tensor([-12.0, -15.0, -5.0, -99.0])
    valid = th.tensor([1.0, 1.0, 1.0, 0.0])
    d = advice_advantage(q_v, q_pi, valid)
    assert d.tolist() == [2.0, -5.0, 0.0, 0.0]  # the invalid row's values never enter
    scale = running_advantage_scale(None, d, valid)
    assert scale == pytest.approx(7 / 3)  # the first valid batch sets σ = mean |d|
    q_f = advantage_gate(d, valid, scale)
    assert th.allclose(q_f, th.tensor([6 / 7, 0.0, 0.0, 0.0]))
    # ERPv's gate with an untrained RL critic (Q_r ≈ 0) against the same negative Q_v: shut everywhere
    assert th.all(value_aware_factor(th.zeros(4), q_v, valid) == 0)


def test_advantage_gate_saturates_at_one_and_is_zero_without_scale_or_valid_rows() -> None:
    d, valid = th.tensor([10.0, 0.5, -3.0]), th.ones(3)
    assert advantage_gate(d, valid, scale=1.0).tolist() == [1.0, 0.5, 0.0]
    assert th.all(advantage_gate(d, valid, scale=None) == 0)
    assert th.all(advantage_gate(d, th.zeros(3), scale=1.0) == 0)
    assert running_advantage_scale(2.0, d, th.zeros(3)) == 2.0  # a batch without advice leaves σ alone
    assert running_advantage_scale(2.0, d, valid, rate=0.5) == pytest.approx(0.5 * 2.0 + 0.5 * 13.5 / 3)


def test_advantage_gate_is_scale_invariant_once_the_scale_settles() -> None:
    gen = th.Generator().manual_seed(0)
    batches = [(th.randn(32, generator=gen) - 0.2, (th.rand(32, generator=gen) > 0.3).float()) for _ in range(1500)]
    small, large, switched = None, None, None
    for i, (d, valid) in enumerate(batches):
        small = running_advantage_scale(small, d, valid)
        large = running_advantage_scale(large, 100.0 * d, valid)
        # the same gate sees Q × 1 for 500 batches, then Q × 100: its σ follows within ~1000 batches at rate 0.01
        switched = running_advantage_scale(switched, d if i < 500 else 100.0 * d, valid)
    d, valid = batches[-1]
    reference = advantage_gate(d, valid, small)
    assert th.allclose(advantage_gate(100.0 * d, valid, large), reference, atol=1e-6)  # from the very first batch
    assert th.allclose(advantage_gate(100.0 * d, valid, switched), reference, atol=1e-3)
    assert 0 < float(reference.sum()) < float(valid.sum())  # a soft gate: neither shut nor fully open


def test_value_gate_closes_where_the_advice_is_not_better() -> None:
    d, valid = th.tensor([0.3, -0.1, 0.0, 2.0]), th.tensor([1.0, 1.0, 1.0, 0.0])
    assert value_gate(d, valid).tolist() == [1.0, 0.0, 0.0, 0.0]


def test_alpha_regulariser_weights_rows_and_keeps_the_valid_mean() -> None:
    log_alpha = th.tensor(0.0, requires_grad=True)  # α = 1
    target, valid = th.tensor([0.2, 0.4, 0.0]), th.tensor([1.0, 1.0, 0.0])
    weights = th.tensor([0.5, 0.0, 1.0], requires_grad=True)
    loss = alpha_regulariser(log_alpha.exp(), target, valid, weights)
    assert loss.item() == pytest.approx(0.5 * 0.8**2 / 2)  # row 1 is gated off, row 2 is invalid
    loss.backward()
    assert weights.grad is None and log_alpha.grad is not None and log_alpha.grad > 0
    assert alpha_regulariser(th.tensor(1.0), target, valid, th.zeros(3)).item() == 0.0  # untrusted advice: no pull


# ------------------------------------------------------------------------------------------------ term objects


def _q_slope(obs: th.Tensor, actions: th.Tensor) -> th.Tensor:
    """A hand-computable critic: Q(s, a) = s · a − 1000 (all values negative)."""
    return (obs * actions).sum(dim=1, keepdim=True) - 1000.0


def _batch(
    advice: list[float],
    valid: list[float],
    actions: list[float] | None = None,
    obs: list[float] | None = None,
    greedy: list[float] | None = None,
    critic=_q_slope,
) -> GuidanceBatch:
    n = len(advice)
    mean = th.atanh(th.tensor(greedy if greedy is not None else [0.0] * n)).reshape(n, 1)
    return GuidanceBatch(
        observations=th.tensor(obs if obs is not None else [1.0] * n).reshape(n, 1),
        actions=th.tensor(actions if actions is not None else [0.0] * n).reshape(n, 1).requires_grad_(),
        dist_params=(mean.requires_grad_(), th.zeros(n, 1), {}),
        action_dist=SquashedDiagGaussianDistribution(1),
        advice_actions=th.tensor(advice).reshape(n, 1),
        valid=th.tensor(valid),
        critic=critic,
    )


def _never(obs: th.Tensor, actions: th.Tensor) -> th.Tensor:
    raise AssertionError("no critic call on a batch without advice")


def test_vpg_term_with_the_advantage_gate() -> None:
    # Q = s·a − 1000, a_π = 0: d = s·a_v = [0.5, 1, -0.5, (invalid)], σ = 2/3, Q_f = [0.75, 1, 0, 0]
    batch = _batch(advice=[0.5, 1.0, 0.5, 0.25], valid=[1, 1, 1, 0], obs=[1.0, 1.0, -1.0, 2.0])
    gate = AdvantageGate()
    loss, stats = VPGTerm(gate).loss(batch)
    assert loss.item() == pytest.approx((0.75 * 0.25 + 1.0 * 1.0) / 3)
    assert stats == pytest.approx({"q_f_mean": 1.75 / 3, "q_f_active_frac": 2 / 3, "advice_adv_scale": 2 / 3})
    loss.backward()
    assert batch.actions.grad is not None and batch.actions.grad[2:].abs().sum() == 0  # gated-off and invalid rows
    # the batch computes Q_f once: another term reading the same gate does not move σ again
    batch.gate_weights(gate)
    assert gate.scale == pytest.approx(2 / 3)


def test_terms_are_exactly_zero_without_valid_rows_and_run_no_critic() -> None:
    gate = AdvantageGate()
    for term in (VPGTerm(gate), VPGTerm(MinMaxGate()), VPGTerm(RandomGate()), ActionMSETerm(), GatedBCTerm()):
        batch = _batch(advice=[0.5, float("nan")], valid=[0, 0], critic=_never)
        state = th.get_rng_state()
        loss, _ = term.loss(batch)
        assert loss.item() == 0.0
        loss.backward()  # still part of the graph
        assert th.equal(state, th.get_rng_state())  # no random draw either
    assert gate.scale is None


def test_min_max_gate_is_erpvs_factor_and_reference_chooses_the_critic() -> None:
    # C_R(s, a) = s·a − 1000, C_V(s, a) = 10 a: Q_v = [5, 10], Q_r = [-1000, -1000] with reference "rl"
    def c_v(obs: th.Tensor, actions: th.Tensor) -> th.Tensor:
        return 10.0 * actions

    batch = _batch(advice=[0.5, 1.0], valid=[1, 1], actions=[0.2, 0.2])
    batch.advice_critic = c_v
    q_f, _ = MinMaxGate("rl")(batch)
    span = 10.0 - (0.2 - 1000.0)
    assert th.allclose(q_f, th.tensor([(5.0 - 0.2 + 1000.0) / span, 1.0]))
    q_f, _ = MinMaxGate("advice")(batch)  # Q_r = C_V(s, a_π) = 2: joint span [2, 10]
    assert th.allclose(q_f, th.tensor([3 / 8, 1.0]))


def test_random_gate_draws_only_for_valid_rows() -> None:
    q_f, stats = RandomGate()(_batch(advice=[0.0, 0.0, 0.0], valid=[1, 0, 1]))
    assert q_f[1] == 0 and bool(((q_f >= 0) & (q_f <= 1)).all()) and "q_f_mean" in stats


def test_action_mse_term() -> None:
    loss, stats = ActionMSETerm().loss(_batch(advice=[0.5, -1.0, 9.0], valid=[1, 1, 0], actions=[0.0, 0.0, 0.0]))
    assert loss.item() == pytest.approx((0.25 + 1.0) / 2) and stats == {}


def test_gated_bc_term_closes_where_the_critic_prefers_the_policy() -> None:
    # greedy (tanh of the mean) [0, 0, 0.5, 0]; agreement gate (RMS > 0.1): [1, 1, 0, -]; a_π = 0 and Q = s·a, so the
    # value gate is open where a_v > 0: [1, 0, 1, -]. MSE rows (a_v − greedy)²: [0.25, 0.25, 0.0004, -]
    kwargs = dict(advice=[0.5, -0.5, 0.52, 0.9], valid=[1, 1, 1, 0], greedy=[0.0, 0.0, 0.5, 0.0])
    loss, stats = GatedBCTerm(0.1, "mse").loss(_batch(**kwargs))  # type: ignore[arg-type]
    assert loss.item() == pytest.approx(0.25 / 3)
    assert stats == pytest.approx({"bc_gate_frac": 1 / 3, "bc_value_gate_frac": 2 / 3})
    paper, stats = GatedBCTerm(0.1, "mse", value_gate=False).loss(_batch(**kwargs))  # type: ignore[arg-type]
    assert paper.item() == pytest.approx((0.25 + 0.25) / 3) and stats == pytest.approx({"bc_gate_frac": 2 / 3})
    # NLL rows: −log π(a_v|s) of the squashed Gaussian, only row 0 gated in
    batch = _batch(**kwargs)  # type: ignore[arg-type]
    nll, _ = GatedBCTerm(0.1, "nll").loss(batch)
    expected = -batch.distribution().log_prob(th.tensor([[0.5]]).expand(4, 1))[0] / 3
    assert nll.item() == pytest.approx(expected.item())


class _FixedGate(Gate):
    def __init__(self, q_f: list[float]):
        self.q_f = th.tensor(q_f)

    def weights(self, batch: GuidanceBatch) -> th.Tensor:
        return self.q_f


def test_ver_term_weights_rows_by_the_gate() -> None:
    # M4's confidence G = 1 / mean (a_v − a_π)²: distances 1 and 0.5 give G ≈ 1 and 4, ᾱ = sigmoid(−G)
    batch = _batch(advice=[1.0, 0.5, 0.0], valid=[1, 1, 0], actions=[0.0, 0.0, 0.0])
    model = TransitionModel(1, 1, [4])
    alpha = th.tensor(1.0, requires_grad=True)
    targets = th.sigmoid(-th.tensor([1.0, 4.0]))
    gated = VERTerm(VERSettings(confidence="action_mse"), model, _FixedGate([0.25, 0.0, 1.0]))
    loss, stats = gated.loss(batch, alpha, th.zeros(3, 1), th.zeros(3, 1))
    assert loss.item() == pytest.approx(0.25 * (1 - targets[0].item()) ** 2 / 2, rel=1e-4)
    assert stats["alpha_target"] == pytest.approx(targets.mean().item(), rel=1e-4) and "q_f_mean" in stats
    paper = VERTerm(VERSettings(confidence="action_mse", gated=False), model, _FixedGate([0.25, 0.0, 1.0]))
    loss, _ = paper.loss(batch, alpha, th.zeros(3, 1), th.zeros(3, 1))
    assert loss.item() == pytest.approx(((1 - targets) ** 2).mean().item(), rel=1e-4)
