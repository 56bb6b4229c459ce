from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX

from sb3_vlm.advice import AdviceRequest
from sb3_vlm.envs.minigrid import (
    DONE,
    FORWARD,
    LEFT,
    PICKUP,
    RIGHT,
    MiniGridOracle,
    MiniGridState,
    make_minigrid_env,
    optimal_actions,
)
from sb3_vlm.wrappers import VLMAdviceWrapper

WALL, EMPTY, GOAL, LAVA = (OBJECT_TO_IDX[k] for k in ("wall", "empty", "goal", "lava"))


def _grid(rows: list[str]) -> np.ndarray:
    """rows[y][x]: '#' wall, '.' empty, 'G' goal, 'L' lava -> encoded (W, H, 3) grid."""
    code = {"#": WALL, ".": EMPTY, "G": GOAL, "L": LAVA}
    h, w = len(rows), len(rows[0])
    grid = np.zeros((w, h, 3), dtype=np.uint8)
    for y, row in enumerate(rows):
        for x, ch in enumerate(row):
            grid[x, y, 0] = code[ch]
    return grid


CORRIDOR = _grid(["#####", "#...#", "#.L.#", "#..G#", "#####"])


def test_planner_on_hand_built_grids() -> None:
    # facing right (dir 0) at (1, 3): the goal is two cells ahead -> forward only
    assert optimal_actions(MiniGridState(CORRIDOR, (1, 3), 0, None, "goal")) == [FORWARD]
    # facing left (dir 2) at (2, 3): the goal is behind -> turning either way is equally short
    assert sorted(optimal_actions(MiniGridState(CORRIDOR, (2, 3), 2, None, "goal"))) == [LEFT, RIGHT]
    # at (1, 1) facing down: lava at (2, 2) must be avoided; going down first is the unique shortest route
    assert optimal_actions(MiniGridState(CORRIDOR, (1, 1), 1, None, "goal")) == [FORWARD]
    # walled-off goal: no plan
    boxed = _grid(["#####", "#.#.#", "###G#", "#####"])
    assert optimal_actions(MiniGridState(boxed, (1, 1), 0, None, "goal")) == []


def test_fetch_and_gotodoor_final_actions() -> None:
    key, door = OBJECT_TO_IDX["key"], OBJECT_TO_IDX["door"]
    grid = _grid(["#####", "#...#", "#...#", "#####"])
    grid[3, 1] = (key, COLOR_TO_IDX["blue"], 0)
    fetch = MiniGridState(grid, (2, 1), 0, None, "fetch", target=(key, COLOR_TO_IDX["blue"]))
    assert optimal_actions(fetch) == [PICKUP]
    grid = _grid(["#####", "#...#", "#...#", "#####"])
    grid[4, 2] = (door, COLOR_TO_IDX["red"], 1)
    at_door = MiniGridState(grid, (3, 2), 3, None, "goto_door", target=(door, COLOR_TO_IDX["red"]))
    assert optimal_actions(at_door) == [DONE]


def test_oracle_soft_probabilities() -> None:
    req = AdviceRequest(
        image=None, action_space=gym.spaces.Discrete(7), state=MiniGridState(CORRIDOR, (2, 3), 2, None, "goal")
    )
    advice = MiniGridOracle(smoothing=0.14).advise_one(req)
    assert advice.valid
    np.testing.assert_allclose(advice.probs.sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(advice.probs[[LEFT, RIGHT]], [0.45, 0.45], rtol=1e-5)
    np.testing.assert_allclose(advice.probs[2:], 0.02, rtol=1e-5)
    assert not MiniGridOracle().advise_one(AdviceRequest(image=None, action_space=gym.spaces.Discrete(7))).valid


@pytest.mark.parametrize(
    "env_id, min_success",
    [
        ("MiniGrid-Empty-5x5-v0", 1.0),
        ("MiniGrid-LavaGapS7-v0", 1.0),
        ("MiniGrid-LavaCrossingS9N1-v0", 1.0),
        ("MiniGrid-SimpleCrossingS9N1-v0", 1.0),
        ("MiniGrid-DoorKey-6x6-v0", 1.0),
        ("MiniGrid-GoToDoor-6x6-v0", 1.0),
        ("MiniGrid-Fetch-5x5-N2-v0", 1.0),
        ("MiniGrid-Dynamic-Obstacles-5x5-v0", 0.7),  # obstacles move into the planned path now and then
    ],
)
def test_oracle_solves_the_suite(env_id: str, min_success: float) -> None:
    env = VLMAdviceWrapper(make_minigrid_env(env_id, student_obs="symbolic"), advisor=MiniGridOracle())
    successes = []
    for episode in range(10):
        env.reset(seed=episode)
        done, ret = False, 0.0
        while not done:
            advice = env.current_advice
            action = int(np.argmax(advice.probs)) if advice is not None and advice.valid else 2
            _, r, terminated, truncated, _ = env.step(action)
            ret += float(r)
            done = terminated or truncated
        successes.append(ret > 0)
    assert np.mean(successes) >= min_success


@pytest.mark.parametrize(
    "student_obs, shape",
    [
        ("rgb_partial", (56, 56, 3)),
        ("rgb_full", (56, 56, 3)),
        ("symbolic", (7 * 7 * 3 + 14,)),
        ("symbolic_partial", (161,)),
    ],
)
def test_student_observations(student_obs: str, shape: tuple[int, ...]) -> None:
    env = make_minigrid_env("MiniGrid-LavaGapS7-v0", student_obs=student_obs)
    obs, _ = env.reset(seed=0)
    assert obs.shape == shape and env.observation_space.contains(obs)
    check_env(env, skip_render_check=True)


def test_teacher_sees_the_full_render_and_mission() -> None:
    env = make_minigrid_env("MiniGrid-GoToDoor-6x6-v0", student_obs="rgb_partial", teacher_tile_size=8)
    env.reset(seed=3)
    req = env.get_wrapper_attr("teacher_request")()
    assert req.image.shape == (48, 48, 3) and req.image.dtype == np.uint8
    assert req.context["mission"].startswith("go to the") and req.context["carrying"] == "nothing"
    assert isinstance(req.state, MiniGridState) and req.state.task == "goto_door"
    # the teacher's full view differs from the student's egocentric one
    np.testing.assert_array_equal(
        req.image, env.unwrapped.grid.render(8, env.unwrapped.agent_pos, env.unwrapped.agent_dir)
    )


def test_top_level_lazy_exports() -> None:
    import sb3_vlm
    from sb3_vlm.envs import minigrid

    assert sb3_vlm.make_minigrid_env is minigrid.make_minigrid_env
    assert sb3_vlm.MiniGridOracle is minigrid.MiniGridOracle
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        sb3_vlm.nope  # noqa: B018
