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
    returns, to POST and GET requests. Records every request body: JSON bodies decoded, others (multipart file
    uploads) as ``{"_raw": bytes}``. Use as a context manager.
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
                json_body = self.headers.get("content-type", "").startswith("application/json")
                body = (json.loads(raw) if json_body else {"_raw": raw}) if raw else {}
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

            do_GET = do_POST

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


class FineTuningService:
    """
    The files and fine-tuning-jobs part of an OpenAI-compatible API, for :class:`LoopbackServer`'s ``responder``:
    ``POST /files`` (multipart upload), ``POST /fine_tuning/jobs``, ``GET /fine_tuning/jobs/{id}`` and
    ``POST /fine_tuning/jobs/{id}/cancel``; chat completions answer ``answer``.

    :param outcome: what every job does: ``"succeeded"`` (after ``polls`` status reads), ``"failed"`` or
        ``"never"`` (stays ``running`` until cancelled)
    :param polls: status reads before a job finishes
    :param answer: the chat-completion text
    """

    def __init__(self, outcome: str = "succeeded", polls: int = 2, answer: str = "action:[0.00, 0.50]"):
        if outcome not in ("succeeded", "failed", "never"):
            raise ValueError(f"outcome must be 'succeeded', 'failed' or 'never', got {outcome!r}")
        self.outcome, self.polls, self.answer = outcome, polls, answer
        self.files: dict[str, bytes] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.reads: dict[str, int] = {}
        self.chat_models: list[str] = []

    def __call__(self, path: str, body: dict[str, Any]) -> Reply:
        path = path.split("?")[0].rstrip("/")
        if path.endswith("/files"):
            file_id = f"file-{len(self.files) + 1}"
            self.files[file_id] = body.get("_raw", b"")
            return Reply(
                body={
                    "id": file_id,
                    "object": "file",
                    "bytes": len(self.files[file_id]),
                    "created_at": 0,
                    "filename": "train.jsonl",
                    "purpose": "fine-tune",
                    "status": "processed",
                }
            )
        if path.endswith("/fine_tuning/jobs"):
            job_id = f"ftjob-{len(self.jobs) + 1}"
            self.jobs[job_id] = {
                "id": job_id,
                "object": "fine_tuning.job",
                "created_at": 0,
                "model": body.get("model"),
                "training_file": body.get("training_file"),
                "status": "queued",
                "fine_tuned_model": None,
                "hyperparameters": body.get("hyperparameters") or {},
                "organization_id": "org-test",
                "result_files": [],
                "seed": 0,
                "trained_tokens": None,
                "validation_file": None,
                "error": None,
                "finished_at": None,
                "suffix": body.get("suffix"),
            }
            self.reads[job_id] = 0
            return Reply(body=self.jobs[job_id])
        if "/fine_tuning/jobs/" in path:
            job_id = path.split("/fine_tuning/jobs/")[1].split("/")[0]
            if job_id not in self.jobs:
                return Reply(
                    status=404, body={"error": {"message": f"no job {job_id}", "type": "invalid_request_error"}}
                )
            job = self.jobs[job_id]
            if path.endswith("/cancel"):
                job["status"] = "cancelled"
                return Reply(body=job)
            self.reads[job_id] += 1
            if job["status"] in ("queued", "running") and self.outcome != "never" and self.reads[job_id] >= self.polls:
                job["status"] = self.outcome
                if self.outcome == "succeeded":
                    job["fine_tuned_model"] = f"ft:{job['model']}:covr:{job_id}"
                else:
                    job["error"] = {"code": "invalid_training_file", "message": "bad examples", "param": None}
            elif job["status"] == "queued":
                job["status"] = "running"
            return Reply(body=job)
        if path.endswith("/chat/completions"):
            self.chat_models.append(str(body.get("model")))
            return Reply(body=chat_completion(self.answer))
        return Reply(status=404, body={"error": {"message": f"unknown path {path}", "type": "invalid_request_error"}})


def multipart_file(raw: bytes) -> bytes:
    """The content of the ``file`` part of a multipart/form-data body (what ``files.create`` uploads)."""
    delimiter = raw.split(b"\r\n", 1)[0]
    for part in raw.split(delimiter):
        head, _, content = part.partition(b"\r\n\r\n")
        if b'name="file"' in head:
            return content[:-2] if content.endswith(b"\r\n") else content
    return b""


