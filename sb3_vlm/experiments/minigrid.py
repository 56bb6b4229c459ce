"""Quick MiniGrid experiments: unguided vs guided PPO / A2C with a scripted, partially reliable teacher.

Used by ``sb3-vlm demo`` and by ``benchmarks/minigrid_distill.py``. Everything is seeded; the curves are the mean
return of the training episodes (rolling window) against environment steps.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

from sb3_vlm.a2c import GuidedA2C
from sb3_vlm.advisors.base import Advisor
from sb3_vlm.advisors.cache import AdviceCache
from sb3_vlm.advisors.scripted import NoisyAdvisor
from sb3_vlm.envs.minigrid import MiniGridOracle, StudentObs, make_minigrid_env
from sb3_vlm.experiments.runner import steps_to_threshold
from sb3_vlm.guidance.schedules import CoefSchedule, KickstartingCoef
from sb3_vlm.ppo import GuidedPPO
from sb3_vlm.wrappers import VLMAdviceWrapper
from sb3_vlm.wrappers.selection import QuerySelector

AlgoName = Literal["ppo", "a2c"]

#: RL Zoo's MiniGrid PPO settings (n_envs 8, n_steps 128, batch 64, 10 epochs, lr 2.5e-4)
PPO_KWARGS: dict[str, Any] = dict(
    n_steps=128, batch_size=64, n_epochs=10, learning_rate=2.5e-4, gae_lambda=0.95, gamma=0.99, ent_coef=0.0
)
#: A2C with 8 envs x 5 steps, RMSprop (SB3 defaults) and a little entropy bonus
A2C_KWARGS: dict[str, Any] = dict(n_steps=5, learning_rate=7e-4, gamma=0.99, ent_coef=0.01)
N_ENVS = 8
#: the student's egocentric view as a flat vector: a small input that moves with the agent, which on LavaGap learns
#: far faster than the full-grid state or pixels
STUDENT_OBS: StudentObs = "symbolic_partial"


@dataclass
class RunResult:
    """One training run. ``curve_steps`` / ``curve_returns``: rolling mean training return at each rollout end."""

    algo: str
    env_id: str
    guided: bool
    reliability: float | None
    schedule: str
    seed: int
    total_timesteps: int
    curve_steps: list[int] = field(default_factory=list)
    curve_returns: list[float] = field(default_factory=list)
    steps_to_threshold: int | None = None
    final_success: float = 0.0
    final_return: float = 0.0
    advisor_queries: int = 0
    cache_hits: int = 0
    distinct_views: int = 0
    wall_time: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class EpisodeCurveCallback(BaseCallback):
    """Record the rolling mean of completed training-episode returns at every rollout end (and each step for A2C)."""

    def __init__(self, window: int = 50, record_every: int = 1024):
        super().__init__()
        self.window = window
        self.record_every = record_every
        self.returns: list[float] = []
        self.steps: list[int] = []
        self.means: list[float] = []
        self._next_record = record_every

    def _on_step(self) -> bool:
        for info in self.locals["infos"]:
            if "episode" in info:
                self.returns.append(float(info["episode"]["r"]))
        if self.num_timesteps >= self._next_record:
            self._next_record += self.record_every
            if self.returns:
                self.steps.append(int(self.num_timesteps))
                self.means.append(float(np.mean(self.returns[-self.window :])))
        return True


def evaluation_returns(model: BaseAlgorithm, env_id: str, seed: int, episodes: int) -> np.ndarray:
    """Returns of ``episodes`` evaluation episodes on a fresh env seeded apart from training (10 000 + seed)."""
    eval_env = make_vec_env(
        make_minigrid_env,  # type: ignore[arg-type]
        n_envs=1,
        seed=10_000 + seed,
        env_kwargs=dict(env_id=env_id, student_obs=STUDENT_OBS),
    )
    rewards, _ = evaluate_policy(model, eval_env, n_eval_episodes=episodes, return_episode_rewards=True)
    return np.asarray(rewards, dtype=np.float64)


def make_advisor(reliability: float, seed: int) -> Advisor:
    """The demo's teacher: the MiniGrid oracle made only ``reliability`` reliable."""
    oracle = MiniGridOracle()
    return oracle if reliability >= 1.0 else NoisyAdvisor(oracle, reliability=reliability, seed=seed)


