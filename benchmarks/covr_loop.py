"""COVR's collaborative loop on MiniGrid with a deliberately poor, fine-tunable scripted teacher.

Three variants per seed (see ``sb3_vlm/experiments/covr.py``): unguided PPO, GuidedPPO with the poor teacher (the
oracle made ``--reliability`` reliable) and no fine-tuning, and the same with ``VLMFineTuneCallback`` fine-tuning
the teacher (a nearest-neighbour table) on the agent's EDDF-selected, RALW-weighted trajectories. It writes, under
``--out``:

- ``runs.jsonl``: every run (resumable), with learning curve, advice accuracy after each round and round records;
- ``learning.png``: mean ± std training return per variant; ``accuracy.png``: advice accuracy across rounds;
- ``summary.json`` and ``summary.md``: steps to mean return 0.9, final success, advice accuracy before / after.

Usage::

    python benchmarks/covr_loop.py              # 3 variants x 5 seeds (about 10 minutes on 2 cores)
    python benchmarks/covr_loop.py --quick      # CI smoke: one seed, 3k steps
    python benchmarks/covr_loop.py --report-only
    python benchmarks/covr_loop.py --teacher pocket --env-id MiniGrid-LavaGapS7-v0 --steps 100000 --seeds 0 1 2
                                                # issue 20: the pocket VLM, frozen against LoRA-fine-tuned
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

THRESHOLD = 0.9
LABELS = {"unguided": "PPO (no teacher)", "poor": "GuidedPPO, poor teacher", "covr": "GuidedPPO, poor teacher + COVR"}


def _key(job: dict[str, Any]) -> tuple[Any, ...]:
    return (
        job["variant"],
        job["env_id"],
        job["seed"],
        job.get("steps", job.get("total_timesteps")),
        job["reliability"],
        job["psi0"],
        job.get("smoothing", 0.0),
        job.get("teacher", "table"),
    )


def _worker(job: dict[str, Any]) -> dict[str, Any]:
    import torch as th

    from sb3_vlm.experiments.covr import run

    th.set_num_threads(1)
    return run(
        job["variant"],
        job["seed"],
        job["steps"],
        env_id=job["env_id"],
        reliability=job["reliability"],
        psi0=job["psi0"],
        eval_episodes=job["eval_episodes"],
        smoothing=job.get("smoothing", 0.0),
        teacher=job.get("teacher", "table"),
        # the pocket VLM runs with GuidedPPO's defaults (issue 20 compares teachers, not λ)
        teacher_coef=None if job.get("teacher") == "pocket" else 0.05,
    )


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for variant in LABELS:
        rs = [r for r in runs if r["variant"] == variant]
        if not rs:
            continue
        steps = [r["steps_to_threshold"] or r["total_timesteps"] for r in rs]
        before = [r["accuracy_before"] for r in rs]
        after = [r["accuracy_after"] for r in rs if r["accuracy_after"] is not None]
        rows.append(
            dict(
                variant=variant,
                label=LABELS[variant],
                seeds=len(rs),
                reached=sum(r["steps_to_threshold"] is not None for r in rs),
                steps_mean=float(np.mean(steps)),
                steps_std=float(np.std(steps)),
                steps_per_seed={r["seed"]: r["steps_to_threshold"] for r in rs},
                final_success_mean=float(np.mean([r["final_success"] for r in rs])),
                auc_mean=float(np.mean([np.mean(r["curve_returns"]) if r["curve_returns"] else 0.0 for r in rs])),
                accuracy_before=float(np.mean(before)),
                accuracy_after=float(np.mean(after)) if after else None,
                accuracy_by_round=_by_round(rs),
            )
        )
    return rows


def _by_round(rs: list[dict[str, Any]]) -> list[float]:
    rounds = min((len(r["accuracy"]) for r in rs), default=0)
    return [float(np.mean([r["accuracy"][i] for r in rs])) for i in range(rounds)]


def _teacher(meta: dict[str, Any]) -> str:
    if meta.get("teacher") == "pocket":
        return "the pocket VLM (hf:pocket-minigrid, LoRA rounds)"
    return f"a table over the oracle, reliability {meta['reliability']}"


def _markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        f"{meta['env_id']}, {meta['steps']:,} steps, seeds {meta['seeds']}, teacher {_teacher(meta)}, "
        f"ψ0 = {meta['psi0']:,}",
        "",
        f"| variant | seeds reaching {THRESHOLD} | steps to mean return {THRESHOLD} | per seed | mean training return "
        "| final success | advice accuracy before → after | accuracy by round (0 = before) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        acc = "" if r["accuracy_after"] is None else f"{r['accuracy_before']:.2f} → {r['accuracy_after']:.2f}"
        per_seed = " / ".join("never" if s is None else f"{s:,}" for s in r["steps_per_seed"].values())
        lines.append(
            f"| {r['label']} | {r['reached']}/{r['seeds']} | {r['steps_mean']:,.0f} ± {r['steps_std']:,.0f} "
            f"| {per_seed} | {r['auc_mean']:.3f} | {r['final_success_mean']:.2f} | {acc} "
            f"| {' / '.join(f'{a:.2f}' for a in r['accuracy_by_round'])} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env-id", default="MiniGrid-Empty-Random-6x6-v0")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=40_000)
    parser.add_argument("--reliability", type=float, default=0.2, help="the poor teacher's reliability")
    parser.add_argument("--psi0", type=int, default=2_500, help="ψ0: steps before the first round")
    parser.add_argument("--smoothing", type=float, default=0.0, help="the fine-tuned table's answer smoothing")
    parser.add_argument("--eval-episodes", type=int, default=50)
    parser.add_argument("--variants", nargs="+", default=list(LABELS), choices=list(LABELS))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--teacher",
        default="table",
        choices=["table", "pocket"],
        help="table: the nearest-neighbour table over a noisy oracle; pocket: the pocket VLM with real LoRA rounds",
    )
    parser.add_argument("--out", default=None, help="default: benchmarks/results/covr_loop (covr_pocket/ENV)")
    parser.add_argument("--quick", action="store_true", help="CI smoke: seed 0, 3k steps, ψ0 = 1000")
    parser.add_argument("--report-only", action="store_true", help="summarise the runs already in runs.jsonl")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.steps, args.psi0, args.eval_episodes = [0], 3_000, 1_000, 5
    jobs = [
        dict(
            variant=v,
            env_id=args.env_id,
            seed=s,
            steps=args.steps,
            reliability=args.reliability,
            psi0=args.psi0,
            eval_episodes=args.eval_episodes,
            smoothing=args.smoothing,
            teacher=args.teacher,
        )
        for s in args.seeds
        for v in args.variants
    ]
    if args.out is None:
        pocket_out = Path("benchmarks/results/covr_pocket") / args.env_id.removeprefix("MiniGrid-").removesuffix("-v0")
        args.out = "benchmarks/results/covr_loop" if args.teacher == "table" else str(pocket_out)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from sb3_vlm.experiments.runner import run_jobs

    def describe(r: dict[str, Any]) -> str:
        return (
            f"{r['variant']} seed {r['seed']}: {THRESHOLD} at {r['steps_to_threshold']}, success "
            f"{r['final_success']:.2f}, accuracy {r['accuracy_before']:.2f} -> {r['accuracy_after']}"
        )

    runs = run_jobs(jobs, _worker, _key, out / "runs.jsonl", args.workers, args.report_only, describe)
    meta = dict(
        env_id=args.env_id,
        steps=args.steps,
        seeds=args.seeds,
        reliability=args.reliability,
        psi0=args.psi0,
        smoothing=args.smoothing,
        teacher=args.teacher,
    )
    rows = summarise(runs)
    (out / "summary.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    (out / "summary.md").write_text(_markdown(rows, meta))
    from sb3_vlm.experiments.plotting import plot_learning_curves

    curves = {LABELS[v]: [(r["curve_steps"], r["curve_returns"]) for r in runs if r["variant"] == v] for v in LABELS}
    plot_learning_curves(
        {k: v for k, v in curves.items() if v},
        out / "learning.png",
        title=f"{args.env_id}, teacher {_teacher(meta)}, {len(args.seeds)} seeds",
        threshold=THRESHOLD,
    )
    accuracy = [(r["accuracy_steps"], r["accuracy"]) for r in runs if r["variant"] == "covr" and r["accuracy"]]
    if accuracy:
        plot_learning_curves(
            {"advice accuracy (COVR rounds)": accuracy},
            out / "accuracy.png",
            title="teacher's top action optimal, on the oracle's paths",
            ylabel="advice accuracy",
        )
    print(_markdown(rows, meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
