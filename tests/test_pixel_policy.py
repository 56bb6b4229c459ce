"""The DrQ-style pixel policy: one encoder trained by the critic, read by the actor without gradients."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3 import SAC
from stable_baselines3.common.utils import polyak_update

from sb3_vlm import GuidedSAC, VLMAdviceWrapper
from sb3_vlm.envs.pendulum import PendulumSwingUpOracle, make_pixel_env
from sb3_vlm.policies import CompactEncoder, SharedEncoderSACPolicy, encoder_frozen

SMALL = dict(learning_starts=20, batch_size=8, buffer_size=200, seed=0, policy_kwargs=dict(net_arch=[8]))


def _pixel_env(size: int = 40) -> VLMAdviceWrapper:
    return VLMAdviceWrapper(make_pixel_env("Pendulum-v1", size=size, frame_stack=2), PendulumSwingUpOracle())


def _batch(model: GuidedSAC, n: int = 8) -> th.Tensor:
    obs = np.stack([model.observation_space.sample() for _ in range(n)])
    return th.as_tensor(obs)


def test_compact_encoder_sizes_and_refusals() -> None:
    for size, side in ((84, 7), (64, 5)):
        space = spaces.Box(0, 255, (9, size, size), np.uint8)
        encoder = CompactEncoder(space)
        assert encoder.convs(th.zeros(2, 9, size, size)).shape == (2, 32 * side * side)
        features = encoder(th.rand(2, 9, size, size))
        assert features.shape == (2, 50) and features.abs().max() <= 1.0  # tanh head
    # channels-last memory changes the speed, not the features
    encoder = CompactEncoder(spaces.Box(0, 255, (9, 64, 64), np.uint8))
    assert encoder.convs[0].weight.is_contiguous(memory_format=th.channels_last)
    standard = copy.deepcopy(encoder).to(memory_format=th.contiguous_format)
    x = th.rand(3, 9, 64, 64)
    expected = standard.head(standard.convs(x))
    th.testing.assert_close(encoder(x), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="image"):
        CompactEncoder(spaces.Box(-1, 1, (4,), np.float32))
    with pytest.raises(ValueError, match="strides"):
        CompactEncoder(spaces.Box(0, 255, (3, 64, 64), np.uint8), channels=(8, 8), strides=(2,))


def test_one_encoder_trained_by_the_critic_and_read_by_the_actor_without_gradients() -> None:
    model = GuidedSAC("DrQPolicy", _pixel_env(), method="sac", **SMALL)
    policy = model.policy
    assert isinstance(policy, SharedEncoderSACPolicy) and isinstance(policy.critic.features_extractor, CompactEncoder)
    encoder = policy.critic.features_extractor
    assert policy.actor.features_extractor is encoder
    assert "features_extractor" not in dict(policy.critic.named_children())
    # DrQ-v2: the target critic reads the online encoder, which is not its submodule, so Polyak leaves it alone
    assert policy.critic_target.features_extractor is encoder
    assert "features_extractor" not in dict(policy.critic_target.named_children())
    weights = [p.clone() for p in encoder.parameters()]
    polyak_update(policy.critic.parameters(), policy.critic_target.parameters(), 0.5)
    assert all(th.equal(w, p) for w, p in zip(weights, encoder.parameters(), strict=True))
    encoder_params = {id(p) for p in encoder.parameters()}
    actor_params = {id(p) for group in policy.actor.optimizer.param_groups for p in group["params"]}
    critic_params = {id(p) for group in policy.critic.optimizer.param_groups for p in group["params"]}
    assert encoder_params <= critic_params and not encoder_params & actor_params
    assert actor_params  # the actor's own layers are still optimised

    obs = _batch(model)
    actions, log_prob = policy.actor.action_log_prob(obs)
    (log_prob.sum() + actions.sum()).backward()
    assert all(p.grad is None for p in encoder.parameters())  # the actor's loss stops at the encoder
    assert any(p.grad is not None for p in policy.actor.mu.parameters())
    q1, _ = policy.critic(obs, actions.detach())
    q1.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters())


def test_encoder_frozen_keeps_action_gradients_and_skips_the_encoders() -> None:
    model = GuidedSAC("CnnPolicy", _pixel_env(), method="sac", **SMALL)
    critic, obs = model.critic, _batch(model)
    grads = []
    for frozen in (False, True):
        critic.zero_grad(set_to_none=True)
        actions = th.zeros(len(obs), 1, requires_grad=True)
        if frozen:
            with encoder_frozen(critic):
                q = critic(obs, actions)[0]
        else:
            q = critic(obs, actions)[0]
        q.sum().backward()
        grads.append(actions.grad.clone())
        touched = any(p.grad is not None for p in critic.features_extractor.parameters())
        assert touched != frozen
    assert th.equal(grads[0], grads[1])  # what the actor's loss uses is unchanged
    assert critic.share_features_extractor is False  # restored after the block


def test_cnn_guided_sac_without_advice_is_still_bit_identical_to_sac() -> None:
    """encoder_frozen in the actor's loss changes none of the parameters' updates of SB3's own CnnPolicy."""
    import warnings

    kwargs = {**SMALL, "seed": 3}
    sac = SAC("CnnPolicy", make_pixel_env("Pendulum-v1", size=40, frame_stack=2), **kwargs).learn(60)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no 'vlm_advice' in the infos
        guided = GuidedSAC("CnnPolicy", make_pixel_env("Pendulum-v1", size=40, frame_stack=2), **kwargs).learn(60)
    for name, value in sac.policy.state_dict().items():
        assert th.equal(value, guided.policy.state_dict()[name]), name


