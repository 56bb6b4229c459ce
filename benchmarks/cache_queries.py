"""Advisor queries with the advice cache vs the number of distinct teacher views seen (target: equal, no repeated
query), for GuidedPPO on MiniGrid tasks with 8 envs.

The teacher is the MiniGrid oracle behind :class:`~sb3_vlm.advisors.cache.CachedAdvisor` (a SQLite file); a recorder
in front of the cache counts the distinct views asked about (their content addresses) and one behind it the
requests that reached the backend. Two ways of attaching advice: ``VecVLMAdviceWrapper`` (one batch per step; a
view several envs share in one step must be asked once) and per-env ``VLMAdviceWrapper``\\ s sharing one cache.

Writes ``cache_queries.json``, ``cache_queries.md`` and ``cache_queries.png`` under ``--out``.

Usage::

    python benchmarks/cache_queries.py            # 100k steps per task and mode, ~10 min on 2 cores
    python benchmarks/cache_queries.py --quick    # CI smoke
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sb3_vlm.advice import Advice, AdviceRequest
from sb3_vlm.advisors.base import Advisor


class Recorder(Advisor):
    """Pass requests through to ``advisor`` and remember their content addresses (the advisor's identity, so
    cache keys do not change)."""

    def __init__(self, advisor: Advisor):
        super().__init__()
        self.advisor = advisor
        self.stats = advisor.stats
        self.keys: list[str] = []

    @property
    def identity(self) -> str:
        return self.advisor.identity

    def _advise(self, requests: Sequence[AdviceRequest]) -> list[Advice]:
        identity = self.advisor.identity
        self.keys += [r.cache_key(identity) for r in requests]
        return self.advisor.advise(requests)

    def advise(self, requests: Sequence[AdviceRequest]) -> list[Advice]:
        return self._advise(requests)


MODES = ("VecVLMAdviceWrapper", "per-env wrappers")


def run(env_id: str, mode: str, steps: int, seed: int, cache_path: Path) -> dict[str, Any]:
    from stable_baselines3.common.env_util import make_vec_env

    from sb3_vlm.advisors.cache import CachedAdvisor
    from sb3_vlm.envs.minigrid import MiniGridOracle, make_minigrid_env
    from sb3_vlm.experiments.minigrid import N_ENVS, PPO_KWARGS
    from sb3_vlm.ppo import GuidedPPO
    from sb3_vlm.wrappers import VecVLMAdviceWrapper, VLMAdviceWrapper

    backend = Recorder(MiniGridOracle())  # what reaches the "VLM"
    front = Recorder(CachedAdvisor(backend, cache_path))  # every view asked about

    def make() -> Any:
        env = make_minigrid_env(env_id, student_obs="symbolic_partial")
        return VLMAdviceWrapper(env, front) if mode == "per-env wrappers" else env

    venv: Any = make_vec_env(make, n_envs=N_ENVS, seed=seed)
    if mode == "VecVLMAdviceWrapper":
        venv = VecVLMAdviceWrapper(venv, front)
    model = GuidedPPO("MlpPolicy", venv, teacher_coef=0.01, seed=seed, **PPO_KWARGS)
    start = time.perf_counter()
    model.learn(steps)
    distinct = len(set(front.keys))
    return dict(
        env=env_id,
        mode=mode,
        steps=steps,
        requests=len(front.keys),
        distinct_views=distinct,
        queries=len(backend.keys),
        repeated_queries=len(backend.keys) - len(set(backend.keys)),
        cache_hits=front.stats.cache_hits,
        wall_s=time.perf_counter() - start,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=["MiniGrid-LavaGapS7-v0", "MiniGrid-DoorKey-5x5-v0"])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/cache_queries")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.envs, args.steps = args.envs[:1], 1024
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for env_id in args.envs:
            for mode in args.modes:
                cache = Path(tmp) / f"{env_id}-{mode.replace(' ', '_')}.sqlite"  # a fresh cache per run
                rows.append(run(env_id, mode, args.steps, args.seed, cache))
                print(rows[-1], flush=True)
    lines = [
        f"GuidedPPO, 8 envs, {args.steps:,} steps per run, MiniGrid oracle behind a SQLite advice cache",
        "",
        "| env | advice attached by | views asked about | distinct views | backend queries | repeated queries |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['env']} | {r['mode']} | {r['requests']:,} | {r['distinct_views']:,} | {r['queries']:,} "
            f"| {r['repeated_queries']} |"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cache_queries.json").write_text(json.dumps(dict(steps=args.steps, seed=args.seed, rows=rows), indent=2))
    (out / "cache_queries.md").write_text("\n".join(lines) + "\n")
    _plot(rows, out / "cache_queries.png")
    print("\n".join(lines))
    return 0


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    from sb3_vlm.experiments.plotting import plot_paired_bars

    labels = [f"{r['env'].removeprefix('MiniGrid-')}\n{r['mode']}" for r in rows]
    pairs = [
        ("distinct teacher views", [r["distinct_views"] for r in rows]),
        ("advisor queries (cache misses sent)", [r["queries"] for r in rows]),
    ]
    plot_paired_bars(labels, pairs, path, ylabel="count")


if __name__ == "__main__":
    raise SystemExit(main())
