"""LVLM2P benchmark: PPO / A2C with and without distillation on the four LVLM2P MiniGrid tasks.

For each task, algorithm and seed it trains the unguided baseline and the guided algorithm with a scripted teacher
(the MiniGrid oracle made ``reliability`` reliable, see ``NoisyAdvisor``). Reliability 0.0 uses the kickstarting
anneal (λ fades to 0), the others a constant λ. It writes, under ``--out``:

- ``<task>.json``: every run (curve, steps to the return threshold, final success, advisor queries, cache hits);
- ``<task>.png``: mean ± std learning curves, one panel per algorithm;
- ``summary.json`` and ``summary.md``: steps to mean return 0.9 and the unguided / guided ratio per config
  (LVLM2P reports 2.1–2.9x).

Usage::

    python benchmarks/minigrid_distill.py                  # the full run (hours on 2 CPU cores)
    python benchmarks/minigrid_distill.py --quick          # CI smoke: one task, one seed, a few thousand steps
    python benchmarks/minigrid_distill.py --tasks LavaGap --algos ppo --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

TASKS: dict[str, tuple[str, int]] = {
    # name: (env id, env steps per run)
    "LavaGap": ("MiniGrid-LavaGapS7-v0", 150_000),
    "DynamicObstacles": ("MiniGrid-Dynamic-Obstacles-5x5-v0", 50_000),
    "Fetch": ("MiniGrid-Fetch-5x5-N2-v0", 60_000),
    "GoToDoor": ("MiniGrid-GoToDoor-5x5-v0", 60_000),
}
THRESHOLD = 0.9


def _configs(algos: list[str], reliabilities: list[float]) -> list[dict[str, Any]]:
    configs: list[dict[str, Any]] = []
    for algo in algos:
        configs.append(dict(algo=algo, guided=False, reliability=1.0, schedule="none"))
        for rel in reliabilities:
            schedule = "annealed" if rel == 0.0 else "constant"
            configs.append(dict(algo=algo, guided=True, reliability=rel, schedule=schedule))
    return configs


def _job_key(job: dict[str, Any]) -> tuple[Any, ...]:
    """Identity of a run (a job or its result): resuming skips the jobs whose key is already in runs.jsonl."""
    steps = job.get("steps", job.get("total_timesteps"))
    rel = job["reliability"] if job["guided"] else None
    return (job["task"], job["algo"], job["guided"], rel, job["schedule"] if job["guided"] else "", job["seed"], steps)


def _label(cfg: dict[str, Any]) -> str:
    if not cfg["guided"]:
        return "unguided"
    return f"guided r={cfg['reliability']:.1f}" + (" (annealed λ)" if cfg["schedule"] == "annealed" else "")


def _worker(job: dict[str, Any]) -> dict[str, Any]:
    import torch as th

    from sb3_vlm.experiments.minigrid import annealed_schedule, run

    th.set_num_threads(1)
    coef: Any = annealed_schedule(job["teacher_coef"]) if job["schedule"] == "annealed" else job["teacher_coef"]
    result = run(
        job["algo"],
        job["env_id"],
        job["guided"],
        job["seed"],
        job["steps"],
        reliability=job["reliability"],
        teacher_coef=coef,
        threshold=THRESHOLD,
        eval_episodes=job["eval_episodes"],
        schedule_name=job["schedule"],
    )
    out = result.as_dict()
    out.update(task=job["task"], label=_label(job))
    return out


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (task, algo, label): steps to the threshold (runs that never reach it count as their budget, a censored
    lower bound), the unguided / guided ratio and the final success."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        groups[(r["task"], r["algo"], r["label"])].append(r)
    rows = []
    for (task, algo, label), rs in sorted(groups.items()):
        steps = [r["steps_to_threshold"] if r["steps_to_threshold"] is not None else r["total_timesteps"] for r in rs]
        rows.append(
            dict(
                task=task,
                algo=algo,
                label=label,
                seeds=len(rs),
                reached=sum(r["steps_to_threshold"] is not None for r in rs),
                steps_to_threshold_mean=float(np.mean(steps)),
                steps_to_threshold_std=float(np.std(steps)),
                final_success_mean=float(np.mean([r["final_success"] for r in rs])),
                final_success_std=float(np.std([r["final_success"] for r in rs])),
                advisor_queries_mean=float(np.mean([r["advisor_queries"] for r in rs])),
                cache_hits_mean=float(np.mean([r["cache_hits"] for r in rs])),
            )
        )

    def steps_by_seed(task: str, algo: str, label: str) -> dict[int, int]:
        return {
            r["seed"]: r["steps_to_threshold"] if r["steps_to_threshold"] is not None else r["total_timesteps"]
            for r in groups[(task, algo, label)]
        }

    base = {(r["task"], r["algo"]): r for r in rows if r["label"] == "unguided"}
    for r in rows:
        b = base.get((r["task"], r["algo"]))
        if b is None or r["label"] == "unguided":
            r["speedup"] = None
            continue
        unguided = steps_by_seed(r["task"], r["algo"], "unguided")
        guided = steps_by_seed(r["task"], r["algo"], r["label"])
        r["speedup_per_seed"] = {seed: unguided[seed] / max(g, 1) for seed, g in guided.items() if seed in unguided}
        r["speedup"] = b["steps_to_threshold_mean"] / max(r["steps_to_threshold_mean"], 1.0)
        # the unguided runs that never reached the target make the ratio a lower bound
        r["speedup_is_lower_bound"] = b["reached"] < b["seeds"]
        r["speedup_is_upper_bound"] = r["reached"] < r["seeds"]
    return rows


def _markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"| task | algo | config | seeds reaching {THRESHOLD} | steps to mean return {THRESHOLD} | unguided / guided "
        "| per seed | final success | queries | cache hits |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        speed = ""
        if r["speedup"] is not None and r["reached"] == 0:
            speed = "n/a"  # the guided runs never reached the target: no ratio to report
        elif r["speedup"] is not None:
            prefix = "≥ " if r.get("speedup_is_lower_bound") and not r.get("speedup_is_upper_bound") else ""
            prefix = "≤ " if r.get("speedup_is_upper_bound") and not r.get("speedup_is_lower_bound") else prefix
            prefix = "~ " if r.get("speedup_is_upper_bound") and r.get("speedup_is_lower_bound") else prefix
            speed = f"{prefix}{r['speedup']:.2f}x"
        lines.append(
            f"| {r['task']} | {r['algo']} | {r['label']} | {r['reached']}/{r['seeds']} "
            f"| {r['steps_to_threshold_mean']:,.0f} ± {r['steps_to_threshold_std']:,.0f} | {speed} "
            f"| {' / '.join(f'{v:.1f}' for v in r.get('speedup_per_seed', {}).values())} "
            f"| {r['final_success_mean']:.2f} ± {r['final_success_std']:.2f} "
            f"| {r['advisor_queries_mean']:,.0f} | {r['cache_hits_mean']:,.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--algos", nargs="+", default=["ppo", "a2c"], choices=["ppo", "a2c"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--reliabilities", nargs="+", type=float, default=[1.0, 0.8, 0.5, 0.0])
    parser.add_argument("--steps", type=int, default=None, help="override every task's step budget")
    parser.add_argument("--teacher-coef", type=float, default=0.05, help="constant λ (default: %(default)s)")
    parser.add_argument("--eval-episodes", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/minigrid_distill")
    parser.add_argument(
        "--quick", action="store_true", help="CI smoke: LavaGap, PPO+A2C, seed 0, r in {0.8, 0}, 3k steps"
    )
    parser.add_argument(
        "--report-only", action="store_true", help="write JSON/PNG/summary from the runs already in runs.jsonl"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.tasks, args.seeds, args.reliabilities = ["LavaGap"], [0], [0.8, 0.0]
        args.steps, args.eval_episodes = args.steps or 3_000, 5

    jobs = []
    for task in args.tasks:
        env_id, budget = TASKS[task]
        for seed in args.seeds:
            for cfg in _configs(args.algos, args.reliabilities):
                jobs.append(
                    dict(
                        cfg,
                        task=task,
                        env_id=env_id,
                        seed=seed,
                        steps=args.steps or budget,
                        teacher_coef=args.teacher_coef,
                        eval_episodes=args.eval_episodes,
                    )
                )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # every finished run is appended to runs.jsonl at once: an interrupted benchmark resumes where it stopped
    from sb3_vlm.experiments.runner import run_jobs

    def describe(r: dict[str, Any]) -> str:
        reached = r["steps_to_threshold"] if r["steps_to_threshold"] is not None else "never"
        return (
            f"{r['task']} {r['algo']} {r['label']} seed {r['seed']}: {THRESHOLD} at {reached}, "
            f"final success {r['final_success']:.2f}"
        )

    runs = run_jobs(jobs, _worker, _job_key, out / "runs.jsonl", args.workers, args.report_only, describe)
    args.tasks = [t for t in args.tasks if any(r["task"] == t for r in runs)]

    from sb3_vlm.experiments.plotting import plot_panels

    for task in args.tasks:
        task_runs = sorted((r for r in runs if r["task"] == task), key=lambda r: (r["algo"], r["label"], r["seed"]))
        (out / f"{task}.json").write_text(json.dumps(task_runs, indent=1))
        panels: dict[str, dict[str, list[tuple[list[int], list[float]]]]] = {}
        for r in task_runs:
            panels.setdefault(r["algo"].upper(), {}).setdefault(r["label"], []).append(
                (r["curve_steps"], r["curve_returns"])
            )
        plot_panels(
            panels, out / f"{task}.png", suptitle=f"{TASKS[task][0]} ({len(args.seeds)} seeds)", threshold=THRESHOLD
        )
    rows = summarise(runs)
    meta = dict(args=vars(args), threshold=THRESHOLD, runs=len(runs), tasks=TASKS)
    (out / "summary.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    (out / "summary.md").write_text(_markdown(rows))
    print(_markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
