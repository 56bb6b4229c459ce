"""A corpus of messy VLM answers and what each must parse to (or that it must be rejected, not guessed)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from gymnasium import spaces

from sb3_vlm.advisors.parsing import MAX_ANSWER_CHARS, json_candidates, parse_continuous, parse_discrete

CAR = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)  # [steer, throttle], as ERPv / COVR
NAMES = ["steer", "throttle"]

CONTINUOUS: list[tuple[str, list[float] | None]] = [
    ("action:[0.02, 0.98]", [0.02, 0.98]),
    ("action: [ -0.10 , 1.00 ]", [-0.1, 1.0]),
    ("Describe: a clear highway ahead.\nthrottle: 0.8\nsteer: -0.1", [-0.1, 0.8]),
    ("Describe: The road bends left. throttle:0.5 steer:-0.3", [-0.3, 0.5]),
    ("**Describe:** clear road\n**throttle:** 1\n**steer:** 0", [0.0, 1.0]),
    ('{"steer": 0.1, "throttle": -0.5}', [0.1, -0.5]),
    ('```json\n{"steer": -0.25, "throttle": 0.75}\n```', [-0.25, 0.75]),
    ('Sure! Here is my answer: {"action": [0.3, 0.4]}', [0.3, 0.4]),
    ('{"action": {"steer": 0.2, "throttle": 0.6}}', [0.2, 0.6]),
    ("[0.05, 0.9]", [0.05, 0.9]),
    ("steer = -.2, throttle = .7", [-0.2, 0.7]),
    ("Steer: −0.4 Throttle: 0.6", [-0.4, 0.6]),  # unicode minus
    ("throttle is full, steer is zero", [0.0, 1.0]),
    ("throttle: half\nsteer: straight", [0.0, 0.5]),
    ("steer: 2.5 throttle: -3", [1.0, -1.0]),  # clipped to the bounds
    ("steer: 1e-1 throttle: 5E-1", [0.1, 0.5]),
    ("The speed is 3.20 m/s. I would set steer: 0.0 and throttle: 0.9.", [0.0, 0.9]),
    ("Set the throttle to 0.2 first... final answer: throttle: 0.6 steer: 0.1", [0.1, 0.6]),
    ("action:[0.1, 0.2] (steer, throttle)", [0.1, 0.2]),
    ("Output: action:[-1, 1]", [-1.0, 1.0]),
    ("steer: nan throttle: 0.5", None),  # non-finite: rejected
    ("action:[inf, 0.5]", None),
    ('{"steer": "NaN", "throttle": 1}', None),
    ("I cannot determine the action from this image.", None),
    ("action:[0.5]", None),  # wrong length
    ("throttle: 0.5", None),  # steer missing
    ("", None),
]


@pytest.mark.parametrize("text, expected", CONTINUOUS)
def test_continuous_corpus(text: str, expected: list[float] | None) -> None:
    parsed = parse_continuous(text, CAR, NAMES)
    if expected is None:
        assert not parsed.ok and parsed.action is None and parsed.error
    else:
        assert parsed.ok, parsed.error
        np.testing.assert_allclose(parsed.action, expected, atol=1e-6)


def test_one_dimensional_lone_number() -> None:
    torque = spaces.Box(-2.0, 2.0, shape=(1,), dtype=np.float32)
    np.testing.assert_allclose(parse_continuous("Apply a torque of 1.5.", torque).action, [1.5])
    assert not parse_continuous("torque 1.5 or maybe 0.5", torque).ok  # two numbers: ambiguous


MINIGRID = ["left", "right", "forward", "pickup", "drop", "toggle", "done"]

DISCRETE: list[tuple[str, int | list[float] | None]] = [
    ("forward", 2),
    ("Forward.", 2),
    ("Action: forward", 2),
    ("action = 'left'", 0),
    ("The agent faces the door, so the best action: toggle", 5),
    ('{"action": "pickup"}', 3),
    ('{"action": 1}', 1),
    ("2", 2),
    ("I would turn right to face the goal.", 1),
    (
        "left: 0.1, right: 0.1, forward: 0.7, pickup: 0.025, drop: 0.025, toggle: 0.025, done: 0.025",
        [0.1, 0.1, 0.7, 0.025, 0.025, 0.025, 0.025],
    ),
    ("left: 10%, right: 20%, forward: 70%", [0.1, 0.2, 0.7, 0, 0, 0, 0]),
    ("- left (turn left): 0.5\n- forward: 0.5", [0.5, 0, 0.5, 0, 0, 0, 0]),
    ('{"probabilities": {"left": 1, "right": 3}}', [0.25, 0.75, 0, 0, 0, 0, 0]),
    ('{"left": 0.2, "forward": 0.8}', [0.2, 0, 0.8, 0, 0, 0, 0]),
    ("[0.1, 0.1, 0.5, 0.1, 0.1, 0.05, 0.05]", [0.1, 0.1, 0.5, 0.1, 0.1, 0.05, 0.05]),
    ('```json\n{"probs": [0, 0, 1, 0, 0, 0, 0]}\n```', [0, 0, 1, 0, 0, 0, 0]),
    (
        "Analysis: agent at (2,3) facing east.\nAction probabilities: left: 0.0, right: 0.0, forward: 1.0",
        [0, 0, 1, 0, 0, 0, 0],
    ),
    ("left: -0.5, right: 1.5", None),  # negative probability: rejected
    ("left: nan, right: 0.5", None),
    ("I should go left or maybe right.", None),  # ambiguous
    ("The agent should jump.", None),
    ("", None),
]


@pytest.mark.parametrize("text, expected", DISCRETE)
def test_discrete_corpus(text: str, expected: int | list[float] | None) -> None:
    parsed = parse_discrete(text, MINIGRID)
    if expected is None:
        assert not parsed.ok and parsed.error
    elif isinstance(expected, int):
        assert parsed.ok and parsed.probs is None, parsed.error
        assert parsed.action is not None and int(parsed.action[0]) == expected
    else:
        assert parsed.ok and parsed.probs is not None, parsed.error
        np.testing.assert_allclose(parsed.probs, np.asarray(expected) / np.sum(expected), atol=1e-6)
        assert parsed.probs.sum() == pytest.approx(1.0)


L, R, F, P, D, T, DONE = range(7)
# Answers in the style of real models (issue 16): refusals, hedges, negations, chains of thought that end in an answer,
# two actions compared, other words and languages. (family, answer, expected): a label index, a distribution, or None
# where the answer gives no advice. A rejected action ("not forward") is no advice either: its complement is six
# actions, not one, so the parser does not guess among them.
REAL_STYLE = [
    # --- the four answers of issue 16, item 1 (they parsed as confident advice)
    ("issue", "I cannot determine whether the agent should move forward from this image.", None),
    ("issue", "I can't tell which way the agent is facing… I'm done.", None),
    ("issue", "I don't think moving forward is safe here: there is lava ahead.", None),
    ("issue", "Definitely not forward: that's lava.", None),
    # --- GPT-4o-mini
    ("gpt-4o-mini", "**Action:** forward", F),
    ("gpt-4o-mini", "The agent is facing the green goal directly, so the best action is to move **forward**.", F),
    ("gpt-4o-mini", "I'm sorry, but I can't determine the agent's position from this image.", None),
    ("gpt-4o-mini", "I'm unable to see the grid clearly enough to recommend an action.", None),
    ("gpt-4o-mini", "Based on the image, the agent should turn left to face the door.", L),
    ("gpt-4o-mini", "Moving forward isn’t safe here; the agent should turn left.", L),  # typographic apostrophe
    ("gpt-4o-mini", "I don’t think the agent should go forward.", None),
    ("gpt-4o-mini", "Moving forward would lead the agent into the lava, so it should turn right instead.", R),
    ("gpt-4o-mini", "Turning left is better than moving forward here, because the wall blocks the way.", L),
    (
        "gpt-4o-mini",
        "Let's think step by step. The agent is at (1, 2) facing east. The goal is at (3, 2). "
        "There are no obstacles between them. Final answer: forward",
        F,
    ),
    (
        "gpt-4o-mini",
        "The agent could turn left or right, but neither brings it closer to the goal. "
        "Therefore, the agent should move forward.",
        F,
    ),
    ("gpt-4o-mini", "Rather than turning right, the agent should pick up the key.", P),
    (
        "gpt-4o-mini",
        "left: 5%\nright: 5%\nforward: 85%\npickup: 1%\ndrop: 1%\ntoggle: 2%\ndone: 1%",
        [5, 5, 85, 1, 1, 2, 1],
    ),
    # --- Gemini Flash
    ("gemini-flash", '```json\n{"action": "toggle", "reason": "the agent faces a closed yellow door"}\n```', T),
    (
        "gemini-flash",
        "**Reasoning:** The red triangle (agent) points down and the key is directly below it.\n**Action:** pickup",
        P,
    ),
    ("gemini-flash", "The agent should **not** move forward; the lava is directly ahead.", None),
    ("gemini-flash", "Forward is blocked by a wall, so turn left.", L),
    ("gemini-flash", "It's hard to say from this view. The agent might turn left or go forward.", None),
    ("gemini-flash", "Turn right.", R),
    (
        "gemini-flash",
        '{"probabilities": {"left": 0.05, "right": 0.05, "forward": 0.8, "pickup": 0.025, '
        '"drop": 0.025, "toggle": 0.025, "done": 0.025}}',
        [0.05, 0.05, 0.8, 0.025, 0.025, 0.025, 0.025],
    ),
    ("gemini-flash", "Instead of moving forward into the lava, the agent should turn right.", R),
    ("gemini-flash", "Avoid going forward. Going left is safer.", L),
    ("gemini-flash", "The next action is: done, since the agent is already on the goal square.", DONE),
    # --- Qwen2-VL
    ("qwen2-vl", "forward", F),
    ("qwen2-vl", "The answer is forward.", F),
    ("qwen2-vl", "The agent should move ahead one cell toward the green square.", F),
    ("qwen2-vl", "智能体应该向左转。", L),
    ("qwen2-vl", "不要向前走，前面是岩浆。向右转。", R),
    ("qwen2-vl", "无法确定智能体的朝向。", None),
    (
        "qwen2-vl",
        "left (turn left): 0.1\nright (turn right): 0.1\nforward (move one cell ahead): 0.7\npickup: 0.025\n"
        "drop: 0.025\ntoggle (open a door / box): 0.025\ndone: 0.025",
        [0.1, 0.1, 0.7, 0.025, 0.025, 0.025, 0.025],
    ),
    ("qwen2-vl", "Action: 2", F),
    ("qwen2-vl", "Pick up the key.", P),
    ("qwen2-vl", "The agent should go straight.", F),
    # --- LLaVA
    (
        "llava",
        "In the image, there is a red triangle which represents the agent, and a green square which is the "
        "goal. The agent should move forward to reach the goal.",
        F,
    ),
    ("llava", "The agent can: left, right, forward, pickup, drop, toggle, done. The agent should turn right.", R),
    ("llava", "The agent should turn left and then move forward.", None),
    ("llava", "Should the agent move forward? No, there is a wall. The agent should turn left.", L),
    ("llava", "The agent should either turn left or turn right.", None),
    ("llava", "Perhaps the agent should move forward.", None),
    ("llava", "The best action is probably forward.", F),
    ("llava", "I think the agent should open the door.", T),
    ("llava", "The agent is standing next to the ball. It should drop the key it is carrying? Maybe.", None),
    ("llava", "It depends on where the goal is.", None),
    # --- two labels compared
    ("compare", "Moving forward is riskier than turning left.", L),
    ("compare", "Turning right is worse than moving forward.", F),
    ("compare", "Going forward is a better option than turning right.", F),
    ("compare", "I would not go forward or left; both lead to lava.", None),
    ("compare", "Not left but right.", R),
    # --- words that name an action only sometimes, and dangers named after the action
    ("scene", "The lava is on the left; the agent should not go forward.", None),
    ("scene", "The key is on the left side of the room. The agent should move forward.", F),
    ("scene", "The right action here is to toggle the door.", T),
    ("scene", "The goal is right in front of the agent, so move forward.", F),
    ("scene", "Forward leads straight into the lava.", None),
    ("scene", "Action: forward is blocked, turn left", L),
    ("scene", "The agent has left the room; go forward.", F),
    # --- other languages
    ("lang", "Gehe geradeaus.", F),
    ("lang", "Gira a la izquierda.", L),
    ("lang", "Tourner à droite.", R),
    ("lang", "No gires a la derecha, avanza.", F),
    ("lang", "Je ne sais pas.", None),
    # --- chains of thought ending in an answer
    ("cot", "Step 1: The agent faces north.\nStep 2: The door is to its right.\nStep 3: So it should turn right.", R),
    ("cot", "The key is on the left. Picking it up requires facing it first. So the answer is left.", L),
    ("cot", "Option A, forward, hits the wall. Option B, turning right, faces the goal. My final answer: right", R),
]


@pytest.mark.parametrize(
    "family, text, expected", REAL_STYLE, ids=[f"{f}-{i}" for i, (f, _, _) in enumerate(REAL_STYLE)]
)
def test_real_model_answers(family: str, text: str, expected: int | list[float] | None) -> None:
    test_discrete_corpus(text, expected)


@pytest.mark.parametrize(
    "text",
    [
        "I cannot determine whether the agent should move forward from this image.",
        "I can't tell which way the agent is facing… I'm done.",
        "I don't think moving forward is safe here: there is lava ahead.",
        "Definitely not forward: that's lava.",
        "Don't move forward.",
        "Forward is blocked by the wall.",
        "I'm not sure; maybe forward.",
    ],
)
def test_refusals_hedges_and_negations_are_no_advice(text: str) -> None:
    """Issue 16, item 1: the "only label mentioned" fallback read each of these as confident advice."""
    parsed = parse_discrete(text, MINIGRID)
    assert not parsed.ok and parsed.action is None and parsed.probs is None
    assert parsed.error.startswith(("refused or hedged", "negated")), parsed.error


def test_corpus_is_large_enough() -> None:
    assert len(CONTINUOUS) + len(DISCRETE) >= 40
    assert len(REAL_STYLE) >= 40
    families = [family for family, _, _ in REAL_STYLE]
    for family in ("gpt-4o-mini", "gemini-flash", "qwen2-vl", "llava"):
        assert families.count(family) >= 4, family
    assert sum(expected is None for _, _, expected in REAL_STYLE) >= 15  # refusals, hedges, negations, ambiguity


def test_parsing_is_linear_on_hostile_answers() -> None:
    """Issue 17, item 2 (as issue 16 asks): a regex was quadratic on "forward (" * n, and JSON was decoded at every
    bracket; deep nesting raised RecursionError out of the parser. Well under the bound now; 5 s and more before."""
    for hostile in ("forward (" * 16_000, "[1, " * 36_000, "{" * 144_000):
        start = time.perf_counter()
        parse_discrete(hostile, MINIGRID, max_chars=None)
        assert time.perf_counter() - start < 2.0, hostile[:10]
    deep = "[" * 5_000 + "]" * 5_000
    assert json_candidates(deep) == []  # too deep to decode: skipped, not raised
    assert not parse_discrete(deep, MINIGRID).ok and not parse_continuous(deep, CAR, NAMES).ok


def test_answers_over_max_chars_are_refused_unread() -> None:
    long = "forward " + "x" * MAX_ANSWER_CHARS
    for parsed in (parse_discrete(long, MINIGRID), parse_continuous("action:[0.1, 0.2] " + long, CAR, NAMES)):
        assert not parsed.ok and "max_chars" in parsed.error
    assert parse_discrete(long, MINIGRID, max_chars=None).ok  # the bound is the caller's to lift
