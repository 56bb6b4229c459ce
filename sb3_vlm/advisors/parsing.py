"""
Turning a VLM's text into advice. Real answers are messy: prose around the numbers, markdown, JSON in code fences,
fields in any order, words instead of numbers, refusals, hedges, negations ("not forward: that's lava"), chains of
thought that weigh two actions before they pick one. Every parser here returns either a usable value or a reason it
has none; it never raises on model output, NaN/inf never become a value, and a refusal or a rejected action never
becomes advice. Parsing takes time linear in the answer's length, and answers longer than :data:`MAX_ANSWER_CHARS`
are refused unread.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
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
#: answers longer than this (characters) are refused without being parsed: a real answer, chain of thought included,
#: is a few thousand characters, and a hostile megabyte must not hold the GIL for seconds (issue 17)
MAX_ANSWER_CHARS = 32_768
#: the longest inline JSON value looked for (fenced blocks may be longer), and the failed tries to find one
_JSON_WINDOW = 2048
_MAX_JSON_FAILURES = 64
#: free text naming more labels than this is no answer, and is not analysed mention by mention
_MAX_MENTIONS = 64


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
    """
    Every JSON value embedded in ``text``: code fences first, then each balanced ``{...}`` / ``[...]``.

    Decoding is tried at each ``{`` / ``[`` not inside a value already found, on at most :data:`_JSON_WINDOW`
    characters, and gives up after :data:`_MAX_JSON_FAILURES` failed tries: a failed try may read far ahead
    (``"[1, " * n`` reads to the end every time) and costs an exception, so without the bounds hostile text takes
    time quadratic in its length (issue 17). No real answer comes near either bound. Nesting too deep to decode is
    skipped, not raised.
    """
    found: list[Any] = []
    for block in _FENCE_RE.findall(text):
        with contextlib.suppress(ValueError, RecursionError):
            found.append(json.loads(block))
    decoder = json.JSONDecoder()
    failures = end = 0
    for bracket in re.finditer(r"[{\[]", text):
        i = bracket.start()
        if i < end:
            continue
        try:
            value, length = decoder.raw_decode(text[i : i + _JSON_WINDOW])
        except (ValueError, RecursionError):
            failures += 1
            if failures >= _MAX_JSON_FAILURES:
                break
            continue
        end = i + length
        found.append(value)
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


def parse_continuous(
    text: str, space: spaces.Box, names: Sequence[str] | None = None, max_chars: int | None = MAX_ANSWER_CHARS
) -> Parsed:
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
    :param max_chars: longer answers are refused without being parsed (None: no limit)
    """
    if max_chars is not None and len(text) > max_chars:
        return _too_long(text, max_chars)
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


def _too_long(text: str, max_chars: int) -> Parsed:
    return Parsed(error=f"answer of {len(text):,} characters is longer than max_chars={max_chars:,}")


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


#: other words (and languages) for the usual action labels, MiniGrid's: matched like the label itself, wherever the
#: prompt's labels include the key. Only phrases that name the action unambiguously: "open" or "take" alone are too
#: common in a scene description to mean "toggle" or "pickup"
LABEL_SYNONYMS: dict[str, tuple[str, ...]] = {
    "left": ("links", "izquierda", "gauche", "向左", "左转"),
    "right": ("rechts", "derecha", "droite", "向右", "右转"),
    "forward": (
        "forwards", "straight ahead", "go straight", "move straight", "move ahead", "vorwärts", "geradeaus",
        "adelante", "avanza", "avanzar", "tout droit", "en avant", "avancer", "向前", "前进", "直走",
    ),
    "pickup": ("pick up", "pick it up", "grab", "aufheben", "recoger", "ramasser", "捡起", "拾取"),
    "drop": ("put down", "put it down", "ablegen", "soltar", "déposer", "放下"),
    "toggle": ("open the door", "unlock the door", "öffnen", "abrir", "ouvrir", "打开", "开门"),
    "done": ("fertig", "terminado", "terminé", "完成"),
}  # fmt: skip

# A refusal or hedge: the model says it cannot tell or is not sure. Free text holding one is no answer, whatever
# label it mentions ("I cannot determine whether the agent should move forward"). "probably", "likely" and
# "I think" commit to an answer and are accepted.
_REFUSAL_RE = re.compile(
    r"\b(?:sorry|apologi[sz]e|as\s+an\s+ai)\b"
    r"|\b(?:can(?:no|')?t|can\s+not|could(?:n't|\s+not)|unable\s+to|not\s+able\s+to|impossible\s+to|hard\s+to"
    r"|difficult\s+to|no\s+way\s+to)\s+(?:\w+\s+){0,2}?(?:determine|tell|say|see|decide|know|judge|identify|infer"
    r"|make\s+out|be\s+(?:sure|certain)|help|assist|answer|provide|recommend)\b"
    r"|\b(?:do|does)\s*(?:n't|not)\s+know\b|\bno\s+idea\b|\b(?:insufficient|ambiguous)\b"
    r"|\bmore\s+(?:information|context|details)\b|\bnot\s+enough\s+(?:information|context|detail)"
    r"|无法|不确定|不清楚|抱歉|看不清|不知道|\bno\s+(?:puedo|estoy\s+segur[oa]|sé)\b|\bkann\s+(?:ich\s+)?nicht\b"
    r"|\bje\s+ne\s+(?:peux|sais)\b",
    re.IGNORECASE,
)
_HEDGE_RE = re.compile(
    r"\b(?:maybe|perhaps|possibly|might|either|unsure|uncertain|unclear|guess|guessing)\b"
    r"|\bnot\s+(?:sure|certain|clear)\b|\bcould\s+be\b|\b(?:it\s+)?depends\s+on\b|\bit\s+depends\b"
    r"|\bnicht\s+sicher\b|\bpas\s+sûr|也许|可能",
    re.IGNORECASE,
)
# A cue before a label, in its clause, that rejects it: "not forward", "don't move forward", "avoid going left",
# "rather than turning left", "instead of forward"; "than" is handled apart (see _THAN_RE).
_PRE_NEGATION_RE = re.compile(
    r"\b(?:not|no|never|nor|neither|cannot|without|avoid|avoiding|against|instead\s+of|rather\s+than|nicht|kein"
    r"|keine|pas|ni|jamais|nunca)\b|n't\b|不|别|避免|而非",
    re.IGNORECASE,
)
# Negations that cover the rest of their sentence: "I don't think the agent, given the lava, should move forward"
_SENTENCE_NEGATION_RE = re.compile(
    r"\b(?:(?:do|does|did|would)\s*(?:n't|not)|not)\s+(?:think|believe|recommend|suggest|advise)\b"
    r"|\b(?:advise|recommend|argue)\s+against\b",
    re.IGNORECASE,
)
# "better than left" rejects left; "worse than left" does not (the label before "worse" is the rejected one)
_THAN_RE = re.compile(r"\bthan\b\W*(?:\w+\W+){0,2}$", re.IGNORECASE)
_NEGATIVE_COMPARATIVE_RE = re.compile(
    r"\b(?:worse|riskier|slower|longer|harder|less\s+\w+|more\s+(?:dangerous|risky|harmful|costly))\s+than\b",
    re.IGNORECASE,
)
# A cue after a label, in its clause, that rejects it: "forward is not safe", "moving forward would be a mistake"
_POST_NEGATION_RE = re.compile(
    r"\b(?:is|are|was|would|will|does|do|seems?|looks?|should|must|can|could)\s*(?:n't|not|never)\b"
    r"|\b(?:won't|cannot|can't)\b"
    r"|\b(?:blocked|unsafe|dangerous|impossible|risky|riskier|bad|wrong|worse|mistake|fatal|deadly|harmful"
    r"|pointless|useless|suicidal)\b"
    r"|\binto\s+(?:the\s+)?(?:lava|wall|water|fire)\b|\b(?:hits?|hitting|bumps?\s+into)\s+(?:the|a)\s+wall\b"
    r"|危险|不行|不安全",
    re.IGNORECASE,
)
# Words that name an action only sometimes: a position ("the lava on the left", "the left side"), "right" meaning
# correct or exactly ("the right action", "right in front"), "left" and "done" as verbs ("has left", "I'm done").
# Such a mention is neither chosen nor rejected. "turn to the left" stays an action.
_POSITION = (
    re.compile(r"\b(?:on|at|in|from|of)\s+(?:the|its|his|her|their|your|my)\s+(?:(?:upper|lower|top|bottom|far)\s+)?$"),
    re.compile(r"^[\s-]*(?:side|of|corner|hand|half|part|edge|wall|column|row|border)\b"),
)
_NOT_AN_ACTION: dict[str, tuple[re.Pattern[str], re.Pattern[str]]] = {
    "right": (
        re.compile(r"\b(?:that's|that\s+is|all|you're|you\s+are|exactly|quite)\s+$"),
        re.compile(
            r"^\s+(?:now|next|in\s+front|there|here|away|behind|above|below|before|after|beside|under|answer|action"
            r"|choice|way|move|decision|direction|thing|option|one|call|path)\b"
        ),
    ),
    "left": (re.compile(r"\b(?:has|have|had|nothing|anything|something|none|time)\s+$"), re.compile(r"^(?!)")),  # never
    "done": (
        re.compile(r"(?:\bi'm|\bi\s+am|\bwe're|\bwe\s+are|\b(?:be|been|get|got|has|have|had|is|are|was|were|well"
                   r"|almost|already))\s+$"),
        re.compile(r"^\s+(?:with|exploring|by|in|for)\b"),
    ),
}  # fmt: skip
# Clause and sentence boundaries: a negation does not reach across them
_CLAUSE_END_RE = re.compile(
    r"[.!?;:,\n()\[\]—–。！？；：，、]|\b(?:but|so|because|since|then|however|while|whereas|as)\b", re.IGNORECASE
)
_SENTENCE_END_RE = re.compile(r"[.!?\n。！？]")
_LIST_GAP_RE = re.compile(r"[,/|()、，]|\b(?:or|and)\b", re.IGNORECASE)
# Where a chain of thought states its conclusion: "... Therefore, the agent should move forward."
_CONCLUSION_RE = re.compile(
    r"\b(?:therefore|thus|hence|so|consequently|in\s+conclusion|in\s+summary|to\s+summari[sz]e|overall|finally"
    r"|ultimately|my\s+(?:final\s+)?(?:answer|choice|decision)|i\s+(?:choose|pick|select|would\s+choose))\b"
    r"|所以|因此",
    re.IGNORECASE,
)
# How far (characters) the negation and question checks look around a label: enough for a clause, and a bound that
# keeps parsing linear in the answer's length
_WINDOW = 80


def _spaced(ch: str) -> bool:
    """Whether ``ch`` is a letter or digit of a script that separates words (no word boundaries in Chinese)."""
    return ch.isalnum() and ord(ch) < 0x2E80


def _normal(term: str) -> str:
    return re.sub(r"[\s_-]+", " ", term.strip().lower())


@functools.lru_cache(maxsize=64)
def _label_terms(labels: tuple[str, ...]) -> tuple[re.Pattern[str], dict[str, int]]:
    """
    One regex matching every label and synonym and the label index of each normalised term. Spaces, underscores and
    hyphens in a term are interchangeable; terms of spaced scripts match whole words only, so each group of terms
    shares one pair of boundary checks (cheaper than one per term), longest terms first.
    """
    index: dict[str, int] = {}
    for i, label in enumerate(labels):
        for term in (label, *LABEL_SYNONYMS.get(label.lower().replace("_", ""), ())):
            index.setdefault(_normal(term), i)
    groups: dict[tuple[bool, bool], list[str]] = {}
    for term in sorted(index, key=len, reverse=True):
        body = r"[\s_-]+".join(re.escape(part) for part in term.split(" "))
        groups.setdefault((_spaced(term[0]), _spaced(term[-1])), []).append(body)
    pattern = "|".join(
        ("(?<!\\w)" if start else "") + f"(?:{'|'.join(bodies)})" + ("(?!\\w)" if end else "")
        for (start, end), bodies in groups.items()
    )
    return re.compile(pattern, re.IGNORECASE), index


def _label_index(token: str, labels: Sequence[str]) -> int | None:
    t = _normal(token.strip().strip("\"'.!"))
    index = _label_terms(tuple(labels))[1].get(t)
    if index is not None:
        return index
    if re.fullmatch(r"\d+", t) and int(t) < len(labels):
        return int(t)
    return None


@dataclass
class _Mention:
    """A label named in free text: where, which, and whether the text rejects it or only asks about it."""

    start: int
    end: int
    index: int
    negated: bool = False
    neutral: bool = False  # in a question or an echoed list of the options: neither chosen nor rejected


def _last_match(pattern: re.Pattern[str], text: str) -> re.Match[str] | None:
    last = None
    for last in pattern.finditer(text):  # noqa: B007  (the loop only finds the last one)
        pass
    return last


def _clause_before(text: str, start: int, sentence: bool = False) -> str:
    """The text of the clause (or sentence) before ``start``, at most :data:`_WINDOW` characters."""
    window = text[max(0, start - _WINDOW) : start]
    last = _last_match(_SENTENCE_END_RE if sentence else _CLAUSE_END_RE, window)
    return window[last.end() :] if last is not None else window


def _clause_after(text: str, end: int, stop: int) -> str:
    """The text after ``end`` up to the clause's end or ``stop`` (the next label), at most :data:`_WINDOW`."""
    window = text[end : min(stop, end + _WINDOW)]
    boundary = _CLAUSE_END_RE.search(window)
    return window[: boundary.start()] if boundary is not None else window


def _is_negated(text: str, start: int, end: int, stop: int) -> bool:
    """Whether the text rejects the label at ``text[start:end]`` (see the cue patterns above)."""
    before = _clause_before(text, start)
    if _PRE_NEGATION_RE.search(before) or _SENTENCE_NEGATION_RE.search(_clause_before(text, start, sentence=True)):
        return True
    than = _THAN_RE.search(before)
    if than is not None and not _NEGATIVE_COMPARATIVE_RE.search(before[: than.end()]):
        return True
    return bool(_POST_NEGATION_RE.search(_clause_after(text, end, stop)))


def _not_an_action(text: str, mention: _Mention) -> bool:
    """Whether the word at the mention means something else here (see :data:`_NOT_AN_ACTION`)."""
    word = text[mention.start : mention.end].lower()
    if word not in _NOT_AN_ACTION:
        return False
    before = text[max(0, mention.start - 40) : mention.start].lower()
    after = text[mention.end : mention.end + 40].lower()
    checks = [_NOT_AN_ACTION[word], *([_POSITION] if word in ("left", "right") else [])]
    return any(pre.search(before) or post.search(after) for pre, post in checks)


def _mentions(text: str, labels: Sequence[str]) -> list[_Mention]:
    """Every label (or synonym) in ``text``, each marked negated or neutral."""
    pattern, index = _label_terms(tuple(labels))
    matches = itertools.islice(pattern.finditer(text), _MAX_MENTIONS + 1)
    found = [_Mention(m.start(), m.end(), index[_normal(m.group())]) for m in matches]
    if len(found) > _MAX_MENTIONS:
        return found
    # the options echoed back ("The agent can: left (turn left), right, forward ..."): a run of three labels or more
    # with short gaps that hold list punctuation or "or" / "and", and no sentence end
    run: list[_Mention] = found[:1]
    for k in range(1, len(found) + 1):
        gap = text[found[k - 1].end : found[k].start] if k < len(found) else "."
        if len(gap) <= 40 and _LIST_GAP_RE.search(gap) and not _SENTENCE_END_RE.search(gap):
            run.append(found[k])
            continue
        if len({m.index for m in run}) >= 3:
            for m in run:
                m.neutral = True
        run = found[k : k + 1]
    for k, mention in enumerate(found):
        mention.neutral = mention.neutral or _not_an_action(text, mention)
        stop = found[k + 1].start if k + 1 < len(found) else len(text)
        ends = _SENTENCE_END_RE.search(text, mention.end, min(len(text), mention.end + 2 * _WINDOW))
        mention.neutral = mention.neutral or (ends is not None and ends.group() in "?？")
        mention.negated = _is_negated(text, mention.start, mention.end, stop)
    return found


def _choose(text: str, labels: Sequence[str]) -> Parsed:
    """The one label free text chooses: named, and not rejected, asked about or echoed; else why there is none."""
    mentions = _mentions(text, labels)
    if len(mentions) > _MAX_MENTIONS:
        return Parsed(error=f"ambiguous: more than {_MAX_MENTIONS} action names")
    mentions = [m for m in mentions if not m.neutral]
    chosen = {m.index for m in mentions if not m.negated}
    if len(chosen) == 1:
        return Parsed(action=np.array([chosen.pop()]))
    if chosen:
        return Parsed(error=f"ambiguous: {len(chosen)} actions mentioned")
    if mentions:
        # Rejecting one action does not choose another (its complement is not one action), so a negation alone
        # is no advice: "Definitely not forward: that's lava" must not teach "forward", nor a guess among the rest.
        return Parsed(error="negated: " + ", ".join(sorted({labels[m.index] for m in mentions})))
    return Parsed(error="no action found")


def _free_text_choice(text: str, labels: Sequence[str]) -> Parsed:
    """
    The action free text chooses, most trusted first:

    1. the conclusion of a chain of thought (after its last "therefore" / "so" / "in conclusion" ...), when it
       chooses one action and does not hedge;
    2. the whole text, when it neither refuses nor hedges (:data:`_REFUSAL_RE`, :data:`_HEDGE_RE`) and chooses one
       action.

    A label is not chosen where the text rejects it ("not forward", "forward is unsafe", "better than forward"),
    asks about it ("Should the agent go forward?") or lists the options.
    """
    conclusion = _last_match(_CONCLUSION_RE, text)
    if conclusion is not None:
        tail = text[conclusion.end() :]
        if not _HEDGE_RE.search(tail) and not _REFUSAL_RE.search(tail):
            parsed = _choose(tail, labels)
            if parsed.ok:
                return parsed
    cue = _REFUSAL_RE.search(text) or _HEDGE_RE.search(text)
    if cue is not None:
        return Parsed(error=f"refused or hedged ({cue.group()!r})")
    return _choose(text, labels)


def parse_discrete(text: str, labels: Sequence[str], max_chars: int | None = MAX_ANSWER_CHARS) -> Parsed:
    """
    A distribution over (or a choice among) discrete actions named ``labels``, in this order:

    1. JSON: ``{"probabilities": {"left": 0.2, ...}}``, ``{"left": 0.2, ...}``, ``{"action": "forward"}``,
       ``{"action": 2}`` or a list of ``len(labels)`` probabilities;
    2. ``label: probability`` pairs for at least two labels (LVLM2P's format; percentages are accepted);
    3. an answer marker and a label or index (last occurrence): ``action: forward``, ``Final answer: left``,
       ``The answer is 2``;
    4. a label that is the whole answer;
    5. free text that chooses one action (see :func:`_free_text_choice`): refusals and hedges ("I cannot tell",
       "maybe left") and rejected labels ("Definitely not forward: that's lava") are no advice.

    Labels may also be written as :data:`LABEL_SYNONYMS` ("pick up", "go straight", "向左转").

    :param text: the model's answer
    :param labels: each action's label, in index order
    :param max_chars: longer answers are refused without being parsed (None: no limit)
    :return: ``probs`` for distributions (normalised), or ``action`` (an index array) for a single choice
    """
    if max_chars is not None and len(text) > max_chars:
        return _too_long(text, max_chars)
    n = len(labels)
    clean = _strip(text).replace("’", "'").replace("‘", "'")  # typographic apostrophes: "don’t", "isn’t"
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
        # the parenthesis is bounded and stops at the next "(": linear on inputs like "forward (" * n (issue 17)
        found = re.findall(rf"\b{name}\b\s*(?:\([^()]{{0,80}}\))?\s*[:=]\s*({_NUM})\s*(%?)", clean, re.IGNORECASE)
        if found:
            value, percent = found[-1]
            pairs[i] = to_number(value) / (100.0 if percent else 1.0)
    if len(pairs) >= 2:
        return _normalise([pairs.get(i, 0.0) for i in range(n)])
    terms = _label_terms(tuple(labels))[0].pattern
    marker = re.compile(
        r"\b(?:action|answer|choice|decision|output)\b\s*(?:(?:is|would\s+be|should\s+be)\s*)?[:=-]?\s*[\"'(\[]?\s*"
        rf"({terms}|\d+(?!\w|\.\d))",
        re.IGNORECASE,
    )
    for match in reversed(list(marker.finditer(clean))):
        idx = _label_index(match.group(1), labels)
        stop = match.end(1) + _WINDOW
        if idx is not None and not _is_negated(clean, match.start(1), match.end(1), stop):
            return Parsed(action=np.array([idx]))
    idx = _label_index(clean, labels)
    if idx is not None:
        return Parsed(action=np.array([idx]))
    return _free_text_choice(clean, labels)
