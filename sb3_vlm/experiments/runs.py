"""
What ``sb3-vlm train`` / ``eval`` / ``compare`` do: train a (guided) algorithm on a suite env with an advisor spec and
save the run, evaluate a saved policy without its teacher, and read the learning curves of finished runs (SB3 Monitor
CSVs or TensorBoard event files).

A run folder holds ``model.zip``, ``run.json`` (arguments, advisor counters, wall time), ``monitor/*.monitor.csv``,
``progress.csv`` and, with TensorBoard on, ``tb/``.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

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
    from sb3_vlm.advisors.factory import advisor_from_spec
    from sb3_vlm.advisors.prompts import CONTINUOUS_CONTROL
    from sb3_vlm.envs.registry import teacher_defaults

    prompt: Any
    try:
        prompt, oracle = teacher_defaults(env_name)
    except ValueError:
        bundle = make_env_bundle(env_name, **(env_kwargs or {}))
        prompt, oracle = bundle.prompt, bundle.advisor
        bundle.env.close()
    return advisor_from_spec(spec, prompt or CONTINUOUS_CONTROL, oracle=oracle, **advisor_kwargs)


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
) -> dict[str, Any]:
    """
    Train ``algo`` on ``env_name`` with advice from ``advisor`` and save the run under ``out``.

    Defaults (steps, n_envs, policy, hyperparameters, advisor, query_every) come from the env's entry in the shipped
    RL Zoo hyperparameters, then from SB3's defaults. Plain ``ppo`` / ``a2c`` / ``sac`` train without any advisor.

    :param env_kwargs: keyword arguments of the env's factory (e.g. ``student_obs="symbolic_partial"``)
    :return: the content of ``run.json``
    """
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.logger import configure

    from sb3_vlm.callbacks import AdviceMetricsCallback
    from sb3_vlm.wrappers import VecVLMAdviceWrapper

    cls = algo_class(algo)
    guided = algo.startswith("guided_")
    defaults = zoo_defaults(algo if guided else f"guided_{algo}", env_name)
    advice_defaults = defaults.get("advisor") or {}
    if isinstance(advice_defaults, str):
        advice_defaults = {"advisor": advice_defaults}
    spec = advisor or advice_defaults.get("advisor", "oracle")
    every = query_every or int(advice_defaults.get("query_every", 1))
    total = int(steps or defaults.get("n_timesteps", 100_000))
    n = int(n_envs or defaults.get("n_envs", 1))
    kwargs = {k: v for k, v in defaults.items() if k not in _ZOO_ONLY}
    if not guided:  # the guided-only arguments of the shipped file do not apply to the plain baseline
        kwargs = {k: v for k, v in kwargs.items() if k not in ("teacher_coef", "method", "advice_critic")}
    kwargs.update(hyperparams or {})

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    env_kwargs = dict(env_kwargs or {})
    venv: Any = make_vec_env(
        lambda: make_env_bundle(env_name, **env_kwargs).env, n_envs=n, seed=seed, monitor_dir=str(out / "monitor")
    )
    observation_space = venv.observation_space
    teacher = None
    if guided:
        teacher = teacher_for(env_name, spec, env_kwargs)
        venv = VecVLMAdviceWrapper(venv, teacher, query_every=every, cache=cache)
    policy = defaults.get("policy") or (
        "CnnPolicy" if len(getattr(observation_space, "shape", ()) or ()) == 3 else "MlpPolicy"
    )
    model = cls(policy, venv, seed=seed, verbose=verbose, **kwargs)
    model.set_logger(configure(str(out), ["csv", "tensorboard"] if tensorboard else ["csv"]))
    start = time.perf_counter()
    metrics = AdviceMetricsCallback()
    model.learn(total, callback=metrics if guided else None, progress_bar=progress_bar)
    model.save(out / "model.zip")
    run = dict(
        env=env_name,
        env_kwargs=env_kwargs,
        algo=algo,
        advisor=teacher.identity if teacher is not None else None,
        steps=total,
        n_envs=n,
        seed=seed,
        query_every=every if guided else None,
        policy=policy,
        hyperparams={k: repr(v) if not isinstance(v, int | float | str | bool) else v for k, v in kwargs.items()},
        advisor_counters=metrics.latest,
        wall_s=time.perf_counter() - start,
    )
    (out / "run.json").write_text(json.dumps(run, indent=2))
    venv.close()
    return run


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
    from stable_baselines3.common.env_util import make_vec_env
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
    episodes ordered by their end time), or None if there is none."""
    files = sorted(run_dir.rglob("*monitor.csv"))
    episodes: list[tuple[float, float, int]] = []
    for file in files:
        lines = file.read_text().splitlines()
        if len(lines) < 2:
            continue
        header = lines[1].split(",") if lines[0].startswith("#") else lines[0].split(",")
        body = lines[2:] if lines[0].startswith("#") else lines[1:]
        col = {name: i for i, name in enumerate(header)}
        for line in body:
            fields = line.split(",")
            episodes.append((float(fields[col["t"]]), float(fields[col["r"]]), int(float(fields[col["l"]]))))
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
