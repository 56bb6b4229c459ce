"""LoRA fine-tuning of a local :class:`~sb3_vlm.advisors.hf.HFAdvisor` on weighted (teacher view, action) pairs."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch as th

from sb3_vlm.finetune.data import Example
from sb3_vlm.finetune.selection import weighted_token_nll

#: the language model's attention and MLP projections (COVR table 9), never the vision tower's
LM_PROJECTIONS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


@dataclass
class LoraSettings:
    """
    LoRA fine-tuning of the advising VLM, COVR table 9: r 128, alpha 16 (256 for CARLA, where the VLM's driving
    knowledge should be kept: :meth:`driving`), dropout 0.05, lr 1e-4, batch 4, gradient accumulation 4, 2 epochs,
    cosine schedule, gradient checkpointing.

    Choices where table 9 is silent or out of scope: label smoothing 0.1 (COVR uses "NLL with label smoothing",
    value unstated); only the language model's projections are adapted (table 9's "others" list also has the vision
    tower's ``qkv`` and ``lm_head``; add them through ``target_modules`` to follow it).

    :param r: LoRA rank
    :param alpha: LoRA alpha (scale = alpha / r)
    :param dropout: LoRA dropout
    :param lr: AdamW learning rate (cosine-annealed to 0 over the round)
    :param batch_size: examples per forward pass
    :param grad_accum: forward passes per optimizer step
    :param epochs: passes over the round's selected examples
    :param label_smoothing: of the token NLL (COVR eq. 6)
    :param gradient_checkpointing: trade compute for memory where the architecture supports it
    :param target_modules: regex of the module names to adapt
    :param seed: shuffling and LoRA initialisation seed
    """

    r: int = 128
    alpha: int = 16
    dropout: float = 0.05
    lr: float = 1e-4
    batch_size: int = 4
    grad_accum: int = 4
    epochs: int = 2
    label_smoothing: float = 0.1
    gradient_checkpointing: bool = True
    target_modules: str = LM_PROJECTIONS
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("r", "alpha", "batch_size", "grad_accum", "epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"LoraSettings.{name} must be >= 1, got {getattr(self, name)}")
        if not (0.0 <= self.dropout < 1.0 and 0.0 <= self.label_smoothing < 1.0 and self.lr > 0):
            raise ValueError("LoraSettings: dropout and label_smoothing must be in [0, 1), lr > 0")

    @classmethod
    def driving(cls, **overrides: Any) -> LoraSettings:
        """COVR's CARLA settings: alpha 256 and table 9's CARLA modules (no ``v_proj``)."""
        settings: dict[str, Any] = dict(
            alpha=256, target_modules=r".*language_model.*\.(q_proj|k_proj|o_proj|gate_proj|up_proj|down_proj)"
        )
        return cls(**{**settings, **overrides})


def encode_answers(advisor: Any, requests: list[Any], answers: list[str]) -> dict[str, th.Tensor]:
    """
    Prompt + answer for each request, right-padded, labels -100 everywhere but the answer tokens. Each answer
    follows the advisor's ``answer_prefix`` (so the tokens taught are the ones its label scoring reads) and ends with
    the tokenizer's end of sequence.
    """
    tokenizer = advisor.tokenizer
    rows, images = [], []
    for request, answer in zip(requests, answers, strict=True):
        prompt, image = advisor.chat_prompt(request)  # exactly what the advisor asks at inference
        if image is not None:
            images.append(image)
        rows.append((prompt, advisor.answer_prefix + answer + (tokenizer.eos_token or "")))
    side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    try:
        prompts_only = advisor.processor(
            images=images or None, text=[p for p, _ in rows], return_tensors="pt", padding=True
        )
        full = advisor.processor(
            images=images or None, text=[p + a for p, a in rows], return_tensors="pt", padding=True
        )
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


def _encode(advisor: Any, examples: list[Example]) -> dict[str, th.Tensor]:
    """The examples' executed actions in the prompt's answer format (COVR eq. 6 counts answer tokens only)."""
    answers = [advisor.prompt.format_answer(ex.action, ex.request.action_space) for ex in examples]
    return encode_answers(advisor, [ex.request for ex in examples], answers)


def lora_finetune(
    advisor: Any, examples: list[Example], settings: LoraSettings, save_to: str | Path | None = None
) -> dict[str, float]:
    """
    Fine-tune ``advisor``'s model (an :class:`~sb3_vlm.advisors.hf.HFAdvisor`) with LoRA on ``examples`` by COVR's
    weighted token loss (eq. 6) and keep the adapter on it, so the advisor answers with it at once. A second call
    goes on training the same adapter (the rounds build on each other). The advisor's cache identity changes.

    :param save_to: directory to save this round's adapter in (reloadable with ``HFAdvisor(adapter=...)``)
    :return: mean eq. 6 loss of the first and last epochs, and the number of examples used
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
            r=settings.r,
            lora_alpha=settings.alpha,
            lora_dropout=settings.dropout,
            target_modules=settings.target_modules,
        )
        model = get_peft_model(model, config)
    for name, param in model.named_parameters():  # a reloaded adapter (PeftModel.from_pretrained) comes frozen
        param.requires_grad = "lora_" in name
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
    advisor.note_adapter(None if save_to is None else str(save_to))  # a new cache identity, saved or not
    return {"first_epoch_loss": epoch_losses[0], "last_epoch_loss": epoch_losses[-1], "examples": float(len(examples))}
