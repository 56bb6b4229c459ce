"""Query budget: how many teacher queries each selection policy sends, and how much of the guided speed-up it keeps.

Each policy of :mod:`sb3_vlm.wrappers.selection` (by its spec, see ``SELECTOR_SPEC_HELP``) against ``every`` (every
distinct view: the cache sends each one once), with the suite's reliability-0.8 teacher and the guided algorithm's
defaults, on LavaGapS7, DoorKey-8x8, GoToDoor-8x8 (GuidedPPO) and Pendulum (GuidedSAC); ``none`` is the unguided
run the speed-up is measured against (steps to the suite's threshold). Resumable: every finished run is appended to
``<out>/runs.jsonl``. Writes ``<out>/summary.json`` (one record per (env, policy):
``{"env", "policy", "seeds", "queries": [...], "steps_to_threshold": [...], "final_return": [...], "threshold",
"censored", "speedup", "speedup_kept", "query_ratio"}``: ``speedup_kept`` is the policy's speed-up over the
``every`` run's, ``query_ratio`` the ``every`` run's queries over the policy's) and ``<out>/query_budget.png``
(speed-up kept against queries, per env).

Usage::

    python benchmarks/query_budget.py                      # the sweep (hours on 2 cores; resumable)
    python benchmarks/query_budget.py --quick              # CI smoke
    python benchmarks/query_budget.py --envs LavaGapS7 --policies every uncertainty:0.5 --seeds 0 1 2
    python benchmarks/query_budget.py --report-only --readme   # rebuild summary.json, the PNG and the README table
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from sb3_vlm.experiments.runner import run_jobs, write_readme_block
from sb3_vlm.experiments.suite import UNGUIDED, censored_steps, env_spec, job_key, run_one, threshold_for
from sb3_vlm.wrappers.selection import selector_from_spec

ROOT = Path(__file__).resolve().parent.parent
ENV_NAMES = ("LavaGapS7", "DoorKey-8x8", "GoToDoor-8x8", "Pendulum")
EVERY = "every"
#: the policies measured by default: the learner's uncertainty, views seen 10 or 20 times, and a budget of 150 views
#: (under a fifth of LavaGap's ~1,000 distinct views in 100k steps) spread over the first half of the run (where
#: GuidedPPO still weights the teacher); views the cache knows are advised free under each of them. Measured on
#: seed 0 only: ``familiar:3``, ``paced:150`` (the budget over the whole run) and ``familiar:3+paced:150``
POLICIES = (EVERY, "uncertainty:0.5", "familiar:10", "familiar:20", "paced:150:0.5")


def _jobs(args: argparse.Namespace) -> list[dict[str, Any]]:
    jobs = []
    for seed in args.seeds:
        for name in args.envs:
            env = env_spec(name)
            steps = args.steps or (1024 if args.quick else env.budget)
            algo = env.algos[0]
            for policy in (UNGUIDED, *args.policies):
                job: dict[str, Any] = dict(algo=algo, env=name, seed=seed, steps=steps)
                if policy == UNGUIDED:
                    job["advisor"] = UNGUIDED
                else:
                    selector_from_spec(policy)  # a bad spec fails here, not in a worker
                    job.update(advisor="r0.8", query=policy)
                if args.quick:
                    job["eval_episodes"] = 2
                jobs.append(job)
    return jobs


def _describe(r: dict[str, Any]) -> str:
    policy = r.get("query") or UNGUIDED
    return f"{r['env']} {policy} seed {r['seed']}: {r.get('queries', 0)} queries, final {r['eval_return']:.3g}"


def _final(run: dict[str, Any]) -> float:
    returns = run["curve_returns"]
    return float(np.mean(returns[-3:])) if returns else float("nan")


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per (env, policy); the threshold is the suite's, from the unguided runs of the same seeds."""
    records: list[dict[str, Any]] = []
    for name in sorted({r["env"] for r in runs}):
        env = env_spec(name)
        unguided = [r for r in runs if r["env"] == name and r["advisor"] == UNGUIDED]
        groups: dict[str, list[dict[str, Any]]] = {}
        for r in runs:
            if r["env"] == name and r.get("query"):
                groups.setdefault(r["query"], []).append(r)
        if not unguided or not groups:
            continue
        best = max(float(np.mean([_final(r) for r in g])) for g in groups.values())
        threshold = threshold_for(float(np.mean([_final(r) for r in unguided])), env.random_return, best)

        u_steps, _ = censored_steps(unguided, threshold)
        per_policy = {}
        for policy, group in sorted(groups.items()):
            group = sorted(group, key=lambda r: r["seed"])
            g_steps, censored = censored_steps(group, threshold)
            per_policy[policy] = dict(
                env=name,
                policy=policy,
                seeds=[r["seed"] for r in group],
                queries=[int(r.get("queries", 0)) for r in group],
                steps_to_threshold=g_steps,
                censored=censored,
                final_return=[r["eval_return"] for r in group],
                threshold=threshold,
                unguided_steps_to_threshold=u_steps,
                speedup=float(np.mean(u_steps)) / max(float(np.mean(g_steps)), 1.0),
            )
        every = per_policy.get(EVERY)
        for record in per_policy.values():
            if every is not None:
                record["speedup_kept"] = record["speedup"] / every["speedup"] if every["speedup"] else float("nan")
                queries = float(np.mean(record["queries"])) or 1.0
                record["query_ratio"] = float(np.mean(every["queries"])) / queries
            records.append(record)
    return records


