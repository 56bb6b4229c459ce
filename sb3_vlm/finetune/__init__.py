"""COVR's collaborative fine-tuning of the advising VLM (work in progress on this branch)."""

from sb3_vlm.finetune.selection import (
    eddf_select,
    eddf_threshold,
    progressive_intervals,
    ralw_weights,
    returns_to_go,
    weighted_token_nll,
    zscore,
)

__all__ = [
    "eddf_select",
    "eddf_threshold",
    "progressive_intervals",
    "ralw_weights",
    "returns_to_go",
    "weighted_token_nll",
    "zscore",
]
