"""Content-addressed, persistent advice cache (SQLite in WAL mode, values stored as JSON, never pickles)."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from sb3_vlm.advice import Advice, AdviceRequest
from sb3_vlm.advisors.base import Advisor

logger = logging.getLogger(__name__)

_SCHEMA = "CREATE TABLE IF NOT EXISTS advice (key TEXT PRIMARY KEY, value TEXT NOT NULL, created REAL NOT NULL)"


class AdviceCache:
    """
    Map request content addresses (see :meth:`AdviceRequest.cache_key`) to advice.

    The connection is opened lazily per process, so the cache pickles (it travels to ``SubprocVecEnv`` workers) and
    several processes may share one file: SQLite's WAL journal and a busy timeout serialise their writers.
    ``path=":memory:"`` keeps a private in-process cache (not shared after pickling).

    A file that is not a readable SQLite database (a crash mid-write on a file system without locking, a stray
    file at the path) is moved aside to ``<path>.corrupt-<time>`` with a warning and a new cache is started there.

    The most recently used answers are also kept decoded in memory (advice is immutable, so a hit returns the
    object itself): a hit then costs a dict lookup instead of a query and a JSON decode (issue 18). An entry another
    process overwrites later is not seen by this process until it drops out of memory; entries are written once per
    content address in practice (the answers of one advisor identity are interchangeable).

    :param path: database file, or ``":memory:"``
    :param timeout: seconds a writer waits for a lock held by another process
    :param max_entries: keep at most this many entries: the oldest are evicted (first in, first out) when a write
        goes over; None: unbounded
    :param memory_entries: answers kept decoded in memory (least recently used dropped first); 0: none
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = ":memory:",
        timeout: float = 30.0,
        max_entries: int | None = None,
        memory_entries: int = 65_536,
    ) -> None:
        if max_entries is not None and max_entries < 1:
            raise ValueError(f"max_entries must be >= 1 or None, got {max_entries}")
        if memory_entries < 0:
            raise ValueError(f"memory_entries must be >= 0, got {memory_entries}")
        self.path = str(path)
        self.timeout = timeout
        self.max_entries = max_entries
        self.memory_entries = memory_entries
        self._recent: OrderedDict[str, Advice] = OrderedDict()
        self.evicted = 0
        self.hits = 0
        self.misses = 0
        self._conn: sqlite3.Connection | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            try:
                conn = self._open()
            except sqlite3.DatabaseError as exc:  # not a database, or a damaged one: keep it for inspection
                if self.path == ":memory:" or isinstance(exc, sqlite3.OperationalError):
                    raise  # locked, read-only, missing permissions: the file may be fine, nothing to move
                aside = f"{self.path}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
                for suffix in ("", "-wal", "-shm"):
                    if Path(self.path + suffix).exists():
                        os.replace(self.path + suffix, aside + suffix)
                logger.warning("Advice cache %s is unreadable (%r): moved to %s, starting an empty one", self.path,
                               exc, aside)  # fmt: skip
                conn = self._open()
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=self.timeout, check_same_thread=False, isolation_level=None)
        try:
            if self.path != ":memory:":
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                if conn.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                    raise sqlite3.DatabaseError("quick_check failed")
            conn.execute(_SCHEMA)
        except sqlite3.DatabaseError:
            conn.close()
            raise
        return conn

    def get(self, key: str) -> Advice | None:
        with self._lock:
            advice = self._recent.get(key)
            if advice is not None:
                self._recent.move_to_end(key)
                self.hits += 1
                return advice
            row = self._connection().execute("SELECT value FROM advice WHERE key = ?", (key,)).fetchone()
            if row is None:
                self.misses += 1
                return None
            self.hits += 1
            advice = Advice.from_dict(json.loads(row[0]))
            self._remember(key, advice)
        return advice

    def _remember(self, key: str, advice: Advice) -> None:
        """Keep ``advice`` decoded in memory (under the lock)."""
        if self.memory_entries:
            self._recent[key] = advice
            self._recent.move_to_end(key)
            if len(self._recent) > self.memory_entries:
                self._recent.popitem(last=False)

    def put(self, key: str, advice: Advice) -> None:
        value = json.dumps(advice.to_dict())
        with self._lock:
            conn = self._connection()
            conn.execute(
                "INSERT OR REPLACE INTO advice (key, value, created) VALUES (?, ?, ?)", (key, value, time.time())
            )
            self._remember(key, advice)
            if self.max_entries is not None:
                # oldest first; one statement, so concurrent writers cannot both evict the same surplus twice
                deleted = conn.execute(
                    "DELETE FROM advice WHERE key IN (SELECT key FROM advice ORDER BY created ASC, rowid ASC "
                    "LIMIT max(0, (SELECT COUNT(*) FROM advice) - ?))",
                    (self.max_entries,),
                ).rowcount
                self.evicted += max(0, deleted)
                if deleted > 0:  # which keys went is not known here: forget the decoded copies, the file decides
                    self._recent.clear()

    def __len__(self) -> int:
        with self._lock:
            return int(self._connection().execute("SELECT COUNT(*) FROM advice").fetchone()[0])

    def clear(self) -> None:
        with self._lock:
            self._recent.clear()
            self._connection().execute("DELETE FROM advice")

    def vacuum(self) -> None:
        """Give the space of deleted entries back to the file system."""
        with self._lock:
            self._connection().execute("VACUUM")

    def summary(self) -> dict[str, Any]:
        """What the cache holds: entries, valid fraction, entries per answering source, age range, file size."""
        with self._lock:
            rows = self._connection().execute("SELECT value, created FROM advice").fetchall()
        sources: dict[str, int] = {}
        valid = 0
        for value, _ in rows:
            advice = json.loads(value)
            sources[advice.get("source", "")] = sources.get(advice.get("source", ""), 0) + 1
            valid += bool(advice.get("valid", True))
        created = [c for _, c in rows]
        size = sum(
            Path(self.path + suffix).stat().st_size for suffix in ("", "-wal") if Path(self.path + suffix).exists()
        )
        return dict(
            path=self.path,
            entries=len(rows),
            valid_fraction=valid / len(rows) if rows else 0.0,
            by_source=dict(sorted(sources.items(), key=lambda kv: -kv[1])),
            oldest=time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(min(created))) if created else None,
            newest=time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(max(created))) if created else None,
            size_bytes=size if self.path != ":memory:" else 0,
        )

    def close(self) -> None:
        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
        self._conn = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_conn"], state["_pid"], state["_lock"] = None, None, None
        state["_recent"] = OrderedDict()  # a copy in another process reads the file
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"AdviceCache({self.path!r}, hits={self.hits}, misses={self.misses})"


