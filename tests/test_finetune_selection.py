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
