from __future__ import annotations

import numpy as np
import pytest
from gymnasium import spaces

from sb3_vlm.advice import AdviceRequest
from sb3_vlm.advisors.prompts import (
    BUILTIN_PROMPTS,
    CARLA_HIGHWAY,
    CONTINUOUS_CONTROL,
    COVR_HIGHWAY,
    MINIGRID_PROMPT,
    MINIGRID_TWO_STAGE,
)

CAR = spaces.Box(-1.0, 1.0, (2,), dtype=np.float32)


def test_fields_come_from_the_request_context() -> None:
    request = AdviceRequest(image=None, context={"speed": 3.14159, "yaw": -0.5}, action_space=CAR)
    system, user = CARLA_HIGHWAY.render(request)
    assert "ego's current speed is 3.14m/s, yaw is -0.50" in user and system.startswith("You are an AI assistant")
    _, covr = COVR_HIGHWAY.render(request)
    assert covr.endswith("action:[steer, throttle].")
    _, mission = MINIGRID_PROMPT.render(AdviceRequest(image=None, context={"mission": "get to the green goal square"}))
    assert "Mission: get to the green goal square." in mission and "forward: 0.60" in mission


def test_missing_context_field_is_named() -> None:
    with pytest.raises(KeyError, match="'speed'"):
        CARLA_HIGHWAY.render(AdviceRequest(image=None, context={"yaw": 0.0}, action_space=CAR))


def test_generic_prompt_states_the_bounds() -> None:
    prompt = CONTINUOUS_CONTROL.with_(action_names=("torque",))
    request = AdviceRequest(image=None, context={"task": "swing the pendulum up"}, action_space=spaces.Box(-2, 2, (1,)))
    _, user = prompt.render(request)
    assert "torque in [-2, 2]" in user and "swing the pendulum up" in user


def test_two_stage_puts_the_description_first() -> None:
    request = AdviceRequest(image=None, context={"mission": "open the red door"})
    assert "open the red door" in MINIGRID_TWO_STAGE.render_describe(request)
    _, user = MINIGRID_TWO_STAGE.render(request, description="The agent is at (1, 1) facing east.")
    assert user.startswith("Scene description: The agent is at (1, 1)")


def test_identity_changes_with_any_wording_change() -> None:
    assert MINIGRID_PROMPT.identity != MINIGRID_PROMPT.with_(user=MINIGRID_PROMPT.user + " ").identity
    assert MINIGRID_PROMPT.identity != MINIGRID_PROMPT.with_(version="2").identity
    assert MINIGRID_PROMPT.identity == MINIGRID_PROMPT.with_().identity
    assert len({p.identity for p in BUILTIN_PROMPTS.values()}) == len(BUILTIN_PROMPTS)
