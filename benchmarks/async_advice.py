"""Non-blocking advice: training wall-clock with a slow VLM vs an instant advisor, and the rows that still get advice.

The slow VLM is an OpenAI-compatible loopback server (``sb3_vlm.testing.LoopbackServer``, in this process) that
answers every request after ``--latency`` seconds (0.5 s by default), asked through the real ``OpenAIAdvisor``
(HTTP, JSON, PNG encoding) with ``concurrency=32``. The instant advisor is an in-process scripted advisor giving
the same answer, asked inline (the default for scripted advisors). Same seeds, same steps, same guidance.

- GuidedSAC (DPL guidance) on Pendulum-v1, asking every 10th step (ERPv queries every 10 frames); the answer is
  ``action:[0.5]``.
- GuidedPPO (LVLM2P distillation) on MiniGrid-LavaGapS7 with 8 envs behind a fresh SQLite advice cache, asking every
  step; the answer is a fixed distribution over the actions, returned as token log-probabilities.

``--modes instant instant-background`` instead measures the scripted advisor asked through the background queue
(what ``non_blocking=True`` costs or saves when answers are instant), and every row records a digest of the trained
policy's parameters (equal digests: bit-identical training).

"Advised rows" is the number of buffer rows that hold advice when they are used for training (GuidedSAC: in the
replay buffer when ``learn()`` returns, after its last ``resolve_pending()``; GuidedPPO: in every rollout after its
end-of-rollout wait), relative to the instant run. A short blocking run at the same latency shows what waiting on
every answer would cost.

Writes ``async_advice.json``, ``async_advice.md`` and ``async_advice.png`` under ``--out``.

Usage::

    python benchmarks/async_advice.py            # 3 seeds, ~15 min on 2 cores
    python benchmarks/async_advice.py --quick    # CI smoke
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

#: the loopback VLM's MiniGrid answer, as first-token log-probabilities
MINIGRID_TOP = [("forward", math.log(0.7)), ("left", math.log(0.2)), ("right", math.log(0.1))]
SAC_ANSWER = 0.5
#: modes that ask through the background queue ("blocking" asks the slow VLM inline, "instant" the scripted one)
BACKGROUND_MODES = ("non-blocking", "instant-background")


def _server(latency: float, algo: str) -> Any:
    from sb3_vlm.testing import LoopbackServer, Reply, chat_completion

    body = chat_completion(f"action:[{SAC_ANSWER}]") if algo == "sac" else chat_completion("forward", MINIGRID_TOP)
    return LoopbackServer(responder=lambda path, request: Reply(body=body, delay=latency))


def _advisor(algo: str, mode: str, server: Any) -> Any:
    from sb3_vlm.advisors.openai_compat import OpenAIAdvisor
    from sb3_vlm.advisors.prompted import probs_from_top_logprobs
    from sb3_vlm.advisors.prompts import MINIGRID_LABELS, MINIGRID_PROMPT, PENDULUM_PROMPT
    from sb3_vlm.advisors.scripted import CallableAdvisor, ConstantAdvisor

    if mode.startswith("instant"):
        if algo == "sac":
            return ConstantAdvisor(SAC_ANSWER)
        probs = probs_from_top_logprobs(MINIGRID_TOP, MINIGRID_LABELS)
        return CallableAdvisor(lambda request: probs, "fixed-distribution")
    prompt = PENDULUM_PROMPT if algo == "sac" else MINIGRID_PROMPT
    return OpenAIAdvisor("loopback-vlm", prompt, base_url=f"{server.url}/v1", api_key="none", concurrency=32)


class _AdvisedRows:
    """Counts the advised rows of every rollout (after GuidedPPO's end-of-rollout wait)."""

    def __init__(self) -> None:
        from stable_baselines3.common.callbacks import BaseCallback

        class Callback(BaseCallback):
            valid = 0.0
            rows = 0

            def _on_step(self) -> bool:
                return True

            def _on_rollout_end(self) -> None:
                buffer = self.model.rollout_buffer
                self.valid += float(buffer.advice_valid.sum())  # type: ignore[attr-defined]
                self.rows += int(buffer.advice_valid.size)  # type: ignore[attr-defined]

        self.callback = Callback()


def run_sac(mode: str, steps: int, seed: int, latency: float, advice_wait: float = 0.0) -> dict[str, Any]:
    from sb3_vlm.envs.pendulum import make_pendulum_env
    from sb3_vlm.experiments.pendulum import SAC_KWARGS
    from sb3_vlm.sac import GuidedSAC
    from sb3_vlm.wrappers import VLMAdviceWrapper

    with _server(latency, "sac") as server:
        advisor = _advisor("sac", mode, server)
        env = VLMAdviceWrapper(make_pendulum_env(), advisor, query_every=10, non_blocking=mode in BACKGROUND_MODES)
        model = GuidedSAC("MlpPolicy", env, method="dpl", seed=seed, **SAC_KWARGS)
        start = time.perf_counter()
        model.learn(steps)
        wall = time.perf_counter() - start
        buffer = model.replay_buffer
        buffer.resolve_pending()  # what the next training phase would see; nothing is waited for
        n = steps if not buffer.full else buffer.buffer_size
        out = dict(
            algo="GuidedSAC",
            mode=mode,
            seed=seed,
            steps=steps,
            wall_s=wall,
            advised_rows=float(buffer.advice_valid[:n].sum()),
            rows=n,
            queries=advisor.stats.queries,
            answered_late=buffer.advice_answered_late,
            pending_at_end=buffer.n_pending,
            param_digest=_digest(model),
        )
        env.close()
    return out


def run_ppo(mode: str, steps: int, seed: int, latency: float, advice_wait: float = 0.0) -> dict[str, Any]:
    from stable_baselines3.common.env_util import make_vec_env

    from sb3_vlm.envs.minigrid import make_minigrid_env
    from sb3_vlm.experiments.minigrid import N_ENVS, PPO_KWARGS
    from sb3_vlm.ppo import GuidedPPO
    from sb3_vlm.wrappers import VecVLMAdviceWrapper

    with _server(latency, "ppo") as server, tempfile.TemporaryDirectory() as tmp:
        advisor = _advisor("ppo", mode, server)
        venv = make_vec_env(
            lambda: make_minigrid_env("MiniGrid-LavaGapS7-v0", student_obs="symbolic_partial"), n_envs=N_ENVS, seed=seed
        )
        venv = VecVLMAdviceWrapper(
            venv, advisor, cache=Path(tmp) / "advice.sqlite", non_blocking=mode in BACKGROUND_MODES
        )
        model = GuidedPPO("MlpPolicy", venv, teacher_coef=0.01, seed=seed, advice_wait=advice_wait, **PPO_KWARGS)
        rows = _AdvisedRows()
        start = time.perf_counter()
        model.learn(steps, callback=rows.callback)
        wall = time.perf_counter() - start
        out = dict(
            algo="GuidedPPO",
            mode=mode,
            seed=seed,
            steps=steps,
            wall_s=wall,
            advised_rows=rows.callback.valid,
            rows=rows.callback.rows,
            queries=advisor.stats.queries,
            cache_hits=advisor.stats.cache_hits,
            param_digest=_digest(model),
        )
        venv.close()
    return out


RUNNERS = {"sac": run_sac, "ppo": run_ppo}


def _digest(model: Any) -> str:
    import hashlib

    h = hashlib.sha256()
    for tensor in model.policy.state_dict().values():
        h.update(tensor.detach().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def summarise(
    rows: list[dict[str, Any]], baseline: str = "instant", compared: str = "non-blocking"
) -> dict[str, dict[str, Any]]:
    """Per algorithm: the compared mode's wall-clock and advised rows relative to the baseline run of the same seed."""
    out: dict[str, dict[str, Any]] = {}
    for algo in sorted({r["algo"] for r in rows}):
        runs = {(r["mode"], r["seed"]): r for r in rows if r["algo"] == algo}
        seeds = sorted({seed for mode, seed in runs if mode == baseline and (compared, seed) in runs})
        ratios = [runs[compared, s]["wall_s"] / runs[baseline, s]["wall_s"] for s in seeds]
        advised = [runs[compared, s]["advised_rows"] / max(runs[baseline, s]["advised_rows"], 1) for s in seeds]
        blocking = [r for r in rows if r["algo"] == algo and r["mode"] == "blocking"]
        out[algo] = dict(
            seeds=seeds,
            wall_ratio=ratios,
            wall_ratio_mean=statistics.fmean(ratios) if ratios else float("nan"),
            wall_ratio_max=max(ratios) if ratios else float("nan"),
            advised_fraction=advised,
            advised_fraction_min=min(advised) if advised else float("nan"),
            baseline=baseline,
            compared=compared,
            instant_wall_s=[runs[baseline, s]["wall_s"] for s in seeds],
            non_blocking_wall_s=[runs[compared, s]["wall_s"] for s in seeds],
            blocking_steps_per_s=[r["steps"] / r["wall_s"] for r in blocking],
            instant_steps_per_s=[runs[baseline, s]["steps"] / runs[baseline, s]["wall_s"] for s in seeds],
            same_parameters=[runs[compared, s]["param_digest"] == runs[baseline, s]["param_digest"] for s in seeds],
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency", type=float, default=0.5, help="seconds the loopback VLM takes per answer")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sac-steps", type=int, default=10_000)
    parser.add_argument("--ppo-steps", type=int, default=50_000)
    parser.add_argument("--blocking-steps", type=int, nargs=2, default=[300, 1024], metavar=("SAC", "PPO"),
                        help="steps of the short blocking runs (each waits for every answer)")  # fmt: skip
    parser.add_argument("--algos", nargs="+", default=["sac", "ppo"], choices=sorted(RUNNERS))
    parser.add_argument("--modes", nargs=2, default=["instant", "non-blocking"], metavar=("BASELINE", "COMPARED"),
                        help="baseline and compared mode: instant, non-blocking, instant-background")  # fmt: skip
    parser.add_argument("--advice-wait", type=float, default=0.0, help="GuidedPPO's end-of-rollout deadline (s)")
    parser.add_argument("--out", default="benchmarks/results/async_advice")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.sac_steps, args.ppo_steps, args.blocking_steps = [0], 300, 2048, [0, 0]
        # a 300-step SAC run lasts ~1.5 s on a fast machine: at 0.5 s an answer, a non-blocking run could end
        # before its first answer arrived (seen once in CI: 0 advised rows)
        args.latency = min(args.latency, 0.05)
    steps = {"sac": args.sac_steps, "ppo": args.ppo_steps}
    rows: list[dict[str, Any]] = []
    for algo in args.algos:
        for seed in args.seeds:
            for mode in args.modes:
                rows.append(RUNNERS[algo](mode, steps[algo], seed, args.latency, args.advice_wait))
                print({k: round(v, 3) if isinstance(v, float) else v for k, v in rows[-1].items()}, flush=True)
        blocking = dict(zip(("sac", "ppo"), args.blocking_steps, strict=True))[algo]
        if blocking:
            rows.append(RUNNERS[algo]("blocking", blocking, args.seeds[0], args.latency, args.advice_wait))
            print({k: round(v, 3) if isinstance(v, float) else v for k, v in rows[-1].items()}, flush=True)
    summary = summarise(rows, *args.modes)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = dict(
        latency=args.latency, seeds=args.seeds, steps=steps, blocking_steps=args.blocking_steps,
        advice_wait=args.advice_wait, modes=args.modes,
    )  # fmt: skip
    (out / "async_advice.json").write_text(json.dumps(dict(settings=settings, summary=summary, rows=rows), indent=2))
    lines = [
        f"Loopback VLM latency {args.latency} s; seeds {args.seeds}; GuidedSAC {steps['sac']:,} steps (Pendulum, asks "
        f"every 10th step), GuidedPPO {steps['ppo']:,} steps (LavaGapS7, 8 envs, cache, asks every step, "
        f"advice_wait={args.advice_wait} s)",
        "",
        f"| algorithm | {args.modes[0]} (s) | {args.modes[1]} (s) | wall-clock ratio (mean / max) "
        f"| advised rows vs {args.modes[0]} (min) | blocking, slow VLM (steps/s) | {args.modes[0]} (steps/s) "
        "| identical parameters |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for algo, s in summary.items():
        blocking = ", ".join(f"{v:.1f}" for v in s["blocking_steps_per_s"]) or "not run"
        lines.append(
            f"| {algo} | {_fmt(s['instant_wall_s'])} | {_fmt(s['non_blocking_wall_s'])} "
            f"| {s['wall_ratio_mean']:.3f} / {s['wall_ratio_max']:.3f} | {s['advised_fraction_min']:.1%} "
            f"| {blocking} | {_fmt(s['instant_steps_per_s'])} | {sum(s['same_parameters'])}/{len(s['seeds'])} |"
        )
    (out / "async_advice.md").write_text("\n".join(lines) + "\n")
    _plot(summary, out / "async_advice.png")
    print("\n".join(lines))
    return 0


def _fmt(values: list[float]) -> str:
    return f"{np.mean(values):.1f} ± {np.std(values):.1f}" if len(values) > 1 else f"{values[0]:.1f}"


def _plot(summary: dict[str, dict[str, Any]], path: Path) -> None:
    from sb3_vlm.experiments.plotting import plot_paired_bars

    labels = list(summary)
    s0 = next(iter(summary.values()))
    pairs = [
        (s0["baseline"], [float(np.mean(s["instant_wall_s"])) for s in summary.values()]),
        (s0["compared"], [float(np.mean(s["non_blocking_wall_s"])) for s in summary.values()]),
    ]
    plot_paired_bars(labels, pairs, path, ylabel="training wall-clock (s)")


if __name__ == "__main__":
    raise SystemExit(main())
