"""The papers' protocol on the papers' environments, from a config in ``benchmarks/configs/``.

Each config fixes the envs, the guided algorithm with the paper's hyperparameters, the advisor, 100k steps, 3 seeds
and the number of evaluation episodes (ERPv table 6, COVR tables 7-8, LVLM2P §IV). The full runs need a GPU machine
(a 7B VLM advisor; CARLA needs a server); ``--quick`` applies the config's ``quick:`` section, a CPU smoke with a
scripted or constant advisor that CI runs.

Writes ``runs.jsonl`` (one row per env × seed; an interrupted sweep resumes), ``summary.json``, ``summary.md`` and
``<env>.png`` (evaluation return vs steps, mean ± std over seeds) under ``--out``.

Usage::

    python benchmarks/paper_protocol.py benchmarks/configs/erpv_dmc.yml               # the full protocol
    python benchmarks/paper_protocol.py benchmarks/configs/erpv_dmc.yml --quick       # CPU smoke
    python benchmarks/paper_protocol.py benchmarks/configs/lvlm2p_minigrid.yml --advisor oracle --envs minigrid-fetch
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_env: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_env[row["env"]].append(row)
    return [
        dict(
            env=env,
            seeds=len(runs),
            steps=runs[0]["steps"],
            final_mean=float(np.mean([r["final_mean"] for r in runs])),
            final_std_over_seeds=float(np.std([r["final_mean"] for r in runs])),
            advisor=runs[0]["advisor"],
        )
        for env, runs in by_env.items()
    ]


def plot(rows: list[dict[str, Any]], out: Path) -> None:
    from sb3_vlm.experiments.plotting import plot_learning_curves

    by_env: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_env[row["env"]].append(row)
    for env, runs in by_env.items():
        curves = {env: [(r["curve_steps"], r["curve_mean"]) for r in runs if r["curve_steps"]]}
        plot_learning_curves(curves, out / f"{env}.png", title=f"{env} ({len(runs)} seeds)", ylabel="evaluation return")


def main(argv: list[str] | None = None) -> int:
    from sb3_vlm.experiments.protocol import load_config, run_config

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="a YAML file in benchmarks/configs/")
    parser.add_argument("--quick", action="store_true", help="the config's CPU smoke settings")
    parser.add_argument("--envs", nargs="+", help="only these envs of the config")
    parser.add_argument("--seeds", nargs="+", type=int, help="override the config's seeds")
    parser.add_argument("--steps", type=int, help="override total_timesteps")
    parser.add_argument("--advisor", help="override the advisor spec (e.g. oracle, constant:0, openai:gpt-4o-mini)")
    parser.add_argument("--out", help="default: benchmarks/results/<config name>[_quick]")
    args = parser.parse_args(argv)
    config = load_config(args.config, quick=args.quick)
    if args.seeds:
        config["seeds"] = args.seeds
    if args.steps:
        config["total_timesteps"] = config["eval_every"] = args.steps
    if args.advisor:
        config["advisor"], config["advisor_kwargs"] = args.advisor, {}
    out = Path(args.out or f"benchmarks/results/{config['name']}{'_quick' if args.quick else ''}")
    rows = run_config(config, out, envs=args.envs)
    summary = summarise(rows)
    (out / "summary.json").write_text(json.dumps(dict(config=config, rows=summary), indent=2, default=str))
    lines = [
        f"{config.get('paper', config['name'])}",
        "",
        "| env | seeds | steps | final evaluation return (mean ± std over seeds) | advisor |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['env']} | {r['seeds']} | {r['steps']} | {r['final_mean']:.1f} ± {r['final_std_over_seeds']:.1f} "
        f"| {r['advisor']} |"
        for r in summary
    ]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    plot(rows, out)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
