"""Who fine-tunes the advisor in a COVR round: LoRA on a local model, a provider's fine-tuning API, or a table."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from sb3_vlm.advisors.base import Advisor
from sb3_vlm.advisors.finetuning import Example
from sb3_vlm.advisors.finetuning import FineTuneResult as FineTuneResult  # re-exported: its home before
from sb3_vlm.finetune.lora import LoraSettings, lora_finetune


@runtime_checkable
class FineTuneBackend(Protocol):
    """Fine-tunes the advisor in place on weighted examples; ``round_dir`` is where the round may save files."""

    def finetune(self, examples: list[Example], round_dir: Path | None = None) -> FineTuneResult: ...


class LoraBackend:
    """
    LoRA through peft on a local :class:`~sb3_vlm.advisors.hf.HFAdvisor` (COVR table 9 settings by default). The
    round's adapter is saved to ``round_dir / "adapter"`` and answers at once; ``HFAdvisor(adapter=...)`` reloads it.

    :param advisor: the HFAdvisor to fine-tune
    :param settings: LoRA settings
    """

    def __init__(self, advisor: Any, settings: LoraSettings | None = None):
        self.advisor = advisor
        self.settings = settings or LoraSettings()

    def finetune(self, examples: list[Example], round_dir: Path | None = None) -> FineTuneResult:
        start = time.perf_counter()
        save_to = None if round_dir is None else Path(round_dir) / "adapter"
        with self.advisor.model_lock:  # background advice waits for the round instead of reading a half-trained model
            out = lora_finetune(self.advisor, examples, self.settings, save_to=save_to)
        return FineTuneResult(
            ok=out["examples"] > 0,
            loss=out["last_epoch_loss"],
            first_loss=out["first_epoch_loss"],
            examples=int(out["examples"]),
            version=self.advisor.identity,
            seconds=time.perf_counter() - start,
            message="" if out["examples"] > 0 else "no example with a positive weight",
        )


def backend_for(advisor: Advisor, lora: LoraSettings | None = None) -> FineTuneBackend:
    """
    The default backend of an advisor: LoRA for an :class:`~sb3_vlm.advisors.hf.HFAdvisor`, the provider's
    fine-tuning API for an :class:`~sb3_vlm.advisors.openai_compat.OpenAIAdvisor`, the advisor itself when it has
    a ``finetune`` method (e.g. :class:`~sb3_vlm.advisors.table.NearestNeighbourAdvisor`).
    """
    from sb3_vlm.advisors.hf import HFAdvisor  # neither module imports its client library at import time
    from sb3_vlm.advisors.openai_compat import OpenAIAdvisor

    if isinstance(advisor, FineTuneBackend):
        return advisor
    if isinstance(advisor, HFAdvisor):
        return LoraBackend(advisor, lora)
    if isinstance(advisor, OpenAIAdvisor):
        from sb3_vlm.finetune.api import OpenAIFineTuneBackend

        return OpenAIFineTuneBackend(advisor)
    raise TypeError(
        f"Cannot fine-tune a {type(advisor).__name__}: use an HFAdvisor (LoRA), an OpenAIAdvisor (fine-tuning API), "
        "an advisor with a finetune(examples, round_dir) method, or pass backend=..."
    )
