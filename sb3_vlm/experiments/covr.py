"""COVR's collaborative loop on MiniGrid, measurable on a CPU: a deliberately poor teacher that can be fine-tuned.

The teacher is a :class:`~sb3_vlm.advisors.table.NearestNeighbourAdvisor` in front of the MiniGrid oracle made only
``reliability`` reliable (:class:`~sb3_vlm.advisors.scripted.NoisyAdvisor`): before any round every answer comes
from the poor base; each round stores the EDDF-selected, RALW-weighted (view, executed action) pairs of the agent's
own trajectories. Variants: ``"unguided"`` (PPO), ``"poor"`` (GuidedPPO with the poor teacher, no fine-tuning) and
``"covr"`` (the same plus :class:`~sb3_vlm.finetune.VLMFineTuneCallback`). Advice accuracy is the fraction of a
fixed probe set of teacher views (those along the oracle's own paths) on which the teacher's top action is optimal.
"""

from __future__ import annotations

import tempfile
import time
from typing import Any, Literal

import numpy as np
from stable_baselines3 import PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env

from sb3_vlm.advice import Advice, AdviceRequest
from sb3_vlm.advisors.base import Advisor
from sb3_vlm.advisors.cache import AdviceCache
from sb3_vlm.advisors.scripted import NoisyAdvisor
from sb3_vlm.advisors.table import NearestNeighbourAdvisor
from sb3_vlm.envs.minigrid import MiniGridOracle, make_minigrid_env
from sb3_vlm.experiments.minigrid import N_ENVS, PPO_KWARGS, STUDENT_OBS, EpisodeCurveCallback, evaluation_returns
from sb3_vlm.experiments.runner import steps_to_threshold
from sb3_vlm.finetune import VLMFineTuneCallback
from sb3_vlm.ppo import GuidedPPO
from sb3_vlm.wrappers import VLMAdviceWrapper

Variant = Literal["unguided", "poor", "covr"]
Teacher = Literal["table", "pocket"]
VARIANTS: tuple[str, ...] = ("unguided", "poor", "covr")


def probe_views(env_id: str, episodes: int = 20, seed: int = 20_000) -> list[AdviceRequest]:
    """Teacher views along the oracle's own paths (greedy), from ``episodes`` seeded episodes."""
    oracle = MiniGridOracle()
    env: Any = make_minigrid_env(env_id, student_obs=STUDENT_OBS)
    views = []
    for episode in range(episodes):
        env.reset(seed=seed + episode)
        done = False
        while not done:
            request = env.teacher_request()
            request.action_space = env.action_space
            views.append(request)
            advice = oracle.advise_one(request)
            if not advice.valid or advice.probs is None:
                break
            _, _, terminated, truncated, _ = env.step(int(np.argmax(advice.probs)))
            done = terminated or truncated
    return views


def top_action(advice: Advice) -> int | None:
    """The advice's most likely discrete action, None for invalid advice."""
    if not advice.valid:
        return None
    if advice.probs is not None:
        return int(np.argmax(advice.probs))
    return None if advice.action is None else int(np.asarray(advice.action).reshape(-1)[0])


def advice_accuracy(advisor: Advisor, views: list[AdviceRequest]) -> float:
    """Fraction of ``views`` on which the advisor's top action is one of the oracle's optimal actions."""
    oracle_answers = MiniGridOracle(smoothing=0.0).advise(views)
    answers = advisor.advise(views)
    right = []
    for expert, advice in zip(oracle_answers, answers, strict=True):
        if expert.probs is None:
            continue
        top = top_action(advice)
        right.append(top is not None and expert.probs[top] > 0)
    return float(np.mean(right)) if right else float("nan")


class AccuracyAfterRounds(BaseCallback):
    """Advice accuracy on the probe set before the first round and after each fine-tuning round."""

    def __init__(self, finetune: VLMFineTuneCallback, advisor: Advisor, views: list[AdviceRequest]):
        super().__init__()
        self.finetune, self.advisor, self.views = finetune, advisor, views
        self.rounds: list[int] = []
        self.steps: list[int] = []
        self.accuracy: list[float] = []

    def _record(self, round_: int) -> None:
        self.rounds.append(round_)
        self.steps.append(int(self.num_timesteps))
        self.accuracy.append(advice_accuracy(self.advisor, self.views))

    def _on_training_start(self) -> None:
        self._record(0)

    def _on_step(self) -> bool:
        if len(self.finetune.history) > self.rounds[-1]:
            self._record(len(self.finetune.history))
        return True