class CachedAdvisor(Advisor):
    """
    Answer from the cache where possible and ask ``advisor`` only for the misses.

    Only valid answers are stored: a failure (timeout, parse error) may be transient and must be retried later.
    Identical requests within one batch are sent once.
    Answers are keyed by the wrapped advisor's identity, so advisors never read each other's entries.

    :param advisor: the advisor that answers cache misses
    :param cache: an :class:`AdviceCache` or a path to its database file
    """

    def __init__(self, advisor: Advisor, cache: AdviceCache | str | os.PathLike[str]) -> None:
        super().__init__()
        self.advisor = advisor
        self.cache = cache if isinstance(cache, AdviceCache) else AdviceCache(cache)
        # one set of counters: queries are counted by the wrapped advisor, hits/misses here
        self.stats = advisor.stats

    @property
    def identity(self) -> str:
        return self.advisor.identity

    def _advise(self, requests: Sequence[AdviceRequest]) -> list[Advice]:
        identity = self.advisor.identity
        keys = [r.cache_key(identity) for r in requests]
        answers: list[Advice | None] = [self._lookup(k) for k in keys]
        missing = [i for i, a in enumerate(answers) if a is None]
        self.stats.cache_hits += len(requests) - len(missing)
        self.stats.cache_misses += len(missing)
        if missing:
            # identical views in one batch (several envs at the same state) are asked once
            first: dict[str, int] = {}
            for i in missing:
                first.setdefault(keys[i], i)
            unique = list(first.values())
            fresh = dict(zip(unique, self.advisor.advise([requests[i] for i in unique]), strict=True))
            for i in unique:
                if fresh[i].valid:
                    self._store(keys[i], fresh[i])
            for i in missing:
                answers[i] = fresh[first[keys[i]]]  # advice is immutable: identical views share one answer
        return [a for a in answers if a is not None]

    def lookup(self, key: str) -> Advice | None:
        """The cached answer for a content address (:meth:`AdviceRequest.cache_key` with :attr:`identity`), counted
        as a cache hit; None when there is none (not counted: the caller decides whether it asks)."""
        advice = self._lookup(key)
        if advice is not None:
            self.stats.cache_hits += 1
        return advice

    def _lookup(self, key: str) -> Advice | None:
        try:
            advice = self.cache.get(key)
        except sqlite3.Error as exc:  # an unreadable cache degrades to a miss, never a crash
            logger.warning("Advice cache read failed (%r); treating as a miss", exc)
            return None
        if advice is None or advice.latency == 0.0:
            return advice
        return replace(advice, latency=0.0)  # a hit costs no time

    def _store(self, key: str, advice: Advice) -> None:
        try:
            self.cache.put(key, advice)
        except sqlite3.Error as exc:
            logger.warning("Advice cache write failed (%r); answer not cached", exc)

    def advise(self, requests: Sequence[AdviceRequest]) -> list[Advice]:
        # No second round of counting/timing: the wrapped advisor already does it for the misses.
        return self._advise(requests)
