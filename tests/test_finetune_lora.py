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
from tests.helpers import tiny_lora

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
    settings = tiny_lora(epochs=60)
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


@pytest.mark.parametrize("builder", ["llava", "qwen2vl"])
def test_default_settings_adapt_only_the_language_model(tmp_path: Path, builder: str) -> None:
    """COVR table 9 defaults (r 128, grad-accum 4, label smoothing, gradient checkpointing) on both tiny VLMs."""
    from sb3_vlm.testing import tiny_vlm

    path = getattr(tiny_vlm, f"build_tiny_{builder}")(tmp_path / builder)
    advisor = HFAdvisor(str(path), SYNTHETIC)
    result = lora_finetune(advisor, [Example(_request(0), np.array(0))] * 3, LoraSettings(epochs=1), tmp_path / "a")
    assert np.isfinite(result["last_epoch_loss"]) and result["examples"] == 3.0
    adapted = [n for n, _ in advisor.model.named_modules() if n.endswith("lora_A")]
    assert adapted and all("language_model" in n for n in adapted)
    assert {n.split(".")[-2] for n in adapted} == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    assert all(np.isclose(a.probs.sum(), 1.0) for a in advisor.advise([_request(0), _request(255)]))