def run(
    variant: Variant,
    seed: int,
    total_timesteps: int,
    env_id: str = "MiniGrid-LavaGapS7-v0",
    reliability: float = 0.2,
    teacher_coef: float | None = 0.05,
    psi0: int = 2_500,
    start_guidance_after: int = 1,
    threshold: float = 0.9,
    eval_episodes: int = 50,
    probe_episodes: int = 20,
    smoothing: float = 0.0,
    teacher: Teacher = "table",
) -> dict[str, Any]:
    """
    Train one variant and measure it: learning curve, steps to ``threshold``, final success, advice accuracy.

    :param teacher: ``"table"``: the nearest-neighbour table in front of the oracle made ``reliability`` reliable
        (``reliability`` and ``smoothing`` apply); ``"pocket"``: the pocket VLM (``HFAdvisor("pocket-minigrid")``,
        fine-tuned by real LoRA rounds with :class:`~sb3_vlm.finetune.LoraSettings`' defaults)
    :param teacher_coef: GuidedPPO's λ; None: its default (adaptive trust)
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if teacher not in ("table", "pocket"):
        raise ValueError(f"teacher must be 'table' or 'pocket', got {teacher!r}")
    table: Advisor
    if teacher == "pocket":
        from sb3_vlm.advisors.hf import HFAdvisor
        from sb3_vlm.advisors.prompts import MINIGRID_PROMPT

        table = HFAdvisor("pocket-minigrid", MINIGRID_PROMPT)
    else:
        table = NearestNeighbourAdvisor(
            NoisyAdvisor(MiniGridOracle(), reliability=reliability, seed=seed), smoothing=smoothing
        )
    views = probe_views(env_id, probe_episodes)
    wrapper_kwargs = dict(advisor=table, cache=AdviceCache())
    env = make_vec_env(
        make_minigrid_env,  # type: ignore[arg-type]
        n_envs=N_ENVS,
        seed=seed,
        env_kwargs=dict(env_id=env_id, student_obs=STUDENT_OBS),
        wrapper_class=None if variant == "unguided" else VLMAdviceWrapper,  # type: ignore[arg-type]
        wrapper_kwargs=None if variant == "unguided" else wrapper_kwargs,
    )
    model: BaseAlgorithm
    if variant == "unguided":
        model = PPO("MlpPolicy", env, seed=seed, device="cpu", **PPO_KWARGS)
    else:
        coef: dict[str, Any] = {} if teacher_coef is None else {"teacher_coef": teacher_coef}
        model = GuidedPPO("MlpPolicy", env, seed=seed, device="cpu", **coef, **PPO_KWARGS)
    curve = EpisodeCurveCallback()
    callbacks: list[BaseCallback] = [curve]
    accuracy_before = advice_accuracy(table, views)
    probe = None
    with tempfile.TemporaryDirectory(prefix="covr_loop_") as save_dir:
        finetune = None
        if variant == "covr":
            finetune = VLMFineTuneCallback(
                table, psi0=psi0, start_guidance_after=start_guidance_after, save_dir=save_dir, seed=seed
            )
            probe = AccuracyAfterRounds(finetune, table, views)
            callbacks = [finetune, probe, curve]
        start = time.perf_counter()
        model.learn(total_timesteps, callback=callbacks)
        wall = time.perf_counter() - start
    rewards_arr = evaluation_returns(model, env_id, seed, eval_episodes)
    return dict(
        variant=variant,
        env_id=env_id,
        seed=seed,
        total_timesteps=total_timesteps,
        reliability=reliability,
        teacher_coef=teacher_coef,
        psi0=psi0,
        smoothing=smoothing,
        curve_steps=curve.steps,
        curve_returns=curve.means,
        steps_to_threshold=steps_to_threshold(curve.steps, curve.means, threshold),
        final_success=float(np.mean(rewards_arr > 0)),
        final_return=float(np.mean(rewards_arr)),
        accuracy_before=accuracy_before,
        accuracy_after=advice_accuracy(table, views) if variant != "unguided" else None,
        accuracy_rounds=probe.rounds if probe else [],
        accuracy_steps=probe.steps if probe else [],
        accuracy=probe.accuracy if probe else [],
        rounds=[
            {k: h[k] for k in ("round", "timesteps", "df_size", "selected", "mean_weight", "loss", "entropy")}
            for h in (finetune.history if finetune else [])
        ],
        teacher=teacher,
        table_views=len(table) if isinstance(table, NearestNeighbourAdvisor) else None,
        probe_views=len(views),
        wall_time=wall,
    )
