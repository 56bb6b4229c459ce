"""LoRA fine-tuning of a local :class:`~sb3_vlm.advisors.hf.HFAdvisor` on weighted (teacher view, answer) pairs."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch as th

from sb3_vlm.advice import AdviceRequest
from sb3_vlm.finetune.selection import weighted_token_nll


@dataclass
class LoraSettings:
    """
    COVR table 9 defaults: r 128, alpha 256 for driving (16 otherwise), dropout 0.05, lr 1e-4, batch 4,
    gradient accumulation 4, 2 epochs, cosine schedule; LoRA on the language model's projections only.

    :param target_modules: regex of the modules to adapt (the language model's attention and MLP projections)
    """

    r: int = 128
    alpha: int = 256
    dropout: float = 0.05
    lr: float = 1e-4
    batch_size: int = 4
    grad_accum: int = 4
    epochs: int = 2
    label_smoothing: float = 0.0
    gradient_checkpointing: bool = True
    target_modules: str = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Example:
    """One fine-tuning sample: what the teacher saw, the answer it should give, and its RALW weight."""

    request: AdviceRequest
    answer: str
    weight: float = 1.0


def _encode(advisor: Any, examples: list[Example]) -> dict[str, th.Tensor]:
    """Prompt + answer for each example, right-padded, labels -100 everywhere but the answer tokens."""
    from PIL import Image

    tokenizer = advisor.tokenizer
    rows, images = [], []
    for ex in examples:
        system, user = advisor.prompt.render(ex.request)
        content: list[dict[str, Any]] = []
        if ex.request.image is not None:
            content.append({"type": "image"})
            images.append(Image.fromarray(np.ascontiguousarray(ex.request.image, dtype=np.uint8)))
        content.append({"type": "text", "text": user})
        messages = ([{"role": "system", "content": [{"type": "text", "text": system}]}] if system else []) + [
            {"role": "user", "content": content}
        ]
        prompt = advisor.processor.apply_chat_template(messages, add_generation_prompt=True)
        rows.append((prompt, advisor.answer_prefix + ex.answer + (tokenizer.eos_token or "")))
    side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    try:
        prompts_only = advisor.processor(images=images or None, text=[p for p, _ in rows], return_tensors="pt", padding=True)
        full = advisor.processor(images=images or None, text=[p + a for p, a in rows], return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = side
    labels = full["input_ids"].clone()
    prompt_lengths = prompts_only["attention_mask"].sum(dim=1)
    for i, n in enumerate(prompt_lengths.tolist()):
        labels[i, :n] = -100
    labels[full["attention_mask"] == 0] = -100
    out = {k: v for k, v in dict(full).items() if isinstance(v, th.Tensor)}
    out["labels"] = labels
    return out


def lora_finetune(advisor: Any, examples: list[Example], settings: LoraSettings, save_to: str | Path | None = None) -> dict[str, float]:
    """
    Fine-tune ``advisor``'s model with LoRA on ``examples`` by COVR's weighted token loss (eq. 6) and keep the
    adapter on it, so the advisor answers with it at once. Returns the mean loss of the first and last epochs.

    :param save_to: directory to save this round's adapter in (reloadable with ``HFAdvisor(adapter=...)``)
    """
    from peft import LoraConfig, get_peft_model

    examples = [ex for ex in examples if ex.weight > 0]  # zero-weight samples add nothing to eq. 6
    if not examples:
        return {"first_epoch_loss": math.nan, "last_epoch_loss": math.nan, "examples": 0.0}
    th.manual_seed(settings.seed)
    rng = random.Random(settings.seed)
    model = advisor.model
    if not hasattr(model, "peft_config"):
        config = LoraConfig(
            r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout, target_modules=settings.target_modules
        )
        model = get_peft_model(model, config)
    if settings.gradient_checkpointing and hasattr(model, "gradient_checkpointing_enable"):
        try:
            model.gradient_checkpointing_enable()
            model.enable_input_require_grads()
        except (ValueError, NotImplementedError, AttributeError):
            pass  # not every architecture supports it; training still works, with more memory
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = th.optim.AdamW(params, lr=settings.lr)
    steps_per_epoch = math.ceil(len(examples) / settings.batch_size / settings.grad_accum)
    scheduler = th.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps_per_epoch * settings.epochs))
    model.train()
    epoch_losses = []
    for _ in range(settings.epochs):
        order = list(range(len(examples)))
        rng.shuffle(order)
        losses = []
        optimizer.zero_grad()
        for k, start in enumerate(range(0, len(order), settings.batch_size)):
            batch = [examples[i] for i in order[start : start + settings.batch_size]]
            inputs = {key: v.to(advisor.device) for key, v in _encode(advisor, batch).items()}
            labels = inputs.pop("labels")
            logits = model(**inputs).logits
            weights = th.tensor([ex.weight for ex in batch], device=logits.device)
            # next-token alignment: the logit at position t predicts token t + 1
            loss = weighted_token_nll(logits[:, :-1], labels[:, 1:], weights, settings.label_smoothing)
            (loss / settings.grad_accum).backward()
            losses.append(loss.item())
            if (k + 1) % settings.grad_accum == 0 or start + settings.batch_size >= len(order):
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
        epoch_losses.append(float(np.mean(losses)))
    model.eval()
    advisor.model = model
    if save_to is not None:
        model.save_pretrained(str(save_to))
        advisor.adapter = str(save_to)
    return {"first_epoch_loss": epoch_losses[0], "last_epoch_loss": epoch_losses[-1], "examples": float(len(examples))}
