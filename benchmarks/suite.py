"""Robust-guidance suite: each guided algorithm with its defaults, on every env, against good and bad teachers.

One configuration per algorithm for every env (no guidance argument is passed; the base RL hyperparameters are the
same for the guided and the unguided run). See ``sb3_vlm/experiments/suite.py`` for the envs and the teachers.
Resumable: every finished run is appended to ``<out>/runs.jsonl`` and skipped on a restart. Writes, under ``--out``:

- ``summary.json``: one record per (algo, env, advisor): ``steps_to_threshold`` / ``final_return`` per seed and the
  unguided counterparts, the threshold, censoring flags (a run that never reaches the threshold counts as its
  budget), ``speedup`` (mean unguided steps / mean guided steps) and ``final_ratio``;
- ``<env>.png``: mean ± std learning curves per advisor, one panel per algorithm;
- ``table.md``: the README table (``--readme`` also rewrites it in README.md between its markers).

Usage::

    python benchmarks/suite.py                                   # the full sweep (many hours on 2 cores; resumable)
    python benchmarks/suite.py --quick                           # CI smoke: one tiny run per family
    python benchmarks/suite.py --envs LavaGapS7 --algos ppo --seeds 0 1 2 --advisors none r0.8 adversarial
    python benchmarks/suite.py --report-only --readme            # rebuild summary, plots and table from runs.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from sb3_vlm.experiments.plotting import plot_panels
from sb3_vlm.experiments.runner import write_readme_block
from sb3_vlm.experiments.suite import ADVISORS, ENVS, UNGUIDED, markdown_table, run_sweep

ROOT = Path(__file__).resolve().parent.parent


def _jobs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Seeds outermost, so an interrupted sweep has every (env, advisor) pair at some seeds, not some at all."""
    jobs = []
    for seed in args.seeds:
        for name in args.envs:
            env = ENVS[name]
            steps = args.steps or (4096 if args.quick else env.budget)
            for algo in env.algos:
                if args.algos and algo not in args.algos:
                    continue
                for advisor in args.advisors:
                    job: dict[str, Any] = dict(algo=algo, env=name, advisor=advisor, seed=seed, steps=steps)
                    if args.guided_kwargs and advisor != UNGUIDED:
                        job["guided_kwargs"] = json.loads(args.guided_kwargs)
                    if args.quick:
                        job["eval_episodes"] = 3
                    jobs.append(job)
    return jobs


def _describe(r: dict[str, Any]) -> str:
    return (
        f"{r['algo']} {r['env']} {r['advisor']} seed {r['seed']}: final eval {r['eval_return']:.3g}"
        f" ({r['wall_time']:.0f}s)"
    )


def _plots(runs: list[dict[str, Any]], out: Path) -> None:
    for name in sorted({r["env"] for r in runs}):
        panels: dict[str, dict[str, list[tuple[list[int], list[float]]]]] = {}
        for r in sorted(runs, key=lambda r: (r["algo"], ADVISORS_ORDER.get(r["advisor"], 99))):
            if r["env"] != name:
                continue
            panels.setdefault(r["algo"], {}).setdefault(r["advisor"], []).append((r["curve_steps"], r["curve_returns"]))
        ylabel = "mean training return" if ENVS[name].family == "discrete" else "evaluation return"
        plot_panels(panels, out / f"{name}.png", suptitle=f"{name}: guided defaults vs unguided", ylabel=ylabel)


ADVISORS_ORDER = {a: i for i, a in enumerate((UNGUIDED, *ADVISORS))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=list(ENVS), choices=list(ENVS))
    parser.add_argument("--algos", nargs="+", default=None, help="subset of each env's algorithms")
    parser.add_argument("--advisors", nargs="+", default=[UNGUIDED, *ADVISORS], choices=[UNGUIDED, *ADVISORS])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None, help="override every env's budget")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="CI smoke: tiny runs, one seed, two envs")
    parser.add_argument("--guided-kwargs", default=None, help="JSON arguments of the guided algorithm (calibration)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "suite")
    parser.add_argument("--report-only", action="store_true", help="run nothing; rebuild the outputs from the log")
    parser.add_argument("--readme", action="store_true", help="write the table into README.md")
    args = parser.parse_args()
    if args.quick:
        args.envs = [e for e in ("LavaGapS7", "Pendulum") if e in args.envs] or args.envs[:1]
        args.seeds = args.seeds[:1]
        args.advisors = [a for a in args.advisors if a in (UNGUIDED, "adversarial")] or args.advisors[:1]

    runs, summary = run_sweep(_jobs(args), args.out, args.workers, args.report_only, _describe)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    _plots(runs, args.out)
    table = markdown_table(summary)
    (args.out / "table.md").write_text(table + "\n")
    print(table)
    if args.readme:
        write_readme_block(ROOT / "README.md", "suite-table", table)


if __name__ == "__main__":
    main()
