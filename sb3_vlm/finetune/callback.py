"""COVR's collaborative loop as an SB3 callback: collect D_f, select (EDDF), weight (RALW), fine-tune, repeat."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecEnvWrapper, unwrap_vec_normalize

from sb3_vlm.advisors.base import Advisor
from sb3_vlm.advisors.cache import CachedAdvisor
from sb3_vlm.finetune.backends import FineTuneBackend, FineTuneResult, backend_for
from sb3_vlm.finetune.data import Example, TrajectoryCollector
from sb3_vlm.finetune.lora import LoraSettings
from sb3_vlm.finetune.selection import eddf_select, eddf_threshold, progressive_intervals, ralw_weights, zscore

logger = logging.getLogger(__name__)


def policy_entropy(model: BaseAlgorithm, n_samples: int = 256) -> float:
    """
    ε_t for EDDF, from the algorithm at hand on recent observations: SAC-style actors give ``−E[log π(a|s)]``
    (a ~ π, on a replay-buffer sample); on-policy algorithms give the mean entropy of the action distribution
    over the rollout buffer's filled rows. NaN when there is nothing to measure on yet.
    """
    policy: Any = model.policy
    with th.no_grad():
        if isinstance(model, OffPolicyAlgorithm):
            buffer = model.replay_buffer
            if buffer is None or buffer.size() == 0 or not hasattr(policy, "actor"):
                return math.nan
            obs = buffer.sample(n_samples).observations
            if hasattr(policy.actor, "action_log_prob"):
                _, log_prob = policy.actor.action_log_prob(obs)
                return float(-log_prob.mean())
            return math.nan
        if isinstance(model, OnPolicyAlgorithm):
            rollout = model.rollout_buffer
            rows = rollout.buffer_size if rollout.full else rollout.pos
            if rows == 0:
                return math.nan
            # after get(), SB3 has already swapped and flattened the arrays to (buffer_size * n_envs, ...)
            ready = rollout.generator_ready

            def flat(x: np.ndarray) -> np.ndarray:
                return (x if ready else x[:rows].reshape(-1, *x.shape[2:]))[-n_samples:]

            observations: Any = rollout.observations
            recent = (
                {k: flat(v) for k, v in observations.items()} if isinstance(observations, dict) else flat(observations)
            )
            distribution = policy.get_distribution(obs_as_tensor(recent, model.device))
            entropy = distribution.entropy()
            if entropy is None:  # no closed form (squashed Gaussians): estimate from samples
                entropy = -distribution.log_prob(distribution.sample())
            return float(entropy.mean())
    return math.nan


def _advisors_in(env: VecEnv) -> list[Advisor] | None:
    """The (uncached) advisors the env's advice wrappers ask, or None where they live in other processes."""
    found: list[Advisor] = []
    while isinstance(env, VecEnvWrapper):
        if hasattr(env, "advisor") and isinstance(env.advisor, Advisor):
            found.append(env.advisor)
        env = env.venv
    if isinstance(env, DummyVecEnv):
        for sub in env.envs:
            wrapper: Any = sub
            while hasattr(wrapper, "env"):
                if hasattr(wrapper, "base_advisor"):
                    found.append(wrapper.advisor)
                wrapper = wrapper.env
    elif not found:
        return None
    return [a.advisor if isinstance(a, CachedAdvisor) else a for a in found]


