"""GuidedPPO: PPO with LVLM2P's knowledge distillation from a (V)LM teacher."""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.type_aliases import GymEnv, Schedule
from stable_baselines3.common.utils import explained_variance
from torch.nn import functional as F

from sb3_vlm.advice import ADVICE_INFO_KEY
from sb3_vlm.common.on_policy import DEFAULT_TEACHER_COEF, GuidedOnPolicyMixin, evaluate_actions_with_distribution
from sb3_vlm.guidance.schedules import CoefSchedule
from sb3_vlm.guidance.trust import TrustSettings

SelfGuidedPPO = TypeVar("SelfGuidedPPO", bound="GuidedPPO")


class GuidedPPO(GuidedOnPolicyMixin, PPO):
    """
    Proximal Policy Optimization with a distillation term toward a vision-language-model teacher (LVLM2P).

    Paper: "Sample Efficient Reinforcement Learning via Large Vision Language Model Distillation" (Lee et al., 2025),
    https://arxiv.org/abs/2503.16588 (code: https://github.com/i22024/LVLM2P). The loss is eq. 1:
    ``L(π_θ) = L_PPO(π_θ) + λ · D_KL(π_T(·|o, ℓ) ‖ π_θ(·|s))``, averaged over the rows that carry advice.
    The advice comes from :class:`~sb3_vlm.wrappers.VLMAdviceWrapper` through ``info``; the saved policy is a plain
    PPO policy that never needs the teacher.

    All PPO arguments are those of :class:`stable_baselines3.PPO`. Extra arguments:

    :param teacher_coef: λ, the most weight the teacher gets: a float or a :class:`~sb3_vlm.guidance.CoefSchedule`
        of the number of updates. With ``trust`` the term's weight is ``λ · τ``, τ ∈ [0, 1] the trust the run's own
        evidence puts in the teacher (starting at 0.2), so λ is reached only by a teacher whose advice is shown to
        pay (default 1.0, the weight trust is tuned for; LVLM2P's fixed λ is 0.01: ``trust=False, teacher_coef=0.01``)
    :param trust: adaptive trust (:mod:`sb3_vlm.guidance.trust`): ``True`` (default settings), a
        :class:`~sb3_vlm.guidance.TrustSettings`, or ``False`` for LVLM2P's fixed λ. After each rollout, τ moves by
        the t statistic of an importance-weighted contrast of GAE advantages between steps that took the advised
        action and steps that did not, rows whose own advantage contradicts the advice drop out of the term, and
        (discrete actions) imitation may raise ``π(a_v|s)`` no higher than ``c(τ) = 1/n + (1 − 1/n) · τ``; the
        weight fades to 0 over the second half of ``learn()``, so the final policy is RL's own
    :param teacher_target: ``"soft"`` distils the teacher's probabilities (LVLM2P), ``"hard"`` their one-hot argmax
        (the paper's ablation). Ignored for Box action spaces, which use ``−log π_θ(a_v|s)`` of the advised action.
    :param advice_key: info key the advice wrapper writes (default ``"vlm_advice"``)
    :param advice_wait: with non-blocking advice, the most seconds a collected rollout waits for answers still
        missing; rows whose answer comes later stay masked (the answer still reaches the cache). Default 0: training
        never waits, since waiting costs about one latency per rollout while most rows are advised anyway once views
        repeat (the README's non-blocking advice table); raise it towards the VLM's latency when views rarely repeat
        (pixels, continuous control) or rollouts are short (A2C)
    """

    def __init__(
        self,
        policy: str | type[ActorCriticPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 3e-4,
        n_steps: int = 2048,
        batch_size: int = 64,
        n_epochs: int = 10,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        clip_range: float | Schedule = 0.2,
        clip_range_vf: float | Schedule | None = None,
        normalize_advantage: bool = True,
        ent_coef: float = 0.0,
        vf_coef: float = 0.5,
        max_grad_norm: float = 0.5,
        use_sde: bool = False,
        sde_sample_freq: int = -1,
        rollout_buffer_class: type[RolloutBuffer] | None = None,
        rollout_buffer_kwargs: dict[str, Any] | None = None,
        target_kl: float | None = None,
        teacher_coef: float | CoefSchedule = DEFAULT_TEACHER_COEF,
        trust: bool | TrustSettings = True,
        teacher_target: str = "soft",
        advice_key: str = ADVICE_INFO_KEY,
        advice_wait: float = 0.0,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        _init_setup_model: bool = True,
    ):
        self._init_guidance(teacher_coef, teacher_target, advice_key, advice_wait, trust)
        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            n_steps=n_steps,
            batch_size=batch_size,
            n_epochs=n_epochs,
            gamma=gamma,
            gae_lambda=gae_lambda,
            clip_range=clip_range,
            clip_range_vf=clip_range_vf,
            normalize_advantage=normalize_advantage,
            ent_coef=ent_coef,
            vf_coef=vf_coef,
            max_grad_norm=max_grad_norm,
            use_sde=use_sde,
            sde_sample_freq=sde_sample_freq,
            rollout_buffer_class=rollout_buffer_class,
            rollout_buffer_kwargs=rollout_buffer_kwargs,
            target_kl=target_kl,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            policy_kwargs=policy_kwargs,
            verbose=verbose,
            seed=seed,
            device=device,
            _init_setup_model=_init_setup_model,
        )

    def _setup_model(self) -> None:
        self._setup_advised_buffer_class()
        super()._setup_model()

    def train(self) -> None:
        """
        Adapted from ``PPO.train`` (SB3 2.x). Additions, marked ``sb3-vlm``: one forward pass also returns the
        action distribution, and the loss gets ``λ · D_KL(π_T ‖ π_θ)`` (LVLM2P eq. 1) over rows with advice.
        """
        # Switch to train mode (this affects batch norm / dropout)
        self.policy.set_training_mode(True)
        # Update optimizer learning rate
        self._update_learning_rate(self.policy.optimizer)
        # Compute current clip range
        clip_range = self.clip_range(self._current_progress_remaining)  # type: ignore[operator]
        # Optional: clip range for the value function
        if self.clip_range_vf is not None:
            clip_range_vf = self.clip_range_vf(self._current_progress_remaining)  # type: ignore[operator]
        teacher_coef = self.current_teacher_coef  # sb3-vlm: λ for this update

        entropy_losses = []
        pg_losses, value_losses = [], []
        clip_fractions = []
        distill_losses, agreements = [], []  # sb3-vlm

        continue_training = True
        # train for n_epochs epochs
        for epoch in range(self.n_epochs):
            approx_kl_divs = []
            # Do a complete pass on the rollout buffer
            for rollout_data in self.rollout_buffer.get(self.batch_size):
                actions = rollout_data.actions
                if isinstance(self.action_space, spaces.Discrete):
                    # Convert discrete action from float to long
                    actions = rollout_data.actions.long().flatten()

                values, log_prob, entropy, distribution = evaluate_actions_with_distribution(
                    self.policy, rollout_data.observations, actions
                )
                values = values.flatten()
                # Normalize advantage
                advantages = rollout_data.advantages
                # Normalization does not make sense if mini batchsize == 1, see GH issue #325
                if self.normalize_advantage and len(advantages) > 1:
                    advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)

                # ratio between old and new policy, should be one at the first iteration
                ratio = th.exp(log_prob - rollout_data.old_log_prob)

                # clipped surrogate loss
                policy_loss_1 = advantages * ratio
                policy_loss_2 = advantages * th.clamp(ratio, 1 - clip_range, 1 + clip_range)
                policy_loss = -th.min(policy_loss_1, policy_loss_2).mean()

                # Logging
                pg_losses.append(policy_loss.item())
                clip_fraction = th.mean((th.abs(ratio - 1) > clip_range).float()).item()
                clip_fractions.append(clip_fraction)

                if self.clip_range_vf is None:
                    # No clipping
                    values_pred = values
                else:
                    # Clip the difference between old and new value
                    # NOTE: this depends on the reward scaling
                    values_pred = rollout_data.old_values + th.clamp(
                        values - rollout_data.old_values, -clip_range_vf, clip_range_vf
                    )
                # Value loss using the TD(gae_lambda) target
                value_loss = F.mse_loss(rollout_data.returns, values_pred)
                value_losses.append(value_loss.item())

                # Entropy loss favor exploration
                if entropy is None:
                    # Approximate entropy when no analytical form
                    entropy_loss = -th.mean(-log_prob)
                else:
                    entropy_loss = -th.mean(entropy)

                entropy_losses.append(entropy_loss.item())

                # sb3-vlm: LVLM2P eq. 1, distillation toward the teacher on rows with advice
                distill_loss, agreement = self._distill_loss(
                    distribution,
                    rollout_data.advice_targets,  # type: ignore[attr-defined]
                    rollout_data.advice_valid,  # type: ignore[attr-defined]
                    rollout_data.advice_weight,  # type: ignore[attr-defined]
                )
                distill_losses.append(distill_loss.item())
                agreements.append(agreement.item())

                loss = (
                    policy_loss
                    + self.ent_coef * entropy_loss
                    + self.vf_coef * value_loss
                    + teacher_coef * distill_loss  # sb3-vlm
                )

                # Calculate approximate form of reverse KL Divergence for early stopping
                # see issue #417: https://github.com/DLR-RM/stable-baselines3/issues/417
                # and discussion in PR #419: https://github.com/DLR-RM/stable-baselines3/pull/419
                # and Schulman blog: http://joschu.net/blog/kl-approx.html
                with th.no_grad():
                    log_ratio = log_prob - rollout_data.old_log_prob
                    approx_kl_div = th.mean((th.exp(log_ratio) - 1) - log_ratio).cpu().numpy()
                    approx_kl_divs.append(approx_kl_div)

                if self.target_kl is not None and approx_kl_div > 1.5 * self.target_kl:
                    continue_training = False
                    if self.verbose >= 1:
                        print(f"Early stopping at step {epoch} due to reaching max kl: {approx_kl_div:.2f}")
                    break

                # Optimization step
                self.policy.optimizer.zero_grad()
                loss.backward()
                # Clip grad norm
                th.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
                self.policy.optimizer.step()

            self._n_updates += 1
            if not continue_training:
                break

        explained_var = explained_variance(self.rollout_buffer.values.flatten(), self.rollout_buffer.returns.flatten())

        # Logs
        self.logger.record("train/entropy_loss", np.mean(entropy_losses))
        self.logger.record("train/policy_gradient_loss", np.mean(pg_losses))
        self.logger.record("train/value_loss", np.mean(value_losses))
        self.logger.record("train/approx_kl", np.mean(approx_kl_divs))
        self.logger.record("train/clip_fraction", np.mean(clip_fractions))
        self.logger.record("train/loss", loss.item())
        self.logger.record("train/explained_variance", explained_var)
        if hasattr(self.policy, "log_std"):
            self.logger.record("train/std", th.exp(self.policy.log_std).mean().item())

        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/clip_range", clip_range)
        if self.clip_range_vf is not None:
            self.logger.record("train/clip_range_vf", clip_range_vf)
        self._record_guidance(distill_losses, agreements, teacher_coef)  # sb3-vlm

    def learn(  # type: ignore[override]
        self: SelfGuidedPPO,
        total_timesteps: int,
        callback: Any = None,
        log_interval: int = 1,
        tb_log_name: str = "GuidedPPO",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfGuidedPPO:
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )
