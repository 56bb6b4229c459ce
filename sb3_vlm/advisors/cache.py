"""
Content-addressed, persistent advice cache: an SQLite file in WAL mode (the default, embedded), or a Redis server
shared by many machines (``AdviceCache("redis://host:6379/0")``, :mod:`sb3_vlm.advisors.cache_redis`). Values are
stored as JSON, never pickles.
"""

from __future__ import annotations

import hashlib
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

import numpy as np
from gymnasium import spaces

from sb3_vlm.advice import Advice, AdviceRequest
from sb3_vlm.advice import advice_problem as usable_problem
from sb3_vlm.advisors.base import Advisor
from sb3_vlm.advisors.cache_redis import CacheUnavailable, RedisRows, redact_url

logger = logging.getLogger(__name__)

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS advice (key TEXT PRIMARY KEY, value TEXT NOT NULL, created REAL NOT NULL, "
    "checksum TEXT)"
)
#: the first 16 bytes of every SQLite 3 database file
_SQLITE_HEADER = b"SQLite format 3\x00"
#: how far stored probabilities may sum from 1 (float32 values written as JSON)
_PROBS_TOLERANCE = 1e-3


class NotACacheError(ValueError):
    """The file at a cache's path is not an advice cache (not SQLite, or another program's database)."""


