"""RL Zoo integration: ``python -m sb3_vlm.zoo train`` / ``enjoy`` in a subprocess, the shipped defaults, the
``advisor:`` shorthand, the hyperparameter samplers, and what the advice wrapper refuses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import yaml

pytest.importorskip("rl_zoo3")

from sb3_vlm.zoo import (
    DEFAULT_HYPERPARAMS,
    GUIDED_ALGOS,
    expand_advisor_keys,
    register,
    wrappers,
)
from sb3_vlm.zoo import _prepare_config as prepare_config

ROOT = Path(__file__).resolve().parents[1]


def _zoo(*args: str, cwd: Path, timeout: int = 300, extra_env: dict[str, str] | None = None) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg", **(extra_env or {})}
    done = subprocess.run(
        [sys.executable, "-m", "sb3_vlm.zoo", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def _scalars(tb_dir: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[float]] = {}
    for file in tb_dir.rglob("events.out.tfevents*"):
        acc = EventAccumulator(str(file), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend(e.value for e in acc.Scalars(tag))
    return out


def test_zoo_train_and_enjoy_guided_ppo_from_an_advisor_key(tmp_path: Path) -> None:
    conf = tmp_path / "ppo.yml"
    conf.write_text(
        yaml.safe_dump(
            {
                "MiniGrid-Empty-5x5-v0": {
                    "env_wrapper": [{"sb3_vlm.envs.minigrid.SymbolicObsWrapper": {"full": False}}],
                    "advisor": {"advisor": "oracle", "query_every": 2},
                    "n_envs": 2,
                    "n_timesteps": 256,
                    "policy": "MlpPolicy",
                    "n_steps": 64,
                    "batch_size": 64,
                    "teacher_coef": 0.05,
                }
            }
        )
    )
    temp = tmp_path / "tmp"
    temp.mkdir()
    out = _zoo(
        "train", "--algo", "guided_ppo", "--env", "MiniGrid-Empty-5x5-v0", "-conf", str(conf), "-f", "logs",
        "--eval-freq", "128", "--eval-episodes", "2", "--tensorboard-log", "tb", "--seed", "0", cwd=tmp_path,
        extra_env={"TMPDIR": str(temp)},
    )  # fmt: skip
    # the user's file is what rl_zoo3 reads, logs and records; nothing is left in the temp folder
    assert f"Loading hyperparameters from: {conf}" in out
    assert not list(temp.glob("*.yml"))
    run = tmp_path / "logs" / "guided_ppo" / "MiniGrid-Empty-5x5-v0_1"
    args = yaml.load((run / "MiniGrid-Empty-5x5-v0" / "args.yml").read_text(), Loader=yaml.UnsafeLoader)
    assert dict(args)["conf_file"] == str(conf) and dict(args)["num_threads"] == 1
    assert (run / "MiniGrid-Empty-5x5-v0.zip").exists()
    saved = yaml.load((run / "MiniGrid-Empty-5x5-v0" / "config.yml").read_text(), Loader=yaml.UnsafeLoader)
    saved = dict(saved)
    assert {"sb3_vlm.zoo.advice_wrapper": {"advisor": "oracle", "query_every": 2}} in saved["env_wrapper"]
    assert "sb3_vlm.callbacks.AdviceMetricsCallback" in saved["callback"]
    scalars = _scalars(tmp_path / "tb")
    # the guidance internals and the advisor counters reach TensorBoard
    assert {"train/distill_loss", "train/teacher_coef", "advisor/queries", "advisor/cache_hit_rate"} <= set(scalars)
    # 256 steps, every 2nd queried, 2 envs: about 128 queries; the evaluation env asked nothing
    assert 100 <= scalars["advisor/queries"][-1] <= 160
    out = _zoo(
        "enjoy", "--algo", "guided_ppo", "--env", "MiniGrid-Empty-5x5-v0", "-f", "logs", "--no-render", "-n", "60",
        cwd=tmp_path,
    )  # fmt: skip
    assert "Loading" in out and "MiniGrid-Empty-5x5-v0.zip" in out
    # rl_zoo3's plot scripts run through the same entry point (seaborn comes with the zoo extra)
    _zoo("plot_train", "-a", "guided_ppo", "-e", "MiniGrid-Empty-5x5-v0", "-f", "logs", cwd=tmp_path)


def test_zoo_train_and_enjoy_guided_sac_with_an_env_wrapper_entry(tmp_path: Path) -> None:
    conf = tmp_path / "sac.yml"
    conf.write_text(
        yaml.safe_dump(
            {
                "Pendulum-v1": {
                    "env_wrapper": [{"sb3_vlm.zoo.advice_wrapper": {"advisor": "oracle", "query_every": 5}}],
                    "callback": "sb3_vlm.callbacks.AdviceMetricsCallback",
                    "n_timesteps": 300,
                    "policy": "MlpPolicy",
                    "learning_starts": 100,
                    "batch_size": 32,
                    "buffer_size": 5000,
                    "method": "dpl",
                }
            }
        )
    )
    _zoo(
        "train", "--algo", "guided_sac", "--env", "Pendulum-v1", "-conf", str(conf), "-f", "logs", "--eval-freq",
        "-1", "--seed", "1", cwd=tmp_path,
    )  # fmt: skip
    assert (tmp_path / "logs" / "guided_sac" / "Pendulum-v1_1" / "Pendulum-v1.zip").exists()
    out = _zoo("enjoy", "--algo", "guided_sac", "--env", "Pendulum-v1", "-f", "logs", "--no-render", "-n", "210",
               cwd=tmp_path)  # fmt: skip
    assert "Mean reward" in out  # one full 200-step episode without an advisor


def test_default_hyperparameters_are_used_without_conf() -> None:
    argv = prepare_config(["--algo", "guided_ppo", "--env", "MiniGrid-LavaGapS7-v0"], "guided_ppo")
    conf = Path(argv[argv.index("-conf") + 1])
    assert conf == DEFAULT_HYPERPARAMS / "guided_ppo.yml"  # the shipped file itself, never a temporary copy
    entry = expand_advisor_keys(yaml.safe_load(conf.read_text()))["MiniGrid-LavaGapS7-v0"]
    assert "teacher_coef" not in entry and entry["n_steps"] == 128  # GuidedPPO's own default λ, with adaptive trust
    assert entry["env_wrapper"][-1] == {"sb3_vlm.zoo.advice_wrapper": {"advisor": "oracle", "query_every": 1}}
    assert prepare_config(["--algo", "ppo"], "ppo") == ["--algo", "ppo"]  # rl_zoo3's own defaults for its algos
    for algo in GUIDED_ALGOS:
        assert (DEFAULT_HYPERPARAMS / f"{algo}.yml").exists()


def test_advisor_key_expansion_keeps_wrappers_and_callbacks() -> None:
    config = {
        "A-v0": {"env_wrapper": "x.Wrap", "callback": "y.Cb", "advisor": "constant:0.5"},
        "B-v0": {"n_timesteps": 10},
    }
    out = expand_advisor_keys(config)
    assert out["A-v0"]["env_wrapper"] == ["x.Wrap", {"sb3_vlm.zoo.advice_wrapper": {"advisor": "constant:0.5"}}]
    assert out["A-v0"]["callback"] == ["y.Cb", "sb3_vlm.callbacks.AdviceMetricsCallback"]
    assert out["B-v0"] == {"n_timesteps": 10} and "advisor" in config["A-v0"]  # input untouched


def test_registered_algorithms_and_samplers() -> None:
    import optuna
    from rl_zoo3 import hyperparams_opt, utils

    from sb3_vlm.ppo import GuidedPPO
    from sb3_vlm.sac import GuidedSAC

    register()
    assert utils.ALGOS["guided_ppo"] is GuidedPPO and utils.ALGOS["guided_sac"] is GuidedSAC
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def trial() -> optuna.Trial:  # one study per algorithm: their samplers name parameters alike, differently
        return optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()

    ppo_params = hyperparams_opt.HYPERPARAMS_SAMPLER["guided_ppo"](trial(), 2, 1, {})
    assert 1e-3 <= ppo_params["teacher_coef"] <= 1.0
    GuidedPPO("MlpPolicy", "CartPole-v1", **ppo_params)  # every sampled key is a constructor argument
    sac_params = hyperparams_opt.HYPERPARAMS_SAMPLER["guided_sac"](trial(), 1, 1, {"using_her_replay_buffer": False})
    assert 0.1 <= sac_params["guidance_coef"] <= 50.0
    GuidedSAC("MlpPolicy", "Pendulum-v1", buffer_size=100, **sac_params)


def test_advice_wrapper_refuses_keys_and_is_off_for_evaluation(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        wrappers.advice_wrapper(gym.make("Pendulum-v1"), advisor="openai:gpt-4o-mini", advisor_kwargs={"api_key": "k"})
    env = wrappers.advice_wrapper(gym.make("Pendulum-v1"), advisor="oracle", query_every=1)
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.zeros(1, dtype=np.float32))
    assert info["vlm_advice"].valid and info["vlm_advice"].action.shape == (1,)
    monkeypatch.setattr(wrappers, "ADVICE_OFF", True)
    quiet = wrappers.advice_wrapper(gym.make("Pendulum-v1"), advisor="oracle")
    quiet.reset(seed=0)
    _, _, _, _, info = quiet.step(np.zeros(1, dtype=np.float32))
    assert "vlm_advice" not in info  # no advisor was built or asked
    with pytest.raises(ValueError, match="give `prompt:`"):
        monkeypatch.setattr(wrappers, "ADVICE_OFF", False)
        wrappers.advice_wrapper(gym.make("MountainCarContinuous-v0"), advisor="openai:gpt-4o-mini")
