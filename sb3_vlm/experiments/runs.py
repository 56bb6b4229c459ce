"""
What ``sb3-vlm train`` / ``eval`` / ``compare`` do: train a (guided) algorithm on a suite env with an advisor spec and
save the run, evaluate a saved policy without its teacher, and read the learning curves of finished runs (SB3 Monitor
CSVs or TensorBoard event files).

A run folder holds ``model.zip``, ``run.json`` (arguments, the advisor's identity, endpoint and key variable, its
counters, wall time, status and sessions), ``monitor/*.monitor.csv``, ``progress.csv``, ``checkpoints/`` (at SIGINT /
SIGTERM, and every ``checkpoint_every`` steps) and, with TensorBoard on, its event files.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal
import time
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import configure

from sb3_vlm.advisors.cache import is_server_url
from sb3_vlm.advisors.factory import advisor_from_spec
from sb3_vlm.advisors.prompts import CONTINUOUS_CONTROL
from sb3_vlm.callbacks import AdviceMetricsCallback
from sb3_vlm.checkpoint import STATE_FILE, VLMCheckpointCallback, latest_checkpoint, load_checkpoint
from sb3_vlm.wrappers import VecVLMAdviceWrapper

#: algorithms ``sb3-vlm train`` knows: the guided ones and their plain SB3 baselines
ALGO_NAMES = ("guided_ppo", "guided_a2c", "guided_sac", "ppo", "a2c", "sac")
# RL Zoo keys that are not constructor arguments
_ZOO_ONLY = ("n_timesteps", "n_envs", "policy", "env_wrapper", "advisor", "callback", "normalize", "frame_stack")


def algo_class(name: str) -> Any:
    if name not in ALGO_NAMES:
        raise ValueError(f"Unknown algorithm {name!r}; choose from {', '.join(ALGO_NAMES)}")
    if name == "guided_ppo":
        from sb3_vlm.ppo import GuidedPPO

        return GuidedPPO
    if name == "guided_a2c":
        from sb3_vlm.a2c import GuidedA2C

        return GuidedA2C
    if name == "guided_sac":
        from sb3_vlm.sac import GuidedSAC

        return GuidedSAC
    import stable_baselines3

    return getattr(stable_baselines3, name.upper())


def zoo_defaults(algo: str, env_name: str) -> dict[str, Any]:
    """The env's entry in ``sb3_vlm/zoo/hyperparams/<algo>.yml`` (guided algorithms), or {} if it has none."""
    import yaml

    from sb3_vlm.envs.registry import gym_id

    path = Path(__file__).resolve().parents[1] / "zoo" / "hyperparams" / f"{algo}.yml"
    if not path.exists():
        return {}
    config = yaml.safe_load(path.read_text()) or {}
    entry = config.get(env_name) or config.get(gym_id(env_name)) or {}
    return dict(entry)


def make_env_bundle(env_name: str, **overrides: Any) -> Any:
    """:func:`sb3_vlm.envs.make` for suite names and ids; any other Gymnasium id through ``gym.make`` plus its
    teacher view where one is known (:func:`~sb3_vlm.envs.registry.attach_teacher`)."""
    import gymnasium as gym

    from sb3_vlm.envs import EnvBundle, make
    from sb3_vlm.envs.registry import attach_teacher

    try:
        return make(env_name, **overrides)
    except ValueError as exc:
        if env_name not in gym.registry:
            raise ValueError(f"{exc}; nor is {env_name!r} a registered Gymnasium id") from None
    env, prompt, advisor = attach_teacher(gym.make(env_name, **overrides))
    return EnvBundle(env=env, prompt=prompt, advisor=advisor, name=env_name)  # type: ignore[arg-type]


def teacher_for(env_name: str, spec: str, env_kwargs: dict[str, Any] | None = None, **advisor_kwargs: Any) -> Any:
    """
    The advisor ``spec`` names for ``env_name``: ``oracle`` is the env's scripted expert, VLM specs get the env's
    default prompt. Suite names need no env for that; a plain Gymnasium id is made (and closed) once to find its
    teacher view.
    """
    from sb3_vlm.envs.registry import teacher_defaults

    prompt: Any
    try:
        prompt, oracle = teacher_defaults(env_name)
    except ValueError:
        bundle = make_env_bundle(env_name, **(env_kwargs or {}))
        prompt, oracle = bundle.prompt, bundle.advisor
        bundle.env.close()
    return advisor_from_spec(spec, prompt or CONTINUOUS_CONTROL, oracle=oracle, **advisor_kwargs)


