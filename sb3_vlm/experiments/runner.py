"""Resumable benchmark runs: every finished run is appended to ``runs.jsonl``; a restart skips those already there."""

from __future__ import annotations

import json
import multiprocessing as mp
import time
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

Job = dict[str, Any]


def run_jobs(
    jobs: list[Job],
    worker: Callable[[Job], Job],
    key: Callable[[Job], Hashable],
    log: Path,
    workers: int = 2,
    report_only: bool = False,
    describe: Callable[[Job], str] = lambda r: "",
) -> list[Job]:
    """
    Run the jobs not yet in ``log`` on a process pool and return the results of ``jobs`` (old and new).

    :param jobs: job descriptions (JSON-serialisable dicts)
    :param worker: ``worker(job) -> result`` (top-level function, run in a forked process)
    :param key: identity of a job or of its result; results with the key of a job count as that job done
    :param log: the JSONL file results are appended to, one line per finished run
    :param workers: processes
    :param report_only: run nothing, return what the log has (all of it)
    :param describe: one-line progress text for a result
    """
    runs: list[Job] = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    done = {key(r) for r in runs}
    todo = [] if report_only else [j for j in jobs if key(j) not in done]
    if not report_only:
        print(f"{len(todo)} runs to do ({len(jobs) - len(todo)} already in {log}) on {workers} workers", flush=True)
    start = time.time()
    if todo:
        log.parent.mkdir(parents=True, exist_ok=True)
        with mp.get_context("fork").Pool(workers) as pool:
            for i, r in enumerate(pool.imap_unordered(worker, todo), 1):
                runs.append(r)
                # opened for each line: a log replaced while the sweep runs (a git checkout, another sweep's
                # rewrite) gets the line, where a handle held open would write into the replaced file, lost
                with log.open("a") as sink:
                    sink.write(json.dumps(r) + "\n")
                print(f"[{i}/{len(todo)} {time.time() - start:5.0f}s] {describe(r)}", flush=True)
    if report_only:
        return runs
    wanted = {key(j) for j in jobs}
    return [r for r in runs if key(r) in wanted]


def steps_to_threshold(steps: list[int], means: list[float], threshold: float, hold: int = 1) -> int | None:
    """
    First recorded step whose rolling mean return reaches ``threshold`` and stays there for ``hold`` recorded points
    in a row (fewer at the curve's end: all that remain); None if never.
    """
    if len(steps) != len(means):
        raise ValueError(f"{len(steps)} steps for {len(means)} means")
    for i, s in enumerate(steps):
        if all(m >= threshold for m in means[i : i + hold]):
            return s
    return None


def write_readme_block(readme: Path, name: str, text: str) -> None:
    """Replace what stands between ``<!-- {name}:start -->`` and ``<!-- {name}:end -->`` in ``readme`` by ``text``
    (the benchmarks' generated tables); a README without the markers is an error, never silently left stale."""
    import re

    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    content = readme.read_text()
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    if not pattern.search(content):
        raise SystemExit(f"{readme} has no {start} ... {end} markers")
    readme.write_text(pattern.sub(lambda _: f"{start}\n{text}\n{end}", content))
