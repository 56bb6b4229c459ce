"""
COVR rounds on an API-hosted model: any OpenAI-compatible fine-tuning API (files + fine-tuning jobs).

OpenAI's self-serve fine-tuning is being wound down in 2026–27; nothing here is specific to it: the backend uses
only ``files.create``, ``fine_tuning.jobs.create / retrieve / cancel`` of the ``openai`` client, which other
providers and self-hosted trainers expose too. A round that fails, times out or cannot reach the service leaves the
advisor on its current model; training goes on.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path
from typing import Any, Literal

from sb3_vlm.advisors.finetuning import Example, FineTuneResult
from sb3_vlm.advisors.openai_compat import OpenAIAdvisor

#: job states after which nothing changes
TERMINAL = ("succeeded", "failed", "cancelled")


def example_copies(weight: float, weighting: Literal["duplicate", "filter"], max_copies: int, min_weight: float) -> int:
    """
    How many times an example goes into the training file, for providers whose examples weigh 0 or 1 only.

    - ``"duplicate"``: ``ceil(w · max_copies)`` copies (RALW weights are in [0, 1], the best sample has 1), so the
      weighted loss of eq. 6 is approximated by repetition;
    - ``"filter"``: one copy when ``w > min_weight``, none otherwise (eq. 6 with weights rounded to 0 / 1).
    """
    if not weight > 0:
        return 0
    if weighting == "filter":
        return int(weight > min_weight)
    return max(1, math.ceil(min(weight, 1.0) * max_copies - 1e-9))


class OpenAIFineTuneBackend:
    """
    Fine-tune the model behind an :class:`~sb3_vlm.advisors.openai_compat.OpenAIAdvisor` through its server's
    fine-tuning API and switch the advisor to the returned model id (its cache identity changes with it).

    Each round writes a chat-format JSONL (system and user messages as the advisor sends them, the image as a base64
    PNG ``data:`` URL, the executed action in the prompt's answer format as the assistant message), uploads it
    (``purpose="fine-tune"``), creates a job and polls it until it ends or ``deadline`` passes (then it is
    cancelled). The JSONL and the job's final state are kept in the round directory; the API key never is.

    :param advisor: the advisor to switch to the fine-tuned model
    :param base_model: the model the first round fine-tunes (default: the advisor's)
    :param continue_from_last: later rounds fine-tune the previous round's model (COVR's rounds build on each other)
    :param weighting: how RALW weights reach a provider that accepts 0/1 weights: ``"duplicate"`` or ``"filter"``
        (see :func:`example_copies`)
    :param max_copies: copies of a weight-1 example with ``"duplicate"``
    :param min_weight: ``"filter"`` keeps examples above this weight
    :param hyperparameters: passed to the job (e.g. ``{"n_epochs": 2}``); None lets the provider choose
    :param suffix: the fine-tuned model's name suffix
    :param poll_interval: seconds between status reads
    :param deadline: seconds to wait for a job before cancelling it and keeping the current model
    :param client: an ``openai.OpenAI`` client (default: the advisor's, same server and key)
    """

    def __init__(
        self,
        advisor: OpenAIAdvisor,
        base_model: str | None = None,
        continue_from_last: bool = True,
        weighting: Literal["duplicate", "filter"] = "duplicate",
        max_copies: int = 4,
        min_weight: float = 0.0,
        hyperparameters: dict[str, Any] | None = None,
        suffix: str = "covr",
        poll_interval: float = 30.0,
        deadline: float = 4 * 3600.0,
        client: Any = None,
    ):
        if weighting not in ("duplicate", "filter"):
            raise ValueError(f"weighting must be 'duplicate' or 'filter', got {weighting!r}")
        if max_copies < 1 or poll_interval < 0 or deadline <= 0:
            raise ValueError("max_copies must be >= 1, poll_interval >= 0 and deadline > 0")
        self.advisor = advisor
        self.base_model = base_model or advisor.model
        self.continue_from_last = continue_from_last
        self.weighting, self.max_copies, self.min_weight = weighting, max_copies, min_weight
        self.hyperparameters, self.suffix = hyperparameters, suffix
        self.poll_interval, self.deadline = poll_interval, deadline
        self.client = client if client is not None else advisor.client
        self.jobs: list[dict[str, Any]] = []

    def training_lines(self, examples: list[Example]) -> list[dict[str, Any]]:
        """The chat-format training examples, repeated or dropped by weight."""
        prompt, lines = self.advisor.prompt, []
        for ex in examples:
            copies = example_copies(ex.weight, self.weighting, self.max_copies, self.min_weight)
            if copies == 0:
                continue
            # the messages the advisor sends at inference (images lossless), then the answer to learn
            messages = self.advisor.messages(ex.request, *prompt.render(ex.request), image_format="png")
            messages.append({"role": "assistant", "content": prompt.format_answer(ex.action, ex.request.action_space)})
            lines += [{"messages": messages}] * copies
        return lines

    def _wait(self, job: Any) -> tuple[Any, str]:
        """Poll until the job ends or the deadline passes; transient read errors are retried until then."""
        start = time.monotonic()
        errors = 0
        while job.status not in TERMINAL:
            elapsed = time.monotonic() - start
            if elapsed >= self.deadline:
                with contextlib.suppress(Exception):  # cancelling is a courtesy; the round has failed either way
                    job = self.client.fine_tuning.jobs.cancel(job.id)
                return job, f"no result within the {self.deadline:g} s deadline (job cancelled)"
            time.sleep(min(self.poll_interval, self.deadline - elapsed))
            try:
                job = self.client.fine_tuning.jobs.retrieve(job.id)
            except Exception:
                errors += 1
        return job, "" if errors == 0 else f"{errors} status reads failed"

    def finetune(self, examples: list[Example], round_dir: Path | None = None) -> FineTuneResult:
        start = time.perf_counter()
        lines = self.training_lines(examples)
        if not lines:
            return FineTuneResult(ok=False, message="no example with a positive weight")
        data = "\n".join(json.dumps(line) for line in lines).encode() + b"\n"
        if round_dir is not None:
            Path(round_dir).mkdir(parents=True, exist_ok=True)
            (Path(round_dir) / "train.jsonl").write_bytes(data)
        model = self.advisor.model if self.continue_from_last and self.jobs else self.base_model
        uploaded = self.client.files.create(file=("covr_round.jsonl", data), purpose="fine-tune")
        kwargs: dict[str, Any] = dict(model=model, training_file=uploaded.id, suffix=self.suffix)
        if self.hyperparameters:
            kwargs["hyperparameters"] = self.hyperparameters
        job, note = self._wait(self.client.fine_tuning.jobs.create(**kwargs))
        error = getattr(job, "error", None)
        record = {
            "job": job.id,
            "status": job.status,
            "model": model,
            "fine_tuned_model": getattr(job, "fine_tuned_model", None),
            "error": getattr(error, "message", None) if error is not None else None,
            "examples": len(lines),
            "note": note,
        }
        self.jobs.append(record)
        if round_dir is not None:
            (Path(round_dir) / "job.json").write_text(json.dumps(record, indent=2))
        seconds = time.perf_counter() - start
        if job.status != "succeeded" or not record["fine_tuned_model"]:
            why = note or f"job {job.id} ended {job.status}" + (f": {record['error']}" if record["error"] else "")
            return FineTuneResult(ok=False, examples=len(lines), seconds=seconds, message=why)
        self.advisor.model = str(record["fine_tuned_model"])
        return FineTuneResult(
            ok=True, examples=len(lines), version=self.advisor.identity, seconds=seconds, message=f"job {job.id}"
        )
