from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX
from minigrid.core.grid import Grid
from minigrid.core.world_object import Door, Key

from sb3_vlm.advice import AdviceRequest
from sb3_vlm.advisors import AdviceCache, Advisor, CallableAdvisor, NoisyAdvisor
from sb3_vlm.envs.minigrid import (
    DONE,
    FORWARD,
    LEFT,
    PICKUP,
    RIGHT,
    GridEncodingMemo,
    MiniGridOracle,
    MiniGridState,
    MiniGridTeacherView,
    encode_grid,
    make_minigrid_env,
    minigrid_state,
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
        # closed doors toggled on the way, the key fetched, the locked door opened, the key dropped, the ball taken
        ("MiniGrid-KeyCorridorS3R1-v0", 1.0),
        ("MiniGrid-KeyCorridorS3R2-v0", 1.0),
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


@pytest.mark.parametrize("env_id", ["MiniGrid-DoorKey-8x8-v0", "MiniGrid-KeyCorridorS3R1-v0"])
def test_oracle_recovers_from_any_state_a_learner_reaches_a_dropped_key_in_the_way_included(env_id: str) -> None:
    """A learner drops the key in a doorway or in KeyCorridor's one-cell corridor, between itself and the goal: the
    oracle answered "no plan" there (52 of 100 answers in a DoorKey run), so training went on unguided. It now picks
    the key up and, in KeyCorridor, puts it down behind itself. From states after random play (pick-ups and drops
    included), following the oracle solves every episode and it never answers without a plan."""
    env = VLMAdviceWrapper(make_minigrid_env(env_id, student_obs="symbolic"), advisor=MiniGridOracle())
    rng = np.random.default_rng(0)
    unplanned, successes = 0, []
    for episode in range(12):
        env.reset(seed=episode)
        done, ret, t = False, 0.0, 0
        while not done:
            advice = env.current_advice
            unplanned += advice is None or not advice.valid
            random_phase = t < 40 and rng.random() < 0.5
            if random_phase or advice is None or not advice.valid:
                action = int(rng.integers(6))  # no 'done'
            else:
                action = int(np.argmax(advice.probs))
            _, r, terminated, truncated, _ = env.step(action)
            ret, t, done = ret + float(r), t + 1, terminated or truncated
        successes.append(ret > 0)
    assert unplanned == 0 and all(successes)


@pytest.mark.parametrize("env_id", ["MiniGrid-DoorKey-8x8-v0", "MiniGrid-KeyCorridorS3R1-v0"])
def test_grid_encoding_memo_matches_a_fresh_encoding_through_pickups_drops_toggles_and_resets(env_id: str) -> None:
    """Issue 18, item 3: the teacher view encoded the whole grid on every step for its content key."""
    env = make_minigrid_env(env_id, student_obs="symbolic")
    memo = GridEncodingMemo()
    rng = np.random.default_rng(1)
    reused = recomputed = 0
    for episode in range(6):
        env.reset(seed=episode)
        memo.new_episode()
        previous = None
        for _ in range(150):
            u: Any = env.unwrapped
            encoding = memo.encode(u.grid)
            np.testing.assert_array_equal(encoding, encode_grid(u.grid))
            reused += encoding is previous
            recomputed += encoding is not previous
            previous = encoding
            _, _, terminated, truncated, _ = env.step(int(rng.integers(6)))  # pick-ups, drops and toggles too
            if terminated or truncated:
                break
    assert reused > 3 * recomputed  # most steps change nothing in the grid


def test_oracle_picks_up_a_key_dropped_in_the_doorway() -> None:
    env = make_minigrid_env("MiniGrid-DoorKey-6x6-v0", student_obs="symbolic")
    env.reset(seed=0)
    u: Any = env.unwrapped
    door_x, door_y = next((x, y) for x in range(u.width) for y in range(u.height) if isinstance(u.grid.get(x, y), Door))
    door = u.grid.get(door_x, door_y)
    door.is_locked, door.is_open = False, True
    for x in range(u.width):  # take the key away from where it lies
        for y in range(u.height):
            if isinstance(u.grid.get(x, y), Key):
                u.grid.set(x, y, None)
    u.grid.set(door_x + 1, door_y, Key("yellow"))  # just past the doorway, towards the goal
    u.agent_pos, u.agent_dir, u.carrying = (door_x, door_y), 0, None  # standing in the doorway, facing it
    assert optimal_actions(minigrid_state(env)) == [PICKUP]


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


# ------------------------------------------------------------------ lazy teacher views (issue 18)
def _rollout(env_id: str, content_key: bool, advisor: Advisor, steps: int, seed: int = 0) -> tuple[list, list]:
    """Random actions (all seven, so doors open and keys are carried); the advice and requests of every step."""
    env = VLMAdviceWrapper(
        make_minigrid_env(env_id, student_obs="symbolic", teacher_content_key=content_key), advisor, cache=AdviceCache()
    )
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    advice, requests = [], []
    for step in range(steps):
        _, _, terminated, truncated, info = env.step(int(rng.integers(7)))
        advice.append(info["vlm_advice"])
        requests.append(info["vlm_request"])
        if terminated or truncated:
            env.reset(seed=seed + step + 1)
    return advice, requests


@pytest.fixture
def renders(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """One entry per MiniGrid grid render in this process."""
    calls: list[int] = []
    original = Grid.render

    def counting_render(self: Grid, *args: Any, **kwargs: Any) -> np.ndarray:
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Grid, "render", counting_render)
    return calls


def test_lazy_view_renders_only_for_an_advisor_that_looks_on_a_miss(renders: list[int]) -> None:
    looks = CallableAdvisor(lambda r: int(r.image.sum()) % 3, name="looks")  # a stand-in VLM: reads the image
    advice, _ = _rollout("MiniGrid-LavaGapS7-v0", True, looks, steps=400)
    assert all(a.valid for a in advice)
    assert 0 < len(renders) == looks.stats.queries == looks.stats.cache_misses < looks.stats.cache_hits
    renders.clear()
    _rollout("MiniGrid-LavaGapS7-v0", True, MiniGridOracle(), steps=400)
    assert not renders  # the oracle plans on the state: nothing is ever drawn
    _rollout("MiniGrid-LavaGapS7-v0", False, MiniGridOracle(), steps=100)
    assert len(renders) == 101  # keyed by pixels: every view (and the first one at reset) is drawn


def test_content_key_is_the_same_for_the_same_view_and_differs_between_views() -> None:
    env = make_minigrid_env("MiniGrid-DoorKey-5x5-v0", student_obs="symbolic")
    env.reset(seed=0)
    u: Any = env.unwrapped
    view = env.get_wrapper_attr("teacher_request")
    base = view()
    assert base.content_key == view().content_key and not base.rendered
    assert base.cache_key("a") == view().cache_key("a") != base.cache_key("b")
    pos, direction, door = u.agent_pos, u.agent_dir, next(o for o in u.grid.grid if isinstance(o, Door))
    free = next((x, 1) for x in range(1, 4) if (x, 1) != tuple(pos) and u.grid.get(x, 1) is None)
    changes = {
        "turned": lambda: setattr(u, "agent_dir", (direction + 1) % 4),
        "moved": lambda: setattr(u, "agent_pos", free),
        "door opened": lambda: (setattr(door, "is_locked", False), setattr(door, "is_open", True)),
        "carrying": lambda: setattr(u, "carrying", Key("yellow")),
        "mission": lambda: setattr(u, "mission", "open the door"),
    }
    keys = {base.content_key}
    for name, change in changes.items():
        change()
        changed = view()
        assert changed.content_key not in keys, name
        assert changed.cache_key("a") != base.cache_key("a"), name
        keys.add(changed.content_key)
    # back where it started: the same view again
    u.agent_pos, u.agent_dir, u.carrying, u.mission = pos, direction, None, base.context["mission"]
    door.is_open, door.is_locked = False, True
    assert view().content_key == base.content_key
    # what a miss would render is part of the key
    assert MiniGridTeacherView(env.env, tile_size=16).teacher_request().content_key != base.content_key


@pytest.mark.parametrize("env_id", ["MiniGrid-LavaGapS7-v0", "MiniGrid-DoorKey-5x5-v0"])
def test_content_keys_give_the_advice_and_hits_of_image_keys(env_id: str) -> None:
    def teacher() -> Advisor:  # the corruption is drawn per query: equal only if the same views are queried in order
        return NoisyAdvisor(MiniGridOracle(), reliability=0.7, seed=1)

    by_pixels, by_content = teacher(), teacher()
    advice_px, requests_px = _rollout(env_id, False, by_pixels, steps=1500)
    advice_ck, requests_ck = _rollout(env_id, True, by_content, steps=1500)
    assert advice_ck == advice_px
    counts = [(s.queries, s.invalid, s.cache_hits, s.cache_misses) for s in (by_content.stats, by_pixels.stats)]
    assert counts[0] == counts[1] and counts[0][2] > counts[0][0] > 0
    assert by_content.n_corrupted == by_pixels.n_corrupted > 0
    # drawn after the env stepped on, from the snapshot: the image the pixel-keyed view rendered at the time
    for lazy, eager in zip(requests_ck[::50], requests_px[::50], strict=True):
        assert not lazy.rendered
        np.testing.assert_array_equal(lazy.image, eager.image)


def test_encode_grid_matches_minigrid() -> None:
    for env_id in ("MiniGrid-DoorKey-6x6-v0", "MiniGrid-Fetch-5x5-N2-v0", "MiniGrid-GoToDoor-6x6-v0"):
        env = make_minigrid_env(env_id)
        env.reset(seed=2)
        grid = env.unwrapped.grid  # type: ignore[attr-defined]
        encoded = encode_grid(grid)
        np.testing.assert_array_equal(encoded, grid.encode())
        assert not encoded.flags.writeable


def test_lazy_views_cross_processes_and_render_in_the_main_process_on_a_miss(renders: list[int]) -> None:
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    from sb3_vlm.wrappers import VecVLMAdviceWrapper

    makers = [lambda: make_minigrid_env("MiniGrid-LavaGapS7-v0", student_obs="symbolic") for _ in range(2)]
    actions = np.random.default_rng(0).integers(0, 3, size=(60, 2))
    runs = []
    for vec_cls in (DummyVecEnv, SubprocVecEnv):
        renders.clear()
        looks = CallableAdvisor(lambda r: int(r.image.sum()) % 3, name="looks")
        venv = VecVLMAdviceWrapper(vec_cls(makers), looks, cache=AdviceCache())  # type: ignore[arg-type]
        venv.seed(0)
        venv.reset()
        advice = [info["vlm_advice"] for a in actions for info in venv.step(a)[3]]
        venv.close()
        # the workers send snapshots, not images: what is drawn is drawn here, once per miss
        assert 0 < len(renders) == looks.stats.queries < looks.stats.cache_hits + looks.stats.cache_misses
        runs.append(advice)
    assert runs[0] == runs[1]


# --------------------------------------------------------------------------------------------- teacher view size
def _teacher_image(env: Any) -> np.ndarray:
    request = env.get_wrapper_attr("teacher_request")()
    return request.image


def test_vlm_advisor_gets_vlm_sized_minigrid_view_scripted_keeps_cheap_one():
    """Issue 16 item 12: API / HF advisors see 32-pixel tiles (224×224 on a 7x7 grid), the oracle keeps 8."""
    from stable_baselines3.common.env_util import make_vec_env

    from sb3_vlm.advisors.gemini import GeminiAdvisor
    from sb3_vlm.advisors.hf import HFAdvisor
    from sb3_vlm.advisors.openai_compat import OpenAIAdvisor
    from sb3_vlm.advisors.prompts import MINIGRID_PROMPT
    from sb3_vlm.wrappers import VecVLMAdviceWrapper

    env_id = "MiniGrid-LavaGapS7-v0"
    oracle = VLMAdviceWrapper(make_minigrid_env(env_id, student_obs="symbolic"), MiniGridOracle())
    oracle.reset(seed=0)
    assert _teacher_image(oracle).shape == (56, 56, 3)

    api = OpenAIAdvisor("m", MINIGRID_PROMPT, base_url="http://127.0.0.1:9/v1", api_key="sk-test")
    for advisor in (api, GeminiAdvisor("g", MINIGRID_PROMPT, api_key="AIza-test")):
        wrapped = VLMAdviceWrapper(make_minigrid_env(env_id, student_obs="symbolic"), advisor)
        wrapped.reset(seed=0)
        assert _teacher_image(wrapped).shape == (224, 224, 3)
    assert HFAdvisor.preferred_view_size == 224

    # a tile size asked for is kept, whatever the advisor
    fixed = VLMAdviceWrapper(make_minigrid_env(env_id, student_obs="symbolic", teacher_tile_size=8), api)
    fixed.reset(seed=0)
    assert _teacher_image(fixed).shape == (56, 56, 3)

    # the vec wrapper (sb3-vlm train) does the same through env_method
    venv = VecVLMAdviceWrapper(make_vec_env(lambda: make_minigrid_env(env_id, student_obs="symbolic"), n_envs=1), api)
    venv.reset()
    assert venv.env_method("teacher_request")[0].image.shape == (224, 224, 3)
    venv.close()
