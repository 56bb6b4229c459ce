"""
A pixel SAC policy in the style of DrQ-v2 (Yarats et al. 2021, "Mastering Visual Continuous Control: Improved
Data-Augmented Reinforcement Learning", arXiv:2107.09645; DrQ: Kostrikov et al. 2020, arXiv:2004.13649): one
compact convolutional encoder, trained by the critic's TD loss only, whose features the actor and the target critic
read without gradients.

SB3's ``CnnPolicy`` gives the actor, the critic and the critic's target three NatureCNNs, the actor's trained by the
policy loss; each SAC update then runs five encoder passes, three of them with a backward pass. Here, as in DrQ-v2,
there is one encoder and no target encoder (the target critic's Q heads are Polyak copies, its features come from the
online encoder, as DrQ-v2's ``critic_target(encoder(next_obs))``), and within a GuidedSAC update each batch is encoded
once (:class:`FeatureMemo`): the observations with gradients for the critic's loss, their detached features for the
actor, the next observations without gradients for the target. The actor's update therefore reads the features
encoded before the critic's step of the same update, as DrQ-v2's ``update_actor(obs.detach())`` does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import ContinuousCritic
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule
from stable_baselines3.sac.policies import Actor, SACPolicy
from torch import nn


class CompactEncoder(BaseFeaturesExtractor):
    """
    A small convolutional encoder for 64×64 / 84×84 frame stacks: 3×3 convolutions with ``channels[i]`` filters and
    stride ``strides[i]`` (ReLU), then DrQ's head: a linear layer to ``features_dim``, LayerNorm and tanh.

    DrQ's own encoder (four layers of 32 filters, only the first strided: a 35×35×32 map for 84×84 inputs) costs
    several NatureCNNs on a CPU. Striding three layers keeps the map at 7×7 (84×84) or 5×5 (64×64), and 16 filters
    in the first layer, whose weight gradient dominates the update, make its backward pass about half as costly as
    32; the convolutions run in channels-last memory (faster on CPUs). ``benchmarks/pixel_update_speed.py``
    measures the whole update.

    :param observation_space: a channel-first image space (SB3's ``VecTransposeImage`` makes one of HWC images)
    :param features_dim: size of the features (DrQ: 50)
    :param channels: filters of each convolution
    :param strides: stride of each convolution (as many as ``channels``)
    """

    def __init__(
        self,
        observation_space: spaces.Box,
        features_dim: int = 50,
        channels: Sequence[int] = (16, 32, 32, 32),
        strides: Sequence[int] = (2, 2, 2, 1),
    ) -> None:
        if not (isinstance(observation_space, spaces.Box) and len(observation_space.shape) == 3):
            raise ValueError(f"CompactEncoder needs a (C, H, W) image space, got {observation_space}")
        if len(channels) != len(strides) or not channels:
            raise ValueError(f"need as many strides as channels, got {tuple(channels)} and {tuple(strides)}")
        super().__init__(observation_space, features_dim)
        layers: list[nn.Module] = []
        in_channels = observation_space.shape[0]
        for out_channels, stride in zip(channels, strides, strict=True):
            layers += [nn.Conv2d(in_channels, out_channels, 3, stride=stride), nn.ReLU()]
            in_channels = out_channels
        self.convs = nn.Sequential(*layers, nn.Flatten())
        with th.no_grad():
            n_flat = self.convs(th.as_tensor(observation_space.sample()[None]).float()).shape[1]
        self.head = nn.Sequential(nn.Linear(n_flat, features_dim), nn.LayerNorm(features_dim), nn.Tanh())
        # channels-last convolutions: CPU (oneDNN) backward passes ran ~1.5x faster for 84x84 stacks
        self.convs.to(memory_format=th.channels_last)  # type: ignore[call-overload]  # a documented keyword

    def forward(self, observations: th.Tensor) -> th.Tensor:
        return self.head(self.convs(channels_last(observations)))


def channels_last(obs: PyTorchObs) -> PyTorchObs:
    """A batch of (N, C, H, W) images in channels-last memory (the same tensor when it already is); else ``obs``.
    Done on the uint8 frames before SB3's ``preprocess_obs`` converts them, the float copy is then born in it."""
    if isinstance(obs, th.Tensor) and obs.dim() == 4:
        return obs.contiguous(memory_format=th.channels_last)
    return obs


class FeatureMemo:
    """
    The features of each observation batch, computed once per gradient step while :attr:`active` (GuidedSAC's
    ``train()`` turns it on and clears it at every step). Batches are told apart by identity (the memo holds them,
    so an identity cannot be reused while it is stored). The first caller that wants gradients gets the features
    with their graph, once (the critic's loss, whose backward frees it); every other caller gets them detached.
    """

    def __init__(self) -> None:
        self.active = False
        self._entries: dict[int, tuple[PyTorchObs, th.Tensor, list[bool]]] = {}

    def clear(self) -> None:
        self._entries.clear()

    def features(
        self, obs: PyTorchObs, compute: Callable[[], th.Tensor], with_grad: bool, keep_graph: bool | None = None
    ) -> th.Tensor:
        """
        ``compute()``'s features of ``obs``.

        :param with_grad: the caller backpropagates into the encoder through them
        :param keep_graph: compute them with their graph even if this caller does not want it (a later caller in
            the same step will); default ``with_grad``
        """
        keep_graph = with_grad if keep_graph is None else keep_graph

        def run() -> th.Tensor:
            if keep_graph or with_grad:
                with th.enable_grad():
                    return compute()
            with th.no_grad():
                return compute()

        if not self.active:
            features = run()
            return features if with_grad else features.detach()
        entry = self._entries.get(id(obs))
        stale = entry is not None and with_grad and not entry[1].requires_grad and not entry[2][0]
        if entry is None or entry[0] is not obs or stale:  # stale: computed without the graph now wanted
            entry = (obs, run(), [False])
            self._entries[id(obs)] = entry
        _, features, handed_out = entry
        if with_grad and features.requires_grad and not handed_out[0]:
            handed_out[0] = True
            return features
        return features.detach()


class DetachedEncoderActor(Actor):
    """SB3's SAC actor, reading its (shared) encoder without gradients: the actor's loss never trains the encoder."""

    memo: FeatureMemo | None = None

    def extract_features(self, obs: PyTorchObs, features_extractor: BaseFeaturesExtractor) -> th.Tensor:  # type: ignore[override]
        def compute() -> th.Tensor:
            return super(DetachedEncoderActor, self).extract_features(channels_last(obs), features_extractor)

        if self.memo is None:
            with th.no_grad():
                return compute()
        # in GuidedSAC's update the actor reads a batch first: it keeps the graph for the critic's loss that follows
        return self.memo.features(obs, compute, with_grad=False, keep_graph=self.memo.active and th.is_grad_enabled())


class MemoCritic(ContinuousCritic):
    """SB3's continuous critic, its features through the policy's :class:`FeatureMemo` (when it has one)."""

    memo: FeatureMemo | None = None
    _grad_wanted: bool = True

    def forward(self, obs: th.Tensor, actions: th.Tensor) -> tuple[th.Tensor, ...]:
        # SB3's forward re-enables gradients around the features (set_grad_enabled(not share_features_extractor)),
        # so whether the caller wants them is read here, outside it
        self._grad_wanted = th.is_grad_enabled() and not self.share_features_extractor
        return super().forward(obs, actions)

    def extract_features(self, obs: PyTorchObs, features_extractor: BaseFeaturesExtractor) -> th.Tensor:  # type: ignore[override]
        def compute() -> th.Tensor:
            return super(MemoCritic, self).extract_features(channels_last(obs), features_extractor)

        if self.memo is None:
            return compute()
        with_grad = self._grad_wanted and th.is_grad_enabled()
        self._grad_wanted = True  # a direct call (not through forward) follows the grad mode alone
        return self.memo.features(obs, compute, with_grad=with_grad)


def _holding(critic: MemoCritic, encoder: BaseFeaturesExtractor) -> MemoCritic:
    """``critic`` with ``encoder`` as a plain attribute instead of a submodule (not in its parameters or state)."""
    del critic._modules["features_extractor"]
    object.__setattr__(critic, "features_extractor", encoder)
    return critic


class SharedEncoderSACPolicy(SACPolicy):
    """
    SAC policy with one encoder (default :class:`CompactEncoder`) trained by the critic's TD loss only; the actor and
    the target critic read it without gradients (DrQ-v2, see the module docstring). Every other
    argument is :class:`~stable_baselines3.sac.policies.SACPolicy`'s; ``share_features_extractor`` must stay False
    (SB3's sharing trains the encoder with the actor's loss instead).

    The encoder is a submodule of the actor only (saved as ``actor.features_extractor``); the critic and its target
    hold it as a plain attribute, so SB3's Polyak update over ``critic.parameters()`` and
    ``critic_target.parameters()`` pairs their Q heads and never touches the encoder. The actor's optimizer holds
    the actor's own layers, the critic's its Q heads and the encoder. Plain ``SAC`` trains this policy correctly too
    (without the once-per-batch encoding, which is GuidedSAC's). Loading a saved model needs this class importable
    (``sb3_vlm`` installed), as for any custom SB3 policy.
    """

    actor: DetachedEncoderActor
    critic: MemoCritic
    critic_target: MemoCritic

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Box,
        lr_schedule: Schedule,
        *,
        features_extractor_class: type[BaseFeaturesExtractor] = CompactEncoder,
        share_features_extractor: bool = False,
        **kwargs: Any,
    ) -> None:
        if share_features_extractor:
            raise ValueError(
                "SharedEncoderSACPolicy shares the critic's encoder with the actor by itself; "
                "share_features_extractor=True would train it with the actor's loss instead"
            )
        self.memo = FeatureMemo()
        super().__init__(
            observation_space,
            action_space,
            lr_schedule,
            features_extractor_class=features_extractor_class,
            share_features_extractor=False,
            **kwargs,
        )

    def _build(self, lr_schedule: Schedule) -> None:
        encoder = self.make_features_extractor()
        # a submodule of the actor only (so it is saved once, and moved with the policy); the critics hold it as a
        # plain attribute, so critic.parameters() and critic_target.parameters() are the Q heads alike and SB3's
        # Polyak update pairs them one to one
        self.actor = self.make_actor(features_extractor=encoder)
        self.critic = _holding(self.make_critic(features_extractor=encoder), encoder)
        self.critic_target = _holding(self.make_critic(features_extractor=encoder), encoder)
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.critic_target.set_training_mode(False)
        encoder_ids = {id(p) for p in encoder.parameters()}
        self.actor.optimizer = self.optimizer_class(
            [p for p in self.actor.parameters() if id(p) not in encoder_ids],
            lr=lr_schedule(1),  # type: ignore[call-arg]
            **self.optimizer_kwargs,
        )
        # the critic's optimizer trains the encoder (and its zero_grad() clears what other losses left on it)
        self.critic.optimizer = self.optimizer_class(
            [*self.critic.parameters(), *encoder.parameters()],
            lr=lr_schedule(1),  # type: ignore[call-arg]
            **self.optimizer_kwargs,
        )

    def make_actor(self, features_extractor: BaseFeaturesExtractor | None = None) -> DetachedEncoderActor:
        actor_kwargs = self._update_features_extractor(self.actor_kwargs, features_extractor)
        actor = DetachedEncoderActor(**actor_kwargs).to(self.device)
        actor.memo = self.memo
        return actor

    def make_critic(self, features_extractor: BaseFeaturesExtractor | None = None) -> MemoCritic:
        critic_kwargs = self._update_features_extractor(self.critic_kwargs, features_extractor)
        critic = MemoCritic(**critic_kwargs).to(self.device)
        critic.memo = self.memo
        return critic


@contextmanager
def encoder_frozen(critic: ContinuousCritic) -> Iterator[None]:
    """
    Within the block, ``critic(obs, actions)`` extracts its features without gradients (SB3's own switch for a
    shared encoder), while the Q-values keep their gradients with respect to the actions. For SAC's actor loss this
    changes no gradient that is used: the actor's loss only leaves gradients on the critic that its next
    ``zero_grad()`` discards, and skipping them skips a backward pass through the critic's encoder.
    """
    shared = critic.share_features_extractor
    critic.share_features_extractor = True
    try:
        yield
    finally:
        critic.share_features_extractor = shared


@contextmanager
def features_once(policy: Any) -> Iterator[Callable[[], None]]:
    """
    Turns the :class:`FeatureMemo` of a :class:`SharedEncoderSACPolicy` on for the block and yields the function
    that starts a new gradient step (clears it); for any other policy, a no-op.
    """
    memo = getattr(policy, "memo", None)
    if not isinstance(memo, FeatureMemo):
        yield lambda: None
        return
    memo.active = True
    try:
        yield memo.clear
    finally:
        memo.active = False
        memo.clear()
