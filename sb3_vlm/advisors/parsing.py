"""
Turning a VLM's text into advice. Real answers are messy: prose around the numbers, markdown, JSON in code fences,
fields in any order, words instead of numbers. Every parser here returns either a usable value or a reason it has
none; it never raises on model output, and NaN/inf never become a value.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium import spaces

_NUM = r"[-+−]?\s*(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf(?:inity)?)\b"
NUMBER_RE = re.compile(_NUM, re.IGNORECASE)
#: words a model writes instead of a number for a control value
WORD_VALUES: dict[str, float] = {
    "zero": 0.0,
    "none": 0.0,
    "no": 0.0,
    "neutral": 0.0,
    "straight": 0.0,
    "half": 0.5,
    "one": 1.0,
    "full": 1.0,
    "max": 1.0,
    "maximum": 1.0,
    "minus one": -1.0,
    "negative one": -1.0,
}
_WORD_RE = "|".join(sorted((re.escape(w) for w in WORD_VALUES), key=len, reverse=True))
_FENCE_RE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)


@dataclass
class Parsed:
    """A parser's result: ``action`` (continuous, or a discrete index as a 1-element array) and/or ``probs``, or an
    ``error`` saying why there is nothing usable."""

    action: np.ndarray | None = None
    probs: np.ndarray | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and (self.action is not None or self.probs is not None)


def to_number(token: str) -> float:
    """``"-0.5"``, ``"− 0.5"`` (unicode minus), ``".5"``, ``"1e-2"``, ``"nan"``, ``"full"`` → float (NaN on failure)."""
    t = token.strip().lower().replace("−", "-").replace(" ", "")
    if t in WORD_VALUES:
        return WORD_VALUES[t]
    if token.strip().lower() in WORD_VALUES:
        return WORD_VALUES[token.strip().lower()]
    try:
        return float(t)
    except ValueError:
        return math.nan


def _strip(text: str) -> str:
    # markdown emphasis and headings around field names ("**throttle:** 1") hide the "name: value" shape
    return re.sub(r"[*_`#]+", "", text)


def json_candidates(text: str) -> list[Any]:
    """Every JSON value embedded in ``text``: code fences first, then each balanced ``{...}`` / ``[...]``."""
    found: list[Any] = []
    for block in _FENCE_RE.findall(text):
        with contextlib.suppress(ValueError):
            found.append(json.loads(block))
    decoder = json.JSONDecoder()
    i = 0
    while i < len(text):
        if text[i] in "{[":
            try:
                value, end = decoder.raw_decode(text, i)
            except ValueError:
                i += 1
                continue
            found.append(value)
            i = end
        else:
            i += 1
    return found


def _finite(values: Sequence[float]) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def _named_value(text: str, name: str) -> float | None:
    """The value written after the *last* ``name:`` / ``name =`` / ``name is`` (the answer usually comes last)."""
    pattern = re.compile(
        rf"\b{re.escape(name)}\b\s*(?:value)?\s*(?:[:=]|is|of|to)\s*\(?\s*({_NUM}|{_WORD_RE})", re.IGNORECASE
    )
    matches = pattern.findall(text)
    if not matches:
        return None
    return to_number(matches[-1])


def parse_continuous(text: str, space: spaces.Box, names: Sequence[str] | None = None) -> Parsed:
    """
    A continuous action from free text, in this order of trust:

    1. JSON (fenced or inline): ``{"steer": -0.1, "throttle": 0.8}``, ``{"action": [..]}`` or a bare list;
    2. named fields anywhere, last occurrence wins: ``Describe: ... throttle: 0.8 steer: -0.1``, ``steer = -.1``,
       ``throttle is full`` (``names`` gives their order in the action vector);
    3. a bracketed list of the right length: ``action:[0.02, 0.98]`` (the last such list);
    4. for a one-dimensional action, a lone number.

    Values are clipped to the space; a NaN/inf or a missing field gives an error, never a value.

    :param text: the model's answer
    :param space: the action space (its shape gives the number of values)
    :param names: the name of each action component as the prompt asks for them (e.g. ``["steer", "throttle"]``)
    """
    dim = int(np.prod(space.shape))
    clean = _strip(text)
    values: list[float] | None = None
    for candidate in reversed(json_candidates(clean)):
        if isinstance(candidate, dict):
            lowered = {str(k).lower(): v for k, v in candidate.items()}
            if names and all(n.lower() in lowered for n in names):
                values = [_as_float(lowered[n.lower()]) for n in names]
            else:
                for key in ("action", "actions", "control"):
                    if isinstance(lowered.get(key), list):
                        values = [_as_float(v) for v in lowered[key]]
                    elif isinstance(lowered.get(key), dict) and names:
                        inner = {str(k).lower(): v for k, v in lowered[key].items()}
                        if all(n.lower() in inner for n in names):
                            values = [_as_float(inner[n.lower()]) for n in names]
        elif isinstance(candidate, list) and all(isinstance(v, (int, float, str)) for v in candidate):
            values = [_as_float(v) for v in candidate]
        if values is not None and len(values) == dim:
            break
        values = None
    if values is None and names:
        named = [_named_value(clean, n) for n in names]
        if all(v is not None for v in named):
            values = [float(v) for v in named if v is not None]
    if values is None:
        lists = re.findall(r"\[([^\[\]]*)\]", clean)
        for inner in reversed(lists):
            numbers = NUMBER_RE.findall(inner)
            if len(numbers) == dim:
                values = [to_number(n) for n in numbers]
                break
    if values is None and dim == 1:
        numbers = NUMBER_RE.findall(clean)
        if len(numbers) == 1:
            values = [to_number(numbers[0])]
    if values is None:
        return Parsed(error="no action found")
    if len(values) != dim:
        return Parsed(error=f"expected {dim} values, got {len(values)}")
    if not _finite(values):
        return Parsed(error="non-finite value")
    action = np.clip(np.asarray(values, dtype=np.float64), space.low.reshape(-1), space.high.reshape(-1))
    return Parsed(action=action.astype(np.float32).reshape(space.shape))


def _as_float(value: Any) -> float:
    if isinstance(value, bool):
        return math.nan
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        return to_number(value)
    return math.nan


def _normalise(probs: Sequence[float]) -> Parsed:
    if not _finite(probs):
        return Parsed(error="non-finite probability")
    arr = np.asarray(probs, dtype=np.float64)
    if np.any(arr < 0) or arr.sum() <= 0:
        return Parsed(error="negative or all-zero probabilities")
    if arr.max() > 1.0 and math.isclose(arr.sum(), 100.0, rel_tol=0.05):
        arr = arr / 100.0  # percentages
    return Parsed(probs=(arr / arr.sum()).astype(np.float32))


def _label_index(token: str, labels: Sequence[str]) -> int | None:
    t = token.strip().strip("\"'.").lower().replace("_", " ")
    for i, label in enumerate(labels):
        if t == label.lower().replace("_", " "):
            return i
    if re.fullmatch(r"\d+", t) and int(t) < len(labels):
        return int(t)
    return None


def parse_discrete(text: str, labels: Sequence[str]) -> Parsed:
    """
    A distribution over (or a choice among) discrete actions named ``labels``, in this order:

    1. JSON: ``{"probabilities": {"left": 0.2, ...}}``, ``{"left": 0.2, ...}``, ``{"action": "forward"}``,
       ``{"action": 2}`` or a list of ``len(labels)`` probabilities;
    2. ``label: probability`` pairs for at least two labels (LVLM2P's format; percentages are accepted);
    3. ``action: <label or index>`` (last occurrence), then a label that is the whole answer, then the only label
       mentioned at all.

    :return: ``probs`` for distributions (normalised), or ``action`` (an index array) for a single choice
    """
    n = len(labels)
    clean = _strip(text)
    for candidate in reversed(json_candidates(clean)):
        if isinstance(candidate, dict):
            lowered = {str(k).lower().replace("_", " "): v for k, v in candidate.items()}
            for key in ("probabilities", "probs", "distribution", "action probabilities"):
                if isinstance(lowered.get(key), dict):
                    lowered = {str(k).lower().replace("_", " "): v for k, v in lowered[key].items()}
                    break
                if isinstance(lowered.get(key), list) and len(lowered[key]) == n:
                    return _normalise([_as_float(v) for v in lowered[key]])
            keyed = [lowered.get(label.lower().replace("_", " ")) for label in labels]
            if sum(v is not None for v in keyed) >= 2:
                return _normalise([_as_float(v) if v is not None else 0.0 for v in keyed])
            if "action" in lowered:
                idx = _label_index(str(lowered["action"]), labels)
                if idx is not None:
                    return Parsed(action=np.array([idx]))
        elif (
            isinstance(candidate, list) and len(candidate) == n and all(isinstance(v, (int, float)) for v in candidate)
        ):
            return _normalise([float(v) for v in candidate])
    pairs: dict[int, float] = {}
    for i, label in enumerate(labels):
        name = re.escape(label).replace(r"\ ", r"[\s_]")
        found = re.findall(rf"\b{name}\b\s*(?:\([^)]*\))?\s*[:=]\s*({_NUM})\s*(%?)", clean, re.IGNORECASE)
        if found:
            value, percent = found[-1]
            pairs[i] = to_number(value) / (100.0 if percent else 1.0)
    if len(pairs) >= 2:
        return _normalise([pairs.get(i, 0.0) for i in range(n)])
    label_alt = "|".join(sorted((re.escape(lb) for lb in labels), key=len, reverse=True))
    chosen = re.findall(rf"\baction\b\s*[:=]?\s*[\"']?({label_alt}|\d+)\b", clean, re.IGNORECASE)
    for token in reversed(chosen):
        idx = _label_index(token, labels)
        if idx is not None:
            return Parsed(action=np.array([idx]))
    idx = _label_index(clean, labels)
    if idx is not None:
        return Parsed(action=np.array([idx]))
    mentioned = {i for i, label in enumerate(labels) if re.search(rf"\b{re.escape(label)}\b", clean, re.IGNORECASE)}
    if len(mentioned) == 1:
        return Parsed(action=np.array([mentioned.pop()]))
    return Parsed(error="no action found" if not mentioned else f"ambiguous: {len(mentioned)} actions mentioned")
