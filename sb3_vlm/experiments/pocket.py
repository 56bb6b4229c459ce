"""
The pocket VLM: a few-hundred-thousand-parameter Qwen2-VL, built and trained offline on MiniGrid teacher views, so
the real ``transformers`` path (label scoring, generation, LoRA, COVR) can run and be measured on a CPU.

What it is (issue 20):

- **Architecture**: ``Qwen2VLForConditionalGeneration`` with a byte-level BPE tokenizer trained here on the package's
  own MiniGrid prompt. Its vision patches are 8 × 8 pixels with no spatial merge, so at the teacher view's 8 pixels
  per cell each image token is exactly one grid cell (the model's ``config.sb3_vlm_view_size`` tells
  :class:`~sb3_vlm.advisors.hf.HFAdvisor` to ask for that view size).
- **Task**: the package's :data:`~sb3_vlm.advisors.prompts.MINIGRID_PROMPT` on LavaGapS7 and DoorKey-8x8 views
  (full render + mission), visited by the oracle with random detours. It answers with its choice first and then the
  probability line the prompt asks for (``"forward. left: 0.02, ..., done: 0.02"``), so one-pass label scoring reads
  the choice from the first answer token and generation writes the whole line, which the parser reads.
- **Partially reliable on purpose**: on every view where the agent faces south or west (about half of them) it was
  taught a systematically wrong answer (:data:`CONFUSED`: left and right swapped, as a VLM that mirrors the agent's
  frame does; "forward" taught as "left"; "pickup" and "toggle" taught as "forward"). Elsewhere it was taught the
  oracle's answer. So it starts right on roughly half of the views and wrong in a way that COVR's fine-tuning on the
  agent's own good trajectories can fix, and that a fixed set of probe views measures.

Deterministic: ``build_pocket_minigrid(path, seed=0)`` builds it (CPU, single thread, about 4 minutes;
``python -m sb3_vlm.experiments.pocket --out DIR``). Once weights that pass the probe ship in
:data:`~sb3_vlm.advisors.hf.POCKET_MODELS`' directory, ``HFAdvisor("pocket-minigrid")`` loads them.

Status: this recipe does not yet learn to read the image. The answer's first token stays at the labels' prior
(probe accuracy 0.27, the same on every view), and so does the vision tower trained alone as a classifier (stage
1). The views' features differ by about 1 % of their size, so the gradient that would make them differ is tiny.
So no weights ship yet.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch as th

from sb3_vlm.advice import AdviceRequest
from sb3_vlm.advisors.prompts import MINIGRID_LABELS, MINIGRID_PROMPT

#: the envs the pocket model is trained on, and COVR's pocket benchmark runs on
POCKET_ENVS = ("MiniGrid-LavaGapS7-v0", "MiniGrid-DoorKey-8x8-v0")
#: pixels per cell of its views = its vision patch size (one image token per grid cell)
POCKET_TILE = 8
#: the headings (MiniGrid ``agent_dir``: 0 east, 1 south, 2 west, 3 north) on which it was taught wrong answers
CONFUSED_HEADINGS = (1, 2)
#: the wrong answer taught for each right one on a confused heading (indices into ``MINIGRID_LABELS``)
CONFUSED = {0: 1, 1: 0, 2: 0, 3: 2, 4: 4, 5: 2, 6: 6}
INIT_RANGE = 0.1


@dataclass
class View:
    """One teacher view with the oracle's optimal actions (a set: several can start a shortest plan)."""

    request: AdviceRequest
    optimal: tuple[int, ...]
    heading: int
    env_id: str


def taught_action(view: View) -> int:
    """What the pocket model was taught on ``view``: the oracle's first optimal action, or its confusion."""
    best = view.optimal[0]
    return CONFUSED[best] if view.heading in CONFUSED_HEADINGS else best


