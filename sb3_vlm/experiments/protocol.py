"""
The papers' evaluation protocol as data: a YAML config names the envs (:func:`sb3_vlm.envs.make` names), the guided
algorithm and its hyperparameters, the advisor, the number of steps, seeds and evaluation episodes. One run = one
(env, seed): train with advice, evaluate the plain policy (no VLM) every ``eval_every`` steps and at the end.

Config keys (``benchmarks/configs/*.yml``)::

    paper: text            # where the numbers come from
    envs: [names]          # suite names
    env_kwargs: {}         # passed to make()
    per_env: {name: {algo_kwargs: {...}, env_kwargs: {...}}}   # per-env overrides
    algo: guided_sac | guided_ppo | guided_a2c
    policy: CnnPolicy
    algo_kwargs: {}        # constructor arguments (method=, learning_rate=, ...)
    n_envs: 1
    advisor: spec          # sb3_vlm.advisors.factory spec: oracle | constant:X | openai:M | gemini:M | hf:PATH
    advisor_kwargs: {}
    query_every: 1
    advice_critic_steps: 0 # ERPv: pre-train C_V for this many steps first (GuidedSAC)
    finetune: null         # COVR: VLMFineTuneCallback arguments (psi0, start_guidance_after, ...)
    total_timesteps: 100000
    seeds: [0, 1, 2]
    eval_episodes: 20
    eval_every: 10000
    quick: {...}           # overrides for a CPU smoke run (--quick)
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

ALGOS = ("guided_sac", "guided_ppo", "guided_a2c")


def load_config(path: str | Path, quick: bool = False) -> dict[str, Any]:
    """Read a protocol config; ``quick`` applies its ``quick:`` overrides (nested dicts are merged)."""
    import yaml

    config = yaml.safe_load(Path(path).read_text())
    if not isinstance(config, dict) or "envs" not in config:
        raise ValueError(f"{path}: a protocol config is a mapping with at least 'envs'")
    overrides = config.pop("quick", None) or {}
    if quick:
        config = _merge(config, overrides)
    algo = config.setdefault("algo", "guided_sac")
    if algo not in ALGOS:
        raise ValueError(f"{path}: algo must be one of {ALGOS}, got {algo!r}")
    config.setdefault("name", Path(path).stem)
    return config


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overrides.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def run_one(config: dict[str, Any], env_name: str, seed: int, log_dir: Path | None = None) -> dict[str, Any]:
    """Train and evaluate one (env, seed) of ``config``; returns the result row (JSON-serialisable)."""
    from stable_baselines3.common.callbacks import CallbackList, EvalCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy

    from sb3_vlm.envs import make
    from sb3_vlm.experiments.runs import algo_class, teacher_for
    from sb3_vlm.wrappers import VecVLMAdviceWrapper

    per_env = config.get("per_env", {}).get(env_name, {})
    env_kwargs = {**config.get("env_kwargs", {}), **per_env.get("env_kwargs", {})}
    algo_kwargs = {**config.get("algo_kwargs", {}), **per_env.get("algo_kwargs", {})}
    advisor = teacher_for(env_name, config.get("advisor", "oracle"), env_kwargs, **config.get("advisor_kwargs", {}))

    def make_plain() -> Any:
        return make(env_name, **env_kwargs).env

    n_envs = int(config.get("n_envs", 1))
    venv = VecVLMAdviceWrapper(
        make_vec_env(make_plain, n_envs=n_envs, seed=seed), advisor, query_every=int(config.get("query_every", 1))
    )
    eval_env = make_vec_env(make_plain, n_envs=1, seed=10_000 + seed)  # the student alone: no VLM at test time
    algo_cls = algo_class(config["algo"])
    critic_steps = int(config.get("advice_critic_steps", 0))
    if critic_steps > 0:
        import inspect

        from stable_baselines3 import SAC

        from sb3_vlm.sac import pretrain_advice_critic

        # C_V's learner is a plain SAC with the run's SAC settings (buffer, batch, network ...)
        sac_params = set(inspect.signature(SAC).parameters) - {"policy", "env", "seed", "verbose"}
        sac_kwargs = {k: v for k, v in algo_kwargs.items() if k in sac_params}
        algo_kwargs["advice_critic"] = pretrain_advice_critic(
            make_plain(), advisor, steps=critic_steps, policy=config.get("policy", "CnnPolicy"), seed=seed, **sac_kwargs
        )
    model = algo_cls(config.get("policy", "CnnPolicy"), venv, seed=seed, verbose=0, **algo_kwargs)
    eval_every = max(1, int(config.get("eval_every", 10_000)) // n_envs)
    eval_callback = EvalCallback(
        eval_env,
        n_eval_episodes=int(config.get("eval_episodes", 20)),
        eval_freq=eval_every,
        log_path=str(log_dir) if log_dir else None,
        deterministic=True,
        verbose=0,
    )
    callbacks: list[Any] = [eval_callback]
    if config.get("finetune"):
        from sb3_vlm.finetune import VLMFineTuneCallback

        callbacks.append(VLMFineTuneCallback(advisor, seed=seed, **finetune_kwargs(config["finetune"])))
    start = time.perf_counter()
    total = int(config.get("total_timesteps", 100_000))
    model.learn(total, callback=CallbackList(callbacks))
    episodes = evaluate_policy(
        model, eval_env, n_eval_episodes=int(config.get("eval_episodes", 20)), return_episode_rewards=True
    )[0]
    final = np.asarray(episodes, dtype=np.float64)
    curve = [float(np.mean(r)) for r in eval_callback.evaluations_results]
    row = dict(
        config=config["name"],
        env=env_name,
        seed=seed,
        steps=total,
        final_mean=float(final.mean()),
        final_std=float(final.std()),
        final_episodes=int(config.get("eval_episodes", 20)),
        curve_steps=[int(t) for t in eval_callback.evaluations_timesteps],
        curve_mean=curve,
        advisor=advisor.identity,
        advisor_stats=advisor.stats.as_dict(),
        wall_s=time.perf_counter() - start,
    )
    venv.close()
    eval_env.close()
    return row


def finetune_kwargs(finetune: dict[str, Any]) -> dict[str, Any]:
    """:class:`~sb3_vlm.finetune.VLMFineTuneCallback` arguments from a config's ``finetune:`` mapping; ``lora`` is
    ``default`` (COVR table 9, "others"), ``driving`` (table 9, CARLA) or a mapping of LoraSettings fields."""
    from sb3_vlm.finetune import LoraSettings

    kwargs = dict(finetune)
    lora = kwargs.get("lora")
    if lora == "default":
        kwargs["lora"] = LoraSettings()
    elif lora == "driving":
        kwargs["lora"] = LoraSettings.driving()
    elif isinstance(lora, dict):
        kwargs["lora"] = LoraSettings(**lora)
    elif lora is not None:
        raise ValueError(f"finetune.lora must be 'default', 'driving' or a mapping, got {lora!r}")
    return kwargs


def run_config(config: dict[str, Any], out: Path, envs: list[str] | None = None) -> list[dict[str, Any]]:
    """Every (env, seed) of ``config`` not already in ``out/runs.jsonl`` (so an interrupted sweep resumes)."""
    out.mkdir(parents=True, exist_ok=True)
    runs_path = out / "runs.jsonl"
    rows = [json.loads(line) for line in runs_path.read_text().splitlines()] if runs_path.exists() else []
    done = {(r["env"], r["seed"], r["steps"]) for r in rows}
    steps = int(config.get("total_timesteps", 100_000))
    for env_name in envs or config["envs"]:
        for seed in config.get("seeds", [0, 1, 2]):
            if (env_name, seed, steps) in done:
                continue
            row = run_one(config, env_name, int(seed), log_dir=out / "eval" / f"{env_name}_{seed}")
            rows.append(row)
            with runs_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
    return rows
