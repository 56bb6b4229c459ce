"""The advice data model: what an advisor is asked (:class:`AdviceRequest`) and what it answers (:class:`Advice`).

Both are small numpy-only values so that they pickle cheaply (Gymnasium infos cross process boundaries under
``SubprocVecEnv``) and are never copied (``DummyVecEnv`` deep-copies every step's infos): nobody changes one once it
is handed on, so a copy is the object itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium import spaces

logger = logging.getLogger(__name__)

#: key under which :class:`~sb3_vlm.wrappers.VLMAdviceWrapper` puts the advice in a step's ``info``
ADVICE_INFO_KEY = "vlm_advice"
#: info key of the teacher view the advice was computed from (what COVR's D_f stores for fine-tuning)
REQUEST_INFO_KEY = "vlm_request"


class AdviceRequest:
    """
    What the teacher is shown for one observation.

    A request is a value: the view that makes it (and the wrapper, which fills in a missing ``action_space``) sets it
    up, everyone else only reads it. So copies share it: ``copy.deepcopy`` returns the request itself (SB3's
    ``DummyVecEnv`` deep-copies every step's infos, which carry it under ``"vlm_request"``).

    **Lazy views** (issue 18): a view that can describe itself cheaply gives a ``content_key`` and a ``render``
    callable instead of the image. The cache keys by the content key, and the image is rendered the first time
    ``image`` is read, i.e. only when a backend that looks at images is actually asked (a scripted advisor that
    reads ``state`` never renders it).

    :param image: the teacher's view (H, W, C) uint8 RGB; may differ from the student's observation (LVLM2P
        gives the VLM a fully observable render while the student sees its own partial view). A float image with
        values in [0, 1] is sent as ``round(255 · image)``; other dtypes and ranges are refused when the image is
        encoded (see :func:`image_as_uint8`).
    :param context: text fields a prompt template fills in (mission string, speed, yaw ...). JSON-serialisable
        (NumPy arrays are allowed and keyed exactly). Part of the cache key, as is the action space.
    :param action_space: the action space the advice must live in.
    :param state: privileged simulator state for scripted/oracle advisors. It is *not* part of the cache key,
        so it must be a function of the image (or the content key) and ``context`` for caching to be correct (true
        for MiniGrid).
    :param content_key: a digest of everything the image shows, computed without rendering it (MiniGrid: grid
        encoding, agent pose, carried object, mission). When given, it replaces the image bytes in the cache key;
        two views with the same content key must render the same image.
    :param render: ``render() -> image`` for a lazy view (instead of ``image``). It must draw from a snapshot taken
        with the view, not from the live env, since a request may be read after the env stepped on (a background
        queue, COVR's D_f); and be picklable (a module-level function or a ``functools.partial`` of one) for
        requests that cross process boundaries (``SubprocVecEnv``).
    """

    def __init__(
        self,
        image: np.ndarray | None = None,
        context: dict[str, Any] | None = None,
        action_space: spaces.Space | None = None,
        state: Any = None,
        *,
        content_key: str | None = None,
        render: Callable[[], np.ndarray] | None = None,
    ) -> None:
        if image is not None and render is not None:
            raise ValueError("Give an image or a render callable, not both")
        self._image = image
        self._render = render
        self.context: dict[str, Any] = {} if context is None else context
        self.action_space = action_space
        self.state = state
        self.content_key = content_key

    @property
    def image(self) -> np.ndarray | None:
        """The teacher's image; a lazy view renders it here, once."""
        render = self._render  # read once: another thread may finish rendering in between
        if render is not None:
            self._image = render()
            self._render = None
        return self._image

    @image.setter
    def image(self, image: np.ndarray | None) -> None:
        self._image, self._render = image, None

    @property
    def rendered(self) -> bool:
        """False while a lazy view's image has not been drawn."""
        return self._render is None

    def cache_key(self, advisor_identity: str) -> str:
        """
        Content address of this request for ``advisor_identity``: the advisor, then the content key and the action
        space when the view gives a content key (never rendering the image), else the image bytes, shape and dtype;
        then the context.
        """
        h = hashlib.sha256()
        h.update(advisor_identity.encode())
        h.update(b"\x00")
        if self.content_key is not None:
            # a namespace of its own: a content key can never collide with image bytes
            h.update(b"content-key:")
            h.update(self.content_key.encode())
            h.update(b"\x00")
            h.update(space_key(self.action_space).encode())
        else:
            image = self.image
            if image is not None:
                img = np.ascontiguousarray(image)
                h.update(f"{img.shape}{img.dtype}".encode())
                h.update(img.tobytes())
            # the prompt states the action space (labels, bounds), so two spaces are two questions (issue 17)
            h.update(b"\x00space:")
            h.update(space_key(self.action_space).encode())
        h.update(b"\x00")
        h.update(context_json(self.context).encode())
        return h.hexdigest()

    def __eq__(self, other: object) -> bool:
        """The same view: what the cache key covers (``state`` is a function of it); images compared by value, and
        only when there is no content key (comparing lazy views renders nothing)."""
        if not isinstance(other, AdviceRequest):
            return NotImplemented
        if self.content_key != other.content_key or space_key(self.action_space) != space_key(other.action_space):
            return False
        if context_json(self.context) != context_json(other.context):  # arrays compared by value, not truth
            return False
        if self.content_key is not None:
            return True
        a, b = self.image, other.image
        return (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))

    __hash__ = None  # type: ignore[assignment]  # equality is by array value

    def __setstate__(self, state: dict[str, Any]) -> None:
        # requests pickled before issue 18 (checkpoints of COVR's D_f) were a dataclass: "image", no lazy fields
        state = dict(state)
        if "image" in state:
            state["_image"] = state.pop("image")
        self.__dict__.update({"_render": None, "content_key": None, **state})

    def __copy__(self) -> AdviceRequest:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> AdviceRequest:
        return self

    def __repr__(self) -> str:
        image = "<lazy>" if not self.rendered else None if self._image is None else f"<{self._image.shape}>"
        return (
            f"AdviceRequest(image={image}, context={self.context!r}, action_space={self.action_space!r}, "
            f"content_key={self.content_key!r})"
        )


def image_as_uint8(image: np.ndarray) -> np.ndarray:
    """
    A teacher image as the uint8 array a backend encodes: uint8 as it is; floats in [0, 1] (float renderers,
    ``ToTensor``-style pipelines) scaled by 255 and rounded; integers in [0, 255] cast. Anything else raises a
    ``ValueError``: a plain cast would truncate or wrap it into a wrong picture (a float image in [0, 1] was sent as
    an all-black PNG, issue 17).
    """
    array = np.asarray(image)
    if array.dtype == np.uint8:
        return array
    if array.dtype.kind == "f":
        if array.size and not (np.all(np.isfinite(array)) and array.min() >= 0.0 and array.max() <= 1.0):
            low, high = float(np.nanmin(array)), float(np.nanmax(array))
            raise ValueError(
                f"A float teacher image must hold values in [0, 1] (it is sent as round(255 * image)), got values "
                f"in [{low:g}, {high:g}]{' and NaN/inf' if not np.all(np.isfinite(array)) else ''}. Give a uint8 "
                "image, e.g. image.astype(np.uint8) for floats in [0, 255]."
            )
        return np.rint(array.astype(np.float64) * 255.0).astype(np.uint8)
    if array.dtype.kind in "iu":
        if array.size and (array.min() < 0 or array.max() > 255):
            raise ValueError(
                f"An integer teacher image must hold values in [0, 255], got [{array.min()}, {array.max()}]"
            )
        return array.astype(np.uint8)
    raise ValueError(f"A teacher image must be uint8 (or float in [0, 1]), got dtype {array.dtype}")


def _read_only(array: np.ndarray | None, copy: bool = True) -> np.ndarray | None:
    """``array`` as a read-only ndarray. A writable one is copied first (``copy=True``: whoever made it keeps a
    writable array and cannot change the advice through it) or frozen in place (``copy=False``: a fresh array)."""
    if array is None:
        return None
    out = np.asarray(array)
    if out.flags.writeable:
        out = out.copy() if copy else out
        out.flags.writeable = False
    return out


def _exact_default(value: Any) -> Any:
    """JSON for what ``json`` cannot encode: an array exactly (dtype, shape, bytes), anything else as ``str``
    (NumPy scalars print their shortest round-trip digits, so ``str`` is exact for them)."""
    if isinstance(value, np.ndarray):
        array = np.ascontiguousarray(value)
        if array.dtype.kind == "O":
            return {"__ndarray__": "object", "shape": list(array.shape), "items": [str(v) for v in array.flat]}
        return {"__ndarray__": array.dtype.str, "shape": list(array.shape), "hex": array.tobytes().hex()}
    return str(value)


#: ``json.dumps(context, sort_keys=True, default=...)`` without building an encoder per call (half the time of a
#: cache key on MiniGrid). Plain JSON values give the same text as ``default=str`` did, so the keys of cached rows
#: stay what they were; only an array changes: ``str`` printed it rounded (and elided past 1,000 items), so arrays
#: 1e-9 apart shared a key (issue 17)
_CONTEXT_JSON = json.JSONEncoder(sort_keys=True, default=_exact_default)


def context_json(context: dict[str, Any]) -> str:
    """The context as the cache key reads it: sorted JSON, arrays exact."""
    return _CONTEXT_JSON.encode(context)


def space_key(space: spaces.Space | None) -> str:
    """
    The action space as the cache key reads it: ``repr`` (exact for Discrete, and for a Box with one bound for all
    coordinates, which it prints as a scalar), plus a Box's exact bounds where they differ per coordinate (``repr``
    then prints them rounded, or elided).
    """
    text = repr(space)
    if isinstance(space, spaces.Box) and not (space.low.size == 0 or (_uniform(space.low) and _uniform(space.high))):
        bounds = np.concatenate([np.ravel(space.low), np.ravel(space.high)]).astype(np.float64)
        text += ":" + hashlib.sha256(bounds.tobytes()).hexdigest()[:16]
    return text


def _uniform(values: np.ndarray) -> bool:
    flat = np.ravel(values)
    return bool(np.all(flat == flat[0]) or np.all(np.isnan(flat)))


@dataclass(eq=False, frozen=True)
class Advice:
    """
    One answer of an advisor: an immutable value (its arrays are read-only), so infos, buffers and caches share one
    object instead of copying it (``copy.deepcopy`` returns it). Derive a changed answer with
    :func:`dataclasses.replace`.

    :param action: advised continuous action (env units) or discrete action index, or None.
    :param probs: probabilities over a discrete action space (sums to 1), or None.
    :param valid: False when there is no usable advice (not queried this step, parse failure, API error ...).
        Every guidance loss masks invalid rows out.
    :param source: which advisor answered (e.g. ``"oracle"``, ``"noisy(oracle):wrong"``, ``"cache"``).
    :param latency: seconds the advisor took (0 for cache hits).
    :param raw: the raw text answer of a VLM, for debugging; empty for scripted advisors.
    :param refused: invalid advice that is the advisor's answer, not a failure to get one: a refusal, a hedge, an
        answer that does not parse or cannot be used (NaN, wrong shape ...). Asking again about the same view is
        likely to get the same, so :class:`~sb3_vlm.advisors.cache.CachedAdvisor` keeps such answers for a while;
        a timeout, an HTTP error or an open circuit breaker are not refusals.
    """

    action: np.ndarray | None = None
    probs: np.ndarray | None = None
    valid: bool = True
    source: str = ""
    latency: float = 0.0
    raw: str = ""
    refused: bool = False

    def __post_init__(self) -> None:
        # read-only arrays (from_dict, replace) are shared, writable ones copied
        object.__setattr__(self, "action", _read_only(self.action))
        object.__setattr__(self, "probs", _read_only(self.probs))

    def __eq__(self, other: object) -> bool:
        """Equal content (arrays compared by value); ``latency`` is a measurement, not content, and is ignored."""
        if not isinstance(other, Advice):
            return NotImplemented

        def same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
            return (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))

        return (
            same(self.action, other.action)
            and same(self.probs, other.probs)
            and (self.valid, self.source, self.raw, self.refused)
            == (other.valid, other.source, other.raw, other.refused)
        )

    __hash__ = None  # type: ignore[assignment]  # equality is by array value

    def __copy__(self) -> Advice:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Advice:
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        # through the constructor, so that the unpickled arrays are read-only again
        return type(self), (self.action, self.probs, self.valid, self.source, self.latency, self.raw, self.refused)

    @classmethod
    def invalid(cls, source: str = "", raw: str = "", refused: bool = False) -> Advice:
        """No advice: the row is masked out of every loss (``refused``: see the class docstring)."""
        return cls(action=None, probs=None, valid=False, source=source, raw=raw, refused=refused)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (the on-disk cache stores data, never pickles)."""
        return {
            "action": None if self.action is None else np.asarray(self.action).tolist(),
            "probs": None if self.probs is None else np.asarray(self.probs).tolist(),
            "valid": bool(self.valid),
            "source": self.source,
            "latency": float(self.latency),
            "raw": self.raw,
            "refused": bool(self.refused),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Advice:
        action = data.get("action")
        probs = data.get("probs")
        return cls(
            action=None if action is None else _read_only(np.asarray(action, dtype=np.float32), copy=False),
            probs=None if probs is None else _read_only(np.asarray(probs, dtype=np.float32), copy=False),
            valid=bool(data.get("valid", False)),
            source=str(data.get("source", "")),
            latency=float(data.get("latency", 0.0)),
            raw=str(data.get("raw", "")),
            refused=bool(data.get("refused", False)),
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

    future: Future[Advice]

    def __init__(self, future: Future[Advice]):
        super().__init__(valid=False, source="pending")
        object.__setattr__(self, "future", future)  # frozen like any advice; only the future's state changes

    def done(self) -> bool:
        return self.future.done()

    def result(self, timeout: float | None = None) -> Advice:
        """The answer; waits up to ``timeout`` seconds (None: as long as it takes), else raises ``TimeoutError``."""
        return self.future.result(timeout)

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


def _numeric(array: np.ndarray | None) -> bool:
    """None, or an array of numbers (booleans, integers, floats): not strings, objects or complex numbers."""
    return array is None or array.dtype.kind in "biuf"


def advice_problem(advice: Advice, action_space: spaces.Space | None = None) -> str | None:
    """
    Why ``advice`` cannot become a buffer row for ``action_space`` (None: it can; invalid advice has no problem, it
    is simply masked): non-numeric arrays (a string action ``np.asarray(["left"])``), NaN/inf, negative or all-zero
    probabilities, probabilities or a continuous action of the wrong size, a discrete action that is not one integer
    in the space, or a valid answer with nothing in it. A ``Discrete`` row takes the probabilities where there are
    both. Continuous actions outside the bounds are fine: they are clipped. Without an action space only the values
    are checked.
    """
    if not advice.valid:
        return None
    for name, array in (("action", advice.action), ("probs", advice.probs)):
        if array is not None and not _numeric(array):
            return f"{name} holds {array.dtype} values, not numbers"
        if array is not None and not np.all(np.isfinite(array)):
            return f"{name} is not all finite"
    if advice.probs is not None:
        probs = np.asarray(advice.probs, dtype=np.float64).reshape(-1)
        if np.any(probs < 0) or probs.sum() <= 0:
            return "probabilities are negative or all zero"
    if isinstance(action_space, spaces.Discrete):
        n, start = int(action_space.n), int(action_space.start)
        if advice.probs is not None:
            return None if advice.probs.size == n else f"{advice.probs.size} probabilities for {n} actions"
        if advice.action is None:
            return "neither an action nor probabilities"
        index = np.asarray(advice.action, dtype=np.float64).reshape(-1)
        if index.size != 1 or index[0] != int(index[0]) or not start <= index[0] < start + n:
            return f"action {np.asarray(advice.action).tolist()} is not one of the {n} actions"
    elif isinstance(action_space, spaces.Box):
        size = int(np.prod(action_space.shape))
        if advice.action is None:
            return "no action"
        if advice.action.size != size:
            return f"action of size {advice.action.size} for an action space of shape {action_space.shape}"
    return None


_warned_malformed = False


def _warn_malformed(advice: Advice, problem: str) -> None:
    global _warned_malformed
    if not _warned_malformed:
        _warned_malformed = True
        logger.warning("Advice from %r is unusable (%s; action %r, probs %r): masked as invalid; further ones are "
                       "masked silently", advice.source, problem, advice.action, advice.probs)  # fmt: skip


def advice_to_target(advice: Advice | None, action_space: spaces.Space) -> tuple[np.ndarray, bool]:
    """
    Convert one :class:`Advice` to the fixed-size row stored in an advised buffer.

    ``Discrete(n)``: the teacher distribution (a lone advised index becomes one-hot).
    ``Box``: the advised action in env units, clipped to the bounds.
    Anything malformed (:func:`advice_problem`: wrong shape, NaN/inf, negative or non-normalisable probabilities,
    non-numeric arrays such as a string action ``np.asarray(["left"])``, logged once) gives an invalid row: a bad
    answer must never become a silent wrong target, nor crash the buffer. Answers that come through
    :meth:`Advisor.advise <sb3_vlm.advisors.base.Advisor.advise>` were checked there already (and counted).

    The row of a valid answer is computed once per answer and space, and kept on the (immutable) answer: a cached
    answer is one object however often it is served, so a hit costs no validation and no conversion.

    :return: (target row, valid flag); the row is read-only when it comes from that memo
    """
    if advice is not None and advice.valid:
        memo = advice.__dict__.get("_target_row")
        if memo is not None and (memo[0] is action_space or memo[0] == action_space):
            return memo[1], True
    row, valid = _advice_to_target(advice, action_space)
    if valid and advice is not None:
        row.flags.writeable = False
        object.__setattr__(advice, "_target_row", (action_space, row))
    return row, valid


def _advice_to_target(advice: Advice | None, action_space: spaces.Space) -> tuple[np.ndarray, bool]:
    dim = advice_target_dim(action_space)
    empty = np.zeros(dim, dtype=np.float32)
    if advice is None or not advice.valid:
        return empty, False
    problem = advice_problem(advice, action_space)
    if problem is not None:
        _warn_malformed(advice, problem)
        return empty, False
    if isinstance(action_space, spaces.Discrete):
        if advice.probs is not None:
            probs = np.asarray(advice.probs, dtype=np.float64).reshape(-1)
            return (probs / probs.sum()).astype(np.float32), True
        assert advice.action is not None
        empty[int(np.asarray(advice.action).reshape(-1)[0]) - int(action_space.start)] = 1.0
        return empty, True
    assert isinstance(action_space, spaces.Box) and advice.action is not None
    action = np.asarray(advice.action, dtype=np.float64).reshape(-1)
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