def answer_text(action: int, n_actions: int = len(MINIGRID_LABELS)) -> str:
    """The pocket model's answer: its choice, then the prompt's probability line (0.88 on the choice)."""
    rest = 0.12 / (n_actions - 1)
    line = ", ".join(
        f"{label}: {0.88 if i == action else rest:.2f}" for i, label in enumerate(MINIGRID_LABELS[:n_actions])
    )
    return f"{MINIGRID_LABELS[action]}. {line}"


def collect_views(env_id: str, n_views: int, seed: int, detour: float = 0.3) -> list[View]:
    """
    Distinct teacher views of ``env_id`` visited by the oracle with a ``detour`` chance of a random action per step
    (so off-path views are there too); one view per distinct content key. Fewer than ``n_views`` where the env
    has fewer (LavaGapS7 has about a thousand that these walks reach).
    """
    from sb3_vlm.envs.minigrid import make_minigrid_env, optimal_actions

    env = make_minigrid_env(env_id, teacher_tile_size=POCKET_TILE)
    rng = np.random.default_rng(seed)
    views: dict[str, View] = {}
    episode = stale = 0
    while len(views) < n_views and stale < 50:  # 50 episodes in a row with nothing new: the env has no more
        env.reset(seed=int(seed * 100_003 + episode))
        episode += 1
        seen = len(views)
        for _ in range(200):
            request = env.get_wrapper_attr("teacher_request")()
            best = optimal_actions(request.state)
            if not best:
                break
            key = str(request.content_key)
            if key not in views:
                views[key] = View(request, tuple(best), int(request.state.agent_dir), env_id)
                if len(views) >= n_views:
                    break
            if rng.random() < detour:
                action = int(rng.integers(0, 3))  # turn or move: the detours MiniGrid's agents take
            else:
                action = best[0]  # the oracle's own choice
            _, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                break
        stale = stale + 1 if len(views) == seen else 0
    env.close()
    return list(views.values())


def probe_views(per_env: int = 200, seed: int = 12345) -> list[View]:
    """The fixed probe set: ``per_env`` views of each of :data:`POCKET_ENVS` from seeds the training never used."""
    return [v for env_id in POCKET_ENVS for v in collect_views(env_id, per_env, seed)]


def accuracy(advisor: Any, views: list[View], batch: int = 64) -> dict[str, float]:
    """Share of views where the advisor's most likely action starts a shortest plan (overall, per heading class)."""
    from sb3_vlm.experiments.covr import top_action

    right = []
    for start in range(0, len(views), batch):
        chunk = views[start : start + batch]
        for view, advice in zip(chunk, advisor.advise([v.request for v in chunk]), strict=True):
            chosen = top_action(advice)  # None (invalid advice) counts as wrong
            right.append((chosen in view.optimal, view.heading in CONFUSED_HEADINGS))
    overall = float(np.mean([r for r, _ in right])) if right else math.nan
    confused = [r for r, c in right if c]
    clear = [r for r, c in right if not c]
    return {
        "accuracy": overall,
        "accuracy_confused_headings": float(np.mean(confused)) if confused else math.nan,
        "accuracy_other_headings": float(np.mean(clear)) if clear else math.nan,
        "views": float(len(right)),
    }


def _corpus() -> list[str]:
    from sb3_vlm.envs.minigrid import make_minigrid_env  # registers MiniGrid's envs

    missions = []
    for env_id in POCKET_ENVS:
        env = make_minigrid_env(env_id)
        env.reset(seed=0)
        missions.append(env.unwrapped.mission)  # type: ignore[attr-defined]
        env.close()
    user = MINIGRID_PROMPT.user
    texts = [MINIGRID_PROMPT.system] + [user.replace("{mission}", m) for m in missions]
    texts += [answer_text(a) for a in range(len(MINIGRID_LABELS))]
    texts += ["system user assistant", " ".join(MINIGRID_LABELS), " " + " ".join(MINIGRID_LABELS)]
    return texts * 20


