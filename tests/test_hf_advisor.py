"""HFAdvisor on tiny random LLaVA and Qwen2-VL checkpoints built offline (no hub access)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch as th
from gymnasium import spaces

pytest.importorskip("transformers")

from sb3_vlm.advice import AdviceRequest
from sb3_vlm.advisors.hf import HFAdvisor
from sb3_vlm.advisors.prompts import CONTINUOUS_CONTROL, MINIGRID_PROMPT
from sb3_vlm.testing.tiny_vlm import build_tiny_llava, build_tiny_qwen2vl

GRID = spaces.Discrete(7)


@pytest.fixture(scope="module", params=["llava", "qwen2vl"])
def checkpoint(request, tmp_path_factory) -> Path:
    build = build_tiny_llava if request.param == "llava" else build_tiny_qwen2vl
    return build(tmp_path_factory.mktemp(request.param))


def _requests(n: int) -> list[AdviceRequest]:
    rng = np.random.default_rng(0)
    return [
        AdviceRequest(
            image=rng.integers(0, 255, (32, 32, 3), dtype=np.uint8),
            context={"mission": "get to the green goal square" + " now" * i},  # different lengths: padding matters
            action_space=GRID,
        )
        for i in range(n)
    ]


def test_one_pass_label_scoring_is_the_softmax_of_label_logits(checkpoint: Path) -> None:
    advisor = HFAdvisor(str(checkpoint), MINIGRID_PROMPT, batch_size=4, model_kwargs=dict(local_files_only=True))
    requests = _requests(3)
    advice = advisor.advise(requests)
    assert all(a.valid and a.probs is not None and a.probs.sum() == pytest.approx(1.0, abs=1e-5) for a in advice)
    # each request alone, by hand: the same distribution (left padding does not change the last position)
    ids = advisor.label_token_ids()
    for request, a in zip(requests, advice, strict=True):
        inputs = advisor._inputs([request])
        with th.no_grad():
            logits = advisor.model(**inputs).logits[0, -1, ids]
        np.testing.assert_allclose(a.probs, th.softmax(logits, -1).numpy(), atol=1e-4)


def test_batched_generation_gives_one_parsed_answer_per_request(checkpoint: Path) -> None:
    advisor = HFAdvisor(str(checkpoint), MINIGRID_PROMPT, distribution="written", max_new_tokens=4, batch_size=2)
    advice = advisor.advise(_requests(3))
    assert len(advice) == 3 and all(isinstance(a.raw, str) for a in advice)
    assert advisor.stats.queries == 3 and advisor.stats.invalid + sum(a.valid for a in advice) == 3
    box = spaces.Box(-2.0, 2.0, (1,), dtype=np.float32)
    prompt = CONTINUOUS_CONTROL.with_(action_names=("torque",))
    cont = HFAdvisor(str(checkpoint), prompt, max_new_tokens=4).advise(
        [AdviceRequest(image=np.zeros((32, 32, 3), np.uint8), context={"task": "swing up"}, action_space=box)]
    )[0]
    assert cont.valid or cont.raw is not None  # random weights: parsed or counted invalid, never an exception


def test_identity_and_bad_arguments(checkpoint: Path, caplog) -> None:
    import importlib.util

    advisor = HFAdvisor(str(checkpoint), MINIGRID_PROMPT)
    if "qwen" in checkpoint.name and importlib.util.find_spec("torchvision") is None:
        # Qwen2-VL's processor needs torchvision: tokenizer + PIL image processor instead, and a warning says so
        assert type(advisor.processor).__name__ == "SplitProcessor"
        assert "torchvision is not installed" in caplog.text
    assert str(checkpoint) in advisor.identity and "adapter=None" in advisor.identity
    with pytest.raises(ValueError):
        HFAdvisor(str(checkpoint), MINIGRID_PROMPT, distribution="samples")  # type: ignore[arg-type]


def test_lora_adapter_changes_answers_and_identity(checkpoint: Path, tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    base = AutoModelForImageTextToText.from_pretrained(str(checkpoint))
    # only the language model's projections (COVR), with non-zero B so the adapter changes the output
    peft_model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=r".*language_model.*\.(q_proj|v_proj)")
    )
    with th.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    peft_model.save_pretrained(tmp_path / "adapter")
    plain = HFAdvisor(str(checkpoint), MINIGRID_PROMPT)
    tuned = HFAdvisor(str(checkpoint), MINIGRID_PROMPT, adapter=str(tmp_path / "adapter"))
    requests = _requests(2)
    p0 = np.stack([a.probs for a in plain.advise(requests)])
    p1 = np.stack([a.probs for a in tuned.advise(requests)])
    assert not np.allclose(p0, p1, atol=1e-4)
    assert plain.identity != tuned.identity and str(tmp_path / "adapter") in tuned.identity


def test_two_stage_prompt_describes_then_scores(checkpoint: Path, monkeypatch) -> None:
    from sb3_vlm.advisors.prompts import MINIGRID_TWO_STAGE

    advisor = HFAdvisor(str(checkpoint), MINIGRID_TWO_STAGE, max_new_tokens=3)
    seen: list[list[str] | None] = []
    original = advisor.score_labels

    def spy(requests, descriptions=None):
        seen.append(None if descriptions is None else list(descriptions))
        return original(requests, descriptions)

    monkeypatch.setattr(advisor, "score_labels", spy)
    advice = advisor.advise(_requests(2))
    assert all(a.valid for a in advice)
    assert seen and seen[0] is not None and len(seen[0]) == 2  # first-stage texts reached the scoring pass


def test_background_requests_wait_while_the_model_is_being_fine_tuned(checkpoint: Path) -> None:
    # LoraBackend holds model_lock for a whole round: background advice must not run on a half-trained model
    import time

    from sb3_vlm.advice import PendingAdvice
    from sb3_vlm.advisors.background import BackgroundAdvisor

    advisor = HFAdvisor(str(checkpoint), MINIGRID_PROMPT, model_kwargs=dict(local_files_only=True))
    service = BackgroundAdvisor(advisor)
    assert service.workers == 1 and service.max_batch == advisor.batch_size  # one forward batch at a time
    with advisor.model_lock:
        pending = service.submit(_requests(2))
        time.sleep(0.3)
        assert all(isinstance(p, PendingAdvice) and not p.done() for p in pending)
    answers = [p.result(60) for p in pending]  # type: ignore[union-attr]
    assert all(a.valid and a.probs is not None for a in answers)


def test_answer_no_longer_raises_not_implemented(checkpoint: Path) -> None:
    """Issue 17 item 16: ``answer()`` gives what ``advise()`` gives for the request, as the API advisors' does."""
    advisor = HFAdvisor(str(checkpoint), MINIGRID_PROMPT, model_kwargs=dict(local_files_only=True))
    request = _requests(1)[0]
    one = advisor.answer(request)
    assert one.valid and one.probs is not None
    np.testing.assert_allclose(one.probs, advisor.advise([request])[0].probs, atol=1e-5)
