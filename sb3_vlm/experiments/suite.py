"""
The robust-guidance suite: every guided algorithm with its *defaults* on every env, against good and bad teachers.

One configuration per algorithm for every env: the guided algorithms get no guidance argument at all (only the base
RL algorithm's hyperparameters, the same for guided and unguided runs). Teachers are scripted stand-ins for a VLM:

- ``r1.0`` / ``r0.8`` / ``r0.5``: the env's oracle, wrong on a fixed share of views (:class:`NoisyAdvisor` with a
  ``view_key``, so the wrong views are fixed, as a temperature-0 VLM's are; on continuous states the key is a coarse
  grid, so the teacher is wrong on whole regions: over Pendulum's (θ, θ̇), and over a fixed random 2-D projection of
  the normalised state on the MuJoCo tasks, :class:`ProjectedGridKey`);
- ``adversarial``: wrong on every view in a systematic way (discrete: the next action after the right one;
  continuous: the right action mirrored through the centre of the box);
- ``constant``: ERPv's "worst model", the same action (0 / zeros) everywhere.

The oracles: MiniGrid's planner, Pendulum's swing-up controller, and on the MuJoCo state tasks an SB3 SAC policy
trained once by ``benchmarks/train_teachers.py`` (:class:`~sb3_vlm.advisors.PolicyAdvisor`, shipped as
``sb3_vlm/envs/teachers/<env id>.npz``).

Used by ``benchmarks/suite.py``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.callbacks import BaseCallback

from sb3_vlm.advice import AdviceRequest
from sb3_vlm.advisors.base import Advisor
from sb3_vlm.advisors.cache import AdviceCache
from sb3_vlm.advisors.scripted import ConstantAdvisor, NoisyAdvisor, ProjectedGridKey
from sb3_vlm.experiments.runner import run_jobs, steps_to_threshold
from sb3_vlm.guidance.trust import TrustSettings
from sb3_vlm.wrappers.selection import selector_from_spec

ADVISORS: tuple[str, ...] = ("r1.0", "r0.8", "r0.5", "adversarial", "constant")
UNGUIDED = "none"
#: a run "gets there" when its curve reaches the threshold and holds it for this many recorded points in a row: the
#: first points of a training curve average only a few episodes (one lucky episode put GuidedA2C's curve at 0.61
#: after 2k steps under an adversarial teacher, 0.13 at the next point)
HOLD_POINTS = 3


@dataclass(frozen=True)
class SuiteEnv:
    """
    One env of the suite.

    :param name: short name (the JSON's ``env``)
    :param family: ``"discrete"`` (GuidedPPO / GuidedA2C) or ``"continuous"`` (GuidedSAC)
    :param env_id: the Gymnasium id
    :param budget: env steps per run
    :param algos: the algorithms run on it
    :param random_return: mean return of a uniformly random policy (measured; the bad-advisor criterion's scale)
    """

    name: str
    family: str
    env_id: str
    budget: int
    algos: tuple[str, ...]
    random_return: float = 0.0


ENVS: dict[str, SuiteEnv] = {
    env.name: env
    for env in (
        SuiteEnv("LavaGapS7", "discrete", "MiniGrid-LavaGapS7-v0", 100_000, ("ppo", "a2c")),
        SuiteEnv("SimpleCrossingS9N1", "discrete", "MiniGrid-SimpleCrossingS9N1-v0", 100_000, ("ppo", "a2c")),
        SuiteEnv("KeyCorridorS3R1", "discrete", "MiniGrid-KeyCorridorS3R1-v0", 150_000, ("ppo",)),
        SuiteEnv("DoorKey-8x8", "discrete", "MiniGrid-DoorKey-8x8-v0", 200_000, ("ppo",)),
        SuiteEnv("Fetch-8x8-N3", "discrete", "MiniGrid-Fetch-8x8-N3-v0", 150_000, ("ppo",)),
        # Fetch-8x8-N3's training return stayed at ~0.3 (a random object picked up) for unguided and guided PPO alike
        # over 150k steps: the closest Fetch that the student can learn in a budget of this size is measured here
        SuiteEnv("Fetch-5x5-N2", "discrete", "MiniGrid-Fetch-5x5-N2-v0", 100_000, ("ppo",)),
        SuiteEnv("Pendulum", "continuous", "Pendulum-v1", 20_000, ("sac",), random_return=-1230.0),
        # MuJoCo state tasks with trained-SAC teachers. Budgets: where unguided SAC is assumed to have learned only
        # part of the task (SAC balances InvertedPendulum in ~10k steps, InvertedDoublePendulum in ~30-50k, and
        # reaches Reacher's plateau in ~50-100k), not measured yet. random_return: mean return of a uniform random
        # policy over 20 episodes (env.reset(seed=i), i = 0..19, action_space.seed(0)): 4.45 ± 2.4 (episodes of
        # ~5 steps), 52.4 ± 14.8 (~7 steps), -43.9 ± 4.6 (50 steps).
        SuiteEnv("InvertedPendulum", "continuous", "InvertedPendulum-v5", 10_000, ("sac",), random_return=4.45),
        SuiteEnv(
            "InvertedDoublePendulum", "continuous", "InvertedDoublePendulum-v5", 30_000, ("sac",), random_return=52.4
        ),
        SuiteEnv("Reacher", "continuous", "Reacher-v5", 30_000, ("sac",), random_return=-43.9),
        # sparse reward (+100 at the flag, -0.1 a^2 a step) with a scripted energy-pumping teacher (89.4 over ten
        # starts, ~106 steps); random policy -33.1 +- 0.9 over 20 episodes (measured as above)
        SuiteEnv("MountainCar", "continuous", "MountainCarContinuous-v0", 20_000, ("sac",), random_return=-33.1),
    )
}

#: envs other benchmarks run through :func:`run_one` that are not in the suite (the query-budget benchmark's; the
#: pixel benchmark's, whose ``env_id`` is a :func:`sb3_vlm.envs.make` name or ``pixel-pendulum``; their random
#: returns: Pendulum's as above, the others not measured yet)
EXTRA_ENVS: dict[str, SuiteEnv] = {
    env.name: env
    for env in (
        SuiteEnv("GoToDoor-8x8", "discrete", "MiniGrid-GoToDoor-8x8-v0", 100_000, ("ppo",)),
        SuiteEnv("PixelPendulum", "continuous", "pixel-pendulum", 20_000, ("sac", "sac_cnn"), random_return=-1230.0),
        SuiteEnv("CarRacing", "continuous", "carracing", 100_000, ("sac", "sac_cnn")),
        *(
            SuiteEnv(task, "continuous", f"dmc-{task}", 100_000, ("sac", "sac_cnn"))
            for task in ("cartpole-swingup", "reacher-easy", "finger-spin", "ball_in_cup-catch")
        ),
    )
}


def env_spec(name: str) -> SuiteEnv:
    """The suite env, or extra env, called ``name``."""
    if name in ENVS:
        return ENVS[name]
    if name in EXTRA_ENVS:
        return EXTRA_ENVS[name]
    raise KeyError(f"unknown env {name!r}; choose from {[*ENVS, *EXTRA_ENVS]}")


#: SAC on the MuJoCo state tasks, the same for guided and unguided runs. rl-baselines3-zoo has no SAC entry for these
#: tasks; its MuJoCo entries are SB3's defaults with a 10k-step warm-up for 1M-step runs, so: SB3's defaults, with a
#: warm-up of 1000 random steps for 10-30k budgets, and a buffer of 100k (never full within a budget, so sampling is
#: exactly as with the default 1M, at a tenth of the memory).
MUJOCO_SAC_KWARGS: dict[str, Any] = dict(learning_starts=1000, buffer_size=100_000)


#: SAC from pixels, guided and unguided alike: SB3's defaults with a 1000-step warm-up and a 100k buffer (RAD's
#: and ERPv's; never full within these budgets)
PIXEL_SAC_KWARGS: dict[str, Any] = dict(learning_starts=1000, buffer_size=100_000)


def _paper_env(name: str) -> gym.Env:
    from sb3_vlm.envs.registry import make

    return make(name).env


class _NoTeacher(Advisor):
    """Stands in for a task's missing teacher: refuses guided runs with a clear error when asked."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    @property
    def identity(self) -> str:
        return f"no-teacher({self.name})"

    def _advise(self, requests: Any) -> list[Any]:
        raise RuntimeError(f"{self.name} has no scripted teacher yet: only unguided runs ('none')")


def _view_digest(request: AdviceRequest) -> bytes:
    """A discrete view's name: its content (image and context), as the cache keys it."""
    return request.cache_key("suite").encode()


def _region_digest(bins: int) -> Callable[[AdviceRequest], bytes]:
    """A continuous view's name: its privileged state on a ``bins``-per-dimension grid over [-π, π] x [-8, 8]."""

    def digest(request: AdviceRequest) -> bytes:
        state = np.asarray(request.state, dtype=np.float64).reshape(-1)
        scale = np.array([np.pi, 8.0])[: state.size] if state.size <= 2 else np.ones(state.size)
        cells = np.floor((np.clip(state / scale, -1.0, 1.0 - 1e-9) + 1.0) / 2.0 * bins).astype(np.int64)
        return hashlib.sha256(cells.tobytes()).digest()

    return digest


def default_view_key(oracle: Advisor, family: str) -> Callable[[AdviceRequest], bytes]:
    """
    How the suite names views: by content (discrete); by a 12-per-dimension grid of Pendulum's (θ, θ̇); and, for a
    policy teacher (which carries the scale of its states), by a cell of a fixed 2-D projection of the normalised
    state, since a grid over every dimension of an 11-d state would make each state a cell of its own.
    """
    if family == "discrete":
        return _view_digest
    obs_scale = getattr(oracle, "obs_scale", None)
    if obs_scale is not None:
        return ProjectedGridKey(obs_scale, cell=0.5, seed=0)
    return _region_digest(bins=12)


def make_advisor(
    name: str,
    oracle: Advisor,
    family: str,
    seed: int,
    view_key: Callable[[AdviceRequest], bytes] | None = None,
) -> Advisor:
    """
    The suite's teacher ``name`` (see the module docstring) around the env's ``oracle``.

    :param view_key: names the views a partially reliable teacher is wrong on; None: :func:`default_view_key`
    """
    if view_key is None:
        view_key = default_view_key(oracle, family)
    if name in ADVISORS and name.startswith("r"):
        reliability = float(name[1:])
        if reliability >= 1.0:
            return oracle
        return NoisyAdvisor(oracle, reliability=reliability, seed=seed, view_key=view_key)
    if name == "adversarial":
        return NoisyAdvisor(oracle, reliability=0.0, seed=seed, mode="adversarial", view_key=view_key)
    if name == "constant":
        return ConstantAdvisor(0 if family == "discrete" else 0.0)
    raise ValueError(f"unknown advisor {name!r}; choose from {ADVISORS}")


def _discrete_run(job: dict[str, Any]) -> dict[str, Any]:
    from sb3_vlm.envs.minigrid import MiniGridOracle
    from sb3_vlm.experiments.minigrid import EpisodeCurveCallback, build_model, evaluation_returns

    env = env_spec(job["env"])
    guided = job["advisor"] != UNGUIDED
    cache = AdviceCache()
    advisor = make_advisor(job["advisor"], MiniGridOracle(), "discrete", job["seed"]) if guided else None
    kwargs: dict[str, Any] = dict(job.get("guided_kwargs") or {})
    # teacher_coef=None: the guided algorithm's own default λ
    teacher_coef = kwargs.pop("teacher_coef", None)
    if isinstance(kwargs.get("trust"), dict):
        kwargs["trust"] = TrustSettings(**kwargs["trust"])
    model = build_model(
        job["algo"],
        env.env_id,
        guided,
        job["seed"],
        teacher_coef=teacher_coef,
        cache=cache,
        advisor=advisor,
        guided_kwargs=kwargs,
        query=selector_from_spec(job["query"]) if guided and job.get("query") else None,
    )
    trace = GuidanceTrace()
    curve = EpisodeCurveCallback(window=50, record_every=2048)
    model.learn(job["steps"], callback=[curve, trace])
    final = evaluation_returns(model, env.env_id, job["seed"], episodes=job.get("eval_episodes", 50))
    return dict(
        curve_steps=curve.steps,
        curve_returns=curve.means,
        eval_return=float(np.mean(final)),
        trace=trace.rows,
        queries=advisor.stats.queries if advisor is not None else 0,  # views that reached the teacher (cache misses)
    )


def _continuous_setup(env: SuiteEnv) -> tuple[Advisor, Callable[[], gym.Env], Callable[[], gym.Env], dict[str, Any]]:
    """The env's oracle, its training env (with a teacher view), its evaluation env and the base SAC arguments."""
    if env.env_id == "Pendulum-v1":
        from sb3_vlm.envs.pendulum import PendulumSwingUpOracle, make_pendulum_env
        from sb3_vlm.experiments.pendulum import SAC_KWARGS

        return PendulumSwingUpOracle(), make_pendulum_env, make_pendulum_env, SAC_KWARGS
    if env.env_id == "pixel-pendulum":
        from sb3_vlm.envs.pendulum import PendulumSwingUpOracle, make_pixel_env

        # 64x64 RGB, three frames stacked (the README's pixel Pendulum); the teacher reads the state
        return PendulumSwingUpOracle(), make_pixel_env, make_pixel_env, PIXEL_SAC_KWARGS
    if env.env_id == "carracing" or env.env_id.startswith("dmc-"):
        from sb3_vlm.envs.registry import teacher_defaults

        _, advisor = teacher_defaults(env.env_id)
        if advisor is None:  # no scripted teacher for this task yet: unguided runs only
            advisor = _NoTeacher(env.env_id)
        factory = functools.partial(_paper_env, env.env_id)
        return advisor, factory, factory, PIXEL_SAC_KWARGS
    if env.env_id == "MountainCarContinuous-v0":
        from sb3_vlm.envs.mountain_car import MountainCarOracle, make_mountain_car_env

        return MountainCarOracle(), make_mountain_car_env, functools.partial(gym.make, env.env_id), MUJOCO_SAC_KWARGS
    from sb3_vlm.envs.mujoco_state import load_teacher, make_state_env

    teacher = load_teacher(env.env_id)  # FileNotFoundError naming benchmarks/train_teachers.py if not trained yet
    return (
        teacher,
        functools.partial(make_state_env, env.env_id),
        functools.partial(gym.make, env.env_id),
        MUJOCO_SAC_KWARGS,
    )


def _continuous_run(job: dict[str, Any]) -> dict[str, Any]:
    from stable_baselines3 import SAC
    from stable_baselines3.common.monitor import Monitor

    from sb3_vlm.experiments.pendulum import EvalCurveCallback
    from sb3_vlm.sac import GuidedSAC
    from sb3_vlm.wrappers.advice import VLMAdviceWrapper

    oracle, make_env, make_eval_env, sac_kwargs = _continuous_setup(env_spec(job["env"]))
    guided = job["advisor"] != UNGUIDED
    # the pixel benchmark's: the policy of both runs (e.g. "DrQPolicy"), GuidedSAC's options for both runs
    # (model_kwargs, e.g. augmentation="shift") and overrides of the base SAC arguments (sac_kwargs)
    policy = job.get("policy", "MlpPolicy")
    model_kwargs = dict(job.get("model_kwargs") or {})
    sac_kwargs = {**sac_kwargs, **(job.get("sac_kwargs") or {})}
    if guided and isinstance(oracle, _NoTeacher):
        raise RuntimeError(f"{job['env']} has no scripted teacher yet: only unguided runs ('none')")
    trace = GuidanceTrace()
    every, episodes = job.get("eval_every", 1000), job.get("eval_episodes", 5)
    curve = EvalCurveCallback(every=every, episodes=episodes, seed=job["seed"], make_env=make_eval_env)
    advisor = None
    if guided:
        advisor = make_advisor(job["advisor"], oracle, "continuous", job["seed"])
        query = selector_from_spec(job["query"]) if job.get("query") else None
        # the query benchmark counts distinct views asked about, so it puts a cache in front (the suite's own runs
        # keep none, as they were measured)
        cache = AdviceCache() if query is not None else None
        env = VLMAdviceWrapper(Monitor(make_env()), advisor, cache=cache, query=query)
        guided_kwargs = {**model_kwargs, **(job.get("guided_kwargs") or {})}
        model: Any = GuidedSAC(policy, env, seed=job["seed"], **sac_kwargs, **guided_kwargs)
    elif policy in SAC.policy_aliases and not model_kwargs:
        model = SAC(policy, Monitor(make_env()), seed=job["seed"], **sac_kwargs)
    else:  # GuidedSAC's own policy or options, without guidance (bit-identical to SAC where SAC has them)
        model = GuidedSAC(policy, Monitor(make_env()), method="sac", seed=job["seed"], **sac_kwargs, **model_kwargs)
    model.learn(job["steps"], callback=[curve, trace])
    return dict(
        curve_steps=curve.steps,
        curve_returns=curve.returns,
        eval_return=float(np.mean(curve.returns[-2:])) if curve.returns else float("nan"),
        trace=trace.rows,
        queries=advisor.stats.queries if advisor is not None else 0,
    )


class GuidanceTrace(BaseCallback):
    """Callback recording the guidance internals the logger holds (trust, gate fractions, λ) every ~2k steps."""

    KEYS = (
        "train/teacher_trust",
        "train/teacher_coef",
        "train/trust_evidence",
        "train/imitation_cap",
        "train/advice_gated_frac",
        "train/advice_followed_frac",
        "train/advice_diversity",
        "train/teacher_agreement",
        "train/guidance_coef",
        "train/q_f_mean",
        "train/q_f_active_frac",
        "train/teacher_episode_share",
    )

    def __init__(self, every: int = 2048) -> None:
        super().__init__()
        self.every = every
        self.rows: list[dict[str, float]] = []
        self._last = -every

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        # the logger still holds the previous train() call's values here (they are cleared only when dumped)
        values = self.model.logger.name_to_value
        row = {k.split("/")[1]: float(values[k]) for k in self.KEYS if k in values}
        if row and self.num_timesteps - self._last >= self.every:
            self._last = self.num_timesteps
            self.rows.append({"step": float(self.num_timesteps), **row})


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """
    One run of the suite. ``job``: ``algo``, ``env``, ``advisor`` (``"none"`` for the unguided base algorithm),
    ``seed``, ``steps``, optional ``guided_kwargs`` (calibration only: the suite's own jobs never set it).
    """
    start = time.time()
    import torch as th

    th.set_num_threads(1)
    env = env_spec(job["env"])
    out = _discrete_run(job) if env.family == "discrete" else _continuous_run(job)
    return dict(job, **out, wall_time=time.time() - start)


def run_sweep(
    jobs: list[dict[str, Any]],
    out: Path,
    workers: int = 2,
    report_only: bool = False,
    describe: Callable[[dict[str, Any]], str] = lambda r: "",
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """
    The benchmark drivers' sweep: the ``jobs`` not yet in ``out/runs.jsonl`` run through :func:`run_one` (see
    :func:`~sb3_vlm.experiments.runner.run_jobs`), then every run's :func:`summarise` record.

    :return: the runs and their summary records
    """
    out.mkdir(parents=True, exist_ok=True)
    runs = run_jobs(
        jobs, run_one, job_key, out / "runs.jsonl", workers=workers, report_only=report_only, describe=describe
    )
    return runs, summarise(runs)


def job_key(job: dict[str, Any]) -> tuple[Any, ...]:
    """A run's identity (job or result): what resuming compares."""
    kwargs = json.dumps(job.get("guided_kwargs") or {}, sort_keys=True)
    key: tuple[Any, ...] = (job["algo"], job["env"], job["advisor"], job["seed"], job["steps"], kwargs)
    return (*key, job["query"]) if job.get("query") else key  # the suite's own runs have none


def threshold_for(unguided_final: float, random_return: float, best_final: float | None = None) -> float:
    """
    The return a run must reach to count as "there": the unguided runs' mean final return, less 5 % of its gap to a
    random policy (so noise around its own plateau does not censor the unguided run itself). Works for any sign.
    Where the unguided runs barely learned, "reaching their final return" is trivial, so the threshold is at least
    halfway from a random policy to ``best_final``, the best mean final return of any teacher on the env.
    """
    threshold = unguided_final - 0.05 * abs(unguided_final - random_return)
    if best_final is not None:
        threshold = max(threshold, random_return + 0.5 * (best_final - random_return))
    return threshold


def _final_curve_value(run: dict[str, Any]) -> float:
    returns = run["curve_returns"]
    if not returns:
        return float("nan")
    return float(np.mean(returns[-3:]))  # the last few points of the (already smoothed) curve


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per (algo, env, advisor) with its unguided counterpart; censored runs count as the budget."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["algo"], run["env"], run["advisor"]), []).append(run)
    records = []
    for (algo, env_name, advisor), group in sorted(groups.items()):
        if advisor == UNGUIDED:
            continue
        unguided = sorted(groups.get((algo, env_name, UNGUIDED), []), key=lambda r: r["seed"])
        # compare like with like: the unguided runs of the guided runs' seeds, where the sweep has them
        paired = [r for r in unguided if r["seed"] in {g["seed"] for g in group}]
        unguided = paired or unguided
        if not unguided:
            continue
        env = env_spec(env_name)
        group = sorted(group, key=lambda r: r["seed"])
        u_final = float(np.mean([_final_curve_value(r) for r in unguided]))
        best = max(
            float(np.mean([_final_curve_value(r) for r in g]))
            for (a, e, _), g in groups.items()
            if (a, e) == (algo, env_name)
        )
        threshold = threshold_for(u_final, env.random_return, best)

        g_steps, g_censored = censored_steps(group, threshold)
        u_steps, u_censored = censored_steps(unguided, threshold)
        g_final = [r["eval_return"] for r in group]
        u_eval = [r["eval_return"] for r in unguided]
        records.append(
            dict(
                algo=algo,
                env=env_name,
                advisor=advisor,
                seeds=[r["seed"] for r in group],
                threshold=threshold,
                steps_to_threshold=g_steps,
                censored=g_censored,
                final_return=g_final,
                unguided_seeds=[r["seed"] for r in unguided],
                unguided_steps_to_threshold=u_steps,
                unguided_censored=u_censored,
                unguided_final_return=u_eval,
                budget=group[0]["steps"],
                speedup=float(np.mean(u_steps)) / max(float(np.mean(g_steps)), 1.0),
                final_ratio=_final_ratio(float(np.mean(g_final)), float(np.mean(u_eval)), env.random_return),
            )
        )
    return records


def censored_steps(runs: list[dict[str, Any]], threshold: float) -> tuple[list[int], list[bool]]:
    """Steps to ``threshold`` per run, the budget where it never got there, and which runs were censored."""
    found = [steps_to_threshold(r["curve_steps"], r["curve_returns"], threshold, hold=HOLD_POINTS) for r in runs]
    return [s if s is not None else r["steps"] for s, r in zip(found, runs, strict=True)], [s is None for s in found]


def _final_ratio(guided: float, unguided: float, random_return: float) -> float:
    """Guided final return relative to unguided, measured from a random policy: 1.0 = as good, 0.95 = 5 % of the
    unguided-to-random gap below it (the issue's criterion for negative returns; for returns ≥ 0 with a random
    return of 0 this is the plain ratio)."""
    gap = unguided - random_return
    if abs(gap) < 1e-9:
        return float("nan")
    return (guided - random_return) / gap


def markdown_table(records: list[dict[str, Any]]) -> str:
    """The README table: speed-up (steps to threshold, unguided / guided) and final-return ratio per record."""
    lines = [
        "| algo | env | advisor | seeds | speed-up (× fewer steps) | final return guided / unguided | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in records:
        cens = sum(r["censored"])
        # an unguided run that never got there counts as its budget: the true speed-up is at least this
        at_least = "≥ " if any(r["unguided_censored"]) else ""
        speed = f"{at_least}{r['speedup']:.2f}" + (f" ({cens} guided censored)" if cens else "")
        lines.append(
            f"| {r['algo']} | {r['env']} | {r['advisor']} | {len(r['seeds'])} | {speed} | "
            f"{np.mean(r['final_return']):.3g} / {np.mean(r['unguided_final_return']):.3g} | {r['final_ratio']:.2f} |"
        )
    return "\n".join(lines)


__all__ = [
    "ADVISORS",
    "ENVS",
    "EXTRA_ENVS",
    "MUJOCO_SAC_KWARGS",
    "UNGUIDED",
    "SuiteEnv",
    "censored_steps",
    "default_view_key",
    "env_spec",
    "job_key",
    "make_advisor",
    "markdown_table",
    "run_one",
    "summarise",
    "threshold_for",
]
