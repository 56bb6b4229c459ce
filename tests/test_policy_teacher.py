"""Trained-policy teachers: the SAC actor exported to npz and run in numpy, its file checks, the region views of a
partially reliable teacher on high-dimensional states, ``benchmarks/train_teachers.py`` and the suite's MuJoCo runs."""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces

from sb3_vlm.advice import Advice, AdviceRequest
from sb3_vlm.advisors import CallableAdvisor, NoisyAdvisor, PolicyAdvisor, ProjectedGridKey, export_sac_actor

pytest.importorskip("mujoco")

ROOT = Path(__file__).resolve().parent.parent
ENV_ID = "InvertedPendulum-v5"  # 4-d state, actions in [-3, 3]: the rescaling from [-1, 1] matters


@pytest.fixture(scope="module")
def sac_model() -> Any:
    from stable_baselines3 import SAC

    th.set_num_threads(1)
    model = SAC("MlpPolicy", ENV_ID, learning_starts=100, policy_kwargs=dict(net_arch=[32, 32]), seed=0)
    model.learn(200)
    with th.no_grad():  # a larger mean head, so the actions span the box (tanh saturates) and the test can fail
        model.actor.mu.weight.mul_(20.0)
    return model


@pytest.fixture(scope="module")
def teacher_file(sac_model: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_sac_actor(sac_model, tmp_path_factory.mktemp("teachers") / f"{ENV_ID}.npz")


def test_numpy_teacher_matches_sac_predict(sac_model: Any, teacher_file: Path) -> None:
    rng = np.random.default_rng(0)
    visited = sac_model.replay_buffer.observations[:200, 0]
    obs = np.concatenate([visited, rng.normal(0.0, 3.0, size=(100, 4))])
    expected, _ = sac_model.predict(obs, deterministic=True)
    teacher = PolicyAdvisor(teacher_file)
    actions = teacher.predict(obs)
    assert np.ptp(expected) > 1.0  # non-trivial actions across the box
    np.testing.assert_allclose(actions, expected, atol=1e-5)
    # through the advisor protocol: the request's privileged state in, the same action out
    box = spaces.Box(-3.0, 3.0, shape=(1,), dtype=np.float32)
    answers = teacher.advise([AdviceRequest(action_space=box, state=o) for o in obs[:20]])
    np.testing.assert_allclose(np.stack([a.action for a in answers]), expected[:20], atol=1e-5)
    assert all(a.valid and a.source == teacher.identity for a in answers)
    assert teacher.env_id == ENV_ID and teacher.obs_dim == 4
    np.testing.assert_allclose(teacher.obs_scale, np.maximum(visited.std(axis=0), 1e-3), rtol=1e-5)


def test_inference_needs_neither_torch_nor_sb3(teacher_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = (ROOT / "sb3_vlm" / "advisors" / "policy.py").read_text()
    top_level = [n for n in ast.parse(source).body if isinstance(n, (ast.Import, ast.ImportFrom))]
    modules = {a.name for n in top_level if isinstance(n, ast.Import) for a in n.names}
    modules |= {n.module or "" for n in top_level if isinstance(n, ast.ImportFrom)}
    assert not {m for m in modules if m.split(".")[0] in ("torch", "stable_baselines3")}
    # and nothing imports them when a teacher is loaded and asked
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setitem(sys.modules, "stable_baselines3", None)
    teacher = PolicyAdvisor(teacher_file)
    advice = teacher.advise([AdviceRequest(state=np.zeros(4))])[0]
    assert advice.valid and advice.action is not None and advice.action.shape == (1,)


def test_identity_is_the_content_hash(sac_model: Any, teacher_file: Path, tmp_path: Path) -> None:
    again = export_sac_actor(sac_model, tmp_path / "again.npz")
    assert PolicyAdvisor(again).identity == PolicyAdvisor(teacher_file).identity  # zip timestamps do not matter
    arrays = dict(np.load(teacher_file))
    arrays["mu_bias"] = arrays["mu_bias"] + 1e-3
    np.savez(tmp_path / "other.npz", **arrays)
    assert PolicyAdvisor(tmp_path / "other.npz").identity != PolicyAdvisor(teacher_file).identity


def _valid_arrays(obs_dim: int = 4, hidden: tuple[int, ...] = (8, 8), action_dim: int = 2) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    arrays: dict[str, Any] = {}
    width = obs_dim
    for i, h in enumerate(hidden):
        arrays[f"latent_weight_{i}"] = rng.normal(size=(h, width)).astype(np.float32)
        arrays[f"latent_bias_{i}"] = rng.normal(size=h).astype(np.float32)
        width = h
    arrays.update(
        mu_weight=rng.normal(size=(action_dim, width)).astype(np.float32),
        mu_bias=np.zeros(action_dim, dtype=np.float32),
        action_low=-np.ones(action_dim, dtype=np.float32),
        action_high=np.ones(action_dim, dtype=np.float32),
        obs_scale=np.ones(obs_dim, dtype=np.float32),
        obs_dim=np.asarray(obs_dim),
        env_id=np.asarray("Toy-v0"),
        activation=np.asarray("relu"),
        format_version=np.asarray(1),
    )
    return arrays


def _broken(change: str) -> dict[str, Any]:
    arrays = _valid_arrays()
    if change == "missing":
        del arrays["mu_bias"]
    elif change == "missing_bias":
        del arrays["latent_bias_1"]
    elif change == "shape":
        arrays["latent_weight_1"] = np.zeros((8, 5), dtype=np.float32)
    elif change == "nan":
        arrays["latent_weight_0"][2, 1] = np.nan
    elif change == "object":  # loading it would need pickle
        arrays["mu_weight"] = np.array([object()], dtype=object)
    elif change == "version":
        arrays["format_version"] = np.asarray(7)
    elif change == "activation":
        arrays["activation"] = np.asarray("gelu")
    elif change == "bounds":
        arrays["action_low"] = np.ones(2, dtype=np.float32)
    return arrays


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("missing", "missing arrays \\['mu_bias'\\]"),
        ("missing_bias", "missing array latent_bias_1"),
        ("shape", "latent_weight_1 has shape \\(8, 5\\), expected \\(8, 8\\)"),
        ("nan", "latent_weight_0 holds NaN"),
        ("object", "pickle"),
        ("version", "format_version 7"),
        ("activation", "unknown activation 'gelu'"),
        ("bounds", "action_low must be below action_high"),
    ],
)
def test_malformed_files_raise_clearly(change: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **_broken(change))
    with pytest.raises(ValueError, match=message):
        PolicyAdvisor(path)


