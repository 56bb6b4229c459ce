"""COVR's collaborative fine-tuning of the advising VLM on the agent's own trajectories."""

from sb3_vlm.finetune.backends import FineTuneBackend, FineTuneResult, LoraBackend, backend_for
from sb3_vlm.finetune.callback import VLMFineTuneCallback, policy_entropy
from sb3_vlm.finetune.data import Example, Sample, TrajectoryCollector
from sb3_vlm.finetune.lora import LM_PROJECTIONS, LoraSettings, lora_finetune
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
    "LM_PROJECTIONS",
    "Example",
    "FineTuneBackend",
    "FineTuneResult",
    "LoraBackend",
    "LoraSettings",
    "Sample",
    "TrajectoryCollector",
    "VLMFineTuneCallback",
    "backend_for",
    "eddf_select",
    "eddf_threshold",
    "lora_finetune",
    "policy_entropy",
    "progressive_intervals",
    "ralw_weights",
    "returns_to_go",
    "weighted_token_nll",
    "zscore",
]
