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
    advisor = None
    teacher = f"MiniGrid oracle made {args.reliability:.0%} reliable"
    if args.advisor is not None:
        from sb3_vlm.advisors.factory import advisor_from_spec
        from sb3_vlm.advisors.prompts import MINIGRID_PROMPT
        from sb3_vlm.envs.minigrid import MiniGridOracle

        try:
            advisor = advisor_from_spec(args.advisor, MINIGRID_PROMPT, oracle=MiniGridOracle())
        except (ValueError, ImportError, FileNotFoundError) as exc:
            console.print(f"[red]error:[/red] {exc}")
            return 2
        teacher = repr(advisor)
    console.print(
        f"[bold]sb3-vlm demo[/bold]: PPO vs GuidedPPO on {args.env}, teacher = {teacher}, {args.steps:,} env steps "
        f"each, seed {args.seed}."
        + ("" if args.advisor and args.advisor.split(":")[0] in ("openai", "gemini") else " No API key needed.")
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
                advisor=advisor,
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
        title=f"{args.env}, teacher {teacher}",
        threshold=args.threshold,
    )
    (out / "demo_results.json").write_text(json.dumps([r.as_dict() for r in results], indent=1))
    console.print(f"Learning curves: {png}\nRaw results: {out / 'demo_results.json'}")
    return 0


def _advise(args: argparse.Namespace) -> int:
    from rich.console import Console

    from sb3_vlm.advisors.factory import advisor_from_spec
    from sb3_vlm.advisors.prompts import BUILTIN_PROMPTS
    from sb3_vlm.experiments.runs import advisor_kwargs, make_env_bundle

    console = Console()
    try:
        bundle = make_env_bundle(args.env, **({"render_image": True} if args.env.startswith("Pendulum") else {}))
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]", markup=True)
        return 2
    env, prompt, oracle = bundle
    if prompt is None and args.prompt is None:
        console.print(f"[red]{args.env} has no default prompt: give --prompt[/red]")
        return 2
    if args.prompt is not None:
        prompt = BUILTIN_PROMPTS[args.prompt]
    try:
        kwargs = advisor_kwargs(args.advisor, args.base_url, args.api_key_env)
        advisor = advisor_from_spec(args.advisor, prompt, oracle=oracle, **kwargs)
    except (ValueError, ImportError) as exc:  # unknown spec, missing key or extra: one line, as `train` says it
        print(f"sb3-vlm advise: {exc}", file=sys.stderr)
        return 2
    from sb3_vlm.wrappers.advice import fit_teacher_view

    fit_teacher_view(env, advisor)  # the view training would show this advisor (issue 16)
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

            from sb3_vlm.advice import image_as_uint8

            Image.fromarray(image_as_uint8(request.image)).save(args.save_image)
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


def _label(args: argparse.Namespace) -> int:
    from sb3_vlm.advisors.batch import BatchLabeller, load_views, save_views
    from sb3_vlm.advisors.factory import advisor_from_spec
    from sb3_vlm.advisors.openai_compat import OpenAIAdvisor
    from sb3_vlm.advisors.prompts import BUILTIN_PROMPTS
    from sb3_vlm.experiments.runs import advisor_kwargs, make_env_bundle
    from sb3_vlm.wrappers.advice import fit_teacher_view

    def fail(message: str) -> int:
        print(f"sb3-vlm label: {message}", file=sys.stderr)
        return 2

    if not args.advisor.startswith("openai:"):
        return fail(
            f"the Batch API is an OpenAI-compatible server's: give --advisor openai:MODEL, not {args.advisor!r}"
        )
    try:
        env, prompt, _ = make_env_bundle(args.env)
        if args.prompt is not None:
            prompt = BUILTIN_PROMPTS[args.prompt]
        if prompt is None:
            return fail(f"{args.env} has no default prompt: give --prompt")
        advisor = advisor_from_spec(
            args.advisor, prompt, **advisor_kwargs(args.advisor, args.base_url, args.api_key_env)
        )
    except (ValueError, ImportError, KeyError) as exc:
        return fail(str(exc))
    assert isinstance(advisor, OpenAIAdvisor)
    views_path = Path(args.views)
    if args.collect:
        fit_teacher_view(env, advisor)  # the view training shows this advisor, so the keys are training's
        env.reset(seed=args.seed)
        env.action_space.seed(args.seed)
        views = []
        for _ in range(args.collect):
            request = env.get_wrapper_attr("teacher_request")()
            request.action_space = env.action_space
            views.append(request)
            if any(env.step(env.action_space.sample())[2:4]):
                env.reset()
        save_views(views_path, views)
        print(f"{len(views)} views of {args.env} (random play) saved to {views_path}")
    elif not views_path.exists():
        return fail(f"no views file {views_path} (write one with sb3_vlm.advisors.batch.save_views, or --collect N)")
    try:
        views = load_views(views_path, env.action_space)
        labeller = BatchLabeller(advisor, args.cache, poll_interval=args.poll, deadline=args.deadline)
    except (ValueError, TypeError, OSError) as exc:
        return fail(str(exc))
    report = labeller.label(views)
    print(json.dumps(report.as_dict(), indent=1))
    return 0 if not report.errors and report.failed == 0 else 1