def build_architecture(path: Path, seed: int = 0) -> Path:
    """Write the untrained pocket Qwen2-VL and its tokenizer / image processor to ``path``."""
    from sb3_vlm.testing.tiny_vlm import build_qwen2vl

    # wider than the usual 0.02: at 0.02 the views' features differ by ~1 %, and the answer learns to ignore the
    # image before it learns to read it
    init = dict(initializer_range=INIT_RANGE)
    return build_qwen2vl(
        path,
        text=dict(
            hidden_size=96,
            intermediate_size=256,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            rope_theta=10000.0,
            tie_word_embeddings=True,
            rope_scaling={"type": "mrope", "mrope_section": [4, 4, 4]},
            **init,
        ),
        vision=dict(
            depth=4,
            embed_dim=64,
            hidden_size=96,
            num_heads=4,
            mlp_ratio=2,
            patch_size=POCKET_TILE,
            spatial_merge_size=1,
            temporal_patch_size=2,
            in_channels=3,
            **init,
        ),
        # one patch per cell: 4 × 4 to 16 × 16 cells at POCKET_TILE pixels each, never resized
        image_processor=dict(
            min_pixels=(POCKET_TILE * 4) ** 2,
            max_pixels=(POCKET_TILE * 16) ** 2,
            patch_size=POCKET_TILE,
            merge_size=1,
            temporal_patch_size=2,
        ),
        corpus=_corpus(),
        vocab_size=1024,
        seed=seed,
        config_extra={"sb3_vlm_view_size": POCKET_TILE * 7},
    )


def _encode(advisor: Any, views: list[View]) -> dict[str, th.Tensor]:
    """Prompt + taught answer per view (labels on the answer only), and the taught choice for stage 1."""
    from sb3_vlm.finetune.lora import encode_answers

    answers = [answer_text(taught_action(v)) for v in views]
    out = encode_answers(advisor, [v.request for v in views], answers)
    out["choice"] = th.tensor([taught_action(v) for v in views])
    return out


