"""
An overall deadline for each HTTP request of an API advisor: connect, send and the whole answer, headers and body.

The HTTP clients' own ``timeout`` bounds each socket operation, not the request: a server that trickles one byte
every half second never lets a read time out and holds the request as long as it likes, whatever ``timeout`` says.
So the API advisors give their SDK a transport whose network streams clamp every connect, read and
write to the time left before the deadline of the request in progress on that thread (:func:`request_deadline`), and
raise the HTTP library's own timeout error once it has passed: the SDK turns that into its timeout exception, which the
advisor counts and retries as a timeout. Works with ``httpx2`` / ``httpcore2`` and ``httpx`` / ``httpcore``.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import threading
import time
from collections.abc import Iterator
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit
from urllib.request import getproxies, proxy_bypass

logger = logging.getLogger(__name__)

_local = threading.local()
#: bytes per clamped write: a server that reads slowly cannot stretch one write past the deadline by much
_WRITE_CHUNK = 64 * 1024


class DeadlineExceeded(TimeoutError):
    """A request that ended after its deadline (counted and retried as a timeout, its answer unused)."""


@contextlib.contextmanager
def request_deadline(seconds: float | None) -> Iterator[None]:
    """
    Give the HTTP requests made by this thread inside the block ``seconds`` in all (None: no deadline); raises
    :class:`DeadlineExceeded` at the end of the block when the deadline has passed, so that an answer that came too
    late is never used, even from a transport that could not be clamped.
    """
    previous = getattr(_local, "deadline", None)
    deadline = None if seconds is None else time.monotonic() + seconds
    _local.deadline = deadline
    try:
        yield
    finally:
        _local.deadline = previous
    if deadline is not None and time.monotonic() > deadline:
        raise DeadlineExceeded(f"request took longer than its deadline of {seconds:g} s")


def _clamped(timeout: float | None, error: type[Exception]) -> float | None:
    """``timeout`` cut to the time left before this thread's deadline; ``error`` once it has passed."""
    deadline = getattr(_local, "deadline", None)
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise error("request deadline passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream:
    """A network stream of ``httpcore`` whose operations end at the deadline (see the module docstring)."""

    def __init__(self, stream: Any, core: ModuleType) -> None:
        self._stream, self._core = stream, core

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _clamped(timeout, self._core.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        view = memoryview(buffer)
        for start in range(0, len(view), _WRITE_CHUNK):
            self._stream.write(view[start : start + _WRITE_CHUNK], _clamped(timeout, self._core.WriteTimeout))

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None) -> Any:
        stream = self._stream.start_tls(ssl_context, server_hostname, _clamped(timeout, self._core.ConnectTimeout))
        return _DeadlineStream(stream, self._core)

    def close(self) -> None:
        self._stream.close()

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _DeadlineBackend:
    """A network backend of ``httpcore`` whose connections and streams end at the deadline."""

    def __init__(self, backend: Any, core: ModuleType) -> None:
        self._backend, self._core = backend, core

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, *args: Any, **kwargs: Any) -> Any:
        timeout = _clamped(timeout, self._core.ConnectTimeout)
        return _DeadlineStream(self._backend.connect_tcp(host, port, timeout, *args, **kwargs), self._core)

    def connect_unix_socket(self, path: str, timeout: float | None = None, *args: Any, **kwargs: Any) -> Any:
        timeout = _clamped(timeout, self._core.ConnectTimeout)
        return _DeadlineStream(self._backend.connect_unix_socket(path, timeout, *args, **kwargs), self._core)

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


def http_module(client_class: type) -> ModuleType:
    """The ``httpx``-like package a client class derives from (``httpx2`` or ``httpx``)."""
    for cls in client_class.__mro__:
        root = cls.__module__.split(".")[0]
        if root.startswith("httpx"):
            return importlib.import_module(root)
    raise TypeError(f"{client_class.__name__} is not an httpx client")


def env_proxy(url: str) -> str | None:
    """The proxy the environment names for ``url`` (``HTTPS_PROXY``, ``ALL_PROXY`` ..., ``NO_PROXY``), as the HTTP
    clients read it themselves when they build their own transport."""
    parts = urlsplit(url)
    if not parts.hostname or proxy_bypass(parts.hostname):
        return None
    proxies = getproxies()
    return proxies.get(parts.scheme) or proxies.get("all")


_warned = False


def deadline_transport(httpx: ModuleType, url: str) -> Any:
    """
    An ``httpx.HTTPTransport`` (of the ``httpx`` or ``httpx2`` package given) for requests to ``url`` whose network
    operations end at the deadline of :func:`request_deadline`, with the environment's proxy for ``url``.

    The clamp sits in the connection pool's network backend, which ``httpx`` does not expose: where the pool has none
    (another version), the transport is returned as it is, a warning says that only the per-read timeout applies
    until the answer is complete, and :func:`request_deadline` still refuses the late answer.
    """
    global _warned
    transport = httpx.HTTPTransport(proxy=env_proxy(url))
    pool = getattr(transport, "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if backend is None:
        if not _warned:
            _warned = True
            logger.warning("%s %s: cannot bound whole requests; a slow answer is cut only when it is complete",
                           httpx.__name__, getattr(httpx, "__version__", ""))  # fmt: skip
        return transport
    core = importlib.import_module(type(pool).__module__.split(".")[0])
    pool._network_backend = _DeadlineBackend(backend, core)  # type: ignore[union-attr]
    return transport
