"""CarRacing from pixels: the wrapper stack, the teacher view, the prompt, the scripted driver and GuidedSAC on it."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.utils.env_checker import check_env
from PIL import Image

from sb3_vlm.advice import AdviceRequest
from sb3_vlm.advisors.parsing import parse_continuous
from sb3_vlm.envs.carracing import (
    CARRACING_PROMPT,
    CarRacingPursuitAdvisor,
    CarRacingState,
    make_carracing_env,
)
from sb3_vlm.sac import GuidedSAC
from sb3_vlm.wrappers import VLMAdviceWrapper

ACTION_SPACE = spaces.Box(
    np.array([-1.0, 0.0, 0.0], dtype=np.float32), np.array([1.0, 1.0, 1.0], dtype=np.float32), dtype=np.float32
)
GAS = np.array([0.0, 1.0, 0.0], dtype=np.float32)


def _teacher(env: gym.Env) -> AdviceRequest:
    return env.get_wrapper_attr("teacher_request")()


def _resized(frame: np.ndarray, size: int = 84) -> np.ndarray:
    """The expected observation frame, computed independently of the env's wrapper."""
    return np.asarray(Image.fromarray(frame).resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


@pytest.mark.filterwarnings("ignore:.*different from the unwrapped version")  # checking the wrapped env is the point
def test_wrapped_env_passes_check_env_and_has_the_papers_spaces() -> None:
    env = make_carracing_env()
    check_env(env, skip_render_check=True)
    assert env.observation_space == spaces.Box(0, 255, (84, 84, 9), dtype=np.uint8)
    assert isinstance(env.action_space, spaces.Box) and env.action_space == ACTION_SPACE
    obs, _ = env.reset(seed=0)
    assert obs.shape == (84, 84, 9) and obs.dtype == np.uint8
    assert env.spec is not None and env.spec.max_episode_steps == 1000

    # every wrapper records its arguments: the spec rebuilds the same stack
    rebuilt = gym.make(env.spec)
    assert rebuilt.observation_space == env.observation_space
    np.testing.assert_array_equal(rebuilt.reset(seed=0)[0], obs)

    small = make_carracing_env(size=64, frame_stack=2, action_repeat=2, max_episode_steps=4)
    obs, _ = small.reset(seed=0)
    assert obs.shape == (64, 64, 6)
    _, _, _, truncated, info = small.step(GAS)
    assert info["action_repeat_steps"] == 2 and not truncated
    _, _, _, truncated, _ = small.step(GAS)
    assert truncated  # the limit counts frames: 4 frames are 2 agent steps
    with pytest.raises(ValueError, match="continuous"):
        make_carracing_env(continuous=False)


def test_frame_stack_holds_the_resized_frames_oldest_first() -> None:
    env = make_carracing_env()
    obs, _ = env.reset(seed=1)
    raw = [_teacher(env).image]
    for block in (obs[..., 0:3], obs[..., 3:6], obs[..., 6:9]):  # reset fills the stack with the first frame
        np.testing.assert_array_equal(block, _resized(raw[0]))
    for _ in range(2):
        obs, *_ = env.step(GAS)
        raw.append(_teacher(env).image)
    expected = [_resized(frame) for frame in raw]  # o_{t-2}, o_{t-1}, o_t
    assert not np.array_equal(expected[1], expected[2])  # the camera zooms in and the car moves: frames differ
    for i in range(3):
        np.testing.assert_array_equal(obs[..., 3 * i : 3 * i + 3], expected[i])


def test_teacher_request_shows_the_full_frame_speed_and_state() -> None:
    env = make_carracing_env()
    env.reset(seed=2)
    racing = env.unwrapped
    request = _teacher(env)
    assert request.image is not None and request.image.shape == (96, 96, 3) and request.image.dtype == np.uint8
    assert request.context == {"speed": 0.0} and request.action_space == ACTION_SPACE
    for _ in range(30):
        env.step(GAS)
    request = _teacher(env)
    np.testing.assert_array_equal(request.image, racing.state)  # the raw observation, not a new render
    speed = float(np.hypot(*racing.car.hull.linearVelocity))
    assert speed > 5 and request.context["speed"] == pytest.approx(speed, abs=0.005)
    state = request.state
    assert isinstance(state, CarRacingState) and state.speed == pytest.approx(speed)
    assert state.track.shape == (len(racing.track), 2)
    np.testing.assert_allclose(state.position, tuple(racing.car.hull.position))
    assert state.angle == pytest.approx(racing.car.hull.angle)

    # the prompt renders from this request and its answer format parses back to the action
    system, user = CARRACING_PROMPT.render(request)
    assert system and f"{request.context['speed']:.2f} m/s" in user
    assert "steer in [-1, 1], gas in [0, 1], brake in [0, 1]" in user
    answer = CARRACING_PROMPT.format_answer(np.array([-0.25, 0.5, 0.0]), ACTION_SPACE)
    assert answer == "action:[-0.25, 0.50, 0.00]"
    parsed = parse_continuous(answer, ACTION_SPACE, CARRACING_PROMPT.action_names)
    np.testing.assert_allclose(parsed.action, [-0.25, 0.5, 0.0])


def _episode_return(env: gym.Env, policy, steps: int) -> float:
    env.reset(seed=0)
    total = 0.0
    for _ in range(steps):
        _, reward, terminated, truncated, _ = env.step(policy())
        total += float(reward)
        if terminated or truncated:
            break
    return total


def test_pursuit_driver_drives_and_needs_the_state() -> None:
    env, driver = make_carracing_env(), CarRacingPursuitAdvisor()
    actions: list[np.ndarray] = []

    def drive() -> np.ndarray:
        advice = driver.advise_one(_teacher(env))
        assert advice.valid and advice.action is not None
        actions.append(advice.action)
        return advice.action

    # seed 0, 300 frames: the driver scores 280 (seeds 1, 2: 345, 248); doing nothing scores -24
    driven = _episode_return(env, drive, 300)
    idle = _episode_return(env, lambda: np.zeros(3, dtype=np.float32), 300)
    assert driven > 150 and idle < -15
    assert all(ACTION_SPACE.contains(a) for a in actions)
    taken = np.stack(actions)
    assert taken[:, 0].min() < -0.05 and taken[:, 0].max() > 0.05  # it steers both ways on this track
    assert taken[:, 2].max() > 0  # and brakes before bends

    bad = driver.advise([AdviceRequest(image=None, action_space=ACTION_SPACE)])[0]
    assert not bad.valid and bad.action is None
    assert driver.stats.invalid == 1 and driver.stats.errors == 0  # nothing to drive on is no backend failure


def test_guided_sac_learns_with_pursuit_advice_in_the_buffer() -> None:
    env = VLMAdviceWrapper(make_carracing_env(), CarRacingPursuitAdvisor())
    model = GuidedSAC(
        "CnnPolicy",
        env,
        method="covr",
        advice_warmup=True,  # ERPv: the warm-up explores with the advised actions
        learning_starts=32,
        batch_size=8,
        buffer_size=128,
        seed=0,
    )
    model.learn(64)
    buf = model.replay_buffer
    assert buf.advice_valid[:64, 0].all() and buf.advice_valid[64:].sum() == 0
    advised = buf.advice_actions[:64, 0]
    assert np.isfinite(advised).all() and np.abs(advised).max() <= 1.0
    assert np.ptp(advised[:, 1]) > 0  # gas varies: real advice, not a constant fill
    # during the warm-up the executed actions are the advised ones (both scaled to [-1, 1] by the buffer)
    np.testing.assert_allclose(buf.actions[:32, 0], advised[:32], atol=1e-6)
    assert model.n_advised_actions == 32
    assert model.logger.name_to_value["train/n_updates"] > 0
