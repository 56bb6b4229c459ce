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
import contextlib
import json
import os
import statistics
import subprocess
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


class PostgresServer:
    """A throw-away PostgreSQL cluster (the Debian package's binaries) in a temporary folder, on a free 127.0.0.1
    port, run as the ``postgres`` user when this runs as root (PostgreSQL refuses root); stopped on exit."""

    def __init__(self, workdir: str) -> None:
        import glob
        import os
        import shutil
        import socket

        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
        if not bins or shutil.which("su") is None:
            raise FileNotFoundError("PostgreSQL's binaries are not installed (Debian: apt-get install postgresql)")
        self.bin, self.dir = bins[-1], Path(workdir) / "pg"
        self.dir.mkdir()
        self.root = os.geteuid() == 0
        if self.root:
            shutil.chown(self.dir, "postgres", "postgres")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])

    def _run(self, *cmd: str) -> None:
        import shlex
        import subprocess

        line = " ".join(shlex.quote(c) for c in cmd)
        subprocess.run(["su", "postgres", "-c", line] if self.root else ["sh", "-c", line], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip

    def __enter__(self) -> PostgresServer:
        data = str(self.dir / "data")
        self._run(f"{self.bin}/initdb", "-D", data, "-A", "trust", "-U", "postgres")
        opts = f"-k {self.dir} -p {self.port} -c listen_addresses=127.0.0.1"  # TCP, as Redis is reached
        self._run(f"{self.bin}/pg_ctl", "-D", data, "-o", opts, "-w", "-l", str(self.dir / "log"), "start")
        return self

    def __exit__(self, *exc: Any) -> None:
        self._run(f"{self.bin}/pg_ctl", "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop")

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"


def raw_lookups(backend: str, target: Any, answers: list[tuple[str, Advice]]) -> dict[str, float]:
    """Microseconds per raw write and primary-key read of one backend (no decoding: the round trip alone)."""
    rows = [(k, json.dumps(a.to_dict())) for k, a in answers]
    order = np.random.default_rng(1).permutation(len(rows))
    if backend == "sqlite":
        import sqlite3

        conn = sqlite3.connect(target, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE IF NOT EXISTS t (key TEXT PRIMARY KEY, value TEXT)")
        put = lambda k, v: conn.execute("INSERT OR REPLACE INTO t VALUES (?, ?)", (k, v))  # noqa: E731
        get = lambda k: conn.execute("SELECT value FROM t WHERE key = ?", (k,)).fetchone()  # noqa: E731
    elif backend == "redis":
        import redis

        client = redis.Redis.from_url(target)
        put = lambda k, v: client.hset("raw:" + k, mapping={"value": v})  # noqa: E731
        get = lambda k: client.hget("raw:" + k, "value")  # noqa: E731
    else:
        import psycopg

        conn = psycopg.connect(target, autocommit=True)
        conn.execute("CREATE TABLE IF NOT EXISTS t (key TEXT PRIMARY KEY, value TEXT)")
        put = lambda k, v: conn.execute(  # noqa: E731
            "INSERT INTO t VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value", (k, v)
        )
        get = lambda k: conn.execute("SELECT value FROM t WHERE key = %s", (k,)).fetchone()  # noqa: E731
    start = time.perf_counter()
    for k, v in rows:
        put(k, v)
    write = time.perf_counter() - start
    start = time.perf_counter()
    found = sum(get(rows[i][0]) is not None for i in order)
    read = time.perf_counter() - start
    assert found == len(rows)
    return dict(write_us=write / len(rows) * 1e6, read_us=read / len(rows) * 1e6)


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
    raw: dict[str, list[dict[str, float]]] = {"sqlite": [], "redis": [], "postgresql": []}
    with tempfile.TemporaryDirectory() as tmp, RedisServer(tmp) as server, contextlib.ExitStack() as stack:
        os.chmod(tmp, 0o755)  # the postgres user works in a folder inside it
        paths = {"sqlite": str(Path(tmp) / "advice.sqlite"), "redis": server.url}
        targets: dict[str, str] = {"sqlite": str(Path(tmp) / "raw.sqlite"), "redis": server.url}
        try:
            import psycopg  # noqa: F401

            targets["postgresql"] = stack.enter_context(PostgresServer(tmp)).dsn
        except (ImportError, FileNotFoundError, OSError, subprocess.CalledProcessError) as exc:
            print(f"PostgreSQL not measured: {exc!r}")
        for _ in range(args.repeats):
            for name, path in paths.items():  # interleaved: a noisy moment slows both, not one
                results[name].append(measure(path, answers))
            for name, target in targets.items():
                raw[name].append(raw_lookups(name, target, answers))
    median: dict[str, dict[str, Any]] = {
        name: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for name, runs in results.items()
    }
    raw_median = {
        name: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for name, runs in raw.items() if runs
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
        "",
        "The backends' own round trip (a primary-key write and read, no decoding or checks):",
        "",
        "| backend | write (µs) | read (µs) |",
        "|---|---|---|",
        *(f"| {name} | {m['write_us']:.0f} | {m['read_us']:.0f} |" for name, m in raw_median.items()),
    ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = dict(rows=args.rows, runs=results, median=median, raw_runs=raw, raw_median=raw_median)
    (out / "cache_backends.json").write_text(json.dumps(summary, indent=1))
    (out / "cache_backends.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
