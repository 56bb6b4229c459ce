"""What GuidedPPO and GuidedA2C share: advised rollout collection and LVLM2P's distillation term."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import DictRolloutBuffer, RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.type_aliases import MaybeCallback, PyTorchObs
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv

from sb3_vlm.advice import advice_batch_from_infos, pending_in_infos
from sb3_vlm.buffers import AdvisedDictRolloutBuffer, AdvisedRolloutBuffer
from sb3_vlm.guidance.distill import (
    advised_action_nll,
    continuous_agreement,
    kl_distill_loss,
    teacher_agreement,
    teacher_targets,
)
from sb3_vlm.guidance.schedules import CoefSchedule, as_coef_schedule
from sb3_vlm.guidance.trust import (
    TrustEstimator,
    TrustSettings,
    fade_factor,
    followed_continuous,
    followed_discrete,
    imitation_cap,
    row_gate,
)
from sb3_vlm.wrappers.selection import bind_learner

#: the default λ of GuidedPPO / GuidedA2C: the *most* weight the teacher gets, reached only once the run's evidence
#: has raised the trust τ to 1 (λ · τ starts at 0.2). Chosen by measurement (README, "Trust that adapts"): without the
#: trust's imitation cap λ = 1 let a wrong teacher be copied before any reward could expose it and 0.2 was the safe
#: choice; with the cap, λ = 1 is as safe and faster with a good teacher
DEFAULT_TEACHER_COEF = 1.0


def evaluate_actions_with_distribution(
    policy: ActorCriticPolicy, obs: PyTorchObs, actions: th.Tensor
) -> tuple[th.Tensor, th.Tensor, th.Tensor | None, Distribution]:
    """
    ``ActorCriticPolicy.evaluate_actions`` that also returns the action distribution, so the distillation term needs
    no second forward pass. Adapted line for line from SB3's ``ActorCriticPolicy.evaluate_actions``.
    """
    features = policy.extract_features(obs)
    if policy.share_features_extractor:
        latent_pi, latent_vf = policy.mlp_extractor(features)
    else:
        pi_features, vf_features = features
        latent_pi = policy.mlp_extractor.forward_actor(pi_features)
        latent_vf = policy.mlp_extractor.forward_critic(vf_features)
    distribution = policy._get_action_dist_from_latent(latent_pi)
    log_prob = distribution.log_prob(actions)
    values = policy.value_net(latent_vf)
    entropy = distribution.entropy()
    return values, log_prob, entropy, distribution


class GuidedOnPolicyMixin:
    """
    Mixin for SB3 on-policy algorithms (put it before ``PPO`` / ``A2C`` in the bases).

    - stores each step's advice (``info[advice_key]``) in an advised rollout buffer, aligned with the observation the
      action was taken on;
    - provides :meth:`_distill_loss`, LVLM2P eq. 1's ``λ · D_KL(π_T ‖ π_θ)`` over valid rows (discrete actions), or
      ``−λ · log π_θ(a_v|s)`` for Box actions;
    - with non-blocking advice, waits once the rollout is collected (at most ``advice_wait`` seconds) for the answers
      still missing; rows whose answer misses the deadline stay masked;
    - with ``trust`` (default), weighs the term by an adaptive trust τ and a per-state gate computed from each
      rollout's own advantages (:mod:`sb3_vlm.guidance.trust`);
    - logs ``train/distill_loss``, ``train/teacher_coef`` (the effective ``λ · τ``), ``train/teacher_trust``,
      ``train/trust_evidence``, ``train/advice_followed_frac``, ``train/advice_gated_frac``,
      ``train/advice_valid_frac``, ``train/teacher_agreement`` and, with non-blocking advice,
      ``train/advice_late`` / ``train/advice_missed`` (answers that arrived after their step / after the deadline,
      in the last rollout).
    """

    # provided by the SB3 base class
    action_space: spaces.Space
    observation_space: spaces.Space
    policy: Any
    rollout_buffer: RolloutBuffer
    rollout_buffer_class: type[RolloutBuffer] | None
    logger: Any
    num_timesteps: int
    _current_progress_remaining: float
    _last_obs: Any
    _last_episode_starts: Any

    teacher_coef: float | CoefSchedule
    teacher_target: str
    advice_key: str
    advice_wait: float
    _n_guided_updates: int
    guidance_enabled: bool
    trust: TrustSettings | None
    trust_estimator: TrustEstimator | None

    def _init_guidance(
        self,
        teacher_coef: float | CoefSchedule,
        teacher_target: str,
        advice_key: str,
        advice_wait: float,
        trust: bool | TrustSettings = True,
    ) -> None:
        if teacher_target not in ("soft", "hard"):
            raise ValueError(f"teacher_target must be 'soft' or 'hard', got {teacher_target!r}")
        if not advice_wait >= 0:
            raise ValueError(f"advice_wait must be >= 0 seconds, got {advice_wait}")
        self.advice_wait = float(advice_wait)
        self._advice_late = self._advice_missed = 0
        self._warned_missed = False
        as_coef_schedule(teacher_coef)  # validate early, before any model is built
        self.teacher_coef = teacher_coef
        self.teacher_target = teacher_target
        self.advice_key = advice_key
        self._n_guided_updates = 0
        if not isinstance(trust, (bool, TrustSettings)):
            raise TypeError(f"trust must be a bool or a TrustSettings, got {type(trust).__name__}")
        self.trust = TrustSettings() if trust is True else trust or None
        self.trust_estimator = TrustEstimator(self.trust) if self.trust is not None else None
        self._trust_stats: dict[str, float] = {}
        #: set False to hold the distillation term off (COVR's cold start before the first fine-tuning rounds)
        self.guidance_enabled = True
        self._seen_advice = False
        self._warned_no_advice = False
        #: the rollout buffer while collect_rollouts runs (where _update_info_buffer puts each step's advice)
        self._collecting: RolloutBuffer | None = None

    def _excluded_save_params(self) -> list[str]:
        # a save from a callback mid-rollout must not pickle the rollout buffer a second time
        return [*super()._excluded_save_params(), "_collecting"]  # type: ignore[misc]

    def _setup_advised_buffer_class(self) -> None:
        if not isinstance(self.action_space, (spaces.Discrete, spaces.Box)):
            raise NotImplementedError(
                f"{type(self).__name__} supports Discrete (KL distillation) and Box (advised-action NLL) action spaces,"
                f" not {type(self.action_space).__name__}"
            )
        dict_obs = isinstance(self.observation_space, spaces.Dict)
        if self.rollout_buffer_class is None or self.rollout_buffer_class in (RolloutBuffer, DictRolloutBuffer):
            self.rollout_buffer_class = AdvisedDictRolloutBuffer if dict_obs else AdvisedRolloutBuffer
        elif not issubclass(self.rollout_buffer_class, (AdvisedRolloutBuffer, AdvisedDictRolloutBuffer)):
            raise TypeError(
                f"{type(self).__name__} needs an advised rollout buffer, got {self.rollout_buffer_class.__name__}"
            )

    @property
    def teacher_trust(self) -> float:
        """τ, the trust in the teacher (1.0 without adaptive trust: LVLM2P's fixed λ)."""
        return self.trust_estimator.trust if self.trust_estimator is not None else 1.0

    @property
    def current_imitation_cap(self) -> float | None:
        """The trust's imitation cap ``c(τ)`` (:func:`~sb3_vlm.guidance.trust.imitation_cap`); None without one."""
        if self.trust is None or not isinstance(self.action_space, spaces.Discrete):
            return None
        return imitation_cap(self.teacher_trust, self.trust, int(self.action_space.n))

    @property
    def current_teacher_coef(self) -> float:
        if not self.guidance_enabled:
            return 0.0
        schedule = as_coef_schedule(self.teacher_coef)
        coef = float(schedule(self._n_guided_updates, self._current_progress_remaining)) * self.teacher_trust
        if self.trust is not None:
            coef *= fade_factor(self._current_progress_remaining, self.trust)
        return coef

    def _setup_learn(
        self,
        total_timesteps: int,
        callback: MaybeCallback = None,
        reset_num_timesteps: bool = True,
        tb_log_name: str = "run",
        progress_bar: bool = False,
    ) -> tuple[int, BaseCallback]:
        out = super()._setup_learn(  # type: ignore[misc]
            total_timesteps, callback, reset_num_timesteps, tb_log_name, progress_bar
        )
        bind_learner(getattr(self, "env", None), self)  # the advice wrappers' query selectors may ask the policy
        return out

    def collect_rollouts(
        self,
        env: VecEnv,
        callback: BaseCallback,
        rollout_buffer: RolloutBuffer,
        n_rollout_steps: int,
    ) -> bool:
        """
        SB3's ``OnPolicyAlgorithm.collect_rollouts`` with two hooks: each step's advice goes into the advised buffer
        from :meth:`_update_info_buffer` (which SB3 calls once per step, just before ``rollout_buffer.add``), and once
        the rollout is collected (before the callbacks' ``on_rollout_end``) the answers still missing are waited for
        and the trust is updated from the rollout's advantages.
        """
        assert isinstance(rollout_buffer, (AdvisedRolloutBuffer, AdvisedDictRolloutBuffer))
        self._collecting = rollout_buffer
        try:
            done = super().collect_rollouts(  # type: ignore[misc]
                env, _BeforeRolloutEnd(callback, lambda: self._finish_rollout(rollout_buffer)), rollout_buffer,
                n_rollout_steps,
            )  # fmt: skip
        finally:
            self._collecting = None
        if done:
            self._warn_if_no_advice()
        return done

    def _update_info_buffer(self, infos: list[dict[str, Any]], dones: np.ndarray | None = None) -> None:
        """SB3's episode bookkeeping, and during a rollout the step's advice for the row about to be added (info[t]
        carries the advice for ``_last_obs``, the wrapper's time alignment)."""
        super()._update_info_buffer(infos, dones)  # type: ignore[misc]
        buffer = getattr(self, "_collecting", None)  # None outside a rollout (and in models saved before it)
        if buffer is None:
            return
        self._seen_advice = self._seen_advice or any(self.advice_key in info for info in infos)
        buffer.add_advice(
            *advice_batch_from_infos(infos, self.action_space, self.advice_key),  # type: ignore[attr-defined]
            pending=pending_in_infos(infos, self.advice_key),
        )

    def _finish_rollout(self, rollout_buffer: RolloutBuffer) -> None:
        """Only now, and only for the answers still missing, does the rollout wait for its teacher; then the
        rollout's evidence about the advice moves the trust."""
        self._advice_late, self._advice_missed = rollout_buffer.wait_for_advice(self.advice_wait)  # type: ignore[attr-defined]
        self._warn_if_advice_missed(rollout_buffer)
        self._update_trust(rollout_buffer)

    def _update_trust(self, rollout_buffer: RolloutBuffer) -> None:
        """
        Move τ by the rollout's evidence (the t statistic of the importance-weighted advice contrast of the GAE
        advantages, :func:`~sb3_vlm.guidance.trust.advice_evidence`) and set each row's distillation weight (0 where
        its own advantage contradicts the advice).
        """
        buf: Any = rollout_buffer
        if self.trust is None or self.trust_estimator is None:
            return
        valid = buf.advice_valid.reshape(-1)
        if not (valid > 0).any():
            self._trust_stats = {}
            return
        advantages = buf.advantages.reshape(-1)
        targets = buf.advice_targets.reshape(valid.size, -1)
        if isinstance(self.action_space, spaces.Discrete):
            followed, informative = followed_discrete(buf.actions.reshape(-1), targets, valid)
            # p_t = π(a_v|s_t) of the teacher's top action, from the collecting policy (train() has not run yet)
            probs = self._policy_outputs(buf, lambda dist: dist.distribution.probs)
            follow_prob: np.ndarray | float = probs[np.arange(valid.size), targets.argmax(axis=1)]
        else:
            actions = buf.actions.reshape(valid.size, -1)
            means = self._policy_outputs(buf, lambda dist: dist.mode())
            followed, informative = followed_continuous(actions, means, self._advice_in_action_units(targets), valid)
            follow_prob = 0.5
        self.trust_estimator.observe(advantages, followed, informative, follow_prob)
        weight = row_gate(advantages, followed, informative, valid, self.trust.row_margin)
        discrete = isinstance(self.action_space, spaces.Discrete)
        scale = 1.0 if discrete else self._advice_scale()
        diversity = self.trust_estimator.observe_advice(targets[informative], discrete, scale)
        if not self.trust_estimator.imitates:
            weight[:] = 0.0  # advice that ignores the view: nothing to imitate (trust module docstring)
        buf.advice_weight = weight.reshape(buf.advice_valid.shape)
        n_informative = max(int(informative.sum()), 1)
        self._trust_stats = {
            "trust_evidence": self.trust_estimator.last_evidence,
            "advice_followed_frac": float(followed.sum()) / n_informative,
            "advice_gated_frac": float(((weight == 0) & (valid > 0)).sum()) / max(int((valid > 0).sum()), 1),
            "advice_diversity": diversity,
        }

    def _advice_scale(self) -> np.ndarray:
        """Box: the action range per coordinate, 1 where unbounded (the unit of :func:`advice_diversity`'s tol)."""
        low, high = self.action_space.low, self.action_space.high  # type: ignore[attr-defined]
        span = np.asarray(high, dtype=np.float64) - np.asarray(low, dtype=np.float64)
        return np.where(np.isfinite(span) & (span > 0), span, 1.0).reshape(-1)

    def _advice_in_action_units(self, targets: Any) -> Any:
        """
        Box advice (env units) in the units of the policy's distribution and stored actions: [-1, 1] when the policy
        squashes (gSDE, as SB3 scales actions), else unchanged. Takes numpy arrays or tensors.
        """
        if not self.policy.squash_output:
            return targets
        low, high = self.action_space.low, self.action_space.high  # type: ignore[attr-defined]
        if isinstance(targets, th.Tensor):
            low = th.as_tensor(low, device=targets.device, dtype=targets.dtype)
            high = th.as_tensor(high, device=targets.device, dtype=targets.dtype)
        return 2.0 * (targets - low) / (high - low) - 1.0

    def _policy_outputs(self, buf: Any, fn: Any, chunk: int = 4096) -> np.ndarray:
        """``fn(distribution)`` of the collecting policy for every row of the rollout, as (rows, k) (train() has not
        changed the policy yet, so this is the policy that acted)."""
        obs = buf.observations
        n = buf.buffer_size * buf.n_envs

        def rows(i: int) -> Any:
            if isinstance(obs, dict):
                return {k: v.reshape(n, *v.shape[2:])[i : i + chunk] for k, v in obs.items()}
            return obs.reshape(n, *obs.shape[2:])[i : i + chunk]

        out = []
        with th.no_grad():
            for i in range(0, n, chunk):
                dist = self.policy.get_distribution(obs_as_tensor(rows(i), self.policy.device))
                values = fn(dist).cpu().numpy()
                out.append(values.reshape(values.shape[0], -1))
        return np.concatenate(out)

    def _warn_if_advice_missed(self, rollout_buffer: RolloutBuffer) -> None:
        rows = rollout_buffer.buffer_size * rollout_buffer.n_envs
        if self._advice_missed > rows // 4 and not self._warned_missed:
            self._warned_missed = True
            warnings.warn(
                f"{self._advice_missed} of {rows} rows of a rollout got no advice because the answer missed "
                f"advice_wait={self.advice_wait} s (non-blocking advice); raise advice_wait towards the VLM's latency "
                "(see train/advice_missed)",
                stacklevel=3,
            )

    def _warn_if_no_advice(self) -> None:
        if not self._seen_advice and not self._warned_no_advice:
            self._warned_no_advice = True
            warnings.warn(
                f"{type(self).__name__} received no advice (no '{self.advice_key}' key in any info): it trains as its "
                "unguided base algorithm. Wrap the env with sb3_vlm.wrappers.VLMAdviceWrapper.",
                stacklevel=2,
            )

    def _distill_loss(
        self,
        distribution: Distribution,
        advice_targets: th.Tensor,
        advice_valid: th.Tensor,
        advice_weight: th.Tensor | None = None,
    ) -> tuple[th.Tensor, th.Tensor]:
        """
        The distillation term (without λ) and the teacher agreement of one minibatch; ``advice_weight`` are the
        rows' weights (the trust's per-state gate).

        Discrete: ``D_KL(target ‖ π_θ(·|s))`` with ``target`` the soft teacher probabilities or their one-hot argmax;
        rows past the trust's imitation cap are pulled back to it instead
        (:func:`~sb3_vlm.guidance.distill.capped_rows`).
        Box: ``−log π_θ(a_v|s)`` of the advised action (in env units, as PPO's Gaussian is), with the std held
        constant under the cap.
        """
        if isinstance(self.action_space, spaces.Discrete):
            log_probs = distribution.distribution.logits  # type: ignore[union-attr]  # normalised log-probs
            targets = teacher_targets(advice_targets, self.teacher_target)
            loss = kl_distill_loss(targets, log_probs, advice_valid, advice_weight, cap=self.current_imitation_cap)
            return loss, teacher_agreement(advice_targets, log_probs, advice_valid)
        assert isinstance(self.action_space, spaces.Box)
        advised = self._advice_in_action_units(advice_targets)
        gaussian = getattr(distribution, "distribution", None)
        if (
            self.trust is not None
            and self.trust.cap
            and not self.policy.squash_output
            and isinstance(gaussian, th.distributions.Normal)
        ):
            # the Box counterpart of the imitation cap: imitation moves the mean but never narrows the exploration
            # noise (the std is held constant in the NLL), so no teacher, trusted or not, can collapse the
            # exploration that would expose it; the policy gradient alone sets the std. (Scaling the std's gradient
            # by τ is not enough: Adam normalises the scale away, as we measured.)
            scaled = th.distributions.Normal(gaussian.mean, gaussian.stddev.detach())
            advised_log_prob = scaled.log_prob(advised).sum(dim=-1)
        else:
            advised_log_prob = distribution.log_prob(advised)
        # agreement: the policy mean within 10 % of the action range of the advice, in the policy's units
        span = 2.0 if self.policy.squash_output else self._advice_scale()
        scale = th.as_tensor(span, dtype=advised.dtype, device=advised.device)
        agreement = continuous_agreement(distribution.mode(), advised, advice_valid, scale)
        return advised_action_nll(advised_log_prob, advice_valid, advice_weight), agreement

    def _record_guidance(self, distill_losses: list[float], agreements: list[float], coef: float) -> None:
        valid = self.rollout_buffer.advice_valid  # type: ignore[attr-defined]
        self.logger.record("train/distill_loss", float(np.mean(distill_losses)) if distill_losses else 0.0)
        self.logger.record("train/teacher_coef", coef)
        self.logger.record("train/advice_valid_frac", float(np.mean(valid)))
        self.logger.record("train/teacher_agreement", float(np.mean(agreements)) if agreements else 0.0)
        if self.trust is not None:
            self.logger.record("train/teacher_trust", self.teacher_trust)
            if self.current_imitation_cap is not None:
                self.logger.record("train/imitation_cap", self.current_imitation_cap)
            for key, value in self._trust_stats.items():
                self.logger.record(f"train/{key}", value)
        if self._advice_late or self._advice_missed:
            self.logger.record("train/advice_late", self._advice_late)
            self.logger.record("train/advice_missed", self._advice_missed)
        # schedules (e.g. kickstarting's decay) count guided updates only, so a cold start does not eat into them
        self._n_guided_updates += int(self.guidance_enabled)


__all__ = ["GuidedOnPolicyMixin", "evaluate_actions_with_distribution"]


class _BeforeRolloutEnd(BaseCallback):
    """Passes every call on to ``callback``, running ``before()`` first at the end of a rollout: the seam through
    which the guided algorithms finish a rollout (advice, trust) inside SB3's own ``collect_rollouts``."""

    def __init__(self, callback: BaseCallback, before: Any):
        super().__init__()
        self.callback, self.before = callback, before

    def update_locals(self, locals_: dict[str, Any]) -> None:
        self.callback.update_locals(locals_)

    def on_rollout_start(self) -> None:
        self.callback.on_rollout_start()

    def on_step(self) -> bool:
        return self.callback.on_step()

    def on_rollout_end(self) -> None:
        self.before()
        self.callback.on_rollout_end()

    def _on_step(self) -> bool:  # never called: on_step is passed on whole
        return True
