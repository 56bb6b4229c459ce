"""Advice cache backends side by side: the SQLite file and a Redis server (issue 21), in one run.

For each backend: ``--rows`` answers written (writes/s), then looked up in a shuffled order with the in-memory layer
off (``memory_entries=0``: what a lookup costs the backend itself, as a process that has not seen the view pays it),
misses looked up, and hits with the memory layer on (what a repeated view costs). Backends take turns, ``--repeats``
times, and the medians are reported. The Redis server is a throw-away ``redis-server`` on 127.0.0.1 (the Debian
package), so its numbers are a loopback round trip: over a network, add the network's latency to each lookup.
Writes ``cache_backends.json`` and ``cache_backends.md`` under ``--out``.

Usage::

    python benchmarks/cache_backends.py            # 2,000 rows x 3 repeats, ~1 min
    python benchmarks/cache_backends.py --quick    # CI smoke
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from sb3_vlm.advice import Advice
from sb3_vlm.advisors.cache import AdviceCache
from sb3_vlm.testing.redis_server import RedisServer


def _answers(n: int) -> list[tuple[str, Advice]]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        p = rng.dirichlet(np.ones(7)).astype(np.float32)
        out.append((f"{i:064x}", Advice(probs=p / p.sum(), source="bench", raw="forward")))
    return out


def measure(path: str, answers: list[tuple[str, Advice]]) -> dict[str, float]:
    """Microseconds per write, per lookup from the backend (hit and miss) and per hit from memory."""
    writer = AdviceCache(path)
    writer.clear()
    start = time.perf_counter()
    for key, advice in answers:
        writer.put(key, advice)
    write = time.perf_counter() - start
    keys = [k for k, _ in answers]
    order = np.random.default_rng(1).permutation(len(keys))
    cold = AdviceCache(path, memory_entries=0)
    start = time.perf_counter()
    found = sum(cold.get(keys[i]) is not None for i in order)
    hit = time.perf_counter() - start
    assert found == len(keys), f"{path}: {found} of {len(keys)} rows read back"
    start = time.perf_counter()
    for i in order:
        cold.get(f"missing-{i}")
    miss = time.perf_counter() - start
    warm = AdviceCache(path)
    for k in keys:
        warm.get(k)
    start = time.perf_counter()
    for i in order:
        warm.get(keys[i])
    memory = time.perf_counter() - start
    n = len(keys)
    writer.clear()
    return dict(write_us=write / n * 1e6, hit_us=hit / n * 1e6, miss_us=miss / n * 1e6, memory_hit_us=memory / n * 1e6)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/cache_backends")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.repeats = 200, 1
    answers = _answers(args.rows)
    results: dict[str, list[dict[str, float]]] = {"sqlite": [], "redis": []}
    with tempfile.TemporaryDirectory() as tmp, RedisServer(tmp) as server:
        paths = {"sqlite": str(Path(tmp) / "advice.sqlite"), "redis": server.url}
        for _ in range(args.repeats):
            for name, path in paths.items():  # interleaved: a noisy moment slows both, not one
                results[name].append(measure(path, answers))
    median: dict[str, dict[str, Any]] = {
        name: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for name, runs in results.items()
    }
    lines = [
        f"{args.rows:,} rows, median of {args.repeats} interleaved runs; Redis on 127.0.0.1 (loopback)",
        "",
        "| backend | write (µs) | lookup hit (µs) | lookup miss (µs) | hit from memory (µs) | lookups/s |",
        "|---|---|---|---|---|---|",
        *(
            f"| {name} | {m['write_us']:.0f} | {m['hit_us']:.0f} | {m['miss_us']:.0f} | {m['memory_hit_us']:.1f} | "
            f"{1e6 / m['hit_us']:,.0f} |"
            for name, m in median.items()
        ),
    ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cache_backends.json").write_text(json.dumps(dict(rows=args.rows, runs=results, median=median), indent=1))
    (out / "cache_backends.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