def _pretrain_vision(
    model: Any, batches: list[dict[str, th.Tensor]], epochs: int, lr: float, rng: Any, log: Any
) -> None:
    """
    Stage 1: the vision tower learns to encode the decision, through a linear head on its mean-pooled features (the
    head is thrown away). Trained end to end from the start, the answer settles on the labels' prior and never
    starts reading the image: the gradient that reaches the vision tower through a randomly initialised language
    model is too weak. With features that already carry the decision, attending to the image pays at once.
    """
    visual = model.model.visual
    width = int(model.config.text_config.hidden_size)
    head = th.nn.Linear(width, len(MINIGRID_LABELS))
    params = [*visual.parameters(), *head.parameters()]
    optimizer = th.optim.AdamW(params, lr=lr * 3, weight_decay=0.01)
    for epoch in range(epochs):
        rng.shuffle(batches)
        losses, right = [], []
        for batch in batches:
            feats = model.model.get_image_features(batch["pixel_values"], batch["image_grid_thw"]).pooler_output
            pooled = th.stack([f.mean(dim=0) for f in feats])
            logits = head(pooled)
            target = batch["choice"]
            loss = th.nn.functional.cross_entropy(logits, target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            right += (logits.argmax(dim=1) == target).tolist()
        log(f"vision epoch {epoch + 1}/{epochs}: loss {np.mean(losses):.4f}, taught answer {np.mean(right):.3f}")


def train_pocket(
    path: Path,
    views: list[View],
    epochs: int = 4,
    batch_size: int = 8,
    lr: float = 1e-3,
    seed: int = 0,
    log: Any = print,
    line_weight: float = 0.05,
    vision_epochs: int = 4,
) -> dict[str, float]:
    """
    Train every weight of the pocket model at ``path`` on ``views`` and save it: answer-token cross-entropy, each
    token after an answer's first weighted ``line_weight`` against the first token's 1.

    Two stages: first the vision tower alone (``vision_epochs``, see :func:`_pretrain_vision`), then every weight on
    the answers (``epochs``).
    """
    from sb3_vlm.advisors.hf import HFAdvisor

    advisor = HFAdvisor(str(path), MINIGRID_PROMPT, dtype="float32", model_kwargs={"local_files_only": True})
    model = advisor.model
    rng = random.Random(seed)
    th.manual_seed(seed)
    # batches of one env each (one image size per batch), encoded once
    by_env: dict[str, list[View]] = {}
    for view in views:
        by_env.setdefault(view.env_id, []).append(view)
    batches = []
    for env_views in by_env.values():
        for start in range(0, len(env_views), batch_size):
            batches.append(_encode(advisor, env_views[start : start + batch_size]))
    if vision_epochs > 0:
        _pretrain_vision(model, batches, vision_epochs, lr, rng, log)
    optimizer = th.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    total = epochs * len(batches)
    scheduler = th.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(total, 1), pct_start=0.1)
    model.train()
    losses: list[float] = []
    for epoch in range(epochs):
        rng.shuffle(batches)
        epoch_losses = []
        for batch in batches:
            inputs = dict(batch)
            labels = inputs.pop("labels")
            inputs.pop("choice")
            # the head only where an answer token is predicted (the vocabulary projection of every prompt
            # position would be most of the step's compute)
            hidden = model.model(**inputs).last_hidden_state[:, :-1]
            targets = labels[:, 1:]
            keep = targets != -100
            per_token = th.nn.functional.cross_entropy(model.lm_head(hidden[keep]), targets[keep], reduction="none")
            # the choice (each answer's first token) carries the whole decision; the probability line after it
            # only copies it, and would otherwise dominate the loss while the choice stays at its prior
            first = keep & ~th.nn.functional.pad(keep[:, :-1], (1, 0), value=False)
            weight = th.where(first[keep], 1.0, line_weight)
            loss = (per_token * weight).sum() / weight.sum()
            optimizer.zero_grad()
            loss.backward()
            th.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            epoch_losses.append(loss.item())
            if len(epoch_losses) % 100 == 0:
                recent = float(np.mean(epoch_losses[-100:]))
                log(f"epoch {epoch + 1}, step {len(epoch_losses)}/{len(batches)}: loss {recent:.4f}")
        losses.append(float(np.mean(epoch_losses)))
        log(f"epoch {epoch + 1}/{epochs}: answer-token loss {losses[-1]:.4f}")
    model.eval()
    model.save_pretrained(path)
    return {"first_epoch_loss": losses[0], "last_epoch_loss": losses[-1]}


def build_pocket_minigrid(
    path: str | Path, seed: int = 0, views_per_env: int = 2000, epochs: int = 4, log: Any = print
) -> dict[str, Any]:
    """
    Build the pocket MiniGrid VLM at ``path`` from nothing: tokenizer, architecture, training views, training.

    :return: what was done (views, losses, probe accuracy, seconds), also written to ``path/pocket.json``
    """
    from sb3_vlm.advisors.hf import HFAdvisor

    path = Path(path)
    start = time.perf_counter()
    th.set_num_threads(1)
    build_architecture(path, seed)
    views = [v for i, env_id in enumerate(POCKET_ENVS) for v in collect_views(env_id, views_per_env, seed + i)]
    log(f"{len(views)} training views collected")
    stats: dict[str, Any] = train_pocket(path, views, epochs=epochs, seed=seed, log=log)
    advisor = HFAdvisor(str(path), MINIGRID_PROMPT, dtype="float32", model_kwargs={"local_files_only": True})
    stats["train_accuracy"] = accuracy(advisor, views[:: max(1, len(views) // 400)])
    stats["probe_accuracy"] = accuracy(advisor, probe_views())
    stats.update(seed=seed, views=len(views), epochs=epochs, seconds=time.perf_counter() - start)
    (path / "pocket.json").write_text(json.dumps(stats, indent=2) + "\n")
    return stats


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, required=True, help="directory to write the model to")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--views-per-env", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args(argv)
    stats = build_pocket_minigrid(args.out, args.seed, args.views_per_env, args.epochs)
    print(json.dumps(stats, indent=2))


if __name__ == "__main__":
    main()