def markdown_table(records: list[dict[str, Any]]) -> str:
    """The README's table: one row per (env, policy), means over seeds."""
    lines = [
        "| env | policy | seeds | queries | × fewer than `every` | steps to threshold | speed-up over unguided "
        "| speed-up kept | final return |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        censored = sum(r["censored"])
        steps = f"{np.mean(r['steps_to_threshold']):,.0f}" + (f" ({censored} censored)" if censored else "")
        lines.append(
            f"| {r['env']} | `{r['policy']}` | {len(r['seeds'])} | {np.mean(r['queries']):,.0f} "
            f"| {r.get('query_ratio', float('nan')):.1f} | {steps} | {r['speedup']:.2f} "
            f"| {r.get('speedup_kept', float('nan')):.2f} | {np.mean(r['final_return']):.3g} |"
        )
    return "\n".join(lines)


def _plot(records: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = sorted({r["env"] for r in records})
    if not envs:
        return
    fig, axes = plt.subplots(1, len(envs), figsize=(5 * len(envs), 4), squeeze=False)
    for ax, name in zip(axes[0], envs, strict=True):
        for r in (r for r in records if r["env"] == name):
            ax.scatter(np.mean(r["queries"]), r["speedup"], label=r["policy"])
        ax.set_xscale("symlog")
        ax.set_xlabel("teacher queries (mean over seeds)")
        ax.set_ylabel("speed-up over unguided (steps to threshold)")
        ax.set_title(name)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=list(ENV_NAMES))
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), help="selector specs ('every' included)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None, help="override every env's budget")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="CI smoke: tiny runs, one seed, LavaGap and Pendulum")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "query_budget")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--readme", action="store_true", help="write the table into README.md")
    args = parser.parse_args()
    if args.quick:
        args.envs = [e for e in ("LavaGapS7", "Pendulum") if e in args.envs] or args.envs[:1]
        args.seeds = args.seeds[:1]
        args.policies = [EVERY, "uncertainty:0.5+paced:20"]
    for name in args.envs:
        env_spec(name)  # an unknown env fails before anything runs
    args.out.mkdir(parents=True, exist_ok=True)
    runs = run_jobs(_jobs(args), run_one, job_key, args.out / "runs.jsonl", workers=args.workers,
                    report_only=args.report_only, describe=_describe)  # fmt: skip
    records = summarise(runs)
    (args.out / "summary.json").write_text(json.dumps(records, indent=1) + "\n")
    _plot(records, args.out / "query_budget.png")
    if args.readme:
        write_readme_block(ROOT / "README.md", "query-budget-table", markdown_table(records))
    for r in records:
        kept = f"{r.get('speedup_kept', float('nan')):.2f}"
        print(f"{r['env']:>14} {r['policy']:>28}: queries {np.mean(r['queries']):8.0f}, speed-up {r['speedup']:.2f}×,"
              f" kept {kept}, {r.get('query_ratio', float('nan')):.1f}× fewer queries")  # fmt: skip


if __name__ == "__main__":
    main()