class RunSetupError(ValueError):
    """``sb3-vlm train`` cannot start: an unknown env or advisor spec, a missing API key or extra, an env without a
    teacher view, a bad argument, nothing to resume. Raised before anything is written (what start-up created is
    removed again); the CLI prints it as one line and exits with status 2."""


class RunInterrupted(KeyboardInterrupt):
    """Training stopped at once (a second Ctrl-C): nothing was saved after ``checkpoint`` (None: no checkpoint)."""

    def __init__(self, run_dir: Path, checkpoint: Path | None):
        super().__init__(f"{run_dir}: stopped at once; last checkpoint: {checkpoint}")
        self.run_dir, self.checkpoint = run_dir, checkpoint


#: a run's crash-safe checkpoints, ``<run>/checkpoints`` (:class:`~sb3_vlm.checkpoint.VLMCheckpointCallback`)
CHECKPOINTS = "checkpoints"
#: the most seconds a rollout waits for its advice with ``advice_wait="auto"``
MAX_AUTO_WAIT_S = 30.0
#: the most seconds a finished run waits for answers still pending before its counters are written
FLUSH_TIMEOUT_S = 60.0
# what start-up failures look like (anything else is a bug and keeps its traceback)
_SETUP_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, ImportError, OSError)
# where an API advisor reads its key when not told otherwise (recorded by name in run.json)
_DEFAULT_KEY_ENVS = {"openai": "OPENAI_API_KEY", "gemini": "GEMINI_API_KEY"}


def advisor_kwargs(
    spec: str, base_url: str | None = None, api_key_env: str | None = None, max_cost_usd: float | None = None
) -> dict[str, Any]:
    """
    The keyword arguments of the API advisor that ``spec`` names: ``base_url``, ``api_key_env`` (the name of the
    variable holding the key, never the key) and ``max_cost_usd``, where given.

    :param spec: an advisor spec (:data:`~sb3_vlm.advisors.factory.SPEC_HELP`)
    :param base_url: the server; None: the advisor's default (``OPENAI_BASE_URL`` / ``GOOGLE_GEMINI_BASE_URL``, else
        the provider's)
    :param api_key_env: the variable holding the key; None: the provider's (``OPENAI_API_KEY``, ``GEMINI_API_KEY``)
    :param max_cost_usd: a hard budget in US dollars (see :class:`~sb3_vlm.advisors.prompted.PromptedAdvisor`)
    :raises ValueError: one of them given for an advisor that takes none
    """
    kind = spec.partition(":")[0]
    if kind not in _DEFAULT_KEY_ENVS:
        if base_url or api_key_env or max_cost_usd is not None:
            raise ValueError(
                f"--base-url, --api-key-env and --max-cost-usd are for openai: and gemini: advisors, not {spec!r}"
            )
        return {}
    kwargs: dict[str, Any] = {}
    if max_cost_usd is not None:
        kwargs["max_cost_usd"] = max_cost_usd
    if base_url:
        kwargs["base_url"] = base_url
    if api_key_env:
        kwargs["api_key_env"] = api_key_env
    return kwargs


