"""A fine-tunable scripted advisor: the collaborative (COVR) loop, measurable on a CPU without a VLM."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium import spaces

from sb3_vlm.advice import Advice, AdviceRequest
from sb3_vlm.advisors.base import Advisor
from sb3_vlm.advisors.finetuning import Example, FineTuneResult

Features = Callable[[AdviceRequest], np.ndarray]


class NearestNeighbourAdvisor(Advisor):
    """
    A stand-in for a fine-tunable VLM: it "fine-tunes" by storing the weighted (teacher view, action) examples it
    is given, and answers a view from the stored examples of its nearest stored view, or from ``base`` when no
    stored view is close enough.

    - Discrete actions: the answer is the RALW-weighted vote of the stored actions, as probabilities (so a view seen
      with several actions favours the one with the better returns, as eq. 6's weights intend).
    - Box actions: the weighted mean of the stored actions.

    The rounds accumulate (like continuing to train one adapter). The identity carries a digest of everything
    stored, so a cache never serves an answer from before a round, nor one from another run's table.

    :param base: answers views unlike any stored one (e.g. a deliberately poor scripted advisor)
    :param features: ``f(request) -> vector`` for nearest-neighbour matching; None matches views exactly (image
        bytes and context, as the cache does)
    :param radius: largest Euclidean feature distance that counts as the same view (with ``features``)
    :param smoothing: discrete answers: probability mass spread evenly over all actions (soft targets, like the
        oracle's); 0 answers the weighted vote as it is
    """

    def __init__(self, base: Advisor, features: Features | None = None, radius: float = 0.0, smoothing: float = 0.0):
        super().__init__()
        if radius < 0 or not 0.0 <= smoothing < 1.0:
            raise ValueError(f"radius must be >= 0 and smoothing in [0, 1), got {radius}, {smoothing}")
        self.base, self.features, self.radius, self.smoothing = base, features, float(radius), float(smoothing)
        self._keys: dict[str, int] = {}  # exact matching: view key -> row
        self._vectors: list[np.ndarray] = []  # nearest-neighbour matching: row -> feature vector
        self._votes: list[dict[Any, float]] = []  # row -> {action (tuple): summed weight}
        self._digest = hashlib.sha256()
        self.rounds = 0
        self.n_from_table = 0
        self.n_from_base = 0

    def __len__(self) -> int:
        return len(self._votes)

    @property
    def identity(self) -> str:
        smoothing = f":s={self.smoothing:g}" if self.smoothing else ""
        return f"nn-table:{self.base.identity}{smoothing}:rounds={self.rounds}:{self._digest.hexdigest()[:12]}"

    # ------------------------------------------------------------------ lookup

    def _row(self, request: AdviceRequest, insert: bool = False) -> int | None:
        if self.features is None:
            key = request.cache_key("")
            if key not in self._keys and insert:
                self._keys[key] = len(self._votes)
                self._votes.append({})
            return self._keys.get(key)
        vector = np.asarray(self.features(request), dtype=np.float64).reshape(-1)
        if self._vectors:
            distances = np.linalg.norm(np.stack(self._vectors) - vector, axis=1)
            nearest = int(np.argmin(distances))
            if distances[nearest] <= self.radius:
                return nearest
        if not insert:
            return None
        self._vectors.append(vector)
        self._votes.append({})
        return len(self._votes) - 1

    def _answer(self, votes: dict[Any, float], space: spaces.Space | None) -> Advice:
        if isinstance(space, spaces.Discrete):
            probs = np.zeros(int(space.n), dtype=np.float64)
            for action, weight in votes.items():
                probs[int(action[0]) - int(space.start)] += weight
            probs = (1.0 - self.smoothing) * probs / probs.sum() + self.smoothing / probs.size
            return Advice(probs=probs.astype(np.float32), source=self.identity)
        actions = np.array([a for a in votes], dtype=np.float64)
        weights = np.array(list(votes.values()), dtype=np.float64)
        mean = (weights[:, None] * actions).sum(axis=0) / weights.sum()
        shape = space.shape if isinstance(space, spaces.Box) else mean.shape
        return Advice(action=mean.astype(np.float32).reshape(shape), source=self.identity)

    def _advise(self, requests: Sequence[AdviceRequest]) -> list[Advice]:
        answers: list[Advice | None] = []
        missing: list[int] = []
        for i, request in enumerate(requests):
            row = self._row(request)
            if row is None:
                answers.append(None)
                missing.append(i)
            else:
                answers.append(self._answer(self._votes[row], request.action_space))
        self.n_from_table += len(requests) - len(missing)
        self.n_from_base += len(missing)
        for i, advice in zip(missing, self.base.advise([requests[i] for i in missing]), strict=True):
            answers[i] = advice
        return [a for a in answers if a is not None]

    # ------------------------------------------------------------------ fine-tuning

    def finetune(self, examples: Sequence[Example], round_dir: Path | None = None) -> FineTuneResult:
        """
        Store the examples with positive weight. The reported loss is eq. 6's analogue before the update: the
        weighted mean of ``1 − p(executed action)`` (discrete) or the squared error to it (Box).
        """
        start = time.perf_counter()
        kept = [ex for ex in examples if ex.weight > 0]
        losses, weights = [], []
        for ex, advice in zip(kept, self.advise([ex.request for ex in kept]), strict=True):
            action = np.asarray(ex.action, dtype=np.float64).reshape(-1)
            space = ex.request.action_space
            if isinstance(space, spaces.Discrete):
                p = 0.0 if advice.probs is None else float(advice.probs[int(action[0]) - int(space.start)])
                if advice.probs is None and advice.action is not None:
                    p = float(int(np.asarray(advice.action).reshape(-1)[0]) == int(action[0]))
                losses.append(1.0 - p)
            else:
                advised = np.zeros_like(action) if advice.action is None else np.asarray(advice.action).reshape(-1)
                losses.append(float(np.mean((advised - action) ** 2)))
            weights.append(ex.weight)
        for ex in kept:
            row = self._row(ex.request, insert=True)
            assert row is not None
            action_key = tuple(np.asarray(ex.action, dtype=np.float64).reshape(-1).tolist())
            self._votes[row][action_key] = self._votes[row].get(action_key, 0.0) + float(ex.weight)
            self._digest.update(f"{row}:{action_key}:{ex.weight:.6g};".encode())
        self.rounds += 1
        loss = float(np.average(losses, weights=weights)) if kept else float("nan")
        return FineTuneResult(
            ok=True,
            loss=loss,
            examples=len(kept),
            version=self.identity,
            seconds=time.perf_counter() - start,
            message=f"{len(self)} views stored",
        )
