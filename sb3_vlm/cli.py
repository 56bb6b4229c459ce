"""The ``sb3-vlm`` command."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


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


def _advise(args: argparse.Namespace) -> int:
    from rich.console import Console

    from sb3_vlm.advisors.factory import advisor_from_spec
    from sb3_vlm.advisors.prompts import BUILTIN_PROMPTS, MINIGRID_PROMPT, PENDULUM_PROMPT

    console = Console()
    oracle: Any
    if args.env.startswith("MiniGrid"):
        from sb3_vlm.envs.minigrid import MiniGridOracle, make_minigrid_env

        env: Any = make_minigrid_env(args.env)
        prompt, oracle = MINIGRID_PROMPT, MiniGridOracle()
    elif args.env.startswith("Pendulum"):
        from sb3_vlm.envs.pendulum import PendulumSwingUpOracle, make_pendulum_env

        env, prompt, oracle = make_pendulum_env(render_image=True), PENDULUM_PROMPT, PendulumSwingUpOracle()
    else:
        console.print(f"[red]sb3-vlm advise knows MiniGrid-* and Pendulum-v1 envs, not {args.env}[/red]")
        return 2
    if args.prompt is not None:
        prompt = BUILTIN_PROMPTS[args.prompt]
    kwargs: dict[str, Any] = {}
    if args.base_url:
        kwargs["base_url"] = args.base_url
    advisor = advisor_from_spec(args.advisor, prompt, oracle=oracle, **kwargs)
    env.reset(seed=args.seed)
    for _ in range(args.steps):
        env.step(env.action_space.sample())
    request = env.get_wrapper_attr("teacher_request")()
    request.action_space = env.action_space
    system, user = prompt.render(request)
    console.rule(f"prompt {prompt.identity}")
    console.print(f"[bold]system:[/bold] {system}\n[bold]user:[/bold] {user}", markup=False, highlight=False)
    if request.image is not None:
        console.print(f"[image {request.image.shape[1]}x{request.image.shape[0]} attached]")
        if args.save_image:
            from PIL import Image

            Image.fromarray(request.image).save(args.save_image)
            console.print(f"image saved to {args.save_image}")
    advice = advisor.advise([request])[0]
    console.rule(f"answer from {advisor!r}")
    console.print(advice.raw or "(no text: scripted advisor or log-prob scoring)", markup=False, highlight=False)
    console.rule("parsed advice")
    console.print(
        json.dumps({k: v for k, v in advice.to_dict().items() if k != "raw"}, indent=1), markup=False, highlight=False
    )
    extra = {
        k: getattr(advisor, k) for k in ("tokens", "retries", "parse_failures", "http_errors") if hasattr(advisor, k)
    }
    console.print(f"stats: {advisor.stats.as_dict()} {extra}")
    return 0 if advice.valid else 1


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

    from sb3_vlm.advisors.factory import SPEC_HELP

    advise = sub.add_parser(
        "advise",
        help="show the rendered prompt, the raw answer and the parsed advice for one observation (prompt debugging)",
        description="Ask an advisor about one observation of an env and show every stage. Exit code 1 if the answer "
        "could not be used. Keys come from OPENAI_API_KEY / GEMINI_API_KEY.",
    )
    advise.add_argument(
        "--env", default="MiniGrid-LavaGapS7-v0", help="MiniGrid-* or Pendulum-v1 (default: %(default)s)"
    )
    advise.add_argument("--advisor", default="oracle", help=f"{SPEC_HELP} (default: %(default)s)")
    advise.add_argument("--base-url", default=None, help="OpenAI-compatible server, e.g. http://localhost:8000/v1")
    advise.add_argument("--prompt", default=None, help="a built-in prompt name (default: the env's)")
    advise.add_argument("--seed", type=int, default=0, help="env seed (default: %(default)s)")
    advise.add_argument("--steps", type=int, default=0, help="random steps before asking (default: %(default)s)")
    advise.add_argument("--save-image", default=None, help="save the teacher's image to this PNG")
    advise.set_defaults(func=_advise)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
