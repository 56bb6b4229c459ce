"""
Pre-fill an advice cache through an OpenAI-compatible **Batch API**: work that can wait (a replay buffer's views, a
rollout data set, COVR's D_f) at the batch tier's price (half the standard one at OpenAI), answered within the
batch's completion window instead of one request at a time.

The protocol (OpenAI's, which vLLM's ``run_batch`` and other compatible servers follow):

1. ``POST /files`` (``purpose="batch"``) uploads a JSONL file, one request per line:
   ``{"custom_id": ..., "method": "POST", "url": "/v1/chat/completions", "body": {...}}``;
2. ``POST /batches`` creates the batch on that file;
3. ``GET /batches/{id}`` is polled until its status is final (``completed``, ``failed``, ``expired``, ``cancelled``);
4. ``GET /files/{output_file_id}/content`` (and the error file's) are downloaded; each line carries its
   ``custom_id`` and either ``response.body`` (a chat completion) or an ``error``.

Each line's ``custom_id`` is the view's cache key (``request.cache_key(advisor.identity)``), so an answer maps back to
its key without any state kept between the steps, and the rows land exactly where the training run's
:class:`~sb3_vlm.advisors.cache.CachedAdvisor` looks for them (same advisor identity: same model, server, prompt and
settings). Answers are parsed by the advisor's own parser; an unusable answer (a refusal, unparsable text) is counted
and not stored, so the training run asks about that view itself. Views already in the cache are not sent again.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from gymnasium import spaces

from sb3_vlm.advice import Advice, AdviceRequest, image_as_uint8
from sb3_vlm.advisors.cache import AdviceCache
from sb3_vlm.advisors.openai_compat import OpenAIAdvisor, top_logprobs
from sb3_vlm.advisors.prompted import Generation, usage_tokens

logger = logging.getLogger(__name__)

#: batch statuses after which nothing changes any more
FINAL_STATUSES = frozenset({"completed", "failed", "expired", "cancelled"})
#: the batch tier's price relative to the standard one (OpenAI: half; override with ``price_factor=``)
BATCH_PRICE_FACTOR = 0.5


@dataclass
class LabelReport:
    """
    What one labelling run did.

    :param views: requests given
    :param distinct: distinct views among them (by cache key)
    :param cached: distinct views already in the cache (not sent)
    :param sent: views sent in the batch
    :param stored: answers parsed and written to the cache
    :param unusable: answers that came back but could not be used (refusals, unparsable text: not stored)
    :param failed: lines the server answered with an error, or never answered
    :param batch_id: the server's batch id (None when nothing was sent)
    :param status: the batch's final status (or the last one seen when the deadline passed)
    :param tokens_in: prompt tokens the answers used
    :param tokens_out: answer tokens
    :param cost_usd: their cost at the batch price (0 where the model's price is unknown)
    """

    views: int = 0
    distinct: int = 0
    cached: int = 0
    sent: int = 0
    stored: int = 0
    unusable: int = 0
    failed: int = 0
    batch_id: str | None = None
    status: str | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class BatchLabeller:
    """
    Label stored views through the Batch API of an :class:`~sb3_vlm.advisors.openai_compat.OpenAIAdvisor`'s server
    and write the answers into ``cache`` (module docstring).

    :param advisor: the advisor the training run will use (its model, prompt, settings and identity)
    :param cache: the cache the training run will read (an :class:`AdviceCache` or its path / URL)
    :param poll_interval: seconds between two status polls
    :param deadline: seconds to wait for the batch in all; past it the batch is cancelled, and answers already
        available are still collected
    :param completion_window: the batch's completion window as the server takes it (OpenAI: ``"24h"``)
    :param price_factor: the batch price relative to the advisor's standard price (:data:`BATCH_PRICE_FACTOR`)
    :param sleep: the waiting function (tests pass a fake clock)
    """

    def __init__(
        self,
        advisor: OpenAIAdvisor,
        cache: AdviceCache | str,
        poll_interval: float = 30.0,
        deadline: float = 24 * 3600.0,
        completion_window: str = "24h",
        price_factor: float = BATCH_PRICE_FACTOR,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not isinstance(advisor, OpenAIAdvisor):
            raise TypeError(f"BatchLabeller needs an OpenAIAdvisor (an OpenAI-compatible server), got {advisor!r}")
        if advisor.prompt.describe_first:
            raise ValueError(
                f"prompt {advisor.prompt.name!r} asks in two turns (describe, then act): a batch holds one turn per "
                "request; label with a one-turn prompt"
            )
        if not poll_interval > 0 or not deadline > 0:
            raise ValueError(f"poll_interval and deadline must be > 0, got {poll_interval}, {deadline}")
        if not 0 <= price_factor <= 1:
            raise ValueError(f"price_factor must be in [0, 1], got {price_factor}")
        self.advisor = advisor
        self.cache = cache if isinstance(cache, AdviceCache) else AdviceCache(cache)
        self.poll_interval, self.deadline = float(poll_interval), float(deadline)
        self.completion_window = completion_window
        self.price_factor = float(price_factor)
        self.sleep = sleep

    # ------------------------------------------------------------------ the batch file

    def _logprobs(self, space: spaces.Space | None) -> bool:
        return isinstance(space, spaces.Discrete) and self.advisor.distribution == "logprobs"

    def body(self, request: AdviceRequest) -> dict[str, Any]:
        """The ``/chat/completions`` body for one view, as :class:`OpenAIAdvisor` would send it."""
        if not isinstance(request.action_space, spaces.Discrete | spaces.Box):
            raise ValueError("every view needs a Discrete or Box action_space (the prompt states it)")
        advisor = self.advisor
        system, user = advisor.prompt.render(request)
        body: dict[str, Any] = dict(model=advisor.model, messages=advisor.messages(request, system, user))
        space = request.action_space
        if self._logprobs(space):
            body.update(max_tokens=1, temperature=0.0, logprobs=True, top_logprobs=20)
            return body
        body.update(max_tokens=advisor.max_tokens, temperature=advisor.temperature)
        if isinstance(space, spaces.Discrete) and advisor.distribution == "samples":
            body.update(n=advisor.n_samples, temperature=max(advisor.temperature, 0.7))
        if advisor.structured:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "advice", "schema": advisor.schema(space)},
            }
        return body

    def plan(self, requests: Sequence[AdviceRequest]) -> tuple[dict[str, AdviceRequest], LabelReport]:
        """The distinct views not in the cache yet, by cache key, and the report's first counts."""
        identity = self.advisor.identity
        report = LabelReport(views=len(requests))
        todo: dict[str, AdviceRequest] = {}
        seen: set[str] = set()
        for request in requests:
            key = request.cache_key(identity)
            if key in seen:
                continue
            seen.add(key)
            if self.cache.get(key, request.action_space) is not None:
                report.cached += 1
            else:
                todo[key] = request
        report.distinct = len(seen)
        return todo, report

    def batch_file(self, todo: dict[str, AdviceRequest]) -> bytes:
        """The JSONL the server takes: one line per view, its cache key as ``custom_id``."""
        lines = [
            json.dumps(
                {"custom_id": key, "method": "POST", "url": "/v1/chat/completions", "body": self.body(request)},
                separators=(",", ":"),
            )
            for key, request in todo.items()
        ]
        return ("\n".join(lines) + "\n").encode()

    # ------------------------------------------------------------------ the protocol

    def label(self, requests: Sequence[AdviceRequest]) -> LabelReport:
        """Send the views not cached yet as one batch, wait for it, store the usable answers; never raises for a
        server's failure (it is in the report's ``status`` / ``errors`` and the log)."""
        todo, report = self.plan(requests)
        if not todo:
            return report
        client = self.advisor.client
        try:
            upload = client.files.create(file=("views.jsonl", io.BytesIO(self.batch_file(todo))), purpose="batch")
            batch = client.batches.create(
                input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window=self.completion_window
            )
        except Exception as exc:  # a server's refusal is reported, not raised
            report.errors.append(self.advisor.redact(f"could not create the batch: {exc}"))
            report.failed = len(todo)
            logger.warning("BatchLabeller: %s", report.errors[-1])
            return report
        report.batch_id, report.sent = batch.id, len(todo)
        batch = self._wait(client, batch, report)
        report.status = getattr(batch, "status", None)
        answered: set[str] = set()
        for file_id in (getattr(batch, "output_file_id", None), getattr(batch, "error_file_id", None)):
            if file_id:
                answered |= self._collect(client, file_id, todo, report)
        report.failed += len(set(todo) - answered)
        # the advisor's own counters: the training run's cost includes its labelling
        self.advisor.record_usage(report.tokens_in, report.tokens_out, report.cost_usd)
        return report

    def _wait(self, client: Any, batch: Any, report: LabelReport) -> Any:
        waited = 0.0
        while getattr(batch, "status", None) not in FINAL_STATUSES:
            if waited >= self.deadline:
                report.errors.append(f"batch {batch.id} not done after {self.deadline:.0f} s (status {batch.status})")
                logger.warning("BatchLabeller: %s; cancelling it", report.errors[-1])
                try:
                    batch = client.batches.cancel(batch.id)
                except Exception as exc:
                    report.errors.append(self.advisor.redact(f"cancel failed: {exc}"))
                return batch
            self.sleep(self.poll_interval)
            waited += self.poll_interval
            try:
                batch = client.batches.retrieve(batch.id)
            except Exception as exc:  # a failed poll is retried at the next interval
                logger.warning("BatchLabeller: polling batch %s failed: %s", batch.id, self.advisor.redact(str(exc)))
        return batch

    def _collect(self, client: Any, file_id: str, todo: dict[str, AdviceRequest], report: LabelReport) -> set[str]:
        """Parse one result file into the cache; return the custom ids it answered (well or not)."""
        try:
            text = client.files.content(file_id).text
        except Exception as exc:
            report.errors.append(self.advisor.redact(f"could not download file {file_id}: {exc}"))
            return set()
        answered: set[str] = set()
        price = self.advisor.price
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                key = row["custom_id"]
            except (ValueError, KeyError, TypeError):
                report.errors.append(f"unreadable result line in {file_id}: {line[:120]!r}")
                continue
            if key not in todo or key in answered:
                continue  # not ours, or a duplicate line: the first answer counts
            answered.add(key)
            response = row.get("response") or {}
            body = response.get("body") if isinstance(response, dict) else None
            if row.get("error") or not isinstance(body, dict) or response.get("status_code", 200) >= 400:
                report.failed += 1
                continue
            usage = body.get("usage") or {}
            _, tokens_in, tokens_out = usage_tokens(
                usage.get("total_tokens", 0), usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
            )
            report.tokens_in += tokens_in
            report.tokens_out += tokens_out
            if price is not None:
                report.cost_usd += self.price_factor * price.cost(tokens_in, tokens_out)
            advice = self._advice(body, todo[key].action_space)
            if advice.valid:
                self.cache.put(key, advice)
                report.stored += 1
            else:
                report.unusable += 1
        return answered

    def _advice(self, body: dict[str, Any], space: spaces.Space | None) -> Advice:
        """One completion body as the advisor's advice (its parser, its refusal rules)."""
        choices = body.get("choices") or []
        texts = [str(((c or {}).get("message") or {}).get("content") or "") for c in choices]
        top = top_logprobs(choices[0]) if choices else None
        return self.advisor.advice_from_generation(Generation(texts, top), space, logprobs=self._logprobs(space))


def save_views(path: str | os.PathLike[str], requests: Sequence[AdviceRequest]) -> int:
    """
    Store views to label later as an ``.npz`` (no pickle): their images (rendered now; all of one shape), contexts
    and content keys (a lazy view's, e.g. MiniGrid's: the cache keys a view by it, so the labels land where training
    looks). The action space is not stored: :func:`load_views` takes the env's.

    :return: the number of views written
    """
    if not requests:
        raise ValueError("no views to save")
    images = [r.image for r in requests]
    if any(image is None for image in images):
        raise ValueError("every view needs an image (a state-only view has nothing to send to a VLM)")
    shapes = {np.asarray(image).shape for image in images}
    if len(shapes) > 1:
        raise ValueError(f"the views' images differ in shape ({sorted(shapes)}): save each shape to its own file")
    stacked = np.stack([image_as_uint8(np.asarray(image)) for image in images])
    contexts = json.dumps([r.context for r in requests], default=_exact_json)
    content_keys = json.dumps([r.content_key for r in requests])
    np.savez_compressed(path, images=stacked, contexts=np.array(contexts), content_keys=np.array(content_keys))
    return len(requests)


def load_views(path: str | os.PathLike[str], action_space: spaces.Space) -> list[AdviceRequest]:
    """The views :func:`save_views` wrote, as requests in ``action_space`` (``allow_pickle=False``)."""
    with np.load(path, allow_pickle=False) as data:
        if "images" not in data or "contexts" not in data:
            raise ValueError(f"{path} is not a views file (it needs 'images' and 'contexts' arrays)")
        images, contexts = data["images"], json.loads(str(data["contexts"]))
        keys = json.loads(str(data["content_keys"])) if "content_keys" in data else [None] * len(images)
    if not len(contexts) == len(keys) == len(images):
        raise ValueError(f"{path}: {len(images)} images, {len(contexts)} contexts and {len(keys)} content keys")
    return [
        AdviceRequest(image=image, context=context, action_space=action_space, content_key=key)
        for image, context, key in zip(images, contexts, keys, strict=True)
    ]


def _exact_json(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"a view's context must be JSON (and NumPy) values, got {type(value).__name__}")


__all__ = ["BATCH_PRICE_FACTOR", "FINAL_STATUSES", "BatchLabeller", "LabelReport", "load_views", "save_views"]
