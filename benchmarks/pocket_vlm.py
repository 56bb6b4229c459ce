"""
The pocket VLM measured (issue 20, item 4): one-pass label scoring against generating the answer, and one LoRA round.

On the fixed probe set (``sb3_vlm.experiments.pocket.probe_views``), side by side in one process:

- **scoring**: ``HFAdvisor.score_labels`` (one forward pass per batch, softmax over the labels' first tokens);
- **generation**: ``HFAdvisor.generate_texts`` (greedy, the whole probability line), parsed like an API answer;
- requests/s of each, their ratio, and the share of views where both choose the same action;
- probe accuracy (overall, confused headings, other headings);
- one LoRA round (``lora_finetune`` with ``LoraSettings()``, COVR table 9) on ``--lora-examples`` probe-disjoint
  views labelled with the oracle's action: its wall time, and the probe accuracy after it.

Usage::

    python benchmarks/pocket_vlm.py                 # writes benchmarks/results/pocket/measure.json
    python benchmarks/pocket_vlm.py --quick         # CI smoke: a few views, no JSON unless --out is given
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch as th

from sb3_vlm.advisors.hf import HFAdvisor
from sb3_vlm.advisors.prompts import MINIGRID_PROMPT
from sb3_vlm.experiments import pocket
from sb3_vlm.finetune.data import Example
from sb3_vlm.finetune.lora import LoraSettings, lora_finetune

OUT = Path(__file__).parent / "results" / "pocket" / "measure.json"


def _timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def measure(views_per_env: int, lora_examples: int, batch_size: int, lora_epochs: int) -> dict:
    th.set_num_threads(1)
    advisor = HFAdvisor("pocket-minigrid", MINIGRID_PROMPT, batch_size=batch_size)
    probe = pocket.probe_views(per_env=views_per_env)
    requests = [v.request for v in probe]
    scored, generated, t_score, t_gen = [], [], 0.0, 0.0
    for start in range(0, len(requests), batch_size):
        chunk = requests[start : start + batch_size]
        probs, dt = _timed(advisor.score_labels, chunk)
        t_score += dt
        texts, dt = _timed(advisor.generate_texts, chunk)
        t_gen += dt
        scored += [int(np.argmax(p)) for p in probs]
        for text, request in zip(texts, chunk, strict=True):
            parsed = advisor.parse(text, request.action_space)
            generated.append(int(np.argmax(parsed.probs)) if parsed.valid and parsed.probs is not None else -1)
    before = pocket.accuracy(advisor, probe)
    train = [
        v
        for i, env_id in enumerate(pocket.POCKET_ENVS)
        for v in pocket.collect_views(env_id, lora_examples // 2, 777 + i)
    ]
    examples = [Example(request=v.request, action=np.array([v.optimal[0]]), weight=1.0) for v in train]
    stats, t_lora = _timed(lora_finetune, advisor, examples, LoraSettings(epochs=lora_epochs))
    after = pocket.accuracy(advisor, probe)
    return {
        "views": len(probe),
        "batch_size": batch_size,
        "scoring_requests_per_s": len(probe) / t_score,
        "generation_requests_per_s": len(probe) / t_gen,
        "scoring_speedup": t_gen / t_score,
        "same_action": float(np.mean(np.equal(scored, generated))),
        "generation_parse_failures": int(np.sum(np.asarray(generated) < 0)),
        "probe_accuracy": before,
        "lora_round": {
            "examples": len(examples),
            "epochs": lora_epochs,
            "seconds": t_lora,
            **stats,
            "probe_accuracy_after": after,
        },
        "torch_threads": th.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--views-per-env", type=int, default=200)
    parser.add_argument("--lora-examples", type=int, default=400)
    parser.add_argument("--lora-epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="CI smoke: a few views")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.quick:
        result = measure(4, 8, 4, 1)
    else:
        result = measure(args.views_per_env, args.lora_examples, args.batch_size, args.lora_epochs)
    out = args.out or (None if args.quick else OUT)
    print(json.dumps(result, indent=2))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
