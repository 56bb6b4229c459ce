"""ERPv's transition model T (appendix B, eq. 12-13): a DeepMDP-style Gaussian model of the next latent state."""

from __future__ import annotations

import torch as th
from stable_baselines3.common.torch_layers import create_mlp
from torch import nn

LOG_SIGMA_MIN, LOG_SIGMA_MAX = -5.0, 2.0


class TransitionModel(nn.Module):
    """
    ``T_D([a, s_t]) -> (μ, log σ)`` of the next latent ``s_{t+1}`` (ERPv eq. 13). ``s`` are the RL critic's features
    (ERPv shares one visual encoder between actor, critic and T).

    :param features_dim: size of the latent state
    :param action_dim: size of the action (scaled to [-1, 1])
    :param net_arch: hidden layers
    :param activation_fn: activation function
    """

    def __init__(
        self,
        features_dim: int,
        action_dim: int,
        net_arch: list[int] | None = None,
        activation_fn: type[nn.Module] = nn.ReLU,
    ):
        super().__init__()
        self.features_dim = features_dim
        self.action_dim = action_dim
        self.net = nn.Sequential(
            *create_mlp(features_dim + action_dim, 2 * features_dim, list(net_arch or [256]), activation_fn)
        )

    def forward(self, features: th.Tensor, actions: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        """:return: mean and log standard deviation of the next latent, each (batch, features_dim)"""
        out = self.net(th.cat([actions, features], dim=1))
        mu, log_sigma = out.split(self.features_dim, dim=1)
        # bounded like SB3's LOG_STD: σ → 0 would make eq. 12 unbounded below
        return mu, log_sigma.clamp(LOG_SIGMA_MIN, LOG_SIGMA_MAX)
