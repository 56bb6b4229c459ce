"""A corpus of messy VLM answers and what each must parse to (or that it must be rejected, not guessed)."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium import spaces

from sb3_vlm.advisors.parsing import parse_continuous, parse_discrete

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


def test_corpus_is_large_enough() -> None:
    assert len(CONTINUOUS) + len(DISCRETE) >= 40
