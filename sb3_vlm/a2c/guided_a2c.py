"""GuidedA2C: A2C with LVLM2P's knowledge distillation from a (V)LM teacher."""

from __future__ import annotations

from typing import Any, TypeVar

import torch as th
from gymnasium import spaces
from stable_baselines3 import A2C
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.type_aliases import GymEnv, Schedule
from stable_baselines3.common.utils import explained_variance
from torch.nn import functional as F

from sb3_vlm.advice import ADVICE_INFO_KEY
from sb3_vlm.common.on_policy import DEFAULT_TEACHER_COEF, GuidedOnPolicyMixin, evaluate_actions_with_distribution
from sb3_vlm.guidance.schedules import CoefSchedule
from sb3_vlm.guidance.trust import TrustSettings

SelfGuidedA2C = TypeVar("SelfGuidedA2C", bound="GuidedA2C")


class GuidedA2C(GuidedOnPolicyMixin, A2C):
    """
    Advantage Actor-Critic with a distillation term toward a vision-language-model teacher (LVLM2P).

    Paper: "Sample Efficient Reinforcement Learning via Large Vision Language Model Distillation" (Lee et al., 2025),
    https://arxiv.org/abs/2503.16588. Loss (eq. 1): ``L_A2C(π_θ) + λ · D_KL(π_T(·|o, ℓ) ‖ π_θ(·|s))`` over rows
    with advice. All A2C arguments are those of :class:`stable_baselines3.A2C`. Extra arguments:

    :param teacher_coef: λ, the most weight the teacher gets (default 1.0; the term's weight is ``λ · τ`` with the
        adaptive trust τ), a float or a :class:`~sb3_vlm.guidance.CoefSchedule` of the number of updates; LVLM2P's
        fixed λ is ``trust=False, teacher_coef=0.01``
    :param trust: adaptive trust, as in :class:`~sb3_vlm.ppo.GuidedPPO` (evidence windows span several of A2C's
        short rollouts)
    :param teacher_target: ``"soft"`` (LVLM2P) or ``"hard"`` (one-hot argmax, the paper's ablation); Box action
        spaces use ``−log π_θ(a_v|s)`` of the advised action instead
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
        learning_rate: float | Schedule = 7e-4,
        n_steps: int = 5,
        gamma: float = 0.99,
        gae_lambda: float = 1.0,
        ent_coef: float = 0.0,
        vf_coef: float = 0.5,
        max_grad_norm: float = 0.5,
        rms_prop_eps: float = 1e-5,
        use_rms_prop: bool = True,
        use_sde: bool = False,
        sde_sample_freq: int = -1,
        rollout_buffer_class: type[RolloutBuffer] | None = None,
        rollout_buffer_kwargs: dict[str, Any] | None = None,
        normalize_advantage: bool = False,
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
            gamma=gamma,
            gae_lambda=gae_lambda,
            ent_coef=ent_coef,
            vf_coef=vf_coef,
            max_grad_norm=max_grad_norm,
            rms_prop_eps=rms_prop_eps,
            use_rms_prop=use_rms_prop,
            use_sde=use_sde,
            sde_sample_freq=sde_sample_freq,
            rollout_buffer_class=rollout_buffer_class,
            rollout_buffer_kwargs=rollout_buffer_kwargs,
            normalize_advantage=normalize_advantage,
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
        Adapted from ``A2C.train`` (SB3 2.x). Additions, marked ``sb3-vlm``: the forward pass also returns the action
        distribution, and the loss gets ``λ · D_KL(π_T ‖ π_θ)`` (LVLM2P eq. 1) over rows with advice.
        """
        # Switch to train mode (this affects batch norm / dropout)
        self.policy.set_training_mode(True)

        # Update optimizer learning rate
        self._update_learning_rate(self.policy.optimizer)
        teacher_coef = self.current_teacher_coef  # sb3-vlm

        # This will only loop once (get all data in one go)
        for rollout_data in self.rollout_buffer.get(batch_size=None):
            actions = rollout_data.actions
            if isinstance(self.action_space, spaces.Discrete):
                # Convert discrete action from float to long
                actions = actions.long().flatten()

            values, log_prob, entropy, distribution = evaluate_actions_with_distribution(
                self.policy, rollout_data.observations, actions
            )
            values = values.flatten()

            # Normalize advantage (not present in the original implementation)
            advantages = rollout_data.advantages
            if self.normalize_advantage:
                advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)

            # Policy gradient loss
            policy_loss = -(advantages * log_prob).mean()

            # Value loss using the TD(gae_lambda) target
            value_loss = F.mse_loss(rollout_data.returns, values)

            # Entropy loss favor exploration
            if entropy is None:
                # Approximate entropy when no analytical form
                entropy_loss = -th.mean(-log_prob)
            else:
                entropy_loss = -th.mean(entropy)

            # sb3-vlm: LVLM2P eq. 1
            distill_loss, agreement = self._distill_loss(
                distribution,
                rollout_data.advice_targets,  # type: ignore[attr-defined]
                rollout_data.advice_valid,  # type: ignore[attr-defined]
                rollout_data.advice_weight,  # type: ignore[attr-defined]
            )

            loss = policy_loss + self.ent_coef * entropy_loss + self.vf_coef * value_loss + teacher_coef * distill_loss

            # Optimization step
            self.policy.optimizer.zero_grad()
            loss.backward()

            # Clip grad norm
            th.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
            self.policy.optimizer.step()

        explained_var = explained_variance(self.rollout_buffer.values.flatten(), self.rollout_buffer.returns.flatten())

        self._n_updates += 1
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/explained_variance", explained_var)
        self.logger.record("train/entropy_loss", entropy_loss.item())
        self.logger.record("train/policy_loss", policy_loss.item())
        self.logger.record("train/value_loss", value_loss.item())
        if hasattr(self.policy, "log_std"):
            self.logger.record("train/std", th.exp(self.policy.log_std).mean().item())
        self._record_guidance([distill_loss.item()], [agreement.item()], teacher_coef)  # sb3-vlm

    def learn(  # type: ignore[override]
        self: SelfGuidedA2C,
        total_timesteps: int,
        callback: Any = None,
        log_interval: int = 100,
        tb_log_name: str = "GuidedA2C",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfGuidedA2C:
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )
