"""DMControl from pixels: GL backend choice, the pixel pipeline (shape, seeding, action repeat, frame stack, episode
length, fast-render settings), the teacher view, and GuidedSAC on it."""

from __future__ import annotations

import os

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from tests.helpers import require_gl

require_gl()  # before shimmy is imported: it imports PyOpenGL, which fixes its platform then
pytest.importorskip("dm_control")
pytest.importorskip("shimmy")

from sb3_vlm import ConstantAdvisor, VLMAdviceWrapper  # noqa: E402
from sb3_vlm.envs import dmc  # noqa: E402
from sb3_vlm.envs.dmc import DMC_TASKS, choose_gl_backend, make_dmc_env, select_mujoco_gl  # noqa: E402
from sb3_vlm.sac import GuidedSAC  # noqa: E402


def test_gl_choice_takes_the_first_working_backend_and_names_packages_when_none_works() -> None:
    tried: list[str] = []

    def probe(backend: str) -> bool:
        tried.append(backend)
        return backend == "osmesa"

    assert choose_gl_backend(("egl", "osmesa"), probe) == "osmesa" and tried == ["egl", "osmesa"]
    with pytest.raises(RuntimeError, match="apt-get install -y libegl1 libegl-mesa0 libgl1-mesa-dri libosmesa6"):
        choose_gl_backend(("egl", "osmesa"), lambda backend: False)


def test_select_respects_a_preset_backend_and_the_real_probe_works(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = select_mujoco_gl()
    assert backend in dmc.GL_PACKAGES and dmc._probe_gl(backend)  # what CI installs must actually render
    monkeypatch.setenv("MUJOCO_GL", "osmesa")

    def no_probe(backend: str) -> bool:
        raise AssertionError("a preset MUJOCO_GL must not be probed")

    monkeypatch.setattr(dmc, "_probe_gl", no_probe)
    monkeypatch.setitem(__import__("sys").modules, "OpenGL.platform", None)  # as if PyOpenGL were not loaded
    assert select_mujoco_gl() == "osmesa"


def test_a_pyopengl_imported_with_another_platform_is_named() -> None:
    import types

    fake = types.SimpleNamespace(PLATFORM=type("GLXPlatform", (), {})())
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(__import__("sys").modules, "OpenGL.platform", fake)
        with pytest.raises(RuntimeError, match="before MuJoCo's backend 'egl' was chosen"):
            dmc._check_pyopengl_platform("egl")


def test_pixel_env_checks_shape_and_seeding() -> None:
    env = make_dmc_env("reacher-easy", seed=0)
    check_env(env, skip_render_check=True)
    first, _ = env.reset(seed=7)
    again, _ = env.reset(seed=7)
    other, _ = env.reset(seed=8)
    assert first.shape == (84, 84, 9) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, again)  # shimmy alone does not reseed the task's initial state
    assert not np.array_equal(first, other)
    assert first[..., :3].std() > 5  # a rendered scene, not a blank buffer
    env.close()


def test_action_repeat_episode_length_and_frame_order() -> None:
    env = make_dmc_env("cartpole-swingup", seed=0)
    assert DMC_TASKS["cartpole-swingup"].action_repeat == 8
    obs, _ = env.reset(seed=0)
    for k in range(3):
        np.testing.assert_array_equal(obs[..., 3 * k : 3 * k + 3], obs[..., :3])  # reset fills the stack
    pixels = env.get_wrapper_attr("_frame")
    np.testing.assert_array_equal(obs[..., 6:], pixels)
    steps, done, newest = 0, False, obs[..., 6:]
    env.action_space.seed(0)
    while not done:
        nxt, _, terminated, truncated, info = env.step(env.action_space.sample())
        np.testing.assert_array_equal(nxt[..., 3:6], newest)  # oldest first: the previous newest moved left
        newest = nxt[..., 6:]
        steps += 1
        done = terminated or truncated
        assert info["action_repeat_steps"] == 8
    assert steps == 1000 // 8 and truncated and not terminated  # 1000 simulator steps, a time limit
    env.close()


def test_fast_render_settings_and_teacher_view() -> None:
    env = make_dmc_env("walker-walk", teacher_size=128, seed=0)
    env.reset(seed=0)
    physics = env.unwrapped._env.physics
    quality = physics.model.vis.quality
    assert quality.shadowsize == 0 and quality.offsamples == 0 and (quality.numslices, quality.numstacks) == (12, 8)
    assert physics.model.vis.global_.offwidth == 128  # the largest frame asked for
    request = env.get_wrapper_attr("teacher_request")()
    assert request.image.shape == (128, 128, 3) and request.context == {"task": DMC_TASKS["walker-walk"].description}
    assert request.action_space.shape == (6,) and request.state.shape == physics.get_state().shape
    again = env.get_wrapper_attr("teacher_request")()
    assert again.image is request.image  # rendered once per step
    env.step(np.zeros(6, dtype=np.float32))
    assert env.get_wrapper_attr("teacher_request")().image is not request.image
    env.close()


def test_unknown_task_needs_an_action_repeat() -> None:
    with pytest.raises(ValueError, match="explicit action_repeat"):
        make_dmc_env("hopper-hop")
    env = make_dmc_env("hopper-hop", action_repeat=4, frame_stack=2, size=48)
    assert env.observation_space.shape == (48, 48, 6)
    env.close()


def test_guided_sac_runs_on_dmc_pixels() -> None:
    env = VLMAdviceWrapper(make_dmc_env("cartpole-swingup", seed=0), ConstantAdvisor(0.5), query_every=2)
    model = GuidedSAC(
        "CnnPolicy", env, method="dpl", learning_starts=16, batch_size=8, buffer_size=200, seed=0, train_freq=4
    )
    model.learn(40)
    buffer = model.replay_buffer
    assert buffer.observations.shape[1:] == (1, 84, 84, 9) or buffer.observations.shape[-3:] == (9, 84, 84)
    valid = buffer.advice_valid[:40, 0]
    assert valid.sum() == 20  # every 2nd step of the (single, unfinished) episode
    np.testing.assert_allclose(buffer.advice_actions[:40][valid.astype(bool)], 0.5)
    assert "train/guidance_loss" in model.logger.name_to_value or "train/actor_loss" in model.logger.name_to_value
    assert os.environ["MUJOCO_GL"] in dmc.GL_PACKAGES
