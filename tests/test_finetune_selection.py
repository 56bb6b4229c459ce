from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch as th

from sb3_vlm.finetune.selection import (
    eddf_select,
    eddf_threshold,
    progressive_intervals,
    ralw_weights,
    returns_to_go,
    weighted_token_nll,
    zscore,
)


def test_returns_to_go_by_hand() -> None:
    np.testing.assert_allclose(returns_to_go([1.0, 0.0, 2.0], 0.5), [1 + 0 + 0.5, 0 + 1.0, 2.0])
    np.testing.assert_allclose(returns_to_go([1.0], 0.9, bootstrap=10.0), [10.0])


def test_eddf_threshold_value_and_monotone_in_entropy() -> None:
    z = zscore(np.array([1.0, 2.0, 3.0, 4.0, 5.0]))  # symmetric: median 0
    q25, q75 = np.percentile(z, [25, 75])
    assert eddf_threshold(z, 0.0) == pytest.approx(0.5 * (q75 - q25))
    taus = [eddf_threshold(z, e) for e in (5.0, 2.0, 1.0, 0.0, -1.0)]
    assert all(a < b for a, b in itertools.pairwise(taus))  # entropy falls -> threshold rises
    assert len(eddf_select(np.arange(10.0), entropy=-5.0)) < len(eddf_select(np.arange(10.0), entropy=5.0))


def test_ralw_weights_by_hand() -> None:
    np.testing.assert_allclose(ralw_weights(np.array([0.0, 5.0, 10.0])), [0.0, 0.0, 1.0])
    np.testing.assert_allclose(ralw_weights(np.array([0.0, 7.5, 10.0])), [0.0, 0.5, 1.0])
    np.testing.assert_allclose(ralw_weights(np.array([3.0, 3.0])), [1.0, 1.0])


def test_weighted_token_nll_by_hand() -> None:
    logits = th.zeros(2, 3, 4)  # uniform: -log p = log 4 everywhere
    labels = th.tensor([[-100, 1, 2], [-100, -100, 3]])  # prompt tokens masked
    weights = th.tensor([1.0, 0.5])
    expected = (1.0 * 2 * np.log(4) + 0.5 * 1 * np.log(4)) / 3
    assert weighted_token_nll(logits, labels, weights).item() == pytest.approx(expected, rel=1e-5)
    logits2 = th.zeros(1, 1, 4)
    logits2[0, 0, 1] = 10.0
    plain = weighted_token_nll(logits2, th.tensor([[1]]), th.ones(1)).item()
    smooth = weighted_token_nll(logits2, th.tensor([[1]]), th.ones(1), label_smoothing=0.1).item()
    assert smooth > plain  # smoothing penalises the over-confident right answer


def test_progressive_schedule() -> None:
    assert list(itertools.islice(progressive_intervals(5000), 5)) == [5000, 5000, 10000, 30000, 120000]
    with pytest.raises(ValueError):
        next(progressive_intervals(0))


def test_weighted_token_nll_with_label_smoothing_by_hand() -> None:
    # two answer tokens in row 0 (weight 0.8), one in row 1 (weight 0.2), one masked prompt token each
    logits = th.tensor(
        [[[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 1.0, 0.0]], [[5.0, 5.0, 5.0], [0.0, 0.0, 3.0], [1.0, 1.0, 1.0]]]
    )
    labels = th.tensor([[-100, 0, 1], [-100, 2, -100]])
    weights = th.tensor([0.8, 0.2])
    eps = 0.1

    def smoothed(row: list[float], y: int) -> float:
        log_p = np.array(row) - np.log(np.exp(row).sum())
        return float((1 - eps) * -log_p[y] + eps * -log_p.mean())  # (1 - ε) NLL + ε · uniform cross-entropy

    expected = (0.8 * (smoothed([2, 0, 0], 0) + smoothed([0, 1, 0], 1)) + 0.2 * smoothed([0, 0, 3], 2)) / 3
    assert weighted_token_nll(logits, labels, weights, label_smoothing=eps).item() == pytest.approx(expected, rel=1e-5)
    # a zero weight removes a row's tokens from the sum, not from N_v
    only_first = (0.8 * (smoothed([2, 0, 0], 0) + smoothed([0, 1, 0], 1))) / 3
    assert weighted_token_nll(logits, labels, th.tensor([0.8, 0.0]), eps).item() == pytest.approx(only_first, rel=1e-5)