def is_server_url(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a cache server (``redis://``, ``rediss://``, ``unix://``) rather than a file."""
    return str(path).startswith(("redis://", "rediss://", "unix://"))


def row_checksum(key: str, value: str) -> str:
    """sha256 of a row's key and JSON value: a row changed on disk (a flipped bit, an edited digit, a value moved to
    another key) no longer matches. Detects damage, not a deliberate forgery (anyone can recompute it)."""
    return hashlib.sha256(f"{key}\x00{value}".encode()).hexdigest()


def advice_problem(advice: Advice, action_space: spaces.Space | None = None) -> str | None:
    """
    Why a stored answer cannot be served for a request with ``action_space`` (None: it can): what makes advice
    unusable as a buffer row (:func:`sb3_vlm.advice.advice_problem`: non-finite or non-numeric values, wrong sizes, a
    discrete action outside the space), and, since rows are stored normalised, probabilities that do not sum to 1 and
    a discrete action stored beside them that is not one of the space's.
    """
    problem = usable_problem(advice, action_space)
    if problem is not None:
        return problem
    if advice.probs is not None:
        probs = advice.probs.astype(np.float64).reshape(-1)
        if abs(probs.sum() - 1.0) > _PROBS_TOLERANCE:
            return "probabilities do not sum to 1"
        if advice.action is not None and isinstance(action_space, spaces.Discrete):
            return usable_problem(replace(advice, probs=None), action_space)
    return None


class AdviceCache:
    """
    Map request content addresses (see :meth:`AdviceRequest.cache_key`) to advice.

    The connection is opened lazily per process, so the cache pickles (it travels to ``SubprocVecEnv`` workers) and
    several processes may share one file: SQLite's WAL journal and a busy timeout serialise their writers.
    ``path=":memory:"`` keeps a private in-process cache (not shared after pickling).

    **Integrity** (issue 17): every row carries a checksum of its key and value (:func:`row_checksum`), and a row
    read back is checked against it and decoded and validated (:func:`advice_problem`) against the request's action
    space. A row that fails (edited, damaged, or written for another action space) is served as a miss: the
    advisor is asked again and its answer overwrites the row. Such rows are counted in :attr:`corrupt` (and as
    misses) and reach the logger as ``advisor/cache_corrupt``. Rows written before the checksum existed (databases
    are migrated by adding the column) are checked by decoding and validation only.

    **Files that are not ours are never touched.** A path holding something other than an SQLite file, or an SQLite
    database without the ``advice`` table (another program's), raises :class:`NotACacheError` at construction (or
    at the first lookup, if it appeared later). Only a damaged database that is recognisably an advice cache (its
    schema still lists the ``advice`` table), e.g. after a crash mid-write on a file system without locking, is
    moved aside to ``<path>.corrupt-<time>`` with a warning and a new cache is started there.

    ``read_only=True`` opens an existing cache without creating or changing any file (not even SQLite's ``-wal`` /
    ``-shm`` files where there are none): lookups work, writes raise ``sqlite3.OperationalError``
    (``CachedAdvisor`` then logs that the answer was not cached), a damaged file raises instead of being moved.

    The most recently used answers are also kept decoded in memory (advice is immutable, so a hit returns the
    object itself): a hit then costs a dict lookup instead of a query and a JSON decode (issue 18). An entry another
    process overwrites later is not seen by this process until it drops out of memory; entries are written once per
    content address in practice (the answers of one advisor identity are interchangeable).

    :param path: database file, ``":memory:"``, or the URL of a Redis server shared by many machines
        (``redis://host:6379/0``; the ``fleet`` extra, :mod:`sb3_vlm.advisors.cache_redis`)
    :param timeout: seconds a writer waits for a lock held by another process; for a server, the seconds a
        connection or command may take (at most 5: a server that is down must not stall training)
    :param max_entries: keep at most this many entries: the oldest are evicted (first in, first out) when a write
        goes over; None: unbounded
    :param memory_entries: answers kept decoded in memory (least recently used dropped first); 0: none
    :param read_only: open an existing cache file for lookups only, creating and changing nothing (``sb3-vlm cache
        stats``)
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = ":memory:",
        timeout: float = 30.0,
        max_entries: int | None = None,
        memory_entries: int = 65_536,
        read_only: bool = False,
    ) -> None:
        if max_entries is not None and max_entries < 1:
            raise ValueError(f"max_entries must be >= 1 or None, got {max_entries}")
        if memory_entries < 0:
            raise ValueError(f"memory_entries must be >= 0, got {memory_entries}")
        self.path = str(path)
        self.timeout = timeout
        self.max_entries = max_entries
        self.memory_entries = memory_entries
        self.read_only = read_only
        #: the rows on a server (``redis://`` ...: :mod:`sb3_vlm.advisors.cache_redis`), or None: in the SQLite file
        self._server: RedisRows | None = None
        if is_server_url(self.path):
            if read_only:
                raise ValueError("read_only is for cache files; a server cache is opened as it is")
            self._server = RedisRows(self.path, timeout=min(timeout, 5.0), max_entries=max_entries)
        if read_only and (self.path == ":memory:" or not Path(self.path).is_file()):
            raise FileNotFoundError(f"No advice cache file at {self.path} to open read-only")
        self._check_file()
        self._recent: OrderedDict[str, Advice] = OrderedDict()
        self.evicted = 0
        self.hits = 0
        self.misses = 0
        #: rows that failed their checksum, decoding or validation on read (each also counted in :attr:`misses`)
        self.corrupt = 0
        self._warned_corrupt = False
        self._conn: sqlite3.Connection | None = None
        self._pid: int | None = None
        self._has_checksum = True
        self._lock = threading.Lock()

    def _check_file(self) -> None:
        """Refuse a path that holds something else (``sb3-vlm cache stats model.zip``, issue 17): cheap, reads 16
        bytes and creates nothing."""
        path = Path(self.path)
        if self._server is not None or self.path == ":memory:" or not path.is_file() or path.stat().st_size == 0:
            return  # nothing there yet (an empty file is an empty SQLite database)
        with path.open("rb") as file:
            header = file.read(len(_SQLITE_HEADER))
        if header != _SQLITE_HEADER:
            raise NotACacheError(f"{self.path} is not an advice cache (not an SQLite database); left untouched")

    def _is_ours(self) -> bool:
        """Whether the file at :attr:`path` is recognisably an advice cache: an SQLite file whose schema lists the
        ``advice`` table. Read as immutable, so that checking creates and changes nothing."""
        try:
            with Path(self.path).open("rb") as file:
                if file.read(len(_SQLITE_HEADER)) != _SQLITE_HEADER:
                    return False
            conn = sqlite3.connect(f"{Path(self.path).resolve().as_uri()}?immutable=1", uri=True)
            try:
                return bool(
                    conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'advice'").fetchone()
                )
            finally:
                conn.close()
        except (OSError, sqlite3.Error):
            return False

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():
            if self.path != ":memory:" and not self.read_only:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            try:
                conn = self._open()
            except sqlite3.DatabaseError as exc:  # not a database, or a damaged one: keep it for inspection
                if self.path == ":memory:" or self.read_only or isinstance(exc, sqlite3.OperationalError):
                    raise  # locked, read-only, missing permissions: the file may be fine, nothing to move
                if not self._is_ours():  # never move a file we did not write
                    raise NotACacheError(
                        f"{self.path} is not a readable advice cache ({exc!r}); left untouched: move or delete it, "
                        "or give another cache path"
                    ) from exc
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
        if self.read_only:
            return self._open_read_only()
        conn = sqlite3.connect(self.path, timeout=self.timeout, check_same_thread=False, isolation_level=None)
        try:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if tables and "advice" not in tables:  # before any pragma: WAL mode would change their file
                raise NotACacheError(
                    f"{self.path} is an SQLite database without an advice table (another program's?); left untouched"
                )
            if self.path != ":memory:":
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                if conn.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                    raise sqlite3.DatabaseError("quick_check failed")
            conn.execute(_SCHEMA)
            if "checksum" not in self._columns(conn):
                try:  # a cache written before checksums: its old rows are checked by decoding and validation
                    conn.execute("ALTER TABLE advice ADD COLUMN checksum TEXT")
                except sqlite3.OperationalError as exc:
                    if "duplicate column" not in str(exc):  # else another process migrated it first
                        raise
            self._has_checksum = True
        except (sqlite3.DatabaseError, NotACacheError):
            conn.close()
            raise
        return conn

    def _open_read_only(self) -> sqlite3.Connection:
        # A reader of a WAL database creates its -wal and -shm files where they are missing (sqlite.org/wal.html,
        # "read-only databases"). Missing, they tell that no connection has the file open and everything is in the
        # main file: read that as immutable, which creates nothing. Present, a plain read-only connection uses them.
        wal = any(Path(self.path + suffix).exists() for suffix in ("-wal", "-shm"))
        uri = f"{Path(self.path).resolve().as_uri()}?{'mode=ro' if wal else 'immutable=1'}"
        conn = sqlite3.connect(uri, uri=True, timeout=self.timeout, check_same_thread=False, isolation_level=None)
        try:
            columns = self._columns(conn)
            if not columns:
                raise NotACacheError(f"{self.path} is an SQLite database without an advice table, not an advice cache")
            if conn.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("quick_check failed")
            self._has_checksum = "checksum" in columns
        except (sqlite3.DatabaseError, NotACacheError):
            conn.close()
            raise
        return conn

    @staticmethod
    def _columns(conn: sqlite3.Connection) -> set[str]:
        return {row[1] for row in conn.execute("PRAGMA table_info(advice)")}

    def get(self, key: str, action_space: spaces.Space | None = None) -> Advice | None:
        """The answer stored under ``key``, or None when there is none or its row is corrupt (see :meth:`read`)."""
        return self.read(key, action_space)[0]

    def read(self, key: str, action_space: spaces.Space | None = None) -> tuple[Advice | None, bool]:
        """
        ``(answer, corrupt)`` for ``key``: the stored answer (a hit), or None (a miss), with ``corrupt`` True when
        a row was there but failed its checksum, decoding or validation against ``action_space``
        (:func:`advice_problem`). Answers kept decoded in memory were checked when they were read or written.
        """
        with self._lock:
            advice = self._recent.get(key)
            if advice is not None:
                self._recent.move_to_end(key)
                self.hits += 1
                return advice, False
            row = self._row_get(key)
            if row is None:
                self.misses += 1
                return None, False
            advice, problem = self._decode(key, row[0], row[1], action_space)
            if advice is None:
                self.misses += 1
                self.corrupt += 1
                self._warn_corrupt(key, problem)
                return None, True
            self.hits += 1
            self._remember(key, advice)
        return advice, False

    @staticmethod
    def _decode(key: str, value: Any, checksum: Any, action_space: spaces.Space | None) -> tuple[Advice | None, str]:
        """The advice of one row, or None and why not."""
        if checksum is not None and checksum != row_checksum(key, str(value)):
            return None, "checksum mismatch"
        try:
            advice = Advice.from_dict(json.loads(value))
        except Exception as exc:  # whatever is in the file, a bad row is a miss, never a crash in training
            return None, f"undecodable value ({exc!r})"
        problem = advice_problem(advice, action_space)
        return (None, problem) if problem is not None else (advice, "")

    def _warn_corrupt(self, key: str, problem: str) -> None:
        if self._warned_corrupt:
            logger.debug("Advice cache %s: corrupt row %s (%s)", self.display_path, key, problem)
            return
        self._warned_corrupt = True
        logger.warning("Advice cache %s: row %s is corrupt (%s); asking again and overwriting it. Counted in "
                       "advisor/cache_corrupt, further ones logged at DEBUG", self.display_path, key,
                       problem)  # fmt: skip

    def _remember(self, key: str, advice: Advice) -> None:
        """Keep ``advice`` decoded in memory (under the lock)."""
        if self.memory_entries:
            self._recent[key] = advice
            self._recent.move_to_end(key)
            if len(self._recent) > self.memory_entries:
                self._recent.popitem(last=False)

    def put(self, key: str, advice: Advice) -> None:
        """Store ``advice`` under ``key`` as it is, with its checksum. A later :meth:`get` serves it only if it passes
        :func:`advice_problem` (``CachedAdvisor`` stores only answers that do, probabilities normalised)."""
        value = json.dumps(advice.to_dict())
        with self._lock:
            deleted = self._row_put(key, value, row_checksum(key, value))
            self._remember(key, advice)
            self.evicted += max(0, deleted)
            if deleted > 0:  # which keys went is not known here: forget the decoded copies, the store decides
                self._recent.clear()

    def __len__(self) -> int:
        with self._lock:
            return self._row_count()

    def clear(self) -> None:
        with self._lock:
            self._recent.clear()
            self._row_clear()

    # ------------------------------------------------------------------ moving rows between caches

    def export_rows(self) -> list[dict[str, Any]]:
        """Every row as ``{"key", "value", "checksum", "created"}`` (the JSON lines of ``sb3-vlm cache export``)."""
        with self._lock:
            rows = self._row_all()
        return [dict(key=k, value=v, checksum=c, created=t) for k, v, t, c in rows]

    def import_rows(self, rows: Sequence[dict[str, Any]], overwrite: bool = True) -> dict[str, int]:
        """
        Write exported rows (:meth:`export_rows`, from any backend) into this cache, keys and values as they are.
        A row whose checksum does not match its key and value, or whose value does not decode to advice, is skipped
        and counted as ``corrupt``; ``overwrite=False`` (``merge``) keeps the rows this cache has already.

        :return: ``{"written", "kept", "corrupt"}``
        """
        counts = {"written": 0, "kept": 0, "corrupt": 0}
        with self._lock:
            for row in rows:
                key, value = str(row.get("key", "")), row.get("value")
                checksum = row.get("checksum")
                if not isinstance(value, str) or (checksum is not None and checksum != row_checksum(key, value)):
                    counts["corrupt"] += 1
                    continue
                advice, _ = self._decode(key, value, None, None)
                if advice is None:
                    counts["corrupt"] += 1
                    continue
                if not overwrite and self._row_get(key) is not None:
                    counts["kept"] += 1
                    continue
                self.evicted += max(0, self._row_put(key, value, row_checksum(key, value), row.get("created")))
                self._recent.pop(key, None)
                counts["written"] += 1
        return counts

    # ------------------------------------------------------------------ the rows (SQLite; other backends override)

    def _row_get(self, key: str) -> tuple[str, str | None] | None:
        """``(value, checksum)`` of the row under ``key`` (checksum None for a row written before checksums)."""
        if self._server is not None:
            return self._server.get(key)
        checksum = "checksum" if self._has_checksum else "NULL"  # NULL: a read-only cache of an old version
        row = self._connection().execute(f"SELECT value, {checksum} FROM advice WHERE key = ?", (key,)).fetchone()
        return None if row is None else (row[0], row[1])

    def _row_put(self, key: str, value: str, checksum: str, created: float | None = None) -> int:
        """Write a row (``created``: now), then evict the oldest beyond ``max_entries``; returns how many were
        evicted."""
        if self._server is not None:
            return self._server.put(key, value, checksum, created)
        conn = self._connection()
        conn.execute(
            "INSERT OR REPLACE INTO advice (key, value, created, checksum) VALUES (?, ?, ?, ?)",
            (key, value, time.time() if created is None else float(created), checksum),
        )
        if self.max_entries is None:
            return 0
        # oldest first; one statement, so concurrent writers cannot both evict the same surplus twice
        return int(
            conn.execute(
                "DELETE FROM advice WHERE key IN (SELECT key FROM advice ORDER BY created ASC, rowid ASC "
                "LIMIT max(0, (SELECT COUNT(*) FROM advice) - ?))",
                (self.max_entries,),
            ).rowcount
        )

    def _row_count(self) -> int:
        if self._server is not None:
            return self._server.count()
        return int(self._connection().execute("SELECT COUNT(*) FROM advice").fetchone()[0])

    def _row_clear(self) -> None:
        if self._server is not None:
            return self._server.clear()
        self._connection().execute("DELETE FROM advice")

    def _row_all(self) -> list[tuple[str, str, float, str | None]]:
        """Every row as ``(key, value, created, checksum)``."""
        if self._server is not None:
            return self._server.all()
        checksum = "checksum" if self._has_checksum else "NULL"
        return self._connection().execute(f"SELECT key, value, created, {checksum} FROM advice").fetchall()

    def _row_bytes(self) -> int:
        if self._server is not None:
            return self._server.nbytes()
        if self.path == ":memory:":
            return 0
        return sum(
            Path(self.path + suffix).stat().st_size for suffix in ("", "-wal") if Path(self.path + suffix).exists()
        )

    def vacuum(self) -> None:
        """Give the space of deleted entries back to the file system (a server frees them itself)."""
        if self._server is not None:
            return
        with self._lock:
            self._connection().execute("VACUUM")

    def summary(self) -> dict[str, Any]:
        """What the cache holds: entries, valid fraction, entries per answering source, corrupt rows (failing their
        checksum, decoding or validation, action space unknown), age range, file size."""
        with self._lock:
            rows = self._row_all()
            size = self._row_bytes()
        sources: dict[str, int] = {}
        valid = corrupt = 0
        for key, value, _, check in rows:
            advice, _ = self._decode(key, value, check, None)
            if advice is None:
                corrupt += 1
                continue
            sources[advice.source] = sources.get(advice.source, 0) + 1
            valid += advice.valid
        created = [c for _, _, c, _ in rows]
        return dict(
            path=self.display_path,
            entries=len(rows),
            valid_fraction=valid / len(rows) if rows else 0.0,
            corrupt=corrupt,
            by_source=dict(sorted(sources.items(), key=lambda kv: -kv[1])),
            oldest=time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(min(created))) if created else None,
            newest=time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(max(created))) if created else None,
            size_bytes=size,
        )

    @property
    def display_path(self) -> str:
        """Where the cache is, as logs and summaries may show it (a server URL without its password)."""
        return redact_url(self.path) if self._server is not None else self.path

    @property
    def claims(self) -> bool:
        """Whether :meth:`claim` coordinates with other processes (a server cache); a file cache's always succeed."""
        return self._server is not None

    @property
    def unavailable(self) -> int:
        """Lookups and writes that found the cache's server unreachable (misses, answers not stored); 0 for files."""
        return self._server.unavailable if self._server is not None else 0

    def claim(self, key: str, ttl: float) -> bool:
        """Claim ``key`` for ``ttl`` seconds before asking about it (True: ask). A file cache claims nothing: its
        users are the processes of one machine, which dedupe in flight in their own queue; a server cache makes
        other machines wait for the claimant's answer (:meth:`~sb3_vlm.advisors.cache_redis.RedisRows.claim`)."""
        return self._server.claim(key, ttl) if self._server is not None else True

    def release(self, key: str) -> None:
        """Give up a claim (the answer is stored, or there is none to store)."""
        if self._server is not None:
            self._server.release(key)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
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
        self.__dict__.setdefault("_server", None)  # a cache pickled before server caches existed
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        down = f", unavailable={self.unavailable}" if self._server is not None else ""
        return (
            f"AdviceCache({self.display_path!r}, hits={self.hits}, misses={self.misses}, corrupt={self.corrupt}{down})"
        )


class RefusalMemory:
    """
    Refusals (:attr:`Advice.refused <sb3_vlm.advice.Advice.refused>`) remembered per content address, each for at
    most ``ttl`` seconds and ``uses`` lookups, at most ``max_entries`` at once (the oldest dropped first). In memory
    and per process: a copy sent to another process starts empty. Thread-safe.

    :param ttl: seconds a refusal is served after the advisor gave it; 0: refusals are not remembered
    :param uses: lookups a refusal is served for before the view is asked again
    :param max_entries: refusals remembered at once
    """

    def __init__(self, ttl: float = 600.0, uses: int = 20, max_entries: int = 10_000) -> None:
        if ttl < 0 or uses < 1 or max_entries < 1:
            raise ValueError(f"need ttl >= 0, uses >= 1 and max_entries >= 1, got {ttl}, {uses}, {max_entries}")
        self.ttl, self.uses, self.max_entries = ttl, uses, max_entries
        self._entries: OrderedDict[str, tuple[Advice, float, int]] = OrderedDict()  # advice, expiry, uses left
        self._lock = threading.Lock()

    def put(self, key: str, advice: Advice) -> None:
        if self.ttl <= 0:
            return
        with self._lock:
            self._entries[key] = (advice, time.monotonic() + self.ttl, self.uses)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def get(self, key: str) -> Advice | None:
        """The refusal remembered for ``key`` (one use spent), or None when there is none or its bounds are spent."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            advice, expiry, uses = entry
            if time.monotonic() >= expiry:
                del self._entries[key]
                return None
            if uses <= 1:
                del self._entries[key]  # this was its last use: the next request asks again
            else:
                self._entries[key] = (advice, expiry, uses - 1)
            return advice

    def __len__(self) -> int:
        return len(self._entries)

    def __getstate__(self) -> dict[str, Any]:
        return {"ttl": self.ttl, "uses": self.uses, "max_entries": self.max_entries}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.ttl, self.uses, self.max_entries = state["ttl"], state["uses"], state["max_entries"]
        self._entries = OrderedDict()
        self._lock = threading.Lock()


class CachedAdvisor(Advisor):
    """
    Answer from the cache where possible and ask ``advisor`` only for the misses.

    Only valid answers are stored: a failure (timeout, HTTP error, open circuit) may be transient and must be retried
    later. Probabilities are stored normalised (as the advised buffers use them), and an answer that could not be
    served back (:func:`advice_problem`: NaN, a string action, a wrong shape) is not stored. A stored row that fails
    its checks on read is a miss, counted in ``stats.cache_corrupt`` too, and the fresh answer overwrites it.
    Identical requests within one batch are sent once.
    Answers are keyed by the wrapped advisor's identity, so advisors never read each other's entries.

    **Refusals** (issue 16): a VLM that refuses a view (or answers it with something unparseable or unusable,
    :attr:`Advice.refused <sb3_vlm.advice.Advice.refused>`) will most likely refuse it again, and each ask is paid
    for. So a refusal is remembered in memory (:class:`RefusalMemory`) and served for that view, without asking,
    for ``refusal_ttl`` seconds and at most ``refusal_uses`` times; then the view is asked again (the scene is the
    same, but a sampled answer, a retrained or restarted model may differ). Served refusals count as cache hits and
    in ``stats.refusal_hits``, not again in ``stats.invalid``. They are not written to the database: a later run
    asks afresh.

    :param advisor: the advisor that answers cache misses
    :param cache: an :class:`AdviceCache` or a path to its database file
    :param refusal_ttl: seconds a refusal is served for its view; 0: refusals are asked again every time
    :param refusal_uses: requests a refusal is served to before its view is asked again
    :param max_refusals: refusals remembered at once (the oldest dropped first)
    :param claim_ttl: a server cache shared by several machines: seconds a miss is claimed for while this process
        asks about it; another process that misses the same view meanwhile waits for the answer (polling every
        ``claim_poll`` seconds) instead of asking too, and asks itself once the claim is released without an answer
        or has expired (the claimant died)
    :param claim_poll: see ``claim_ttl``
    """

    def __init__(
        self,
        advisor: Advisor,
        cache: AdviceCache | str | os.PathLike[str],
        refusal_ttl: float = 600.0,
        refusal_uses: int = 20,
        max_refusals: int = 10_000,
        claim_ttl: float = 60.0,
        claim_poll: float = 0.02,
    ) -> None:
        super().__init__()
        if not claim_ttl > 0 or not claim_poll > 0:
            raise ValueError(f"claim_ttl and claim_poll must be > 0, got {claim_ttl}, {claim_poll}")
        self.claim_ttl, self.claim_poll = claim_ttl, claim_poll
        self.advisor = advisor
        self.cache = cache if isinstance(cache, AdviceCache) else AdviceCache(cache)
        self.refusals = RefusalMemory(refusal_ttl, refusal_uses, max_refusals)
        # one set of counters: queries are counted by the wrapped advisor, hits/misses here
        self.stats = advisor.stats

    @property
    def identity(self) -> str:
        return self.advisor.identity

    def _advise(self, requests: Sequence[AdviceRequest]) -> list[Advice]:
        identity = self.advisor.identity
        keys = [r.cache_key(identity) for r in requests]
        answers: list[Advice | None] = [self._lookup(k, r.action_space) for k, r in zip(keys, requests, strict=True)]
        missing = [i for i, a in enumerate(answers) if a is None]
        self.stats.cache_hits += len(requests) - len(missing)
        self.stats.cache_misses += len(missing)
        if missing:
            # identical views in one batch (several envs at the same state) are asked once
            first: dict[str, int] = {}
            for i in missing:
                first.setdefault(keys[i], i)
            fresh = self._ask(list(first.values()), keys, requests)
            for i in missing:
                answers[i] = fresh[first[keys[i]]]  # advice is immutable: identical views share one answer
        return [a for a in answers if a is not None]

    def _ask(self, unique: list[int], keys: list[str], requests: Sequence[AdviceRequest]) -> dict[int, Advice]:
        """Answers for the missed rows ``unique``: asked where this process claims the view, waited for where
        another process (of a server cache) is asking about it already."""
        fresh: dict[int, Advice] = {}
        pending = list(unique)
        while pending:
            mine = []
            for i in pending:
                if not self._claim(keys[i]):
                    continue  # another process is asking about it: wait for its claim to end
                # a server cache: the claimant before us stores, then releases, so its answer may be there now
                stored = self._lookup(keys[i], requests[i].action_space) if self.cache.claims else None
                if stored is None:
                    mine.append(i)
                    continue
                self._release(keys[i])
                self.stats.cache_hits += 1  # a miss at first, answered by another process: a hit after all
                self.stats.cache_misses -= 1
                fresh[i] = stored
            if mine:
                try:
                    answers = self.advisor.advise([requests[i] for i in mine])
                    for i, advice in zip(mine, answers, strict=True):
                        fresh[i] = advice
                        if advice.valid:
                            self._store(keys[i], advice, requests[i].action_space)
                        elif advice.refused:
                            self._refusals().put(keys[i], advice)
                finally:
                    for i in mine:
                        self._release(keys[i])
            pending = [i for i in pending if i not in fresh]
            if pending:
                time.sleep(getattr(self, "claim_poll", 0.02))
        return fresh

    def _claim(self, key: str) -> bool:
        try:
            # getattr: a CachedAdvisor pickled before claims existed (a checkpoint) has no settings for them
            return self.cache.claim(key, getattr(self, "claim_ttl", 60.0))
        except Exception as exc:  # a claim that cannot be taken must not stop the asking
            logger.debug("Advice cache claim failed (%r); asking", exc)
            return True

    def _release(self, key: str) -> None:
        try:
            self.cache.release(key)
        except Exception as exc:
            logger.debug("Advice cache release failed (%r)", exc)

    def lookup(self, key: str, action_space: spaces.Space | None = None) -> Advice | None:
        """The cached answer for a content address (:meth:`AdviceRequest.cache_key` with :attr:`identity`), checked
        against ``action_space`` and counted as a cache hit (a remembered refusal too); None when there is none (not
        counted: the caller decides whether it asks) or its row is corrupt (counted in ``stats.cache_corrupt``)."""
        advice = self._lookup(key, action_space)
        if advice is not None:
            self.stats.cache_hits += 1
        return advice

    def _lookup(self, key: str, action_space: spaces.Space | None = None) -> Advice | None:
        try:
            advice, corrupt = self.cache.read(key, action_space)
        except CacheUnavailable:  # a server that is down: a miss (the backend counts and logs it)
            return None
        except sqlite3.Error as exc:  # an unreadable cache degrades to a miss, never a crash
            logger.warning("Advice cache read failed (%r); treating as a miss", exc)
            return None
        if corrupt:
            self.stats.cache_corrupt += 1
        if advice is None:
            advice = self._refusals().get(key)
            if advice is None:
                return None
            self.stats.refusal_hits += 1
        if advice.latency == 0.0:
            return advice
        advice = replace(advice, latency=0.0)  # a hit costs no time
        with self.cache._lock:  # and the next hit of this key needs no copy (the decoded answer kept in memory)
            if key in self.cache._recent:
                self.cache._remember(key, advice)
        return advice

    def _refusals(self) -> RefusalMemory:
        # a CachedAdvisor pickled before refusals were remembered (a checkpoint) has none yet
        if "refusals" not in self.__dict__:
            self.refusals = RefusalMemory()
        return self.refusals

    def _store(self, key: str, advice: Advice, action_space: spaces.Space | None = None) -> None:
        if advice.probs is not None and np.all(np.isfinite(advice.probs)) and np.all(advice.probs >= 0):
            total = float(np.sum(advice.probs, dtype=np.float64))
            if total > 0 and abs(total - 1.0) > _PROBS_TOLERANCE / 10:  # stored rows are checked to sum to 1
                advice = replace(advice, probs=(advice.probs / total).astype(np.float32))
        problem = advice_problem(advice, action_space)
        if problem is not None:  # it would be rejected on every read: not worth a row
            logger.debug("Advice not cached: %s", problem)
            return
        try:
            self.cache.put(key, advice)
        except CacheUnavailable:
            pass  # counted and logged by the backend
        except sqlite3.Error as exc:
            logger.warning("Advice cache write failed (%r); answer not cached", exc)

    def advise(self, requests: Sequence[AdviceRequest]) -> list[Advice]:
        # No second round of counting/timing: the wrapped advisor already does it for the misses.
        return self._advise(requests)
