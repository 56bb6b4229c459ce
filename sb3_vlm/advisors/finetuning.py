"""
What a fine-tunable advisor takes and gives back in one COVR round: :class:`Example` and :class:`FineTuneResult`.

A leaf module (it imports only :mod:`sb3_vlm.advice`), so that fine-tunable advisors (``advisors/table.py``), the
fine-tuning backends and the callback of :mod:`sb3_vlm.finetune` all import these types downward; they are importable
from :mod:`sb3_vlm.finetune` as before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sb3_vlm.advice import AdviceRequest


@dataclass
class Example:
    """
    One fine-tuning sample: what the teacher saw, the action the agent executed there (env units; backends write
    it in the prompt's answer format) and its RALW weight.
    """

    request: AdviceRequest
    action: np.ndarray
    weight: float = 1.0


@dataclass
class FineTuneResult:
    """
    What one round did.

    :param ok: False when the round failed (the advisor is unchanged and training goes on)
    :param loss: the round's last-epoch fine-tuning loss (NaN where the backend does not report one)
    :param first_loss: the first epoch's loss (NaN where unknown)
    :param examples: examples used (after weighting / filtering)
    :param version: what answers now (adapter path, model id, table digest)
    :param seconds: wall-clock time of the round
    :param message: why it failed, or a short note
    """

    ok: bool
    loss: float = math.nan
    first_loss: float = math.nan
    examples: int = 0
    version: str = ""
    seconds: float = 0.0
    message: str = ""