def test_drq_policy_learns_saves_loads_and_keeps_frames_as_uint8(tmp_path) -> None:
    model = GuidedSAC("DrQPolicy", _pixel_env(), augmentation="shift", **SMALL)
    before = {k: v.clone() for k, v in model.policy.state_dict().items()}
    model.learn(60)
    assert model.replay_buffer.observations.dtype == np.uint8
    encoder = "actor.features_extractor.convs.0.weight"
    assert not th.equal(before[encoder], model.policy.state_dict()[encoder])  # the critic trained it
    target = "critic_target.qf0.0.weight"
    assert not th.equal(before[target], model.policy.state_dict()[target])  # Polyak moved the target's Q heads
    assert not any(k.startswith("critic") and "features_extractor" in k for k in model.policy.state_dict())
    obs = model.observation_space.sample()
    action, _ = model.predict(obs, deterministic=True)
    model.save(tmp_path / "drq.zip")
    for loader in (GuidedSAC, SAC):  # SAC.load too: the policy class comes back from sb3_vlm
        loaded = loader.load(tmp_path / "drq.zip")
        assert isinstance(loaded.policy, SharedEncoderSACPolicy)
        assert loaded.policy.actor.features_extractor is loaded.policy.critic.features_extractor
        np.testing.assert_allclose(loaded.predict(obs, deterministic=True)[0], action, rtol=1e-6)
    with pytest.raises(ValueError, match="share_features_extractor"):
        GuidedSAC("DrQPolicy", _pixel_env(), policy_kwargs=dict(share_features_extractor=True), buffer_size=100)


def _count_encoder_calls(model) -> list[bool]:
    calls: list[bool] = []  # one entry per forward: whether it ran with gradients
    model.policy.critic.features_extractor.register_forward_hook(lambda m, i, o: calls.append(o.requires_grad))
    return calls


def test_guided_sac_encodes_each_batch_once_and_plain_sac_trains_the_policy_too() -> None:
    """GuidedSAC: per gradient step the observations once with gradients (the critic's loss) and the next
    observations once without; plain SAC runs the encoder five times a step, and its Polyak update leaves the
    shared encoder alone (a target holding it would shrink it by (1 - tau^2) every step)."""
    # ERPv's gates and VER read the critic without gradients (through SB3's forward, which re-enables them around
    # the features): they must neither take the graph the critic's loss needs nor encode the batch again
    for cls, method, expected in (
        (GuidedSAC, "sac", [True, False]),
        (GuidedSAC, "erpv", [True, False]),
        (SAC, "", None),
    ):
        extra = dict(method=method) if cls is GuidedSAC else {}
        model = cls("DrQPolicy" if cls is GuidedSAC else SharedEncoderSACPolicy, _pixel_env(), **SMALL, **extra)
        model.learn(SMALL["learning_starts"] + 1)  # fills the buffer; the first update runs at the last step
        calls = _count_encoder_calls(model)
        encoder = model.policy.critic.features_extractor
        before = [p.clone() for p in encoder.parameters()]
        model.train(gradient_steps=3, batch_size=8)
        if expected is not None:
            assert calls == expected * 3
        else:
            assert len(calls) == 5 * 3
        assert model.policy.critic_target.features_extractor is encoder
        change = sum(float((p.detach() - b).abs().sum()) for p, b in zip(encoder.parameters(), before, strict=True))
        assert change > 0  # the critic's loss trained it
        assert not model.policy.memo.active


def test_an_advice_critic_copies_the_shared_encoder_of_a_drq_critic() -> None:
    from sb3_vlm.policies import AdviceCritic

    model = GuidedSAC("DrQPolicy", _pixel_env(), method="sac", **SMALL)
    critic = AdviceCritic.from_sac_critic(model.critic, model.policy)
    obs, actions = _batch(model), th.zeros(8, 1)
    with th.no_grad():
        expected = th.min(th.cat(model.critic(obs, actions), dim=1), dim=1, keepdim=True)[0]
    th.testing.assert_close(critic.q_value(obs, actions).reshape(-1, 1), expected.reshape(-1, 1))