def build_model(
    algo: AlgoName,
    env_id: str,
    guided: bool,
    seed: int,
    reliability: float = 0.8,
    teacher_coef: float | CoefSchedule | None = None,
    cache: AdviceCache | None = None,
    student_obs: str = STUDENT_OBS,
    advisor: Advisor | None = None,
    guided_kwargs: dict[str, Any] | None = None,
    query: QuerySelector | None = None,
) -> BaseAlgorithm:
    """
    Build a seeded (Guided)PPO / (Guided)A2C on ``N_ENVS`` copies of a MiniGrid task.

    :param advisor: the teacher (default: the oracle made ``reliability`` reliable)
    :param teacher_coef: the guided algorithm's λ; None: its own default
    :param guided_kwargs: extra arguments of the guided algorithm (``teacher_coef`` is passed on its own)
    :param query: which views the advice wrappers ask about (one selector shared by the envs); None: every view
    """
    env_kwargs: dict[str, Any] = dict(env_id=env_id, student_obs=student_obs)
    wrapper_class = None
    wrapper_kwargs = None
    if guided:
        wrapper_class = VLMAdviceWrapper
        wrapper_kwargs = dict(
            advisor=advisor if advisor is not None else make_advisor(reliability, seed),
            cache=cache if cache is not None else AdviceCache(),
            query=query,
        )
    vec_env = make_vec_env(
        make_minigrid_env,  # type: ignore[arg-type]
        n_envs=N_ENVS,
        seed=seed,
        env_kwargs=env_kwargs,
        wrapper_class=wrapper_class,  # type: ignore[arg-type]
        wrapper_kwargs=wrapper_kwargs,
    )
    policy = "MlpPolicy" if student_obs.startswith("symbolic") else "CnnPolicy"
    extra = dict(guided_kwargs or {})
    if teacher_coef is not None:
        extra["teacher_coef"] = teacher_coef
    if algo == "ppo":
        if guided:
            return GuidedPPO(policy, vec_env, seed=seed, device="cpu", **PPO_KWARGS, **extra)
        return PPO(policy, vec_env, seed=seed, device="cpu", **PPO_KWARGS)
    if algo == "a2c":
        if guided:
            return GuidedA2C(policy, vec_env, seed=seed, device="cpu", **A2C_KWARGS, **extra)
        return A2C(policy, vec_env, seed=seed, device="cpu", **A2C_KWARGS)
    raise ValueError(f"algo must be 'ppo' or 'a2c', got {algo!r}")


def annealed_schedule(initial: float = 0.05) -> KickstartingCoef:
    """Kickstarting anneal used against unreliable teachers: λ starts at the constant runs' value, × 0.97 per update,
    cut off after 60 updates (~61k steps with 8 envs x 128 steps). It starts where the constant schedule is
    (Σλ ≈ 1.4): a larger early push (λ = 1, × 0.9: Σλ ≈ 10) lets an always-wrong teacher drive PPO well below
    unguided PPO before the anneal takes it away."""
    return KickstartingCoef(initial=initial, decay=0.97, floor=0.0, cutoff=60)


def run(
    algo: AlgoName,
    env_id: str,
    guided: bool,
    seed: int,
    total_timesteps: int,
    reliability: float = 0.8,
    teacher_coef: float | CoefSchedule | None = None,
    threshold: float = 0.9,
    eval_episodes: int = 50,
    progress_bar: bool = False,
    schedule_name: str = "",
    advisor: Advisor | None = None,
) -> RunResult:
    """
    Train one model and measure it: learning curve, steps to ``threshold`` mean return, final success.

    :param advisor: the teacher (default: the oracle made ``reliability`` reliable)
    """
    cache = AdviceCache()  # shared by the run's 8 envs
    model = build_model(algo, env_id, guided, seed, reliability, teacher_coef, cache, STUDENT_OBS, advisor=advisor)
    curve = EpisodeCurveCallback()
    start = time.perf_counter()
    model.learn(total_timesteps, callback=curve, progress_bar=progress_bar)
    wall = time.perf_counter() - start
    rewards_arr = evaluation_returns(model, env_id, seed, eval_episodes)
    result = RunResult(
        algo=algo,
        env_id=env_id,
        guided=guided,
        reliability=reliability if guided else None,
        schedule=schedule_name if guided else "",
        seed=seed,
        total_timesteps=total_timesteps,
        curve_steps=curve.steps,
        curve_returns=curve.means,
        steps_to_threshold=steps_to_threshold(curve.steps, curve.means, threshold),
        final_success=float(np.mean(rewards_arr > 0)),
        final_return=float(np.mean(rewards_arr)),
        wall_time=wall,
    )
    if guided:
        stats = model.get_env().get_attr("advisor_stats")[0]  # type: ignore[union-attr]
        result.advisor_queries = int(stats.queries)
        result.cache_hits = int(stats.cache_hits)
        result.distinct_views = len(cache)
    return result