class VLMFineTuneCallback(BaseCallback):
    """
    COVR (Alg. 1): while the agent trains, keep D_f = {(teacher view o_t, executed action a_{r,t}, return g_t)};
    every ψ_c steps select samples by EDDF (eq. 5), weight them by RALW and fine-tune the advisor on them (eq. 6),
    clear D_f, and grow the interval, ``ψ_{c+1} = ψ_c + ψ_c · c`` (5000, 5000, 10000, 30000 … from ψ0 = 5000).

    Works with GuidedSAC, GuidedPPO and GuidedA2C (and any SB3 algorithm for the fine-tuning alone). The env must be
    wrapped in :class:`~sb3_vlm.wrappers.VLMAdviceWrapper` (or the VecEnv in
    :class:`~sb3_vlm.wrappers.VecVLMAdviceWrapper`) asking **this** advisor: it puts each teacher view in ``info``;
    after a round the same advisor object answers with the fine-tuned model at once. With ``SubprocVecEnv`` use the
    VecEnv-level wrapper, so that the advisor lives in this process.

    Choices (documented and tested): steps are counted as transitions (``num_timesteps``, all envs together); a
    round waits until D_f holds at least one finished episode's queried steps; EDDF's ``f(ε) = sigmoid(−ε)`` (see
    :func:`~sb3_vlm.finetune.selection.eddf_threshold`); a round whose backend fails keeps D_f for the next round
    and does not count towards ``start_guidance_after``; the cold start switches the algorithm's
    ``guidance_enabled`` off until ``start_guidance_after`` rounds have succeeded.

    :param advisor: the advisor to fine-tune (the one the env's advice wrapper asks)
    :param psi0: ψ_0, steps before the first round (COVR: 5000)
    :param lora: LoRA settings for an :class:`~sb3_vlm.advisors.hf.HFAdvisor` (default: COVR table 9)
    :param backend: who fine-tunes (default: :func:`~sb3_vlm.finetune.backends.backend_for` the advisor)
    :param start_guidance_after: cold start: successful rounds before the guidance loss is switched on (COVR: 2 on
        the highway, 4 on DMControl; 0: guidance from the start)
    :param gamma: discount of the returns-to-go (default: the algorithm's ``gamma``)
    :param save_dir: where each round's files go (``round_001/adapter`` …, ``rounds.jsonl``); default: the
        logger's folder + ``/vlm_finetune``, or ``./vlm_finetune/<time>`` when the logger has none
    :param max_samples: cap D_f by reservoir sampling (None: keep everything, as the paper)
    :param seed: seed of the reservoir sampling
    :param verbose: 1 prints a line per round
    """

    def __init__(
        self,
        advisor: Advisor,
        psi0: int = 5_000,
        lora: LoraSettings | None = None,
        backend: FineTuneBackend | None = None,
        start_guidance_after: int = 0,
        gamma: float | None = None,
        save_dir: str | Path | None = None,
        max_samples: int | None = None,
        seed: int | None = None,
        verbose: int = 0,
    ):
        super().__init__(verbose)
        if start_guidance_after < 0:
            raise ValueError(f"start_guidance_after must be >= 0, got {start_guidance_after}")
        # the cache needs no fine-tuning: it keys answers by the advisor's identity, which each round changes
        self.advisor = advisor.advisor if isinstance(advisor, CachedAdvisor) else advisor
        self.backend = backend if backend is not None else backend_for(self.advisor, lora)
        self.psi0 = psi0
        self._intervals: Iterator[int] = progressive_intervals(psi0)  # validates psi0
        self.psi = next(self._intervals)
        self.start_guidance_after = start_guidance_after
        self.gamma = gamma
        self.save_dir = None if save_dir is None else Path(save_dir)
        self.max_samples, self.seed = max_samples, seed
        self.collector: TrajectoryCollector | None = None
        self.steps_since_round = 0  # f_t
        self.rounds = 0  # c
        self.successful_rounds = 0
        self.failed_rounds = 0
        self.history: list[dict[str, Any]] = []
        self._warned_no_requests = False

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """The schedule and D_f, for :class:`~sb3_vlm.checkpoint.VLMCheckpointCallback` (the fine-tuned weights are
        in the round folders under ``save_dir``)."""
        return {
            "psi": self.psi,
            "rounds": self.rounds,
            "successful_rounds": self.successful_rounds,
            "failed_rounds": self.failed_rounds,
            "steps_since_round": self.steps_since_round,
            "history": list(self.history),
            "collector": self.collector,
            "save_dir": None if self.save_dir is None else str(self.save_dir),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the schedule and D_f of :meth:`state_dict`."""
        self.rounds, self.successful_rounds = state["rounds"], state["successful_rounds"]
        self.failed_rounds, self.steps_since_round = state["failed_rounds"], state["steps_since_round"]
        self.history, self.collector = list(state["history"]), state["collector"]
        self._intervals = progressive_intervals(self.psi0)
        self.psi = next(self._intervals)
        for _ in range(self.rounds):  # every round, failed or not, moves the schedule on by one
            self.psi = next(self._intervals)
        if self.psi != state["psi"]:
            raise ValueError(f"Checkpoint ψ = {state['psi']} does not follow from psi0 = {self.psi0}")
        if state.get("save_dir") and self.save_dir is None:
            self.save_dir = Path(state["save_dir"])

    # ------------------------------------------------------------------ SB3 hooks

    def _init_callback(self) -> None:
        gamma = self.gamma if self.gamma is not None else float(getattr(self.model, "gamma", 0.99))
        if self.collector is None or len(self.collector.episodes) != self.training_env.num_envs:
            # a second learn() call (reset_num_timesteps=False) keeps D_f and the schedule where they were
            self.collector = TrajectoryCollector(self.training_env.num_envs, gamma, self.max_samples, self.seed)
        if self.save_dir is None:
            folder = self.logger.get_dir() if self.logger is not None else None
            self.save_dir = (
                Path(folder) / "vlm_finetune" if folder else Path("vlm_finetune") / time.strftime("%Y%m%d-%H%M%S")
            )
        self.save_dir.mkdir(parents=True, exist_ok=True)
        if self.start_guidance_after > self.successful_rounds:
            if not hasattr(self.model, "guidance_enabled"):
                raise TypeError(
                    f"start_guidance_after needs a guided algorithm (GuidedSAC, GuidedPPO, GuidedA2C), got "
                    f"{type(self.model).__name__}"
                )
            self.model.guidance_enabled = False  # type: ignore[attr-defined]
        advisors = _advisors_in(self.training_env)
        if advisors is None:
            logger.warning(
                "VLMFineTuneCallback cannot see the env's advisor (SubprocVecEnv?): fine-tuning changes the advisor in "
                "this process only. Wrap the VecEnv in VecVLMAdviceWrapper so that the advice comes from it."
            )
        elif not any(a is self.advisor for a in advisors):
            logger.warning(
                "VLMFineTuneCallback: the env's advice wrapper asks %s, not the advisor being fine-tuned (%s); "
                "the advice will not change after the rounds.",
                [a.identity for a in advisors] or "no advisor (no VLMAdviceWrapper found)",
                self.advisor.identity,
            )

    def _on_step(self) -> bool:
        assert self.collector is not None
        infos, dones = self.locals["infos"], self.locals["dones"]
        actions = self.locals.get("clipped_actions", self.locals["actions"])  # env units (on-policy clips them)
        vec_normalize = unwrap_vec_normalize(self.training_env)
        rewards = vec_normalize.get_original_reward() if vec_normalize is not None else self.locals["rewards"]
        self.collector.add(infos, actions, rewards, dones)
        self.steps_since_round += self.training_env.num_envs
        if self.steps_since_round >= self.psi:
            if len(self.collector) > 0:
                self._round()
            elif not self._warned_no_requests and self.collector.n_episodes > 0:
                self._warned_no_requests = True
                logger.warning(
                    "VLMFineTuneCallback: episodes ended but none of their steps carried a teacher view ('vlm_request' "
                    "in info); wrap the env in VLMAdviceWrapper. The round waits."
                )
        return True

    # ------------------------------------------------------------------ one round

    def _round(self) -> None:
        assert self.collector is not None and self.save_dir is not None
        start = time.perf_counter()
        entropy = policy_entropy(self.model)
        returns = self.collector.returns()
        # unknown entropy (nothing to measure on): ε = 0, f = 1/2, the middle of the range
        epsilon = 0.0 if math.isnan(entropy) else entropy
        selected = eddf_select(returns, epsilon)
        tau = eddf_threshold(zscore(returns), epsilon)  # logged with the round
        weights = ralw_weights(returns[selected])
        samples = self.collector.samples
        examples = [
            Example(samples[i].request, samples[i].action, float(w)) for i, w in zip(selected, weights, strict=True)
        ]
        self.rounds += 1
        round_dir = self.save_dir / f"round_{self.rounds:03d}"
        if not any(ex.weight > 0 for ex in examples):
            result = FineTuneResult(ok=False, message="no sample above the EDDF threshold with a positive weight")
            failed = False  # nothing to learn is not a failure: D_f is cleared as after any round
        else:
            round_dir.mkdir(parents=True, exist_ok=True)
            try:
                result = self.backend.finetune(examples, round_dir)
            except Exception as exc:  # a failed round must not lose the run
                logger.warning("VLMFineTuneCallback: round %d failed: %r", self.rounds, exc)
                result = FineTuneResult(ok=False, message=repr(exc))
            failed = not result.ok
        if failed:
            self.failed_rounds += 1
        else:
            self.collector.clear()  # Alg. 1, line 16 (a failed round keeps D_f for the next one)
        if result.ok:
            self.successful_rounds += 1
        if self.successful_rounds >= self.start_guidance_after and hasattr(self.model, "guidance_enabled"):
            self.model.guidance_enabled = True  # type: ignore[attr-defined]
        self.steps_since_round = 0
        self.psi = next(self._intervals)
        record: dict[str, Any] = {
            "round": self.rounds,
            "timesteps": self.num_timesteps,
            "df_size": int(returns.size),
            "entropy": entropy,
            "threshold": tau,
            "selected": int(selected.size),
            "mean_weight": float(weights.mean()) if weights.size else 0.0,
            "ok": result.ok,
            "loss": result.loss,
            "first_loss": result.first_loss,
            "examples": result.examples,
            "version": result.version,
            "message": result.message,
            "seconds": time.perf_counter() - start,
            "next_interval": self.psi,
            "guidance_enabled": bool(getattr(self.model, "guidance_enabled", True)),
        }
        self.history.append(record)
        with open(self.save_dir / "rounds.jsonl", "a") as f:
            f.write(json.dumps(record, default=str) + "\n")
        for key in ("round", "df_size", "threshold", "selected", "mean_weight", "loss", "entropy", "seconds"):
            self.logger.record(f"covr/{key}", record[key])
        self.logger.record("covr/failed_rounds", self.failed_rounds)
        self.logger.record("covr/guidance_enabled", int(record["guidance_enabled"]))
        if self.verbose:
            print(
                f"COVR round {self.rounds}: |D_f|={record['df_size']} selected={record['selected']} "
                f"tau={tau:.3f} mean_w={record['mean_weight']:.3f} loss={result.loss:.4f} ok={result.ok} "
                f"{record['seconds']:.1f}s {result.message}"
            )
