"""Mean ± std learning curves (needs the ``plot`` extra)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np


def mean_std_curve(
    runs: Sequence[tuple[Sequence[int], Sequence[float]]], grid: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Interpolate each run's (steps, values) onto ``grid`` (holding the first value before a run's first point)
    and return the mean and standard deviation across runs."""
    values = np.stack([np.interp(grid, np.asarray(s, dtype=float), np.asarray(v, dtype=float)) for s, v in runs])
    return values.mean(axis=0), values.std(axis=0)


def plot_learning_curves(
    curves: Mapping[str, Sequence[tuple[Sequence[int], Sequence[float]]]],
    path: str | os.PathLike[str],
    title: str = "",
    ylabel: str = "mean training return",
    threshold: float | None = None,
) -> None:
    """
    Draw one mean ± std band per label and save a PNG.

    :param curves: label -> list of (steps, values) runs (e.g. seeds)
    :param path: output PNG
    :param threshold: draw a dashed horizontal line (e.g. the 0.9 return target)
    """
    plot_panels({title: curves}, path, ylabel=ylabel, threshold=threshold)


def plot_panels(
    panels: Mapping[str, Mapping[str, Sequence[tuple[Sequence[int], Sequence[float]]]]],
    path: str | os.PathLike[str],
    suptitle: str = "",
    ylabel: str = "mean training return",
    threshold: float | None = None,
) -> None:
    """Side-by-side panels (e.g. PPO and A2C) of :func:`plot_learning_curves`-style bands, saved as one PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover
        raise ImportError("Plotting needs the 'plot' extra: pip install 'sb3-vlm[plot]'") from exc

    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False)
    for ax, (title, curves) in zip(axes[0], panels.items(), strict=True):
        for label, runs in curves.items():
            runs = [r for r in runs if len(r[0]) > 0]
            if not runs:
                continue
            end = max(max(s) for s, _ in runs)
            grid = np.linspace(0, end, 200)
            mean, std = mean_std_curve(runs, grid)
            ax.plot(grid, mean, label=f"{label} (n={len(runs)})")
            ax.fill_between(grid, mean - std, mean + std, alpha=0.2)
        if threshold is not None:
            ax.axhline(threshold, linestyle="--", color="grey", linewidth=1)
        ax.set_xlabel("environment steps")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_paired_bars(
    labels: Sequence[str],
    pairs: Sequence[tuple[str, Sequence[float]]],
    path: str | os.PathLike[str],
    ylabel: str,
    target: tuple[str, float] | None = None,
    rotate: bool = False,
) -> None:
    """Two bars per label (e.g. before / after), an optional horizontal target line, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(max(5.0, (2.2 if not rotate else 1.1) * len(labels)), 3.6))
    width = 0.8 / len(pairs)
    for k, (name, values) in enumerate(pairs):
        ax.bar(x + (k - (len(pairs) - 1) / 2) * width, list(values), width, label=name)
    if target is not None:
        ax.axhline(target[1], color="k", ls="--", lw=1, label=target[0])
    if rotate:
        ax.set_xticks(x, list(labels), rotation=30, ha="right")
    else:
        ax.set_xticks(x, list(labels), fontsize=8)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