def test_not_an_npz_and_a_valid_toy_file(tmp_path: Path) -> None:
    (tmp_path / "junk.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="not a policy teacher file"):
        PolicyAdvisor(tmp_path / "junk.npz")
    with pytest.raises(FileNotFoundError):
        PolicyAdvisor(tmp_path / "absent.npz")
    np.savez(tmp_path / "toy.npz", **_valid_arrays())
    teacher = PolicyAdvisor(tmp_path / "toy.npz")
    assert teacher.predict(np.zeros(4)).shape == (2,)
    # a state of the wrong size is the teacher's error, and the advisor protocol turns it into invalid advice
    assert not teacher.advise([AdviceRequest(state=np.zeros(5))])[0].valid
    assert teacher.stats.errors == 1


# ------------------------------------------------------------------------------------------ region views


def test_projected_grid_nearby_states_share_a_cell_far_ones_do_not() -> None:
    key = ProjectedGridKey(np.full(11, 2.0), cell=0.5, seed=0)
    rng = np.random.default_rng(1)
    states = rng.normal(0.0, 2.0, size=(200, 11))
    near = states + rng.normal(0.0, 1e-6, size=states.shape)
    assert sum(key.cell_of(a) == key.cell_of(b) for a, b in zip(states, near, strict=True)) >= 198
    far = rng.normal(0.0, 2.0, size=(200, 11))
    assert sum(key.cell_of(a) != key.cell_of(b) for a, b in zip(states, far, strict=True)) >= 150
    # the cells are coarse: many states per cell, not one cell per state as a grid over all 11 dimensions gives
    assert len({key.cell_of(s) for s in states}) < 60
    # the projection is fixed by its seed
    assert ProjectedGridKey(np.full(11, 2.0), seed=0).cell_of(states[0]) == key.cell_of(states[0])
    with pytest.raises(ValueError, match="state of size 11"):
        key.cell_of(np.zeros(3))


@pytest.mark.parametrize("mode", ["random", "adversarial"])
def test_half_reliable_teacher_is_wrong_on_about_half_the_cells(mode: str) -> None:
    right = np.array([0.25, -0.5], dtype=np.float32)
    base = CallableAdvisor(lambda r: Advice(action=right.copy()), name="fixed")
    key = ProjectedGridKey(np.ones(11), cell=0.5, seed=0)
    noisy = NoisyAdvisor(base, reliability=0.5, seed=4, mode=mode, view_key=key)
    box = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
    states = np.random.default_rng(2).normal(0.0, 1.0, size=(3000, 11))
    answers = noisy.advise([AdviceRequest(action_space=box, state=s) for s in states])
    by_cell: dict[tuple[int, int], set[tuple[float, ...]]] = defaultdict(set)
    for s, a in zip(states, answers, strict=True):
        by_cell[key.cell_of(s)].add(tuple(np.round(a.action, 6)))
    assert len(by_cell) >= 40
    assert all(len(actions) == 1 for actions in by_cell.values())  # every state of a cell shares its fate
    wrong = [next(iter(actions)) != tuple(np.round(right, 6)) for actions in by_cell.values()]
    assert 0.3 < np.mean(wrong) < 0.7
    if mode == "adversarial":  # mirrored through the box's centre
        assert {next(iter(a)) for a, w in zip(by_cell.values(), wrong, strict=True) if w} == {(-0.25, 0.5)}
    assert "grid2d(d=11" in noisy.identity


def test_suite_names_policy_teacher_views_by_projected_cells(teacher_file: Path) -> None:
    from sb3_vlm.envs.pendulum import PendulumSwingUpOracle
    from sb3_vlm.experiments.suite import default_view_key, make_advisor

    teacher = PolicyAdvisor(teacher_file)
    key = default_view_key(teacher, "continuous")
    assert isinstance(key, ProjectedGridKey)
    np.testing.assert_allclose(key.scale, teacher.obs_scale)
    assert not isinstance(default_view_key(PendulumSwingUpOracle(), "continuous"), ProjectedGridKey)
    noisy = make_advisor("r0.5", teacher, "continuous", 0)
    assert isinstance(noisy, NoisyAdvisor) and noisy.view_key is not None


# ------------------------------------------------------------------------------- envs, script, suite runs


def test_state_teacher_view_advises_on_the_observation_acted_on(teacher_file: Path) -> None:
    from sb3_vlm.envs.mujoco_state import make_state_env
    from sb3_vlm.wrappers import VLMAdviceWrapper

    teacher = PolicyAdvisor(teacher_file)
    env = VLMAdviceWrapper(make_state_env(ENV_ID), teacher)
    obs, _ = env.reset(seed=0)
    for _ in range(3):
        acted_on = obs
        obs, _, terminated, truncated, info = env.step(env.action_space.sample())
        np.testing.assert_allclose(info["vlm_advice"].action, teacher.predict(acted_on), atol=1e-6)
        assert info["vlm_request"].content_key.startswith("state:")
        if terminated or truncated:
            break


def _train_teachers_module() -> Any:
    spec = importlib.util.spec_from_file_location("train_teachers", ROOT / "benchmarks" / "train_teachers.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_teachers_script_writes_npz_and_index_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    script = _train_teachers_module()
    args = ["train_teachers.py", "--envs", ENV_ID, "--steps", "300", "--eval-episodes", "2", "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", args)
    script.main()
    index = json.loads((tmp_path / "teachers.json").read_text())
    record = index[ENV_ID]
    assert record["steps"] == 300 and record["seed"] == 0 and np.isfinite(record["eval_return"])
    assert "--steps 300" in record["command"] and record["sac_kwargs"]["policy_kwargs"] == {"net_arch": [64, 64]}
    teacher = PolicyAdvisor(tmp_path / f"{ENV_ID}.npz")
    assert teacher.identity == record["identity"] and not list(tmp_path.glob("*.partial.npz"))
    script.main()  # resumable: the existing teacher is kept
    assert "exists, skipped" in capsys.readouterr().out
    assert PolicyAdvisor(tmp_path / f"{ENV_ID}.npz").identity == record["identity"]


def test_suite_mujoco_run_with_a_teacher_and_without_one(
    teacher_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sb3_vlm.envs.mujoco_state as mujoco_state
    from sb3_vlm.experiments.suite import ENVS, run_one

    for name in ("InvertedPendulum", "InvertedDoublePendulum", "Reacher"):
        assert ENVS[name].family == "continuous" and ENVS[name].algos == ("sac",)
        gym.spec(ENVS[name].env_id)  # registered by the installed Gymnasium
    monkeypatch.setattr(mujoco_state, "TEACHERS_DIR", tmp_path)
    job = dict(algo="sac", env="InvertedPendulum", advisor="r0.5", seed=0, steps=1100)
    with pytest.raises(FileNotFoundError, match=r"benchmarks/train_teachers\.py"):
        run_one(job)
    (tmp_path / f"{ENV_ID}.npz").write_bytes(teacher_file.read_bytes())
    out = run_one(job)
    assert out["curve_steps"] == [1000] and len(out["curve_returns"]) == 1
    assert np.isfinite(out["eval_return"])
