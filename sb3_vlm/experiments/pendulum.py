"""GuidedSAC on Pendulum with scripted advisors: the building block of ``benchmarks/sac_guidance.py``."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor

from sb3_vlm.advisors.base import Advisor
from sb3_vlm.advisors.scripted import ConstantAdvisor, NoisyAdvisor
from sb3_vlm.envs.pendulum import PendulumSwingUpOracle, make_pendulum_env
from sb3_vlm.experiments.runner import steps_to_threshold
from sb3_vlm.sac import GuidedSAC, pretrain_advice_critic
from sb3_vlm.wrappers.advice import VLMAdviceWrapper

#: RL Zoo's Pendulum-v1 SAC (learning rate 1e-3), with 64-unit layers so a run fits a CPU core
SAC_KWARGS: dict[str, Any] = dict(
    learning_rate=1e-3, batch_size=256, learning_starts=100, policy_kwargs=dict(net_arch=[64, 64])
)
ADVISORS = ("oracle", "noisy0.5", "worst")
#: benchmark labels that are a method plus non-default arguments
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "erpv_minmax": ("erpv", dict(vpg_gate="minmax")),  # the paper's gate (ERPv's default is the advantage gate)
    "erpv_cv": ("erpv", dict(vpg_gate="minmax", vpg_reference="advice")),
}
THRESHOLD = -200.0


def make_advisor(name: str, seed: int) -> Advisor:
    """``oracle``: the swing-up controller; ``noisy0.5``: right half the time, else uniform; ``worst``: zeros (ERPv)."""
    if name == "oracle":
        return PendulumSwingUpOracle()
    if name == "noisy0.5":
        return NoisyAdvisor(PendulumSwingUpOracle(), reliability=0.5, seed=seed)
    if name == "worst":
        return ConstantAdvisor(0.0)
    raise ValueError(f"unknown advisor {name!r}; choose from {ADVISORS}")


class EvalCurveCallback(BaseCallback):
    """
    Deterministic evaluation every ``every`` steps on a plain env (no advisor: the policy stands alone).

    :param every: env steps between evaluations
    :param episodes: episodes per evaluation
    :param seed: the evaluation env is reset with ``10_000 + seed``
    :param make_env: builds the evaluation env (default: Pendulum)
    """

    def __init__(self, every: int, episodes: int, seed: int, make_env: Callable[[], gym.Env] = make_pendulum_env):
        super().__init__()
        self.every, self.episodes = every, episodes
        self.eval_env = Monitor(make_env())
        self.eval_env.reset(seed=10_000 + seed)
        self.steps: list[int] = []
        self.returns: list[float] = []
        self._next = every

    def _on_step(self) -> bool:
        if self.num_timesteps >= self._next:
            self._next += self.every
            mean, _ = evaluate_policy(self.model, self.eval_env, self.episodes, deterministic=True)
            self.steps.append(int(self.num_timesteps))
            self.returns.append(float(mean))  # type: ignore[arg-type]
        return True


def run(
    method: str,
    advisor_name: str,
    seed: int,
    steps: int,
    eval_every: int = 1000,
    eval_episodes: int = 5,
    critic_steps: int = 3000,
    cutoff_fraction: float = 0.3,
) -> dict[str, Any]:
    """
    Train one GuidedSAC run and return its evaluation curve and summary numbers.

    :param method: a :data:`~sb3_vlm.sac.guided_sac.METHOD_PRESETS` key or a :data:`VARIANTS` label
    :param critic_steps: RAE pre-training steps of ERPv's C_V (not counted in ``steps``)
    :param cutoff_fraction: VARL's N_s as a fraction of ``steps`` (VARL: 30k of 100k)
    """
    start = time.time()
    label = method
    method, variant = VARIANTS.get(label, (label, {}))
    advisor = make_advisor(advisor_name, seed)
    kwargs: dict[str, Any] = dict(SAC_KWARGS, **variant)
    if method in ("erpv", "rsf") and critic_steps > 0:
        kwargs["advice_critic"] = pretrain_advice_critic(
            make_pendulum_env(), make_advisor(advisor_name, seed + 1000), steps=critic_steps, seed=seed, **SAC_KWARGS
        )
    elif method in ("erpv", "rsf"):
        kwargs["advice_critic"] = "rl"
    if method == "varl":
        kwargs["guidance_cutoff"] = int(cutoff_fraction * steps)
    env = VLMAdviceWrapper(Monitor(make_pendulum_env()), advisor)
    model = GuidedSAC("MlpPolicy", env, method=method, seed=seed, **kwargs)
    callback = EvalCurveCallback(eval_every, eval_episodes, seed)
    model.learn(steps, callback=callback)
    return dict(
        method=label,
        advisor=advisor_name,
        seed=seed,
        steps=steps,
        critic_steps=critic_steps if method in ("erpv", "rsf") else 0,
        curve_steps=callback.steps,
        curve_returns=callback.returns,
        steps_to_threshold=steps_to_threshold(callback.steps, callback.returns, THRESHOLD),
        final_return=float(np.mean(callback.returns[-2:])) if callback.returns else float("nan"),
        final_ent_coef=float(model.logger.name_to_value.get("train/ent_coef", float("nan"))),
        advisor_queries=advisor.stats.queries,
        wall_time=time.time() - start,
    )
