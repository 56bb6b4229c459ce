"""LoRA fine-tuning of a tiny offline VLM on a synthetic task whose right answer per image is known."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gymnasium import spaces

pytest.importorskip("peft")

from sb3_vlm.advice import AdviceRequest
from sb3_vlm.advisors.hf import HFAdvisor
from sb3_vlm.advisors.prompts import MINIGRID_LABELS, PromptTemplate
from sb3_vlm.finetune.data import Example
from sb3_vlm.finetune.lora import LoraSettings, lora_finetune
from sb3_vlm.testing.tiny_vlm import build_tiny_llava

#: a short prompt: the tiny model's attention is not diluted by MiniGrid's long instructions
SYNTHETIC = PromptTemplate(name="synthetic", user="Which way? {labels}", kind="discrete", labels=MINIGRID_LABELS)


def _request(value: int) -> AdviceRequest:
    image = np.full((32, 32, 3), value, dtype=np.uint8)
    return AdviceRequest(image=image, context={}, action_space=spaces.Discrete(7))


def _choices(answers: list) -> list[int]:
    """The advised action: the most probable label (scored) or the written one; -1 for an unreadable answer."""
    return [
        -1
        if not a.valid
        else int(np.argmax(a.probs))
        if a.probs is not None
        else int(np.asarray(a.action).reshape(-1)[0])
        for a in answers
    ]


@pytest.mark.parametrize("distribution", ["logprobs", "written"])
def test_lora_round_teaches_the_right_answer_per_image(tmp_path: Path, distribution: str) -> None:
    path = build_tiny_llava(tmp_path / "llava")
    advisor = HFAdvisor(str(path), SYNTHETIC, distribution=distribution, max_new_tokens=2)  # type: ignore[arg-type]
    dark, bright = _request(0), _request(255)
    before = advisor.advise([dark, bright])
    examples = [Example(dark, np.array(0), 1.0), Example(bright, np.array(1), 1.0)] * 2 + [
        Example(bright, np.array(4), 0.0)
    ]
    identity_before = advisor.identity
    settings = LoraSettings(
        r=8,
        alpha=16,
        dropout=0.0,
        lr=1e-2,
        batch_size=4,
        grad_accum=1,
        epochs=60,
        label_smoothing=0.0,
        gradient_checkpointing=False,
    )
    result = lora_finetune(advisor, examples, settings, save_to=tmp_path / "round1")
    assert result["examples"] == 4.0  # the zero-weight sample is dropped
    assert result["last_epoch_loss"] < 0.1 * result["first_epoch_loss"]
    answers = advisor.advise([dark, bright])
    assert _choices(answers) == [0, 1], [a.raw for a in answers]
    assert _choices(before) != [0, 1]  # the random model did not know it already
    assert advisor.identity != identity_before  # cached pre-fine-tune answers can never be served again
    reloaded = HFAdvisor(
        str(path),
        SYNTHETIC,
        distribution=distribution,
        max_new_tokens=2,
        adapter=str(tmp_path / "round1"),  # type: ignore[arg-type]
    )
    assert _choices(reloaded.advise([dark, bright])) == [0, 1]
