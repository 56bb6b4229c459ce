"""GuidedSAC benchmark: SAC vs each guidance method on Pendulum-v1 with scripted advisors.

Advisors: the swing-up oracle (reliability 1.0), the oracle made 50 % reliable (``NoisyAdvisor``, uniform wrong
actions), and ERPv's "worst model" (always 0). Each (method, advisor, seed) is a GuidedSAC run of ``--steps`` env steps
evaluated every ``--eval-every`` steps (deterministic, plain Pendulum). ERPv / RSF first pre-train their advice
critic C_V by Random Alternating Exploration for ``--critic-steps`` (reported, not counted in the curve). VARL's
cutoff N_s is 30 % of the run (VARL: 30k of 100k). ``erpv`` uses GuidedSAC's default advantage gate (C_V judging
both actions), ``erpv_minmax`` the paper's joint min-max gate, ``erpv_cv`` the min-max gate with
``vpg_reference="advice"`` (Q_r from C_V instead of the untrained RL critic). Writes under ``--out``: ``runs.jsonl``
(resumable), ``runs.json``, ``pendulum.png`` (one panel per advisor), ``summary.json`` / ``summary.md`` (steps to
mean return -200, final return, and the two ERPv targets: faster than SAC with the oracle; within 10 % of SAC with
the worst model).

Usage::

    python benchmarks/sac_guidance.py            # the full run (3 seeds; about an hour on 2 CPU cores)
    python benchmarks/sac_guidance.py --quick    # CI smoke: seed 0, erpv + varl + sac, oracle, a few hundred steps
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

METHODS = ["erpv", "varl", "covr", "apl", "rsf", "erpv_minmax", "erpv_cv"]


def _key(job: dict[str, Any]) -> tuple[Any, ...]:
    advisor = job["advisor"] if job["method"] != "sac" else "-"
    return (job["method"], advisor, job["seed"], job["steps"])


def _worker(job: dict[str, Any]) -> dict[str, Any]:
    import torch as th

    from sb3_vlm.experiments.pendulum import run

    th.set_num_threads(1)
    return run(
        job["method"],
        job["advisor"],
        job["seed"],
        job["steps"],
        eval_every=job["eval_every"],
        eval_episodes=job["eval_episodes"],
        critic_steps=job["critic_steps"],
    )


def summarise(runs: list[dict[str, Any]], threshold: float) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        groups[(r["method"], r["advisor"] if r["method"] != "sac" else "-")].append(r)
    sac = groups.get(("sac", "-"), [])
    sac_steps = {r["seed"]: r["steps_to_threshold"] or r["steps"] for r in sac}
    sac_final = float(np.mean([r["final_return"] for r in sac])) if sac else float("nan")
    rows = []
    for (method, advisor), rs in sorted(groups.items()):
        steps = [r["steps_to_threshold"] or r["steps"] for r in rs]  # never reached: the budget (censored)
        final = float(np.mean([r["final_return"] for r in rs]))
        row = dict(
            method=method,
            advisor=advisor,
            seeds=len(rs),
            reached=sum(r["steps_to_threshold"] is not None for r in rs),
            steps_to_threshold_mean=float(np.mean(steps)),
            steps_to_threshold_std=float(np.std(steps)),
            steps_per_seed={r["seed"]: r["steps_to_threshold"] for r in rs},
            final_return_mean=final,
            final_return_std=float(np.std([r["final_return"] for r in rs])),
            final_ent_coef_mean=float(np.mean([r["final_ent_coef"] for r in rs])),
            critic_steps=rs[0]["critic_steps"],
            wall_time_mean=float(np.mean([r["wall_time"] for r in rs])),
        )
        if method != "sac" and sac:
            row["faster_than_sac"] = bool(np.mean(steps) < np.mean(list(sac_steps.values())))
            # "within 10 %" of a negative return: at most 10 % of |SAC's final return| worse
            row["final_within_10pct_of_sac"] = bool(final >= sac_final - 0.1 * abs(sac_final))
        rows.append(row)
    return rows


def _markdown(rows: list[dict[str, Any]], threshold: float) -> str:
    lines = [
        f"| method | advisor | seeds reaching {threshold:g} | steps to {threshold:g} (mean ± std) | per seed "
        "| final return | vs SAC: faster / final within 10 % | final α | C_V steps |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        vs = ""
        if "faster_than_sac" in r:
            vs = f"{'yes' if r['faster_than_sac'] else 'no'} / {'yes' if r['final_within_10pct_of_sac'] else 'no'}"
        per_seed = " / ".join("never" if v is None else f"{v:,}" for v in r["steps_per_seed"].values())
        lines.append(
            f"| {r['method']} | {r['advisor']} | {r['reached']}/{r['seeds']} "
            f"| {r['steps_to_threshold_mean']:,.0f} ± {r['steps_to_threshold_std']:,.0f} | {per_seed} "
            f"| {r['final_return_mean']:.0f} ± {r['final_return_std']:.0f} | {vs} | {r['final_ent_coef_mean']:.3f} "
            f"| {r['critic_steps']:,} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from sb3_vlm.experiments.pendulum import ADVISORS, THRESHOLD

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--advisors", nargs="+", default=list(ADVISORS), choices=list(ADVISORS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--critic-steps", type=int, default=3_000)
    parser.add_argument("--eval-every", type=int, default=1_000)
    parser.add_argument("--eval-episodes", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/sac_guidance")
    parser.add_argument("--quick", action="store_true", help="CI smoke: seed 0, sac + erpv + varl, oracle, 600 steps")
    parser.add_argument("--report-only", action="store_true", help="summarise the runs already in runs.jsonl")
    args = parser.parse_args(argv)
    if args.quick:
        args.methods, args.advisors, args.seeds = ["erpv", "varl"], ["oracle"], [0]
        args.steps, args.critic_steps, args.eval_every, args.eval_episodes = 600, 300, 300, 1

    common = dict(
        steps=args.steps, eval_every=args.eval_every, eval_episodes=args.eval_episodes, critic_steps=args.critic_steps
    )
    jobs = [dict(common, method="sac", advisor="oracle", seed=s) for s in args.seeds]
    jobs += [dict(common, method=m, advisor=a, seed=s) for s in args.seeds for m in args.methods for a in args.advisors]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from sb3_vlm.experiments.runner import run_jobs

    def describe(r: dict[str, Any]) -> str:
        return (
            f"{r['method']} {r['advisor']} seed {r['seed']}: {THRESHOLD:g} at {r['steps_to_threshold']}, "
            f"final {r['final_return']:.0f} ({r['wall_time']:.0f}s)"
        )

    runs = run_jobs(jobs, _worker, _key, out / "runs.jsonl", args.workers, args.report_only, describe)
    runs.sort(key=lambda r: (r["method"], r["advisor"], r["seed"]))
    (out / "runs.json").write_text(json.dumps(runs, indent=1))

    from sb3_vlm.experiments.plotting import plot_panels

    advisors = sorted({r["advisor"] for r in runs if r["method"] != "sac"})
    panels: dict[str, dict[str, list[tuple[list[int], list[float]]]]] = {}
    for advisor in advisors:
        panel = panels.setdefault(f"advisor: {advisor}", {})
        for r in runs:
            if r["method"] == "sac" or r["advisor"] == advisor:
                panel.setdefault(r["method"], []).append((r["curve_steps"], r["curve_returns"]))
    plot_panels(
        panels,
        out / "pendulum.png",
        suptitle=f"GuidedSAC on Pendulum-v1 ({len(args.seeds)} seeds)",
        ylabel="mean evaluation return",
        threshold=THRESHOLD,
    )
    rows = summarise(runs, THRESHOLD)
    (out / "summary.json").write_text(json.dumps(dict(meta=dict(args=vars(args)), rows=rows), indent=1))
    (out / "summary.md").write_text(_markdown(rows, THRESHOLD))
    print(_markdown(rows, THRESHOLD))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
