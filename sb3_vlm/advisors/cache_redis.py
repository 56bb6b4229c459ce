"""
The rows of an advice cache on a Redis server, shared by many machines: ``AdviceCache("redis://host:6379/0")``
keeps its rows here (:class:`RedisRows`) instead of in an SQLite file.

Why Redis for this (against PostgreSQL): the cache is a key-value map, read once per distinct view per process (the
decoded answers stay in its memory) and written once per distinct view. Measured side by side
(``benchmarks/cache_backends.py``, both on 127.0.0.1): reads cost about the same from Python's clients, writes are
an order of magnitude cheaper on Redis (PostgreSQL commits each row durably), and Redis's ``SET NX PX`` is the
short-lived claim on a key in one command (:meth:`RedisRows.claim`), which keeps two machines from asking the VLM
about the same view at once. A relational database adds nothing this data needs.

Same contract as the SQLite file (:class:`~sb3_vlm.advisors.cache.AdviceCache`): the same keys and identities,
each row's checksum checked on read, decoded answers kept in memory, a size cap evicting the oldest rows, hits,
misses and corrupt rows counted: :class:`~sb3_vlm.advisors.cache.AdviceCache` does all that, whatever holds its
rows. While the server cannot be reached, lookups are misses and writes are dropped, counted in
:attr:`RedisRows.unavailable` and logged once per outage: training goes on, the VLM is asked instead.

Layout, under ``prefix`` (default ``sb3vlm:advice:``): one hash per row (``value``, ``checksum``, ``created``) at
``<prefix><key>`` and a sorted set ``<prefix>:created`` of the keys by creation time (for eviction and counting).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

logger = logging.getLogger(__name__)

#: the environment variable holding the server's password (rather than the URL, which run.json records)
PASSWORD_ENV = "SB3_VLM_CACHE_PASSWORD"

# evict the oldest rows beyond ARGV[1] in one step (atomic on the server, so concurrent writers never evict twice)
_EVICT = """
local surplus = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[1])
if surplus <= 0 then return 0 end
local old = redis.call('ZRANGE', KEYS[1], 0, surplus - 1)
for _, key in ipairs(old) do redis.call('DEL', ARGV[2] .. key) end
redis.call('ZREM', KEYS[1], unpack(old))
return #old
"""


def redact_url(url: str) -> str:
    """``url`` without its password (``redis://:secret@host/0`` → ``redis://:***@host/0``)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class CacheUnavailable(RuntimeError):
    """The cache's server cannot be reached now: a lookup is a miss, a write is dropped (counted by the backend)."""


class RedisRows:
    """
    The rows of an :class:`~sb3_vlm.advisors.cache.AdviceCache` on a Redis server (see the module docstring); built
    by ``AdviceCache(url)`` for a ``redis://``, ``rediss://`` or ``unix://`` URL. Needs the ``fleet`` extra
    (``pip install 'sb3-vlm[fleet]'``).

    :param url: the server's URL; a password is best given in ``SB3_VLM_CACHE_PASSWORD`` (one in the URL is never
        logged, and ``sb3-vlm train`` refuses it, since ``run.json`` records the URL)
    :param timeout: seconds a connection attempt or a command may take (a server that is down costs at most this
        per lookup, then one retry every ``retry_after`` seconds)
    :param max_entries: keep at most this many rows (the oldest evicted); None: unbounded
    :param prefix: the key prefix, so that several caches can share one Redis database
    :param retry_after: seconds after a failed command before the server is tried again
    """

    def __init__(
        self,
        url: str,
        timeout: float = 5.0,
        max_entries: int | None = None,
        prefix: str = "sb3vlm:advice:",
        retry_after: float = 5.0,
    ) -> None:
        try:
            import redis  # noqa: F401
        except ImportError as exc:
            raise ImportError("A Redis advice cache needs the 'fleet' extra: pip install 'sb3-vlm[fleet]'") from exc
        self.url, self.timeout, self.max_entries = url, timeout, max_entries
        self.prefix, self.retry_after = prefix, retry_after
        #: lookups and writes that found the server unreachable (each a miss, or an answer not stored)
        self.unavailable = 0
        self._client: Any = None
        self._client_pid: int | None = None
        self._down_until = 0.0

    @property
    def display_path(self) -> str:
        return redact_url(self.url)

    def _redis(self) -> Any:
        if time.monotonic() < self._down_until:
            raise CacheUnavailable(f"{self.display_path} was unreachable less than {self.retry_after:.0f} s ago")
        if self._client is None or self._client_pid != os.getpid():
            import redis

            extra: dict[str, Any] = {}
            password = os.environ.get(PASSWORD_ENV)
            if password and urlsplit(self.url).password is None:
                extra["password"] = password  # a secret kept out of URLs, and so out of run.json and logs
            self._client = redis.Redis.from_url(
                self.url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout, decode_responses=True,
                **extra,
            )  # fmt: skip
            self._client_pid = os.getpid()
        return self._client

    def _call(self, fn: Any) -> Any:
        """Run ``fn(client)``; an unreachable server raises :class:`CacheUnavailable` (counted, logged once per
        outage) and is not tried again for ``retry_after`` seconds."""
        import redis

        try:
            result = fn(self._redis())
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
            self.unavailable += 1
            if self._down_until == 0.0:
                logger.warning("Advice cache %s is unreachable (%s): lookups are misses until it is back (counted "
                               "in .unavailable)", self.display_path, exc)  # fmt: skip
            self._down_until = time.monotonic() + self.retry_after
            raise CacheUnavailable(str(exc)) from exc
        if self._down_until:
            logger.warning("Advice cache %s is reachable again", self.display_path)
            self._down_until = 0.0
        return result

    @property
    def _index(self) -> str:
        return f"{self.prefix}:created"

    def get(self, key: str) -> tuple[str, str | None] | None:
        """``(value, checksum)`` of the row under ``key``, or None."""
        value, checksum = self._call(lambda r: r.hmget(self.prefix + key, "value", "checksum"))
        return None if value is None else (value, checksum)

    def put(self, key: str, value: str, checksum: str, created: float | None = None) -> int:
        """Write a row, then evict the oldest beyond ``max_entries`` (atomically on the server); returns how many
        were evicted."""
        created = time.time() if created is None else float(created)

        def write(r: Any) -> int:
            pipe = r.pipeline(transaction=True)
            pipe.hset(self.prefix + key, mapping={"value": value, "checksum": checksum, "created": created})
            pipe.zadd(self._index, {key: created})
            pipe.execute()
            if self.max_entries is None:
                return 0
            return int(r.eval(_EVICT, 1, self._index, self.max_entries, self.prefix))

        return int(self._call(write))

    def count(self) -> int:
        return int(self._call(lambda r: r.zcard(self._index)))

    def clear(self) -> None:
        def clear(r: Any) -> None:
            keys = r.zrange(self._index, 0, -1)
            for start in range(0, len(keys), 1000):
                r.delete(*[self.prefix + k for k in keys[start : start + 1000]])
            r.delete(self._index)

        self._call(clear)

    def all(self) -> list[tuple[str, str, float, str | None]]:
        """Every row as ``(key, value, created, checksum)``."""

        def rows(r: Any) -> list[tuple[str, str, float, str | None]]:
            keys = r.zrange(self._index, 0, -1)
            pipe = r.pipeline(transaction=False)
            for k in keys:
                pipe.hmget(self.prefix + k, "value", "created", "checksum")
            out = []
            for k, (value, created, checksum) in zip(keys, pipe.execute(), strict=True):
                if value is not None:
                    out.append((k, value, float(created or 0.0), checksum))
            return out

        return list(self._call(rows))

    def nbytes(self) -> int:
        return sum(len(value) for _, value, _, _ in self.all())

    def claim(self, key: str, ttl: float) -> bool:
        """
        Take a claim on ``key`` for ``ttl`` seconds (``SET NX PX``): True for the first claimant (it asks the VLM
        and writes the answer), False while another holds it (it waits for the row instead). True when the server
        is down (nothing to coordinate with: the caller asks).
        """
        try:
            claimed = self._call(
                lambda r: r.set(f"{self.prefix}:claim:{key}", os.getpid(), nx=True, px=int(ttl * 1000))
            )
            return bool(claimed)
        except CacheUnavailable:
            return True

    def release(self, key: str) -> None:
        with contextlib.suppress(CacheUnavailable):
            self._call(lambda r: r.delete(f"{self.prefix}:claim:{key}"))

    def close(self) -> None:
        if self._client is not None and self._client_pid == os.getpid():
            self._client.close()
        self._client = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_client"], state["_client_pid"] = None, None  # each process connects on its own
        return state
