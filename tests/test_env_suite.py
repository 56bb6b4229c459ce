"""``sb3_vlm.envs.make``: the suite's names, Gymnasium ids, prompts and scripted advisors; the MiniGrid suite as
LVLM2P configures it, with each student observation, and GuidedPPO on it."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from sb3_vlm import VLMAdviceWrapper
from sb3_vlm.advisors.prompts import CONTINUOUS_CONTROL, MINIGRID_PROMPT
from sb3_vlm.envs import MINIGRID_SUITE, EnvBundle, gym_id, make, names
from sb3_vlm.envs.minigrid import MiniGridOracle
from sb3_vlm.ppo import GuidedPPO
from tests.helpers import require_gl


def test_suite_names_and_unknown_name() -> None:
    expected = {"carracing", "carla-highway", "carla-jaywalk", "dmc-cheetah-run", "dmc-quadruped-run"}
    expected |= {f"minigrid-{short}" for short in ("lavagap", "dynamic-obstacles", "fetch", "gotodoor", "doorkey")}
    assert expected <= set(names()) and len([n for n in names() if n.startswith("dmc-")]) == 8
    for name in names():
        assert gym_id(name) in gym.registry  # registered on import, nothing built
    with pytest.raises(ValueError, match=r"Unknown environment 'dmc-nope'.*minigrid-lavagap"):
        make("dmc-nope")


@pytest.mark.parametrize("short", sorted(MINIGRID_SUITE))
@pytest.mark.parametrize(
    "student_obs, shape",
    [("symbolic", None), ("rgb_partial", (56, 56, 3)), ("rgb_full", None)],
)
def test_minigrid_suite_observations_and_oracle(short: str, student_obs: str, shape: tuple[int, ...] | None) -> None:
    bundle = make(f"minigrid-{short}", student_obs=student_obs)
    env, prompt, advisor = bundle
    assert isinstance(bundle, EnvBundle) and prompt is MINIGRID_PROMPT and isinstance(advisor, MiniGridOracle)
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    width, height = env.unwrapped.width, env.unwrapped.height
    if student_obs == "rgb_full":
        shape = (8 * width, 8 * height, 3)
    elif student_obs == "symbolic":
        shape = (width * height * 3 + 4 + 10,)  # the whole grid + direction one-hot + 10 mission words
    assert obs.shape == shape
    request = env.get_wrapper_attr("teacher_request")()
    answer = advisor.advise([request])[0]
    assert answer.valid and answer.probs is not None and np.isclose(answer.probs.sum(), 1.0)
    _, user = prompt.render(request)
    assert request.context["mission"] in user


def test_symbolic_is_the_default_student_and_any_minigrid_id_works() -> None:
    env = make("minigrid-lavagap").env
    assert env.observation_space.shape == (7 * 7 * 3 + 4 + 10,)
    assert env.unwrapped.spec.id == MINIGRID_SUITE["lavagap"]
    other = make("MiniGrid-Empty-5x5-v0", student_obs="rgb_partial")
    assert other.env.observation_space.shape == (56, 56, 3) and isinstance(other.advisor, MiniGridOracle)


def test_gym_make_gives_the_same_env() -> None:
    env = gym.make(gym_id("minigrid-fetch"), student_obs="rgb_partial")
    assert env.observation_space == make("minigrid-fetch", student_obs="rgb_partial").env.observation_space
    obs, _ = env.reset(seed=1)
    assert obs.shape == (56, 56, 3)
    assert env.get_wrapper_attr("teacher_request")().context["mission"].split()[-1] in ("key", "ball")


def test_dmc_bundle_has_the_generic_continuous_prompt() -> None:
    pytest.importorskip("dm_control")
    require_gl()
    env, prompt, advisor = make("dmc-reacher-easy", size=32, frame_stack=2)
    assert prompt is CONTINUOUS_CONTROL and advisor is None
    env.reset(seed=0)
    _, user = prompt.render(env.get_wrapper_attr("teacher_request")())
    assert "red target" in user and "[-1" in user  # the task description and the action bounds
    assert env.observation_space.shape == (32, 32, 6)
    env.close()


def test_guided_ppo_on_the_minigrid_suite() -> None:
    env, _, oracle = make("minigrid-doorkey")
    model = GuidedPPO("MlpPolicy", VLMAdviceWrapper(env, oracle), n_steps=64, batch_size=32, n_epochs=1, seed=0)
    model.learn(64)
    buffer = model.rollout_buffer
    assert buffer.advice_valid.sum() > 32  # the oracle plans DoorKey from nearly every state
    logged = model.logger.name_to_value  # a defaultdict: check that a key was logged before reading it
    assert {"train/distill_loss", "train/teacher_coef", "train/advice_valid_frac"} <= set(logged)
    assert logged["train/distill_loss"] > 0.0  # a fresh policy is far from the oracle's distribution
    assert logged["train/teacher_coef"] == pytest.approx(model.current_teacher_coef)  # the λ·τ this update used
    assert logged["train/advice_valid_frac"] == pytest.approx(buffer.advice_valid.mean())