ENV_HELP = "a suite name (see `sb3-vlm envs`), sb3_vlm/<name>-v0, any MiniGrid-* id, Pendulum-v1 or a Gymnasium id"


def _parse_hyperparams(items: list[str]) -> dict[str, Any]:
    """``key=value`` pairs; values are read as YAML (numbers, lists, dicts, strings)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--hyperparams / --env-kwargs take key=value pairs, got {item!r}")
        out[key] = yaml.safe_load(value)
    return out


#: `train` options that define a run: with --resume they come from the run's run.json
_RUN_OPTIONS = (
    "env",
    "algo",
    "advisor",
    "out",
    "n_envs",
    "query_every",
    "cache",
    "seed",
    "hyperparams",
    "env_kwargs",
    "tensorboard",
    "base_url",
    "api_key_env",
    "max_cost_usd",
    "advice_wait",
    "checkpoint_every",
)


def _dollars(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"a number of US dollars >= 0, got {text!r}")
    return value


def _seconds_or_auto(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"seconds >= 0 or 'auto', got {text!r}")
    return value


def _train(args: argparse.Namespace) -> int:
    import signal

    import torch as th

    from sb3_vlm.experiments.runs import RunInterrupted, RunSetupError, resume_run, train

    parser: argparse.ArgumentParser = args.parser
    th.set_num_threads(args.threads)
    try:
        if args.resume is not None:
            given = [f"--{k.replace('_', '-')}" for k in _RUN_OPTIONS if getattr(args, k) != parser.get_default(k)]
            if given:
                raise RunSetupError(
                    f"--resume takes the run's own arguments from its run.json; only --steps (a new total), "
                    f"--threads, --no-progress and --verbose may be given, not {', '.join(given)}"
                )
            run = resume_run(args.resume, steps=args.steps, progress_bar=not args.no_progress, verbose=args.verbose)
        else:
            if args.env is None:
                raise RunSetupError("give an env (see `sb3-vlm envs`), or --resume RUN_DIR")
            run = train(
                args.env,
                algo=args.algo,
                advisor=args.advisor,
                steps=args.steps,
                out=args.out,
                n_envs=args.n_envs,
                query_every=args.query_every,
                cache=args.cache,
                seed=args.seed,
                hyperparams=_parse_hyperparams(args.hyperparams),
                env_kwargs=_parse_hyperparams(args.env_kwargs),
                tensorboard=args.tensorboard,
                progress_bar=not args.no_progress,
                verbose=args.verbose,
                base_url=args.base_url,
                api_key_env=args.api_key_env,
                max_cost_usd=args.max_cost_usd,
                advice_wait=args.advice_wait,
                checkpoint_every=args.checkpoint_every,
            )
    except RunSetupError as exc:  # before anything was written: one line, no traceback (issue 16)
        print(f"sb3-vlm train: {exc}", file=sys.stderr)
        return 2
    except RunInterrupted as exc:
        kept = f"the last checkpoint, {exc.checkpoint}, is kept" if exc.checkpoint else "no checkpoint was saved"
        print(f"sb3-vlm train: stopped at once; {kept}", file=sys.stderr)
        return 128 + signal.SIGINT
    out = Path(args.resume or args.out)
    counters = run["advisor_counters"]
    advice = f", advisor queries {counters['advisor/queries']:.0f}" if counters else ""
    if counters.get("advisor/cost_usd"):
        advice += f" (${counters['advisor/cost_usd']:.4f}, {counters['advisor/tokens']:,.0f} tokens)"
    steps = f"{run['num_timesteps']:,} of {run['steps']:,} steps in {run['wall_s']:.0f} s{advice}"
    if run["advice_rows_missed"]:
        latency = run["advisor_mean_latency_s"]
        print(
            f"advice: {run['advice_rows_missed']:,} of {run['advice_rows']:,} rollout rows missed their answer "
            f"(VLM latency {latency:.2f} s, last wait {run['advice_wait_s']:.1f} s): raise --advice-wait, or ask "
            "less often (--query-every)"
        )
    if run["advice_pending_at_end"]:
        print(f"advice: {run['advice_pending_at_end']:,} requests were still pending at the end (not counted)")
    if run["status"] == "interrupted":
        print(
            f"stopped by {run['interrupted_by']}: saved {out / 'model.zip'} ({steps}) and "
            f"{run['checkpoint'] or 'no checkpoint (the save failed)'}; go on with: sb3-vlm train --resume {out}"
        )
        return 128 + int(signal.Signals[run["interrupted_by"]])
    print(f"saved {out / 'model.zip'} ({steps})")
    print(f"evaluate: sb3-vlm eval {out}    compare: sb3-vlm compare {out} OTHER_RUN --out curves.png")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from sb3_vlm.experiments.runs import evaluate

    result = evaluate(
        args.model, args.env, args.algo, episodes=args.episodes, seed=args.seed, deterministic=not args.stochastic
    )
    print(
        f"{result['algo']} on {result['env']}: mean return {result['mean_return']:.3f} ± {result['std_return']:.3f} "
        f"over {result['episodes']} episodes (mean length {result['mean_length']:.1f}), no advisor"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from sb3_vlm.experiments.plotting import plot_learning_curves
    from sb3_vlm.experiments.runs import group_runs, run_algo, run_curve

    try:  # one curve per label and algorithm: runs of different algorithms are never averaged (issue 16)
        groups = group_runs(args.runs, args.labels or None)
    except ValueError as exc:
        raise SystemExit(f"sb3-vlm compare: {exc}") from None
    curves: dict[str, list[tuple[Any, Any]]] = {
        label: [run_curve(run, window=args.window, tag=args.tag) for run in runs] for label, runs in groups.items()
    }
    plot_learning_curves(curves, args.out, title=args.title, ylabel=args.ylabel)
    for label, runs in curves.items():
        finals = [float(v[-1]) for _, v in runs]
        algos = sorted({run_algo(r) or "unknown" for r in groups[label]})
        print(
            f"{label}: {len(runs)} run(s) of {', '.join(algos)}, final {sum(finals) / len(finals):.3f} "
            "(last value of each curve)"
        )
    print(f"wrote {args.out}")
    return 0


def _cache(args: argparse.Namespace) -> int:
    import sqlite3

    from sb3_vlm.advisors.cache import AdviceCache, CacheUnavailable, NotACacheError, is_server_url

    server = is_server_url(args.path)
    if args.action in ("export", "import", "merge") and args.file is None:
        print(f"sb3-vlm cache {args.action}: give the JSON-lines file after the cache", file=sys.stderr)
        return 2
    if not server and not Path(args.path).is_file() and args.action not in ("import", "merge"):
        print(f"no cache at {args.path}")
        return 1
    try:
        if args.action == "export":
            rows = AdviceCache(args.path, read_only=not server).export_rows()
            with open(args.file, "w") as out:
                out.writelines(json.dumps(row) + "\n" for row in rows)
            print(f"exported {len(rows)} rows from {args.path} to {args.file}")
            return 0
        if args.action in ("import", "merge"):
            rows, unreadable = [], 0
            with open(args.file) as lines:
                for line in lines:
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        unreadable += 1
                        continue
                    if isinstance(row, dict):
                        rows.append(row)
                    else:
                        unreadable += 1
            counts = AdviceCache(args.path).import_rows(rows, overwrite=args.action == "import")
            counts["corrupt"] += unreadable
            print(f"{args.action}: {counts['written']} rows written into {args.path}, {counts['kept']} kept, "
                  f"{counts['corrupt']} corrupt rows skipped")  # fmt: skip
            return 0
        if args.action == "clear":
            cache = AdviceCache(args.path)
            n = len(cache)
            cache.clear()
            cache.vacuum()
            print(f"cleared {n} entries from {args.path}")
            return 0
        # stats only reads: opened read-only, so that it creates and changes nothing (issue 17)
        print(json.dumps(AdviceCache(args.path, read_only=not server).summary(), indent=1))
    except (NotACacheError, sqlite3.Error, CacheUnavailable, OSError) as exc:
        print(f"{args.path}: cannot read it as an advice cache: {exc}", file=sys.stderr)
        return 1
    return 0


def _envs(args: argparse.Namespace) -> int:
    from sb3_vlm.envs import gym_id, names

    for name in names():
        print(f"{name:28s} {gym_id(name)}")
    print("(also: any MiniGrid-* id, Pendulum-v1)")
    return 0


def _add_advisor_options(parser: argparse.ArgumentParser) -> None:
    """The API advisor options `advise` and `train` share."""
    parser.add_argument(
        "--base-url",
        default=None,
        help="OpenAI-compatible server, e.g. http://localhost:8000/v1 (default: OPENAI_BASE_URL if set, else the "
        "provider's); recorded in run.json and the cache key",
    )
    parser.add_argument(
        "--api-key-env",
        default=None,
        metavar="VAR",
        help="environment variable holding the API key (default: OPENAI_API_KEY / GEMINI_API_KEY); only its name "
        "is recorded",
    )


def build_parser() -> argparse.ArgumentParser:
    from sb3_vlm.advisors.factory import SPEC_HELP
    from sb3_vlm.experiments.runs import ALGO_NAMES as ALGO_CHOICES

    parser = argparse.ArgumentParser(
        prog="sb3-vlm",
        description="Train Stable-Baselines3 policies with advice from vision-language models. Start with "
        "`sb3-vlm demo` (no API key), then `sb3-vlm train ENV --advisor SPEC`, `sb3-vlm eval RUN`, "
        "`sb3-vlm compare RUN... --out curves.png`. Each command has its own --help.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="quick MiniGrid experiment: PPO vs GuidedPPO with an 80%%-reliable scripted teacher (no API key)",
        description="Train PPO and GuidedPPO on a MiniGrid task, print a comparison table and save learning curves.",
    )
    demo.add_argument("--env", default="MiniGrid-LavaGapS7-v0", help="MiniGrid env id (default: %(default)s)")
    demo.add_argument("--steps", type=int, default=100_000, help="env steps per algorithm (default: %(default)s)")
    demo.add_argument("--reliability", type=float, default=0.8, help="teacher reliability (default: %(default)s)")
    demo.add_argument(
        "--teacher-coef", type=float, default=None, help="λ of the KL term (default: GuidedPPO's, with adaptive trust)"
    )
    demo.add_argument("--threshold", type=float, default=0.9, help="mean return target (default: %(default)s)")
    demo.add_argument(
        "--advisor",
        default=None,
        help="teacher spec instead of the noisy oracle (openai:MODEL, gemini:MODEL, hf:PATH, constant:2 ...; "
        "--reliability is then unused)",
    )
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    demo.add_argument("--out", default="demo_out", help="output folder for the PNG and JSON (default: %(default)s)")
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    demo.set_defaults(func=_demo)

    advise = sub.add_parser(
        "advise",
        help="show the rendered prompt, the raw answer and the parsed advice for one observation (prompt debugging)",
        description="Ask an advisor about one observation of an env and show every stage. Exit code 1 if the answer "
        "could not be used. Keys come from OPENAI_API_KEY / GEMINI_API_KEY.",
    )
    advise.add_argument("--env", default="MiniGrid-LavaGapS7-v0", help=f"{ENV_HELP} (default: %(default)s)")
    advise.add_argument("--advisor", default="oracle", help=f"{SPEC_HELP} (default: %(default)s)")
    _add_advisor_options(advise)
    advise.add_argument("--prompt", default=None, help="a built-in prompt name (default: the env's)")
    advise.add_argument("--seed", type=int, default=0, help="env seed (default: %(default)s)")
    advise.add_argument("--steps", type=int, default=0, help="random steps before asking (default: %(default)s)")
    advise.add_argument("--save-image", default=None, help="save the teacher's image to this PNG")
    advise.set_defaults(func=_advise)

    label = sub.add_parser(
        "label",
        help="pre-fill an advice cache for stored views through an OpenAI-compatible Batch API (batch price)",
        description="Send the views in VIEWS (an .npz from sb3_vlm.advisors.batch.save_views, or --collect N views "
        "by random play) that the cache does not hold yet as one batch (upload, create, poll, download), and store "
        "the usable answers under the keys the training run with the same --advisor, --env and --cache looks up. "
        "Prints a JSON report; exit code 1 when some views got no answer or the server reported errors.",
    )
    label.add_argument("views", help="the views file (.npz); written first with --collect")
    label.add_argument("--env", required=True, help=f"{ENV_HELP}: the action space, prompt and teacher view")
    label.add_argument("--advisor", required=True, help="openai:MODEL (the advisor training will use)")
    _add_advisor_options(label)
    label.add_argument("--cache", required=True, help="the cache file or redis:// URL training will read")
    label.add_argument("--prompt", default=None, help="a built-in prompt name (default: the env's)")
    label.add_argument("--collect", type=int, default=0, metavar="N", help="collect N views by random play first")
    label.add_argument("--seed", type=int, default=0, help="env seed for --collect (default: %(default)s)")
    label.add_argument("--poll", type=float, default=30.0, help="seconds between status polls (default: %(default)s)")
    label.add_argument(
        "--deadline", type=float, default=24 * 3600.0, help="seconds to wait before cancelling (default: %(default)s)"
    )
    label.set_defaults(func=_label)

    train = sub.add_parser(
        "train",
        help="train a guided (or plain) algorithm on an env with an advisor, save model and logs to --out",
        description="Train and save a run folder (model.zip, run.json, monitor CSVs, progress.csv, tb/). Defaults "
        "for steps, envs, policy and hyperparameters come from the shipped RL Zoo files (sb3_vlm/zoo/hyperparams). "
        "Ctrl-C (or SIGTERM) saves a checkpoint at the end of the rollout, model.zip and run.json, and exits with "
        "128 + the signal's number; --resume RUN_DIR goes on from there. A run that cannot start (unknown env or "
        "advisor, missing key) says why in one line, exits with 2 and writes nothing. "
        "Example: sb3-vlm train MiniGrid-LavaGapS7-v0 --algo guided_ppo --advisor oracle --steps 50000 --out runs/g",
    )
    train.add_argument("env", nargs="?", default=None, help=f"{ENV_HELP} (not with --resume)")
    train.add_argument(
        "--resume",
        default=None,
        metavar="RUN_DIR",
        help="go on with an interrupted run from its latest checkpoint, with the arguments in its run.json "
        "(--steps: a new total)",
    )
    train.add_argument("--algo", default="guided_ppo", choices=ALGO_CHOICES, help="(default: %(default)s)")
    train.add_argument("--advisor", default=None, help=f"{SPEC_HELP} (default: the env's default, usually oracle)")
    train.add_argument("--steps", type=int, default=None, help="env steps (default: the shipped file's, else 100k)")
    train.add_argument("--out", default="runs/run", help="run folder (default: %(default)s)")
    train.add_argument("--n-envs", type=int, default=None, help="parallel envs (default: the shipped file's, else 1)")
    train.add_argument("--query-every", type=int, default=None, help="ask the advisor every k steps")
    train.add_argument("--cache", default=None, help="advice cache file (SQLite), reused across runs")
    _add_advisor_options(train)
    train.add_argument(
        "--max-cost-usd",
        type=_dollars,
        default=None,
        metavar="USD",
        help="openai: / gemini: advisors: a hard budget in US dollars at the model's list price "
        "(sb3_vlm.advisors.pricing); once spent, training goes on unguided (default: no budget)",
    )
    train.add_argument(
        "--advice-wait",
        type=_seconds_or_auto,
        default="auto",
        metavar="SECONDS|auto",
        help="guided_ppo / guided_a2c with a VLM advisor: the most seconds a rollout waits for answers still pending "
        "(auto: picked from the measured latency before each rollout, at most 30 s; 0: never wait) "
        "(default: %(default)s)",
    )
    train.add_argument(
        "--checkpoint-every",
        type=int,
        default=0,
        metavar="STEPS",
        help="also save a resumable checkpoint every this many env steps in RUN/checkpoints (default: only at "
        "Ctrl-C / SIGTERM)",
    )
    train.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    train.add_argument(
        "--hyperparams", nargs="*", default=[], metavar="KEY=VALUE", help="algorithm arguments, e.g. method=varl"
    )
    train.add_argument(
        "--env-kwargs",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="env factory arguments, e.g. student_obs=symbolic_partial (MiniGrid) or size=64 (pixels)",
    )
    train.add_argument("--tensorboard", action="store_true", help="also log to <out>/ for TensorBoard")
    train.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    train.add_argument("--verbose", type=int, default=0, help="SB3 verbosity (default: %(default)s)")
    train.set_defaults(func=_train, parser=train)

    evaluate = sub.add_parser(
        "eval",
        help="evaluate a saved policy without its advisor",
        description="Run a saved model on its env (no VLM needed) and print the mean return. Example: sb3-vlm eval "
        "runs/g",
    )
    evaluate.add_argument("model", help="a run folder or model.zip (run.json beside it gives env and algo)")
    evaluate.add_argument("--env", default=None, help="override the run's env")
    evaluate.add_argument("--algo", default=None, choices=ALGO_CHOICES, help="needed without run.json")
    evaluate.add_argument("--episodes", type=int, default=20, help="(default: %(default)s)")
    evaluate.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    evaluate.add_argument("--stochastic", action="store_true", help="sample actions instead of the mode")
    evaluate.add_argument("--json", default=None, help="also write the result to this JSON file")
    evaluate.set_defaults(func=_eval)

    compare = sub.add_parser(
        "compare",
        help="draw mean ± std learning curves of several runs (Monitor CSVs or TensorBoard logs) to a PNG",
        description="Runs sharing a label (their folder name without a trailing _<seed>, or --labels) are averaged. "
        "Works on sb3-vlm train folders, RL Zoo log folders and any folder with SB3 Monitor CSVs or TensorBoard "
        "event files. Example: sb3-vlm compare runs/ppo_0 runs/ppo_1 runs/guided_0 runs/guided_1 --out cmp.png",
    )
    compare.add_argument("runs", nargs="+", help="run folders")
    compare.add_argument("--out", default="compare.png", help="PNG path (default: %(default)s)")
    compare.add_argument(
        "--labels",
        nargs="*",
        default=None,
        help="one label per run; runs with one label are averaged into one band, and must be of one algorithm "
        "(default: the folder name without its trailing seed / run number; RL Zoo runs: ALGO/ENV)",
    )
    compare.add_argument("--window", type=int, default=20, help="episodes in the rolling mean (default: %(default)s)")
    compare.add_argument("--tag", default="rollout/ep_rew_mean", help="TensorBoard scalar (default: %(default)s)")
    compare.add_argument("--title", default="", help="plot title")
    compare.add_argument("--ylabel", default="episode return", help="(default: %(default)s)")
    compare.set_defaults(func=_compare)

    cache = sub.add_parser(
        "cache",
        help="show statistics of an advice cache, clear it, or move its rows to another cache",
        description="An advice cache is the SQLite file, or the redis:// URL of a server shared by many machines, "
        "given to --cache / VLMAdviceWrapper(cache=...). `stats` only reads it (a file: nothing is created or "
        "changed); a file that is not an advice cache is refused and left untouched. `export CACHE FILE.jsonl` "
        "writes its rows as JSON lines; `import CACHE FILE.jsonl` writes them into CACHE (overwriting), `merge "
        "CACHE FILE.jsonl` too but keeps CACHE's own rows; rows whose checksum fails are skipped and counted. "
        "Examples: sb3-vlm cache stats advice.sqlite; sb3-vlm cache export advice.sqlite rows.jsonl; "
        "sb3-vlm cache merge redis://cache-host:6379/0 rows.jsonl",
    )
    cache.add_argument("action", choices=("stats", "clear", "export", "import", "merge"))
    cache.add_argument("path", help="the cache: a file, or a redis:// URL")
    cache.add_argument("file", nargs="?", default=None, help="export / import / merge: the JSON-lines file")
    cache.set_defaults(func=_cache)

    envs = sub.add_parser(
        "envs",
        help="list the environment names sb3-vlm knows",
        description="List the papers' environments (DMControl pixels, CarRacing, CARLA, the MiniGrid suite) by the "
        "names train/eval/advise and sb3_vlm.envs.make accept, with their Gymnasium ids for RL Zoo.",
    )
    envs.set_defaults(func=_envs)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:  # Ctrl-C outside training (which saves and returns): one line, no traceback
        print(f"sb3-vlm {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
