from __future__ import annotations

import math

import numpy as np
import pytest
import torch as th

from sb3_vlm.guidance import (
    ConstantCoef,
    KickstartingCoef,
    LinearDecayCoef,
    advised_action_nll,
    as_coef_schedule,
    kl_distill_loss,
    teacher_targets,
)


def test_kl_matches_hand_computation() -> None:
    p = th.tensor([[0.7, 0.2, 0.1]])
    q = th.tensor([[0.5, 0.25, 0.25]])
    expected = 0.7 * math.log(0.7 / 0.5) + 0.2 * math.log(0.2 / 0.25) + 0.1 * math.log(0.1 / 0.25)
    loss = kl_distill_loss(p, q.log(), th.ones(1))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # identical distributions: zero
    assert kl_distill_loss(q, q.log(), th.ones(1)).item() == pytest.approx(0.0, abs=1e-7)


def test_hard_target_is_one_hot_and_gives_cross_entropy() -> None:
    p = th.tensor([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    hard = teacher_targets(p, "hard")
    assert th.equal(hard, th.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
    logits = th.tensor([[0.1, 0.5, -0.2], [1.0, 0.0, 0.3]])
    log_q = th.log_softmax(logits, dim=-1)
    soft_loss = kl_distill_loss(p, log_q, th.ones(2))
    hard_loss = kl_distill_loss(hard, log_q, th.ones(2))
    assert hard_loss.item() == pytest.approx(-(log_q[0, 0] + log_q[1, 2]).item() / 2, rel=1e-6)
    assert hard_loss.item() != pytest.approx(soft_loss.item())
    with pytest.raises(ValueError):
        teacher_targets(p, "medium")


def test_gradient_moves_student_toward_teacher() -> None:
    teacher = th.tensor([[0.8, 0.1, 0.1]])
    logits = th.zeros(1, 3, requires_grad=True)
    before = kl_distill_loss(teacher, th.log_softmax(logits, -1), th.ones(1))
    before.backward()
    assert logits.grad[0, 0] < 0 < logits.grad[0, 1]  # descent raises the teacher's action, lowers the others
    with th.no_grad():
        logits -= 0.5 * logits.grad
    after = kl_distill_loss(teacher, th.log_softmax(logits, -1), th.ones(1))
    assert after < before
    assert th.softmax(logits, -1)[0, 0] > 1 / 3


def test_masked_rows_contribute_nothing() -> None:
    teacher = th.tensor([[0.9, 0.1], [0.1, 0.9], [0.5, 0.5]])
    logits = th.randn(3, 2, requires_grad=True)
    valid = th.tensor([1.0, 0.0, 1.0])
    loss = kl_distill_loss(teacher, th.log_softmax(logits, -1), valid)
    loss.backward()
    assert th.all(logits.grad[1] == 0)
    # changing a masked row's target does not change the loss; the mean is over valid rows only
    other = teacher.clone()
    other[1] = th.tensor([1.0, 0.0])
    assert kl_distill_loss(other, th.log_softmax(logits, -1), valid).item() == pytest.approx(loss.item())
    rows = [kl_distill_loss(teacher[i : i + 1], th.log_softmax(logits[i : i + 1], -1), th.ones(1)) for i in (0, 2)]
    assert loss.item() == pytest.approx((rows[0].item() + rows[1].item()) / 2, rel=1e-6)


def test_no_valid_rows_gives_exact_zero_with_a_graph() -> None:
    logits = th.randn(4, 3, requires_grad=True)
    loss = kl_distill_loss(th.full((4, 3), float("nan")).nan_to_num(1 / 3), th.log_softmax(logits, -1), th.zeros(4))
    assert loss.item() == 0.0
    loss.backward()
    assert th.all(logits.grad == 0)
    nll = advised_action_nll(th.tensor([-1.0, -2.0]), th.zeros(2))
    assert nll.item() == 0.0


def test_advised_action_nll() -> None:
    assert advised_action_nll(th.tensor([-1.0, -3.0, -100.0]), th.tensor([1.0, 1.0, 0.0])).item() == pytest.approx(2.0)


def test_schedules() -> None:
    assert as_coef_schedule(0.01)(123, 0.5) == 0.01
    assert isinstance(as_coef_schedule(0.5), ConstantCoef)
    kick = KickstartingCoef(initial=1.0, decay=0.5, floor=0.1, cutoff=10)
    assert [kick(k, 1.0) for k in (0, 1, 2, 5, 9, 10, 50)] == [1.0, 0.5, 0.25, 0.1, 0.1, 0.0, 0.0]
    apl = LinearDecayCoef()  # APL: 2 -> -0.01 per 200 -> floor 0.1
    assert apl(0, 1.0) == 2.0 and apl(199, 1.0) == 2.0 and apl(200, 1.0) == pytest.approx(1.99)
    assert apl(10**6, 1.0) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        as_coef_schedule(-1.0)
    with pytest.raises(ValueError):
        KickstartingCoef(decay=0.0)


def test_coefficients_and_schedule_values_must_be_finite_and_non_negative() -> None:
    for bad in (float("nan"), float("inf"), -float("inf"), -0.5, np.float32("nan")):
        with pytest.raises(ValueError, match="finite, non-negative"):
            as_coef_schedule(bad)
    for kwargs in (dict(initial=float("nan")), dict(floor=float("inf"))):
        with pytest.raises(ValueError, match="finite, non-negative"):
            KickstartingCoef(**kwargs)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="finite, non-negative"):
            LinearDecayCoef(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        as_coef_schedule("0.1")  # type: ignore[arg-type]
    schedule = as_coef_schedule(lambda n, progress: 1.0 if n < 3 else float("nan"), "teacher_coef")
    assert schedule(2, 0.5) == 1.0
    with pytest.raises(ValueError, match=r"teacher_coef schedule .* gave nan at update 3"):
        schedule(3, 0.5)


def test_continuous_agreement_counts_rows_whose_mean_is_near_the_advice() -> None:
    from sb3_vlm.guidance.distill import continuous_agreement

    means = th.tensor([[0.0, 0.0], [0.5, 0.0], [0.1, -0.1], [3.0, 3.0]])
    advised = th.zeros(4, 2)
    valid = th.tensor([1.0, 1.0, 1.0, 0.0])  # the last row has no advice
    # tol 0.1 of a range of 2: within 0.2 in every coordinate → rows 0 and 2 of the three valid ones
    agreement = continuous_agreement(means, advised, valid, th.tensor([2.0, 2.0]))
    assert agreement.item() == pytest.approx(2 / 3)