class BatchService:
    """
    The Batch API of an OpenAI-compatible server, for :class:`LoopbackServer`'s ``responder``: ``POST /files``
    (a JSONL of requests), ``POST /batches``, ``GET /batches/{id}``, ``POST /batches/{id}/cancel`` and
    ``GET /files/{id}/content`` (the output and error files). Each line is answered by ``answer(body)``: a text
    (a chat completion), or None for a line that fails (it goes to the error file).

    :param answer: maps a request line's body to the completion's text
    :param outcome: ``"completed"`` (after ``polls`` status reads), ``"failed"`` (no output) or ``"never"``
        (stays ``in_progress`` until cancelled; a cancelled batch keeps the lines it answered: none here)
    :param polls: status reads before a batch completes
    :param tokens: prompt + answer tokens each answer reports (one of them the answer's)
    """

    def __init__(
        self,
        answer: Callable[[dict[str, Any]], str | None],
        outcome: str = "completed",
        polls: int = 2,
        tokens: int = 101,
    ):
        if outcome not in ("completed", "failed", "never"):
            raise ValueError(f"outcome must be 'completed', 'failed' or 'never', got {outcome!r}")
        self.answer, self.outcome, self.polls, self.tokens = answer, outcome, polls, tokens
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.reads: dict[str, int] = {}
        self.chat_calls = 0

    def _file(self, content: bytes, purpose: str, name: str) -> Reply:
        file_id = f"file-{len(self.files) + 1}"
        self.files[file_id] = content
        body = {"id": file_id, "object": "file", "bytes": len(content), "created_at": 0, "filename": name,
                "purpose": purpose, "status": "processed"}  # fmt: skip
        return Reply(body=body)

    def _finish(self, batch: dict[str, Any]) -> None:
        out, err = [], []
        for i, line in enumerate(self.files[batch["input_file_id"]].decode().splitlines()):
            row = json.loads(line)
            text = self.answer(row["body"])
            rid = f"batch_req_{i}"
            if text is None:
                error = {"error": {"message": "the model refused the request", "type": "server_error"}}
                err.append(
                    {
                        "id": rid,
                        "custom_id": row["custom_id"],
                        "response": {"status_code": 500, "request_id": rid, "body": error},
                        "error": None,
                    }
                )
            else:
                body = chat_completion(text, tokens=self.tokens)
                out.append(
                    {
                        "id": rid,
                        "custom_id": row["custom_id"],
                        "response": {"status_code": 200, "request_id": rid, "body": body},
                        "error": None,
                    }
                )
        for rows, key in ((out, "output_file_id"), (err, "error_file_id")):
            if rows:
                content = "\n".join(json.dumps(r) for r in rows).encode() + b"\n"
                batch[key] = self._file(content, "batch_output", f"{key}.jsonl").body["id"]  # type: ignore[index]
        batch["status"] = "completed"
        batch["request_counts"] = {"total": len(out) + len(err), "completed": len(out), "failed": len(err)}

    def __call__(self, path: str, body: dict[str, Any]) -> Reply:
        path = path.split("?")[0].rstrip("/")
        if path.endswith("/files"):
            return self._file(multipart_file(body.get("_raw", b"")), "batch", "views.jsonl")
        if "/files/" in path and path.endswith("/content"):
            file_id = path.split("/files/")[1].split("/")[0]
            if file_id not in self.files:
                return Reply(
                    status=404, body={"error": {"message": f"no file {file_id}", "type": "invalid_request_error"}}
                )
            return Reply(body=self.files[file_id].decode())
        if path.endswith("/batches"):
            batch_id = f"batch_{len(self.batches) + 1}"
            self.batches[batch_id] = {
                "id": batch_id, "object": "batch", "endpoint": body.get("endpoint"), "errors": None,
                "input_file_id": body.get("input_file_id"), "completion_window": body.get("completion_window"),
                "status": "validating", "output_file_id": None, "error_file_id": None, "created_at": 0,
            }  # fmt: skip
            self.reads[batch_id] = 0
            return Reply(body=self.batches[batch_id])
        if "/batches/" in path:
            batch_id = path.split("/batches/")[1].split("/")[0]
            if batch_id not in self.batches:
                return Reply(
                    status=404, body={"error": {"message": f"no batch {batch_id}", "type": "invalid_request_error"}}
                )
            batch = self.batches[batch_id]
            if path.endswith("/cancel"):
                batch["status"] = "cancelled"
                return Reply(body=batch)
            self.reads[batch_id] += 1
            if batch["status"] in ("validating", "in_progress"):
                batch["status"] = "in_progress"
                if self.outcome != "never" and self.reads[batch_id] >= self.polls:
                    if self.outcome == "completed":
                        self._finish(batch)
                    else:
                        batch["status"] = "failed"
            return Reply(body=batch)
        if path.endswith("/chat/completions"):
            self.chat_calls += 1
            return Reply(body=chat_completion(self.answer(body) or "", tokens=self.tokens))
        return Reply(status=404, body={"error": {"message": f"unknown path {path}", "type": "invalid_request_error"}})
