"""
COVR's data side, as pure functions: returns-to-go, EDDF (which samples to fine-tune on), RALW (how much each
counts), the weighted token loss (eq. 6) and the progressive schedule. Following the COVR paper, §3.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch as th
from torch.nn import functional as F


def returns_to_go(rewards: Sequence[float], gamma: float, bootstrap: float = 0.0) -> np.ndarray:
    """
    ``g_t = Σ_{k ≥ t} γ^{k−t} r_k`` over one episode (COVR §3, EDDF). For a truncated episode pass the value of the
    last state as ``bootstrap`` (default 0: the time-limit is treated as the end, as COVR's 1000-step episodes do).
    """
    out = np.zeros(len(rewards), dtype=np.float64)
    running = float(bootstrap)
    for t in range(len(rewards) - 1, -1, -1):
        running = float(rewards[t]) + gamma * running
        out[t] = running
    return out


def zscore(values: np.ndarray) -> np.ndarray:
    """``(g − mean) / std``; all-equal returns give zeros (no sample is better than another)."""
    values = np.asarray(values, dtype=np.float64)
    std = values.std()
    return np.zeros_like(values) if std < 1e-12 else (values - values.mean()) / std


def eddf_threshold(z: np.ndarray, entropy: float) -> float:
    """
    EDDF's threshold on z-scored returns: ``τ = median(z) + f(ε) · IQR(z)``.

    COVR prints ``f = sigmoid(ε)``, but its text (and Fig. 8) says the threshold must be *low* while the policy still
    explores (high entropy) and rise as it becomes deterministic; ``sigmoid(ε)`` does the opposite. Choice: the
    described behaviour, ``f(ε) = sigmoid(−ε)`` ∈ (0, 1), so τ rises monotonically as the entropy falls.
    """
    z = np.asarray(z, dtype=np.float64)
    q25, q50, q75 = np.percentile(z, [25, 50, 75])
    return float(q50 + (1.0 / (1.0 + np.exp(entropy))) * (q75 - q25))


def eddf_select(returns: np.ndarray, entropy: float) -> np.ndarray:
    """Indices of the samples whose z-scored return exceeds the EDDF threshold."""
    z = zscore(returns)
    return np.flatnonzero(z > eddf_threshold(z, entropy))


def ralw_weights(selected_returns: np.ndarray) -> np.ndarray:
    """
    RALW: the selected returns min-max normalised to [−1, 1], negative ones weighted 0: ``w = max(ḡ, 0)``.
    All-equal returns give weight 1 (nothing to tell them apart; the samples already passed EDDF).
    """
    g = np.asarray(selected_returns, dtype=np.float64)
    if g.size == 0:
        return g
    span = g.max() - g.min()
    if span < 1e-12:
        return np.ones_like(g)
    return np.maximum(2.0 * (g - g.min()) / span - 1.0, 0.0)


def weighted_token_nll(
    logits: th.Tensor, labels: th.Tensor, weights: th.Tensor, label_smoothing: float = 0.0, ignore_index: int = -100
) -> th.Tensor:
    """
    COVR eq. 6: ``(1 / N_v) Σ_b w_b Σ_t −log p(y_{b,t} | x_{b,<t})`` over answer tokens only (prompt and image
    tokens carry ``ignore_index``), with optional label smoothing; ``N_v`` is the number of valid tokens.

    :param logits: (B, T, V) next-token logits, already aligned with ``labels`` (shift before calling)
    :param labels: (B, T) target ids, ``ignore_index`` where masked
    :param weights: (B,) RALW weights
    """
    per_token = F.cross_entropy(
        logits.transpose(1, 2).float(),
        labels,
        ignore_index=ignore_index,
        reduction="none",
        label_smoothing=label_smoothing,
    )
    valid = (labels != ignore_index).to(per_token.dtype)
    n_valid = valid.sum().clamp(min=1.0)
    return (weights.reshape(-1, 1).to(per_token.dtype) * per_token * valid).sum() / n_valid


def progressive_intervals(psi0: int) -> Iterator[int]:
    """COVR's ``ψ_{c+1} = ψ_c + ψ_c · c`` for c = 0, 1, 2 …: 5000, 5000, 10000, 30000, 120000 … from ψ0 = 5000."""
    if psi0 < 1:
        raise ValueError(f"psi0 must be >= 1, got {psi0}")
    psi, c = psi0, 0
    yield psi
    while True:
        psi = psi + psi * c
        c += 1
        yield psi
