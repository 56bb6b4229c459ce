"""The advice data model: what an advisor is asked (:class:`AdviceRequest`) and what it answers (:class:`Advice`).

Both are small numpy-only dataclasses so that they pickle cheaply: Gymnasium infos cross process
boundaries under ``SubprocVecEnv``.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from gymnasium import spaces

#: key under which :class:`~sb3_vlm.wrappers.VLMAdviceWrapper` puts the advice in a step's ``info``
ADVICE_INFO_KEY = "vlm_advice"
#: info key of the teacher view the advice was computed from (what COVR's D_f stores for fine-tuning)
REQUEST_INFO_KEY = "vlm_request"


@dataclass
class AdviceRequest:
    """
    What the teacher is shown for one observation.

    :param image: the teacher's view (H, W, C) uint8 RGB; may differ from the student's observation (LVLM2P
        gives the VLM a fully observable render while the student sees its own partial view).
    :param context: text fields a prompt template fills in (mission string, speed, yaw ...). JSON-serialisable.
        Part of the cache key.
    :param action_space: the action space the advice must live in.
    :param state: privileged simulator state for scripted/oracle advisors. It is *not* part of the cache key,
        so it must be a function of ``image`` and ``context`` for caching to be correct (true for MiniGrid).
    """

    image: np.ndarray | None
    context: dict[str, Any] = field(default_factory=dict)
    action_space: spaces.Space | None = None
    state: Any = None

    def cache_key(self, advisor_identity: str) -> str:
        """Content address of this request for ``advisor_identity``: image bytes, shape, dtype, context, advisor."""
        h = hashlib.sha256()
        h.update(advisor_identity.encode())
        h.update(b"\x00")
        if self.image is not None:
            img = np.ascontiguousarray(self.image)
            h.update(f"{img.shape}{img.dtype}".encode())
            h.update(img.tobytes())
        h.update(b"\x00")
        h.update(json.dumps(self.context, sort_keys=True, default=str).encode())
        return h.hexdigest()


@dataclass(eq=False)
class Advice:
    """
    One answer of an advisor.

    :param action: advised continuous action (env units) or discrete action index, or None.
    :param probs: probabilities over a discrete action space (sums to 1), or None.
    :param valid: False when there is no usable advice (not queried this step, parse failure, API error ...).
        Every guidance loss masks invalid rows out.
    :param source: which advisor answered (e.g. ``"oracle"``, ``"noisy(oracle):wrong"``, ``"cache"``).
    :param latency: seconds the advisor took (0 for cache hits).
    :param raw: the raw text answer of a VLM, for debugging; empty for scripted advisors.
    """

    action: np.ndarray | None = None
    probs: np.ndarray | None = None
    valid: bool = True
    source: str = ""
    latency: float = 0.0
    raw: str = ""

    def __eq__(self, other: object) -> bool:
        """Equal content (arrays compared by value); ``latency`` is a measurement, not content, and is ignored."""
        if not isinstance(other, Advice):
            return NotImplemented

        def same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
            return (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))

        return (
            same(self.action, other.action)
            and same(self.probs, other.probs)
            and (self.valid, self.source, self.raw) == (other.valid, other.source, other.raw)
        )

    __hash__ = None  # type: ignore[assignment]  # mutable

    @classmethod
    def invalid(cls, source: str = "", raw: str = "") -> Advice:
        """No advice: the row is masked out of every loss."""
        return cls(action=None, probs=None, valid=False, source=source, raw=raw)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (the on-disk cache stores data, never pickles)."""
        return {
            "action": None if self.action is None else np.asarray(self.action).tolist(),
            "probs": None if self.probs is None else np.asarray(self.probs).tolist(),
            "valid": bool(self.valid),
            "source": self.source,
            "latency": float(self.latency),
            "raw": self.raw,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Advice:
        action = data.get("action")
        probs = data.get("probs")
        return cls(
            action=None if action is None else np.asarray(action, dtype=np.float32),
            probs=None if probs is None else np.asarray(probs, dtype=np.float32),
            valid=bool(data.get("valid", False)),
            source=str(data.get("source", "")),
            latency=float(data.get("latency", 0.0)),
            raw=str(data.get("raw", "")),
        )


class PendingAdvice(Advice):
    """
    Advice asked for in the background and not answered yet (see :class:`~sb3_vlm.advisors.background.
    BackgroundAdvisor`). It reads as invalid advice, so any consumer that does not know about it masks the row; the
    advised buffers keep the handle and fill the row in when :meth:`result` is ready.

    Copies share the answer (SB3's ``DummyVecEnv`` deep-copies infos). Pickling, i.e. crossing a process boundary
    (a non-blocking ``VLMAdviceWrapper`` inside a ``SubprocVecEnv`` worker sending its step), waits for the answer
    and sends the answer itself: the worker then waits at the end of its step, as a blocking wrapper would, but its
    request was already in flight while the env stepped. To overlap the answers with the *agent's* steps, put a
    ``VecVLMAdviceWrapper`` around the ``SubprocVecEnv``: it asks from the main process.
    """

    def __init__(self, future: Future[Advice]):
        super().__init__(valid=False, source="pending")
        self.future = future

    def done(self) -> bool:
        return self.future.done()

    def result(self, timeout: float | None = None) -> Advice:
        """The answer; waits up to ``timeout`` seconds (None: as long as it takes), else raises ``TimeoutError``."""
        return self.future.result(timeout)

    def __copy__(self) -> PendingAdvice:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> PendingAdvice:
        return self

    def __reduce__(self) -> tuple[Any, tuple[dict[str, Any]]]:
        # the future cannot cross a process boundary; the answer can (the background advisor always resolves it)
        return Advice.from_dict, (self.result().to_dict(),)


def pending_in_infos(
    infos: list[dict[str, Any]] | tuple[dict[str, Any], ...], key: str = ADVICE_INFO_KEY
) -> list[tuple[int, PendingAdvice]]:
    """``(env index, handle)`` of the infos whose advice is still pending (non-blocking advice)."""
    return [(i, info[key]) for i, info in enumerate(infos) if isinstance(info.get(key), PendingAdvice)]


def advice_target_dim(action_space: spaces.Space) -> int:
    """Width of the per-row advice target: n probabilities for ``Discrete(n)``, the action size for ``Box``."""
    if isinstance(action_space, spaces.Discrete):
        return int(action_space.n)
    if isinstance(action_space, spaces.Box):
        return int(np.prod(action_space.shape))
    raise NotImplementedError(
        f"Advice is supported for Discrete and Box action spaces, not {type(action_space).__name__}"
    )


def advice_to_target(advice: Advice | None, action_space: spaces.Space) -> tuple[np.ndarray, bool]:
    """
    Convert one :class:`Advice` to the fixed-size row stored in an advised buffer.

    ``Discrete(n)``: the teacher distribution (a lone advised index becomes one-hot).
    ``Box``: the advised action in env units, clipped to the bounds.
    Anything malformed (wrong shape, NaN/inf, negative or non-normalisable probabilities) gives an invalid row:
    a bad answer must never become a silent wrong target.

    :return: (target row, valid flag)
    """
    dim = advice_target_dim(action_space)
    empty = np.zeros(dim, dtype=np.float32)
    if advice is None or not advice.valid:
        return empty, False
    if isinstance(action_space, spaces.Discrete):
        if advice.probs is not None:
            probs = np.asarray(advice.probs, dtype=np.float64).reshape(-1)
            if probs.shape != (dim,) or not np.all(np.isfinite(probs)) or np.any(probs < 0) or probs.sum() <= 0:
                return empty, False
            return (probs / probs.sum()).astype(np.float32), True
        if advice.action is not None:
            idx = np.asarray(advice.action).reshape(-1)
            if idx.size != 1 or not np.isfinite(idx[0]):
                return empty, False
            i = int(idx[0]) - int(action_space.start)
            if i < 0 or i >= dim or i != idx[0] - int(action_space.start):
                return empty, False
            empty[i] = 1.0
            return empty, True
        return empty, False
    assert isinstance(action_space, spaces.Box)
    if advice.action is None:
        return empty, False
    action = np.asarray(advice.action, dtype=np.float64).reshape(-1)
    if action.shape != (dim,) or not np.all(np.isfinite(action)):
        return empty, False
    action = np.clip(action, action_space.low.reshape(-1), action_space.high.reshape(-1))
    return action.astype(np.float32), True


def advice_batch_from_infos(
    infos: list[dict[str, Any]] | tuple[dict[str, Any], ...], action_space: spaces.Space, key: str = ADVICE_INFO_KEY
) -> tuple[np.ndarray, np.ndarray]:
    """
    Stack the advice of one vectorised step (one info per env) into buffer rows.

    :return: targets ``(n_envs, dim)`` float32 and validity ``(n_envs,)`` float32 (1.0 valid, 0.0 masked)
    """
    rows = [advice_to_target(info.get(key), action_space) for info in infos]
    targets = np.stack([r[0] for r in rows]).astype(np.float32)
    valid = np.asarray([r[1] for r in rows], dtype=np.float32)
    return targets, valid
