"""ERPv's advice critic C_V: a frozen twin-Q network that scores the advisor's actions (ERPv §3.3, appendix D)."""

from __future__ import annotations

from typing import Any

import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import ContinuousCritic
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, FlattenExtractor
from stable_baselines3.common.type_aliases import PyTorchObs
from torch import nn


class AdviceCritic(ContinuousCritic):
    """
    SB3's :class:`ContinuousCritic` that owns its features extractor (built from a class and kwargs so it can be
    saved inside a GuidedSAC zip and rebuilt on load) and is frozen: no parameter requires a gradient, it stays in
    eval mode, and :meth:`q_value` runs under ``no_grad``. Its state dict has the same keys as a SAC critic, so a
    critic trained by SAC on Random Alternating Exploration data loads into it directly (:meth:`from_sac_critic`).

    ``q_value(obs, a)`` is the minimum over the twin Q-networks, as ERPv C.3 describes for both critics.

    :param observation_space: observation space
    :param action_space: Box action space; actions are given scaled to [-1, 1] like SB3's buffer actions
    :param net_arch: hidden layers of each Q-network
    :param activation_fn: activation function
    :param features_extractor_class: features extractor class (``FlattenExtractor``, ``NatureCNN`` ...)
    :param features_extractor_kwargs: its keyword arguments
    :param normalize_images: divide uint8 images by 255, as the policy does
    :param n_critics: number of Q-networks (2 for SAC)
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Box,
        net_arch: list[int] | None = None,
        activation_fn: type[nn.Module] = nn.ReLU,
        features_extractor_class: type[BaseFeaturesExtractor] = FlattenExtractor,
        features_extractor_kwargs: dict[str, Any] | None = None,
        normalize_images: bool = True,
        n_critics: int = 2,
    ):
        features_extractor_kwargs = dict(features_extractor_kwargs or {})
        features_extractor = features_extractor_class(observation_space, **features_extractor_kwargs)
        super().__init__(
            observation_space,
            action_space,
            net_arch=list(net_arch) if net_arch is not None else [256, 256],
            features_extractor=features_extractor,
            features_dim=features_extractor.features_dim,
            activation_fn=activation_fn,
            normalize_images=normalize_images,
            n_critics=n_critics,
            # the extractor is this critic's own: nothing else trains it
            share_features_extractor=False,
        )
        self.net_arch = list(net_arch) if net_arch is not None else [256, 256]
        self.features_extractor_class = features_extractor_class
        self.features_extractor_kwargs = features_extractor_kwargs
        self.activation_fn = activation_fn
        self.freeze()

    def freeze(self) -> AdviceCritic:
        """C_V stays fixed during guided training (ERPv §3.3): no gradients, eval mode."""
        self.requires_grad_(False)
        self.eval()
        return self

    def train(self, mode: bool = True) -> AdviceCritic:
        # SB3 calls policy.set_training_mode(True) every update; C_V must never switch to train mode
        return super().train(False)

    def q_value(self, obs: PyTorchObs, actions: th.Tensor) -> th.Tensor:
        """``min_k Q_k(obs, actions)``, shape (batch, 1), without gradient."""
        with th.no_grad():
            return th.min(th.cat(self(obs, actions), dim=1), dim=1, keepdim=True)[0]

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return dict(
            observation_space=self.observation_space,
            action_space=self.action_space,
            net_arch=self.net_arch,
            activation_fn=self.activation_fn,
            features_extractor_class=self.features_extractor_class,
            features_extractor_kwargs=self.features_extractor_kwargs,
            normalize_images=self.normalize_images,
            n_critics=self.n_critics,
        )

    def constructor_kwargs(self) -> dict[str, Any]:
        """Picklable arguments that rebuild an identical (untrained) critic; GuidedSAC stores them in its zip."""
        return self._get_constructor_parameters()

    @classmethod
    def from_sac_critic(cls, critic: ContinuousCritic, policy: Any) -> AdviceCritic:
        """
        A frozen copy of a trained SAC critic.

        :param critic: the SAC critic (``model.critic``)
        :param policy: the SAC policy it belongs to (``model.policy``), for the architecture
        """
        kwargs = policy.critic_kwargs
        advice_critic = cls(
            critic.observation_space,
            critic.action_space,  # type: ignore[arg-type]
            net_arch=kwargs["net_arch"],
            activation_fn=kwargs["activation_fn"],
            features_extractor_class=policy.features_extractor_class,
            features_extractor_kwargs=policy.features_extractor_kwargs,
            normalize_images=kwargs["normalize_images"],
            n_critics=kwargs["n_critics"],
        ).to(critic.device)
        state = critic.state_dict()
        if not any(k.startswith("features_extractor.") for k in state):
            # a critic that reads a shared encoder it does not own (SharedEncoderSACPolicy): copy the encoder too
            encoder = critic.features_extractor.state_dict()
            state = {**state, **{f"features_extractor.{k}": v for k, v in encoder.items()}}
        advice_critic.load_state_dict(state)
        return advice_critic.freeze()
