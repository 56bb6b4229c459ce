"""Pixel control: SB3's CnnPolicy SAC, the DrQ-style pixel SAC without guidance, and guided at r0.8 / adversarial.

Variants (``algo`` in the JSON):

- ``sac_cnn``: SB3 ``SAC("CnnPolicy")`` with its defaults (a reference; one seed is enough);
- ``sac``: ``GuidedSAC("DrQPolicy", augmentation="shift")``: advisor ``none`` is the pixel SAC without guidance
  (``method="sac"``), ``r0.8`` / ``adversarial`` the default guided method with the suite's teachers.

Envs: ``PixelPendulum`` (64×64×9 frames; the swing-up oracle reads the state), ``CarRacing`` (the pursuit
advisor), and the DMControl tasks ``cartpole-swingup``, ``reacher-easy``, ``finger-spin``, ``ball_in_cup-catch``
(the papers' action repeats; no teacher yet, so unguided runs only). Base SAC arguments: SB3's defaults, 1000
warm-up steps, a 100k buffer (``sb3_vlm/experiments/suite.py``). Each run is evaluated every 1000 steps on 5
deterministic episodes.

Resumable at run granularity (a finished run is appended to ``<out>/runs.jsonl`` and skipped on a restart; a run
cut short starts again). Writes ``<out>/summary.json`` (the suite's record shape, plus ``env_steps_per_s`` per
run), a PNG per env and ``table.md``. The device is SB3's ``"auto"`` (a GPU when there is one).

Usage::

    python benchmarks/pixels.py --envs PixelPendulum --seeds 0 1 2          # hours per run on a 2-core CPU
    python benchmarks/pixels.py --quick                                     # CI smoke: tiny runs
    python benchmarks/pixels.py --report-only
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from sb3_vlm.experiments.plotting import plot_panels
from sb3_vlm.experiments.suite import EXTRA_ENVS, UNGUIDED, markdown_table, run_sweep

ROOT = Path(__file__).resolve().parent.parent
ENVS = ["PixelPendulum", "CarRacing", "cartpole-swingup", "reacher-easy", "finger-spin", "ball_in_cup-catch"]
#: tasks with a scripted teacher (guided runs); the others run unguided only
GUIDED_ENVS = {"PixelPendulum", "CarRacing"}
ADVISORS = [UNGUIDED, "r0.8", "adversarial"]
#: the pixel SAC's options, for the guided and the unguided run alike
DRQ: dict[str, Any] = dict(policy="DrQPolicy", model_kwargs=dict(augmentation="shift"))


def _jobs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Seeds outermost (an interrupted sweep has every variant at some seeds); SB3's CnnPolicy at the first seed."""
    jobs: list[dict[str, Any]] = []
    small = dict(learning_starts=50, batch_size=16, buffer_size=500) if args.quick else {}
    for seed in args.seeds:
        for name in args.envs:
            base = dict(env=name, seed=seed, steps=args.steps or EXTRA_ENVS[name].budget)
            if small:
                base.update(sac_kwargs=small, eval_every=40, eval_episodes=1)
            if seed == args.seeds[0]:
                jobs.append(dict(base, algo="sac_cnn", advisor=UNGUIDED, policy="CnnPolicy"))
            for advisor in args.advisors:
                if advisor == UNGUIDED or name in GUIDED_ENVS:
                    jobs.append(dict(base, algo="sac", advisor=advisor, **DRQ))
    return jobs


def _describe(r: dict[str, Any]) -> str:
    return (
        f"{r['algo']} {r['env']} {r['advisor']} seed {r['seed']}: final eval {r['eval_return']:.4g} "
        f"({r['wall_time']:.0f}s, {r['steps'] / max(r['wall_time'], 1e-9):.1f} env steps/s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=ENVS, choices=ENVS)
    parser.add_argument("--advisors", nargs="+", default=ADVISORS, choices=ADVISORS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None, help="override every env's budget")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="CI smoke: tiny runs on PixelPendulum, one seed")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "pixels")
    parser.add_argument("--report-only", action="store_true", help="run nothing; rebuild the outputs from the log")
    args = parser.parse_args()
    if args.quick:
        args.envs, args.seeds, args.steps = ["PixelPendulum"], args.seeds[:1], args.steps or 120
        args.advisors = [UNGUIDED, "adversarial"]
    runs, summary = run_sweep(_jobs(args), args.out, args.workers, args.report_only, _describe)
    speeds = {(r["algo"], r["env"], r["advisor"], r["seed"]): r["steps"] / max(r["wall_time"], 1e-9) for r in runs}
    for record in summary:
        record["env_steps_per_s"] = [
            speeds[(record["algo"], record["env"], record["advisor"], s)] for s in record["seeds"]
        ]
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    for name in sorted({r["env"] for r in runs}):
        panels: dict[str, dict[str, list[tuple[list[int], list[float]]]]] = {}
        for r in runs:
            if r["env"] == name:
                panels.setdefault(r["algo"], {}).setdefault(r["advisor"], []).append(
                    (r["curve_steps"], r["curve_returns"])
                )
        plot_panels(panels, args.out / f"{name}.png", suptitle=f"{name} from pixels", ylabel="evaluation return")
    table = markdown_table(summary)
    (args.out / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
