"""The ``sb3-vlm`` command."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _demo(args: argparse.Namespace) -> int:
    import torch as th
    from rich.console import Console
    from rich.table import Table

    from sb3_vlm.experiments.minigrid import run
    from sb3_vlm.experiments.plotting import plot_learning_curves

    th.set_num_threads(1)  # small MLPs: one thread is fastest and leaves a core for the envs
    console = Console(width=max(Console().width, 130))  # keep the table on one line per run in CI logs
    console.print(
        f"[bold]sb3-vlm demo[/bold]: PPO vs GuidedPPO on {args.env}, teacher = MiniGrid oracle made "
        f"{args.reliability:.0%} reliable, {args.steps:,} env steps each, seed {args.seed}. No API key needed."
    )
    results = []
    for guided in (False, True):
        label = "GuidedPPO" if guided else "PPO"
        console.print(f"\n[bold]{label}[/bold]")
        results.append(
            run(
                "ppo",
                args.env,
                guided,
                args.seed,
                args.steps,
                reliability=args.reliability,
                teacher_coef=args.teacher_coef,
                threshold=args.threshold,
                progress_bar=not args.no_progress,
            )
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = Table(title=f"{args.env}: {args.steps:,} steps, seed {args.seed}")
    for col in (
        "algorithm",
        "final success",
        "final return",
        f"steps to mean return {args.threshold}",
        "advisor queries",
        "cache hits",
        "wall time (s)",
    ):
        table.add_column(col, justify="right")
    for r in results:
        reached = f"{r.steps_to_threshold:,}" if r.steps_to_threshold is not None else f"> {args.steps:,}"
        table.add_row(
            "GuidedPPO" if r.guided else "PPO",
            f"{r.final_success:.2f}",
            f"{r.final_return:.3f}",
            reached,
            f"{r.advisor_queries:,}" if r.guided else "-",
            f"{r.cache_hits:,}" if r.guided else "-",
            f"{r.wall_time:.0f}",
        )
    console.print(table)
    png = out / "demo_learning_curves.png"
    plot_learning_curves(
        {("GuidedPPO" if r.guided else "PPO"): [(r.curve_steps, r.curve_returns)] for r in results},
        png,
        title=f"{args.env}, teacher {args.reliability:.0%} reliable",
        threshold=args.threshold,
    )
    (out / "demo_results.json").write_text(json.dumps([r.as_dict() for r in results], indent=1))
    console.print(f"Learning curves: {png}\nRaw results: {out / 'demo_results.json'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sb3-vlm", description="Train SB3 policies with advice from VLMs.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="quick MiniGrid experiment: PPO vs GuidedPPO with an 80%%-reliable scripted teacher (no API key)",
        description="Train PPO and GuidedPPO on a MiniGrid task, print a comparison table and save learning curves.",
    )
    demo.add_argument("--env", default="MiniGrid-LavaGapS7-v0", help="MiniGrid env id (default: %(default)s)")
    demo.add_argument("--steps", type=int, default=100_000, help="env steps per algorithm (default: %(default)s)")
    demo.add_argument("--reliability", type=float, default=0.8, help="teacher reliability (default: %(default)s)")
    demo.add_argument("--teacher-coef", type=float, default=0.05, help="λ of the KL term (default: %(default)s)")
    demo.add_argument("--threshold", type=float, default=0.9, help="mean return target (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    demo.add_argument("--out", default="demo_out", help="output folder for the PNG and JSON (default: %(default)s)")
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