def _check_teacher_view(env: Any, env_name: str) -> None:
    """What :func:`~sb3_vlm.wrappers.vec_advice.default_vec_teacher_view` needs: a ``teacher_request()`` or RGB
    image observations; checked at start-up rather than at the first step of training."""
    try:
        env.get_wrapper_attr("teacher_request")
        return
    except AttributeError:
        pass
    shape, dtype = getattr(env.observation_space, "shape", None), getattr(env.observation_space, "dtype", None)
    if shape is not None and len(shape) == 3 and dtype == np.uint8:
        return
    raise RunSetupError(
        f"{env_name} has no teacher view (no teacher_request(), and its observations are not RGB images): an advisor "
        "would be shown nothing. Train it with --algo ppo|a2c|sac, or use an env `sb3-vlm envs` lists"
    )


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, ValueError) else f"{type(exc).__name__}: {text}"


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet (what creating ``path`` creates), or None."""
    if path.exists():
        return None
    while not path.parent.exists():
        path = path.parent
    return path


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)  # a kill mid-write leaves the previous version


class _AdviceWait(BaseCallback):
    """
    Non-blocking advice in GuidedPPO / GuidedA2C: counts the rollout rows whose answer missed ``advice_wait``, and
    with ``auto`` sets ``advice_wait`` from the measured latency before each rollout's wait (with a wait of 0 a slow
    VLM leaves most rows of a rollout unadvised). The wait is 1.5 × the time the queue needs for what is pending
    (``ceil(pending / (workers · batch))`` rounds of one batch's latency), at most ``max_wait``; before any answer has
    come back, ``max_wait``. A rollout stops waiting as soon as its answers are in, so a generous deadline costs only
    what a slow VLM takes.

    :param advisor: the backend whose latency is measured
    :param background: the wrapper's background queue
    :param auto: pick the wait (else only count)
    :param max_wait: the longest wait
    """

    def __init__(self, advisor: Any, background: Any, auto: bool, max_wait: float = MAX_AUTO_WAIT_S):
        super().__init__()
        self.advisor, self.background, self.auto, self.max_wait = advisor, background, auto, max_wait
        self.rows = self.missed = 0

    def pick(self) -> float:
        """The wait for the answers pending now."""
        stats = self.advisor.stats
        if stats.queries == 0:
            return self.max_wait
        per_round = self.background.workers * self.background.max_batch
        rounds = max(1, math.ceil(self.background.pending / per_round))
        return min(self.max_wait, 1.5 * rounds * self.background.max_batch * stats.mean_latency)

    def _on_step(self) -> bool:
        if self.auto:  # the last step of a rollout sets the wait that follows it
            self.model.advice_wait = self.pick()  # type: ignore[attr-defined]
        return True

    def _on_rollout_end(self) -> None:
        self.rows += self.model.n_steps * self.model.n_envs  # type: ignore[attr-defined]
        self.missed += int(getattr(self.model, "_advice_missed", 0))  # the wait that just ended (GuidedOnPolicyMixin)


class _RunCheckpoint(VLMCheckpointCallback):
    """
    A run's checkpoints: every ``save_freq`` env steps, and at SIGINT / SIGTERM (saved at the end of the rollout, then
    training stops; one line on stderr says so). At the normal end only when periodic checkpoints were asked for:
    a finished run is its ``model.zip``, and a pixel SAC replay buffer is gigabytes.
    """

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        before = self.interrupted
        super()._on_signal(signum, frame)  # a second signal raises KeyboardInterrupt here
        if before is None and self.interrupted is not None:
            # os.write: a signal handler must not re-enter the buffered stderr a progress bar may be writing
            os.write(
                2,
                f"\nsb3-vlm: {signal.Signals(signum).name}: saving a checkpoint at the end of this rollout, then "
                "stopping (again to stop at once)\n".encode(),
            )

    def _on_training_end(self) -> None:
        if self.save_freq or self.interrupted is not None:
            super()._on_training_end()
        else:
            self._restore_signal_handlers()


def train(
    env_name: str,
    algo: str = "guided_ppo",
    advisor: str | None = None,
    steps: int | None = None,
    out: str | Path = "runs/run",
    n_envs: int | None = None,
    query_every: int | None = None,
    cache: str | None = None,
    seed: int = 0,
    hyperparams: dict[str, Any] | None = None,
    env_kwargs: dict[str, Any] | None = None,
    tensorboard: bool = False,
    progress_bar: bool = True,
    verbose: int = 0,
    base_url: str | None = None,
    api_key_env: str | None = None,
    max_cost_usd: float | None = None,
    advice_wait: float | str = "auto",
    checkpoint_every: int = 0,
    resume: bool = False,
) -> dict[str, Any]:
    """
    Train ``algo`` on ``env_name`` with advice from ``advisor`` and save the run under ``out``.

    Defaults (steps, n_envs, policy, hyperparameters, advisor, query_every) come from the env's entry in the shipped
    RL Zoo hyperparameters, then from SB3's defaults. Plain ``ppo`` / ``a2c`` / ``sac`` train without any advisor.
    ``run.json`` is written when training starts (``status: "running"``) and when it ends (``"done"``, or
    ``"interrupted"`` after SIGINT / SIGTERM, which save ``model.zip`` and a checkpoint first).

    :param env_kwargs: keyword arguments of the env's factory (e.g. ``student_obs="symbolic_partial"``)
    :param base_url: the advisor's server (``openai:`` and ``gemini:`` specs; see :func:`advisor_kwargs`)
    :param api_key_env: the variable holding the advisor's key (recorded by name; the key never is)
    :param max_cost_usd: the advisor's hard budget in US dollars (``openai:`` and ``gemini:`` specs; a resumed run
        goes on from what it had spent); the spending is in ``run.json``'s ``advisor_counters``
        (``advisor/cost_usd``, ``advisor/tokens_in``, ``advisor/tokens_out``)
    :param advice_wait: GuidedPPO / GuidedA2C with non-blocking advice: the most seconds a rollout waits for answers
        still pending, or ``"auto"``: picked before each rollout's wait from the measured latency (see
        :class:`_AdviceWait`)
    :param checkpoint_every: also checkpoint every this many env steps into ``<out>/checkpoints`` (0: only at
        SIGINT / SIGTERM)
    :param resume: go on from the latest checkpoint of the run in ``out`` up to ``steps`` in all (see
        :func:`resume_run`, which reads the other arguments from ``run.json``)
    :return: the content of ``run.json``
    :raises RunSetupError: the run cannot start; nothing was written
    """
    out = Path(out)
    try:
        cls = algo_class(algo)
    except ValueError as exc:
        raise RunSetupError(str(exc)) from None
    guided = algo.startswith("guided_")
    waits = algo in ("guided_ppo", "guided_a2c")  # the algorithms that wait for non-blocking advice
    defaults = zoo_defaults(algo if guided else f"guided_{algo}", env_name)
    advice_defaults = defaults.get("advisor") or {}
    if isinstance(advice_defaults, str):
        advice_defaults = {"advisor": advice_defaults}
    spec = advisor or advice_defaults.get("advisor", "oracle")
    every = int(query_every or advice_defaults.get("query_every", 1))
    total = int(steps or defaults.get("n_timesteps", 100_000))
    n = int(n_envs or defaults.get("n_envs", 1))
    kwargs = {k: v for k, v in defaults.items() if k not in _ZOO_ONLY}
    if not guided:  # the guided-only arguments of the shipped file do not apply to the plain baseline
        kwargs = {k: v for k, v in kwargs.items() if k not in ("teacher_coef", "method", "advice_critic")}
    kwargs.update(hyperparams or {})
    if advice_wait != "auto":
        if not waits:
            raise RunSetupError(
                "--advice-wait is for guided_ppo and guided_a2c: GuidedSAC fills replay rows in as answers arrive"
            )
        kwargs["advice_wait"] = advice_wait
    auto_wait = waits and "advice_wait" not in kwargs
    if checkpoint_every < 0:
        raise RunSetupError(f"--checkpoint-every must be >= 0 env steps, got {checkpoint_every}")
    try:
        api_kwargs = advisor_kwargs(spec, base_url, api_key_env, max_cost_usd) if guided else {}
    except ValueError as exc:
        raise RunSetupError(str(exc)) from None
    kind = spec.partition(":")[0]

    checkpoints = out / CHECKPOINTS
    resumed_from: Path | None = None
    if resume:
        resumed_from = latest_checkpoint(checkpoints)
        if resumed_from is None:
            raise RunSetupError(f"{out} has no complete checkpoint to resume from (in {checkpoints})")
        done = int(json.loads((resumed_from / STATE_FILE).read_text())["num_timesteps"])
        if done >= total:
            raise RunSetupError(f"{out} has {done:,} of its {total:,} steps: give --steps above {done:,} to go on")
    elif (out / "run.json").exists() or (out / "model.zip").exists():
        raise RunSetupError(
            f"{out} already holds a run: go on with `sb3-vlm train --resume {out}`, or use another --out"
        )

    env_kwargs = dict(env_kwargs or {})
    server_cache = cache is not None and is_server_url(cache)
    if server_cache and urlsplit(str(cache)).password is not None:
        raise RunSetupError(
            "the cache URL holds a password, which run.json would keep: give the URL without it and the password in "
            "SB3_VLM_CACHE_PASSWORD"
        )
    cache_file = Path(cache) if cache and not server_cache else None
    created = [path for path in (_first_missing(out), _first_missing(cache_file) if cache_file else None) if path]
    monitor_before = set((out / "monitor").glob("*"))
    first: list[Any] = []
    venv: Any = None
    try:  # start-up: whatever fails here leaves nothing behind
        bundle = make_env_bundle(env_name, **env_kwargs)
        first.append(bundle.env)
        teacher = wrapper = None
        if guided:
            _check_teacher_view(bundle.env, env_name)
            prompt = bundle.prompt or CONTINUOUS_CONTROL
            teacher = advisor_from_spec(spec, prompt, oracle=bundle.advisor, **api_kwargs)
        start_index = len(list((out / "monitor").glob("*.monitor.csv"))) if resume else 0
        # the env made above is the first of the vec env; a resumed run's envs get new monitor files and seeds
        venv = make_vec_env(
            lambda: first.pop() if first else make_env_bundle(env_name, **env_kwargs).env,
            n_envs=n,
            seed=seed + start_index,
            start_index=start_index,
            monitor_dir=str(out / "monitor"),
        )
        if teacher is not None:
            venv = wrapper = VecVLMAdviceWrapper(venv, teacher, query_every=every, cache=cache)
        policy = defaults.get("policy") or (
            "CnnPolicy" if len(getattr(venv.observation_space, "shape", ()) or ()) == 3 else "MlpPolicy"
        )
        if resumed_from is not None:
            model = load_checkpoint(resumed_from, cls, venv, verbose=verbose)
        else:
            model = cls(policy, venv, seed=seed, verbose=verbose, **kwargs)
    except BaseException as exc:
        for env in first:
            env.close()
        if venv is not None:
            venv.close()
        for path in created:  # only what this call created
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                for file in (path, path.with_name(f"{path.name}-wal"), path.with_name(f"{path.name}-shm")):
                    file.unlink(missing_ok=True)
        for path in set((out / "monitor").glob("*")) - monitor_before:
            path.unlink(missing_ok=True)
        if isinstance(exc, _SETUP_ERRORS) and not isinstance(exc, RunSetupError):
            raise RunSetupError(_one_line(exc)) from exc
        raise

    previous = json.loads((out / "run.json").read_text()) if resume and (out / "run.json").exists() else {}
    if resume and (out / "progress.csv").exists():  # SB3's CSV logger starts its file afresh: keep the earlier rows
        (out / "progress.csv").rename(out / f"progress_until_{model.num_timesteps}.csv")
    model.set_logger(configure(str(out), ["csv", "tensorboard"] if tensorboard else ["csv"]))
    arguments = dict(
        env_name=env_name,
        algo=algo,
        advisor=spec,
        steps=total,
        n_envs=n,
        query_every=every,
        cache=cache,
        seed=seed,
        hyperparams=dict(hyperparams or {}),
        env_kwargs=env_kwargs,
        tensorboard=tensorboard,
        base_url=api_kwargs.get("base_url"),
        api_key_env=api_key_env,
        max_cost_usd=max_cost_usd,
        advice_wait=advice_wait,
        checkpoint_every=checkpoint_every,
    )
    api = guided and kind in _DEFAULT_KEY_ENVS
    run: dict[str, Any] = dict(
        env=env_name,
        env_kwargs=env_kwargs,
        algo=algo,
        advisor=teacher.identity if teacher is not None else None,
        # the server that answers (as the advisor resolves it, issue 16) and where its key came from (never the key)
        advisor_endpoint=getattr(teacher, "called_url", None) if api else None,
        api_key_env=(api_key_env or _DEFAULT_KEY_ENVS[kind]) if api else None,
        cache=cache,
        steps=total,
        num_timesteps=model.num_timesteps,
        n_envs=n,
        seed=seed,
        query_every=every if guided else None,
        policy=policy,
        hyperparams={k: repr(v) if not isinstance(v, int | float | str | bool) else v for k, v in kwargs.items()},
        advice_wait=advice_wait if waits else None,
        checkpoint_every=checkpoint_every,
        status="running",
        resumed_from=str(resumed_from) if resumed_from is not None else None,
        sessions=previous.get("sessions", []),
        arguments=arguments,
    )
    _write_json(out / "run.json", run)

    metrics = AdviceMetricsCallback()
    checkpoint = _RunCheckpoint(checkpoints, save_freq=max(1, checkpoint_every // n) if checkpoint_every else 0)
    background = wrapper.background if wrapper is not None else None
    wait = _AdviceWait(teacher, background, auto_wait) if waits and background is not None else None
    callbacks: list[BaseCallback] = [c for c in (metrics if guided else None, wait, checkpoint) if c is not None]
    start_step, start = model.num_timesteps, time.perf_counter()

    def session(status: str) -> None:
        run.update(status=status, num_timesteps=model.num_timesteps, wall_s=time.perf_counter() - start)
        run["checkpoint"] = str(checkpoint.last_checkpoint) if checkpoint.last_checkpoint is not None else None
        run["sessions"] = [
            *run["sessions"],
            dict(steps_from=start_step, steps_to=model.num_timesteps, wall_s=run["wall_s"], status=status),
        ]
        _write_json(out / "run.json", run)

    try:
        model.learn(
            total - model.num_timesteps,
            callback=CallbackList(callbacks),
            progress_bar=progress_bar,
            reset_num_timesteps=not resume,
        )
    except KeyboardInterrupt as exc:  # a second Ctrl-C: stopped at once, only the checkpoints stay
        session("stopped")
        venv.close()
        raise RunInterrupted(out, checkpoint.last_checkpoint or latest_checkpoint(checkpoints)) from exc
    model.save(out / "model.zip")
    # answers still being computed: wait for them (bounded), so that the counters are final and their tokens counted
    if background is not None:
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C while waiting means "do not wait": counters as they are
            background.drain(FLUSH_TIMEOUT_S)
    run.update(
        advisor_counters=metrics.record() if guided else {},
        advice_pending_at_end=background.pending if background is not None else 0,
        advice_wait_s=float(getattr(model, "advice_wait", 0.0)) if waits else None,
        advice_rows=wait.rows if wait is not None else None,
        advice_rows_missed=wait.missed if wait is not None else None,
        advisor_mean_latency_s=teacher.stats.mean_latency if teacher is not None else None,
        interrupted_by=signal.Signals(checkpoint.interrupted).name if checkpoint.interrupted else None,
    )
    session("interrupted" if checkpoint.interrupted else "done")
    venv.close()
    return run


def resume_run(run_dir: str | Path, steps: int | None = None, progress_bar: bool = True, verbose: int = 0) -> dict:
    """
    Go on with an interrupted (or finished) ``sb3-vlm train`` run from its latest checkpoint, with the arguments its
    ``run.json`` holds: ``steps`` in all (default: the run's own total). Episodes restart from a reset; the new
    monitor files and ``progress.csv`` continue beside the earlier ones.

    :param run_dir: the run folder
    :param steps: the new total of env steps (None: the run's)
    :return: the content of ``run.json``
    :raises RunSetupError: no run, or nothing to resume
    """
    run_dir = Path(run_dir)
    try:
        arguments = json.loads((run_dir / "run.json").read_text())["arguments"]
    except FileNotFoundError:
        raise RunSetupError(f"{run_dir} holds no run (no run.json)") from None
    except (ValueError, KeyError, TypeError):
        raise RunSetupError(f"{run_dir}/run.json does not say how the run was started: it cannot be resumed") from None
    arguments = {**arguments, "steps": steps or arguments["steps"]}
    return train(**arguments, out=run_dir, progress_bar=progress_bar, verbose=verbose, resume=True)


def evaluate(
    model_path: str | Path,
    env_name: str | None = None,
    algo: str | None = None,
    episodes: int = 20,
    seed: int = 0,
    deterministic: bool = True,
) -> dict[str, Any]:
    """
    Evaluate a saved policy on its env with no advisor (the VLM is a training-time teacher only).

    :param model_path: a ``model.zip`` (``run.json`` beside it supplies ``env_name``, its keyword arguments and
        ``algo`` when not given)
    """
    from stable_baselines3.common.evaluation import evaluate_policy

    path = Path(model_path)
    if path.is_dir():
        path = path / "model.zip"
    if not path.exists():
        raise FileNotFoundError(f"No saved model at {path}")
    run_file = path.parent / "run.json"
    run = json.loads(run_file.read_text()) if run_file.exists() else {}
    env_name = env_name or run.get("env")
    algo = algo or run.get("algo")
    if env_name is None or algo is None:
        raise ValueError(f"{path} has no run.json beside it: give the env and --algo")
    model = algo_class(algo).load(path, device="cpu", buffer_size=1) if "sac" in algo else algo_class(algo).load(path)
    env_kwargs = run.get("env_kwargs", {}) if env_name == run.get("env") else {}
    env = make_vec_env(lambda: make_env_bundle(env_name, **env_kwargs).env, n_envs=1, seed=seed)
    returns, lengths = evaluate_policy(
        model, env, n_eval_episodes=episodes, deterministic=deterministic, return_episode_rewards=True
    )
    env.close()
    values = np.asarray(returns, dtype=float)
    return dict(
        model=str(path),
        env=env_name,
        algo=algo,
        episodes=episodes,
        mean_return=float(values.mean()),
        std_return=float(values.std()),
        mean_length=float(np.mean(lengths)),
        returns=values.tolist(),
    )


# --------------------------------------------------------------------------------------------- learning curves
def monitor_curve(run_dir: Path, window: int = 20) -> tuple[np.ndarray, np.ndarray] | None:
    """(env steps, rolling mean episode return) from every ``*monitor.csv`` under ``run_dir`` (all envs of the run,
    episodes ordered by their end time: the file's ``t_start`` plus the row's ``t``, so that the files of a resumed
    run follow the earlier ones), or None if there is none."""
    files = sorted(run_dir.rglob("*monitor.csv"))
    episodes: list[tuple[float, float, int]] = []
    for file in files:
        lines = file.read_text().splitlines()
        if len(lines) < 2:
            continue
        commented = lines[0].startswith("#")
        try:
            t_start = float(json.loads(lines[0][1:]).get("t_start", 0.0)) if commented else 0.0
        except (ValueError, AttributeError):
            t_start = 0.0
        header = lines[1].split(",") if commented else lines[0].split(",")
        body = lines[2:] if commented else lines[1:]
        col = {name: i for i, name in enumerate(header)}
        for line in body:
            fields = line.split(",")
            end = t_start + float(fields[col["t"]])
            episodes.append((end, float(fields[col["r"]]), int(float(fields[col["l"]]))))
    if not episodes:
        return None
    episodes.sort()
    steps = np.cumsum([length for _, _, length in episodes])
    returns = np.array([r for _, r, _ in episodes])
    kernel = np.ones(min(window, len(returns)))
    rolling = (
        np.convolve(returns, kernel, mode="full")[: len(returns)]
        / np.convolve(np.ones(len(returns)), kernel, mode="full")[: len(returns)]
    )
    return steps, rolling


def tensorboard_curve(run_dir: Path, tag: str = "rollout/ep_rew_mean") -> tuple[np.ndarray, np.ndarray] | None:
    """(steps, values) of a scalar ``tag`` from the TensorBoard event files under ``run_dir``, or None."""
    files = sorted(run_dir.rglob("events.out.tfevents*"))
    if not files:
        return None
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError as exc:
        raise ImportError("Reading TensorBoard logs needs tensorboard: pip install tensorboard") from exc
    points: dict[int, float] = {}
    for file in files:
        accumulator = EventAccumulator(str(file), size_guidance={"scalars": 0})
        accumulator.Reload()
        if tag in accumulator.Tags().get("scalars", []):
            points.update({event.step: event.value for event in accumulator.Scalars(tag)})
    if not points:
        return None
    steps = np.array(sorted(points))
    return steps, np.array([points[s] for s in steps])


def run_curve(run_dir: str | Path, window: int = 20, tag: str = "rollout/ep_rew_mean") -> tuple[np.ndarray, np.ndarray]:
    """A run's learning curve: Monitor CSVs if present, else TensorBoard's ``tag``."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise FileNotFoundError(f"No run folder {run_dir}")
    curve = monitor_curve(run_dir, window) or tensorboard_curve(run_dir, tag)
    if curve is None:
        raise ValueError(f"{run_dir} has no *monitor.csv files and no TensorBoard scalar {tag!r}")
    return curve


def _zoo_run(run_dir: Path) -> tuple[str, str] | None:
    """``(algo, env)`` of an RL Zoo run folder, ``<log folder>/<algo>/<env>_<n>`` holding ``<env>/args.yml``; the
    algorithm is the ``algo`` in ``args.yml`` (the parent folder's name if that cannot be read). None otherwise."""
    if not run_dir.is_dir():
        return None
    name = run_dir.resolve().name
    for sub in sorted(p for p in run_dir.iterdir() if p.is_dir()):
        if name.startswith(f"{sub.name}_") and (sub / "args.yml").is_file():
            return _zoo_arg(sub / "args.yml", "algo") or run_dir.resolve().parent.name, sub.name
    return None


def _zoo_arg(args_file: Path, key: str) -> str | None:
    """One argument from an RL Zoo ``args.yml``, which the zoo writes as a Python ``OrderedDict``: read with a safe
    loader that knows that one tag (never ``yaml.UnsafeLoader``, which runs code)."""
    import yaml

    class _Loader(yaml.SafeLoader):
        pass

    def ordered_dict(loader: yaml.SafeLoader, node: yaml.Node) -> dict[Any, Any]:
        if not isinstance(node, yaml.SequenceNode) or len(node.value) != 1:
            raise yaml.constructor.ConstructorError(None, None, "not an OrderedDict's items", node.start_mark)
        return dict(loader.construct_sequence(node.value[0], deep=True))

    _Loader.add_constructor("tag:yaml.org,2002:python/object/apply:collections.OrderedDict", ordered_dict)
    try:
        args = yaml.load(args_file.read_text(), Loader=_Loader)  # a SafeLoader: other Python tags are refused
    except (yaml.YAMLError, OSError, TypeError, ValueError):
        return None
    value = args.get(key) if isinstance(args, dict) else None
    return str(value) if value else None


def run_algo(run_dir: str | Path) -> str | None:
    """The algorithm a run folder was trained with: ``algo`` in its ``run.json`` (``sb3-vlm train``) or in its RL
    Zoo ``args.yml``; None when the folder does not say (plain Monitor or TensorBoard logs)."""
    run_dir = Path(run_dir)
    try:
        algo = json.loads((run_dir / "run.json").read_text()).get("algo")
        if algo:
            return str(algo)
    except (OSError, ValueError, AttributeError):
        pass
    zoo = _zoo_run(run_dir)
    return zoo[0] if zoo is not None else None


def default_label(run_dir: str | Path) -> str:
    """
    A run's label in ``sb3-vlm compare``: runs that differ only by a trailing seed / run number (``ppo_1``,
    ``ppo_seed2``) share one. An RL Zoo run folder is named after its env (``logs/ppo/CartPole-v1_2``), so its label
    is ``<algo>/<env>`` (``ppo/CartPole-v1``): PPO and GuidedPPO runs of one env are not averaged together.
    """
    zoo = _zoo_run(Path(run_dir))
    if zoo is not None:
        return f"{zoo[0]}/{zoo[1]}"
    name = Path(run_dir).resolve().name
    return re.sub(r"[_-](seed)?\d+$", "", name) or name


def group_runs(runs: list[str | Path], labels: list[str] | None = None) -> dict[str, list[str | Path]]:
    """
    The runs of each curve in ``sb3-vlm compare``: ``labels`` (one per run) or :func:`default_label`, never merging
    runs of different algorithms (:func:`run_algo`; runs whose algorithm is unknown merge with any). Default labels
    that would merge them get the algorithm appended (``runs/a_0`` PPO and ``runs/a_1`` GuidedPPO: ``a (ppo)`` and
    ``a (guided_ppo)``); explicit labels that would merge them raise a ``ValueError``.
    """
    if labels is not None and len(labels) != len(runs):
        raise ValueError(f"--labels needs one label per run ({len(runs)}), got {len(labels)}")
    algos = [run_algo(r) for r in runs]
    names = labels if labels is not None else [default_label(r) for r in runs]
    by_label: dict[str, set[str]] = {}
    for name, algo in zip(names, algos, strict=True):
        by_label.setdefault(name, set()).update([algo] if algo else [])
    mixed = {name: found for name, found in by_label.items() if len(found) > 1}
    if mixed and labels is not None:
        name, found = next(iter(mixed.items()))
        members = [f"{r} ({a or 'unknown'})" for r, n, a in zip(runs, names, algos, strict=True) if n == name]
        raise ValueError(
            f"label {name!r} would average runs of different algorithms ({', '.join(sorted(found))}): "
            f"{', '.join(members)}. Give them different labels"
        )
    groups: dict[str, list[str | Path]] = {}
    for run, name, algo in zip(runs, names, algos, strict=True):
        groups.setdefault(f"{name} ({algo or 'unknown'})" if name in mixed else name, []).append(run)
    return groups
