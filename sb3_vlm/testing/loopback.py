"""A loopback HTTP server for API-client tests: 127.0.0.1 only, scripted replies, bounded, stopped afterwards."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    status: int = 200
    body: dict[str, Any] | str = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


class LoopbackServer:
    """
    Serves scripted :class:`Reply` objects in order (the last one repeats), or what ``responder(path, request)``
    returns. Records every request body. Use as a context manager.
    """

    def __init__(self, replies: list[Reply] | None = None, responder: Callable[[str, dict], Reply] | None = None):
        self.replies: deque[Reply] = deque(replies or [])
        self.responder = responder
        self.requests: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else {}
                with server._lock:
                    server.requests.append(body)
                    server.paths.append(self.path)
                    server.headers.append({k.lower(): v for k, v in self.headers.items()})
                    if server.responder is not None:
                        reply = server.responder(self.path, body)
                    else:
                        reply = server.replies.popleft() if len(server.replies) > 1 else server.replies[0]
                if reply.delay:
                    time.sleep(reply.delay)
                payload = reply.body if isinstance(reply.body, str) else json.dumps(reply.body)
                try:
                    self.send_response(reply.status)
                    self.send_header("content-type", "application/json")
                    for key, value in reply.headers.items():
                        self.send_header(key, value)
                    self.send_header("content-length", str(len(payload.encode())))
                    self.end_headers()
                    self.wfile.write(payload.encode())
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout tests)
                    pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 256  # the default listen backlog (5) stalls 32 concurrent connections

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> LoopbackServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def chat_completion(
    content: str | list[str], top_logprobs: list[tuple[str, float]] | None = None, tokens: int = 11
) -> dict[str, Any]:
    """An OpenAI chat-completion body with one choice per text and optional first-token log-probabilities."""
    texts = [content] if isinstance(content, str) else content
    choices = []
    for i, text in enumerate(texts):
        choice: dict[str, Any] = {
            "index": i,
            "message": {"role": "assistant", "content": text},
            "finish_reason": "stop",
            "logprobs": None,
        }
        if top_logprobs is not None:
            first = top_logprobs[0]
            choice["logprobs"] = {
                "content": [
                    {
                        "token": first[0],
                        "logprob": first[1],
                        "bytes": None,
                        "top_logprobs": [{"token": t, "logprob": lp, "bytes": None} for t, lp in top_logprobs],
                    }
                ]
            }
        choices.append(choice)
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": "test-model",
        "choices": choices,
        "usage": {"prompt_tokens": tokens - 1, "completion_tokens": 1, "total_tokens": tokens},
    }
