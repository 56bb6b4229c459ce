"""GuidedSAC, the advised replay buffers, the advice critic and Pendulum's scripted advisor."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3 import SAC
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv

from sb3_vlm import CallableAdvisor, ConstantAdvisor, VLMAdviceWrapper
from sb3_vlm.advice import Advice, AdviceRequest
from sb3_vlm.buffers import AdvisedDictReplayBuffer, AdvisedReplayBuffer
from sb3_vlm.envs.pendulum import PendulumSwingUpOracle, make_pendulum_env, make_pixel_env
from sb3_vlm.guidance.schedules import LinearDecayCoef
from sb3_vlm.policies import AdviceCritic
from sb3_vlm.sac import GuidedSAC, RandomAlternatingExploration, VERSettings, pretrain_advice_critic
from sb3_vlm.sac.guided_sac import transition_nbytes
from sb3_vlm.sac.terms import AdvantageGate, MinMaxGate, RandomGate
from tests.helpers import CounterEnv, counter_view

BOX = spaces.Box(-2.0, 2.0, shape=(1,), dtype=np.float32)
SMALL = dict(learning_starts=20, batch_size=16, buffer_size=2_000, policy_kwargs=dict(net_arch=[16]), seed=0)


def _advice_of(obs: np.ndarray) -> float:
    """A deterministic advised action (env units, in [-2, 2]) that identifies the observation it was given for."""
    episode, t = obs
    return float(((7 * episode + t) % 40) / 10.0 - 2.0)


def _counter_env(time_limit: int | None = None) -> gym.Env:
    env: gym.Env = CounterEnv(action_space=BOX)
    if time_limit is not None:
        env = gym.wrappers.TimeLimit(env, time_limit)
    advisor = CallableAdvisor(lambda r: np.array([_advice_of(r.state)], dtype=np.float32), name="counter")
    return VLMAdviceWrapper(env, advisor, teacher_view=counter_view)


def _pendulum(advisor=None, **kwargs) -> gym.Env:
    return VLMAdviceWrapper(make_pendulum_env(**kwargs), advisor or PendulumSwingUpOracle())


def test_replay_buffer_aligns_scaled_advice_with_n_envs_and_timeouts() -> None:
    # three envs, one truncated by a TimeLimit: every stored row's advice must be that of its own observation
    venv = DummyVecEnv([lambda: _counter_env(), lambda: _counter_env(time_limit=4), lambda: _counter_env()])
    model = GuidedSAC("MlpPolicy", venv, method="covr", **{**SMALL, "learning_starts": 10_000})
    model.learn(120)
    buf = model.replay_buffer
    assert isinstance(buf, AdvisedReplayBuffer)
    n = buf.pos
    assert n == 40 and buf.advice_valid[:n].all()
    expected = np.vectorize(lambda e, t: _advice_of(np.array([e, t])))(
        buf.observations[:n, :, 0], buf.observations[:n, :, 1]
    )
    np.testing.assert_allclose(buf.advice_actions[:n, :, 0], expected / 2.0, atol=1e-6)  # scaled like SB3's actions
    assert buf.timeouts[:n, 1].any()  # the truncated env did time out and its rows still line up
    # sampling reads advice with the same env index as the transition
    sample = buf.sample(64)
    obs = sample.observations.numpy()
    want = np.array([_advice_of(o) for o in obs]) / 2.0
    np.testing.assert_allclose(sample.advice_actions.numpy()[:, 0], want, atol=1e-6)


def test_advised_only_sampling_and_invalid_rows() -> None:
    buf = AdvisedReplayBuffer(20, spaces.Box(-1, 1, (1,)), BOX, device="cpu", n_envs=2)
    assert buf.sample_advised(4) is None
    for i in range(6):
        infos = [{"vlm_advice": Advice(action=np.array([1.0]))} if i == 3 else {}, {"vlm_advice": Advice.invalid()}]
        buf.add(np.full((2, 1), i), np.full((2, 1), i + 1), np.zeros((2, 1)), np.zeros(2), np.zeros(2), infos)
    assert buf.advice_valid.sum() == 1 and buf.advice_actions[3, 0, 0] == pytest.approx(0.5)
    sample = buf.sample_advised(8)
    assert sample is not None
    assert th.all(sample.advice_valid == 1) and th.all(sample.observations == 3)
    # NaN / wrong-shape answers are stored as invalid rows, never as values
    buf.add(
        np.zeros((2, 1)),
        np.zeros((2, 1)),
        np.zeros((2, 1)),
        np.zeros(2),
        np.zeros(2),
        [{"vlm_advice": Advice(action=np.array([np.nan]))}, {"vlm_advice": Advice(action=np.zeros(3))}],
    )
    assert buf.advice_valid[6].sum() == 0 and np.isfinite(buf.advice_actions[6]).all()


def test_replay_buffer_round_trip_holds_advice_and_no_advisor(tmp_path: Path) -> None:
    class KeyedAdvisor(PendulumSwingUpOracle):
        api_key = "sk-PLANTED-SECRET-123"

    model = GuidedSAC("MlpPolicy", _pendulum(KeyedAdvisor()), method="covr", **SMALL)
    model.learn(60)
    path = tmp_path / "buffer.pkl"
    model.save_replay_buffer(path)
    assert b"PLANTED" not in path.read_bytes() and b"KeyedAdvisor" not in path.read_bytes()
    fresh = GuidedSAC("MlpPolicy", _pendulum(), method="covr", **SMALL)
    fresh.load_replay_buffer(path)
    np.testing.assert_array_equal(fresh.replay_buffer.advice_actions, model.replay_buffer.advice_actions)
    np.testing.assert_array_equal(fresh.replay_buffer.advice_valid, model.replay_buffer.advice_valid)
    assert fresh.replay_buffer.advice_valid.sum() == 60


def test_dict_observations_use_the_dict_buffer() -> None:
    class DictObs(gym.ObservationWrapper):
        def __init__(self, env: gym.Env):
            super().__init__(env)
            self.observation_space = spaces.Dict({"state": env.observation_space})

        def observation(self, observation):
            return {"state": observation}

    env = VLMAdviceWrapper(DictObs(make_pendulum_env()), PendulumSwingUpOracle())
    model = GuidedSAC("MultiInputPolicy", env, method="erpv", advice_critic="rl", **SMALL)
    model.learn(40)
    assert isinstance(model.replay_buffer, AdvisedDictReplayBuffer)
    assert model.replay_buffer.advice_valid[:40].all()


@pytest.mark.parametrize("method", ["erpv", "varl", "covr", "dpl", "apl", "rsf", "sac"])
def test_every_method_trains_and_logs_its_internals(method: str) -> None:
    model = GuidedSAC("MlpPolicy", _pendulum(), method=method, advice_critic="rl", **SMALL)
    model.learn(60)
    logged = model.logger.name_to_value
    assert "train/advice_valid_frac" in logged
    expected = {
        "erpv": [
            "guidance_loss",
            "q_f_mean",
            "q_f_active_frac",
            "advice_adv_scale",
            "alpha_target",
            "transition_loss",
            "ver_loss",
        ],
        "varl": ["guidance_loss", "bc_gate_frac", "bc_value_gate_frac"],
        "covr": ["guidance_loss"],
        "dpl": ["guidance_loss"],
        "apl": ["guidance_loss"],
        "rsf": ["guidance_loss", "q_f_mean", "alpha_target"],
        "sac": [],
    }[method]
    for key in expected:
        assert f"train/{key}" in logged, key
    assert model.guidance_active == (method != "sac")


def test_method_defaults_are_the_papers() -> None:
    env = _pendulum()
    erpv = GuidedSAC("MlpPolicy", env, **SMALL)
    assert (erpv.method, erpv.guidance, erpv.current_guidance_coef, erpv.ver) == ("erpv", "vpg", 10, VERSettings())
    assert erpv.ver is not None and erpv.ver.coef == 10 and erpv.ver.gated
    assert isinstance(erpv.advice_gate, AdvantageGate) and erpv.advice_gate.scale is None
    paper = GuidedSAC("MlpPolicy", env, vpg_gate="minmax", advice_critic="rl", ver=VERSettings(gated=False), **SMALL)
    assert isinstance(paper.advice_gate, MinMaxGate) and paper.advice_gate.reference == "rl"
    assert isinstance(GuidedSAC("MlpPolicy", env, method="rsf", **SMALL).advice_gate, RandomGate)
    varl = GuidedSAC("MlpPolicy", env, method="varl", **SMALL)
    assert (varl.guidance, varl.guidance_cutoff, varl.advice_batch, varl.ver) == ("gated_bc", 30_000, True, None)
    assert varl.bc_value_gate
    covr = GuidedSAC("MlpPolicy", env, method="covr", **SMALL)
    assert (covr.guidance, covr.current_guidance_coef) == ("mse", 2.0)
    apl = GuidedSAC("MlpPolicy", env, method="apl", **SMALL)
    schedule = apl.guidance_coef
    assert callable(schedule) and schedule(0, 1.0) == 2.0 and schedule(200, 1.0) == pytest.approx(1.99)
    assert schedule(10**6, 0.0) == pytest.approx(0.1)
    m2 = GuidedSAC("MlpPolicy", env, guidance="mse", guidance_coef=10.0, advice_critic="rl", **SMALL)  # ERPv M2
    assert m2.guidance == "mse" and m2.current_guidance_coef == 10.0 and m2.ver
    never = GuidedSAC("MlpPolicy", env, method="varl", guidance_cutoff=0, **SMALL)
    assert never.guidance_cutoff is None


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(method="nope"), ValueError),
        (dict(guidance="nope"), ValueError),
        (dict(vpg_gate="nope"), ValueError),
        (dict(vpg_reference="nope"), ValueError),
        (dict(ver="yes"), TypeError),
        (dict(guidance_coef=-1.0), ValueError),
        (dict(guidance_coef=float("nan")), ValueError),
        (dict(guidance_coef=float("inf")), ValueError),
        (dict(advice_critic=object()), TypeError),
        (dict(n_steps=3), ValueError),
        (dict(ent_coef=0.1), ValueError),  # VER needs a learned α
    ],
)
def test_bad_arguments_fail_early(kwargs, error) -> None:
    with pytest.raises(error):
        GuidedSAC("MlpPolicy", _pendulum(), **{"advice_critic": "rl", **SMALL, **kwargs})


def test_ver_settings_are_validated() -> None:
    bad_coefs = [dict(coef=-1.0), dict(coef=float("nan")), dict(coef=float("inf"))]
    for bad in (dict(confidence="nope"), dict(alpha_target="nope"), dict(next_state="nope"), *bad_coefs):
        with pytest.raises(ValueError):
            VERSettings(**bad)  # type: ignore[arg-type]
    model = GuidedSAC("MlpPolicy", _pendulum(), ver=VERSettings(transition_net_arch=[8], coef=3.0), **SMALL)
    assert model.ver is not None and model.ver.coef == 3.0
    assert model.transition_model is not None and model.transition_model.net[0].out_features == 8


def test_default_gate_needs_no_advice_critic_and_minmax_without_one_warns() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = GuidedSAC("MlpPolicy", _pendulum(), **SMALL)  # the advantage gate on the RL critic: silent
        model.learn(40)
        GuidedSAC("MlpPolicy", _pendulum(), vpg_gate="minmax", advice_critic="rl", **SMALL)  # M9 on purpose: silent
    assert model.advice_critic is None and model.advice_gate.scale is not None
    with pytest.warns(UserWarning, match="without an advice critic"):
        GuidedSAC("MlpPolicy", _pendulum(), vpg_gate="minmax", **SMALL)


def _invalid_advice_env() -> gym.Env:
    return VLMAdviceWrapper(make_pendulum_env(), CallableAdvisor(lambda r: Advice.invalid(), name="mute"))


@pytest.mark.parametrize(
    "make_env, method",
    [
        (make_pendulum_env, "erpv"),
        (_invalid_advice_env, "erpv"),
        (_invalid_advice_env, "varl"),
        (_invalid_advice_env, "rsf"),
    ],
)
def test_without_advice_guided_sac_is_bit_identical_to_sac(make_env, method: str) -> None:
    # no valid advice: no guidance term, no VER term, no extra random draw (T is built on its own RNG stream)
    kwargs = {**SMALL, "learning_starts": 50, "batch_size": 32, "seed": 3}
    sac = SAC("MlpPolicy", make_env(), **kwargs).learn(300)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no 'vlm_advice' in the infos" for the unwrapped env
        guided = GuidedSAC("MlpPolicy", make_env(), method=method, **kwargs).learn(300)
    assert guided.replay_buffer.advice_valid.sum() == 0 and guided.guidance_active
    assert (guided.transition_model is not None) == (method != "varl")  # VER on, yet it changes nothing
    params, guided_params = sac.policy.state_dict(), guided.policy.state_dict()
    assert params.keys() == guided_params.keys()
    for name, value in params.items():
        assert th.equal(value, guided_params[name]), name
    assert th.equal(sac.log_ent_coef, guided.log_ent_coef)


def _constant_advice_env() -> gym.Env:
    return VLMAdviceWrapper(make_pendulum_env(), ConstantAdvisor(0.5))


@pytest.mark.parametrize("method", ["erpv", "varl", "covr"])
def test_advice_that_ignores_the_view_leaves_guided_sac_bit_identical_to_sac(method: str) -> None:
    """ERPv's constant "worst model": every transition is advised, with the same action whatever the state, so the
    advice's diversity is 0 < min_advice_diversity and neither the guidance nor VER applies; with the check off,
    the same advice changes the run."""
    kwargs = {**SMALL, "learning_starts": 50, "batch_size": 32, "seed": 3}
    sac = SAC("MlpPolicy", make_pendulum_env(), **kwargs).learn(300)
    guided = GuidedSAC("MlpPolicy", _constant_advice_env(), method=method, **kwargs).learn(300)
    assert guided.replay_buffer.advice_valid[:300].all() and guided.advice_diversity() == 0.0
    assert guided.logger.name_to_value["train/advice_diversity"] == 0.0
    for name, value in sac.policy.state_dict().items():
        assert th.equal(value, guided.policy.state_dict()[name]), name
    unchecked = GuidedSAC("MlpPolicy", _constant_advice_env(), method=method, min_advice_diversity=0.0, **kwargs)
    unchecked.learn(300)
    assert not all(th.equal(v, unchecked.policy.state_dict()[k]) for k, v in sac.policy.state_dict().items())


def test_advice_diversity_reads_the_latest_advised_transitions() -> None:
    model = GuidedSAC("MlpPolicy", _pendulum(), **{**SMALL, "learning_starts": 10_000}, diversity_window=4)
    assert model.advice_diversity() == 1.0  # nothing advised yet: no evidence of sameness
    model.learn(8)
    buf = model.replay_buffer
    buf.advice_actions[:8, 0, 0] = [0.9, 0.9, 0.9, 0.9, 0.0, 0.0, 0.0, 0.0]  # the latest four agree
    buf.advice_valid[:8] = 1.0
    assert model.advice_diversity() == 0.0
    buf.advice_actions[7, 0, 0] = 0.5  # one of the four differs by more than 5 % of the range
    assert model.advice_diversity() == pytest.approx(0.25)
    buf.advice_valid[4:8] = 0.0  # unadvised rows are left out: the window holds no advised row, the last value stands
    assert model.advice_diversity() == pytest.approx(0.25)
    with pytest.raises(ValueError, match="min_advice_diversity"):
        GuidedSAC("MlpPolicy", _pendulum(), min_advice_diversity=1.0)


def test_advice_critic_stays_frozen_and_receives_no_gradient() -> None:
    critic = AdviceCritic(spaces.Box(-8, 8, (3,)), BOX, net_arch=[8])
    before = {k: v.clone() for k, v in critic.state_dict().items()}
    model = GuidedSAC("MlpPolicy", _pendulum(), method="erpv", advice_critic=critic, **SMALL)
    model.learn(80)
    assert "train/q_f_mean" in model.logger.name_to_value
    assert all(not p.requires_grad and p.grad is None for p in model.advice_critic.parameters())
    assert not model.advice_critic.training
    for k, v in model.advice_critic.state_dict().items():
        assert th.equal(v, before[k]), k


def test_vpg_reference_advice_scores_both_actions_with_c_v(monkeypatch) -> None:
    critic = AdviceCritic(spaces.Box(-8, 8, (3,)), BOX, net_arch=[8])
    calls: list[th.Tensor] = []
    original = AdviceCritic.q_value

    def spy(self, obs, actions):
        calls.append(actions)
        return original(self, obs, actions)

    monkeypatch.setattr(AdviceCritic, "q_value", spy)
    for gate, reference, per_update in (("minmax", "rl", 1), ("minmax", "advice", 2), ("advantage", "rl", 2)):
        calls.clear()
        model = GuidedSAC(
            "MlpPolicy", _pendulum(), advice_critic=critic, vpg_gate=gate, vpg_reference=reference, ver=False, **SMALL
        )
        model.learn(30)  # 10 gradient steps
        assert len(calls) == 10 * per_update
        assert all(not a.requires_grad for a in calls)


def test_guidance_cutoff_switches_the_term_off() -> None:
    model = GuidedSAC("MlpPolicy", _pendulum(), method="varl", guidance_cutoff=50, **SMALL)
    model.learn(40)
    assert model.guidance_active and model.logger.name_to_value["train/guidance_coef"] == 10.0
    model.learn(40, reset_num_timesteps=False)
    assert not model.guidance_active and model.logger.name_to_value["train/guidance_coef"] == 0.0
    model.guidance_enabled = False
    assert GuidedSAC("MlpPolicy", _pendulum(), method="covr", **SMALL).guidance_active is not model.guidance_enabled


def test_guidance_pulls_the_policy_toward_the_advised_action() -> None:
    # with a constant advised action the guided policy's mean action must move toward it, the unguided one not
    def mean_action(model: GuidedSAC) -> float:
        obs = np.stack([make_pendulum_env().reset(seed=s)[0] for s in range(20)])
        return float(model.predict(obs, deterministic=True)[0].mean())

    results = {}
    for method in ("sac", "covr", "varl"):
        # VARL's own gate: the value gate would (rightly) close where a constant torque is not better
        extra: dict[str, Any] = dict(bc_value_gate=False) if method == "varl" else {}
        extra["min_advice_diversity"] = 0.0  # the term's own pull: a constant teacher is otherwise not imitated
        model = GuidedSAC(
            "MlpPolicy", _pendulum(ConstantAdvisor(1.8)), method=method, **{**SMALL, "learning_rate": 3e-3}, **extra
        )
        model.learn(300)
        results[method] = mean_action(model)
    assert results["covr"] > 0.5 and results["varl"] > 1.0
    assert min(results["covr"], results["varl"]) > results["sac"] + 0.5


def test_save_load_restores_every_module_and_training_resumes(tmp_path: Path) -> None:
    critic = AdviceCritic(spaces.Box(-8, 8, (3,)), BOX, net_arch=[8])
    model = GuidedSAC("MlpPolicy", _pendulum(), method="erpv", advice_critic=critic, **SMALL)
    model.learn(80)
    model.save(tmp_path / "guided")
    loaded = GuidedSAC.load(tmp_path / "guided", env=_pendulum())
    obs = np.stack([make_pendulum_env().reset(seed=s)[0] for s in range(8)])
    np.testing.assert_array_equal(model.predict(obs, deterministic=True)[0], loaded.predict(obs, deterministic=True)[0])
    for name in ("advice_critic", "transition_model"):
        for (k, a), (_, b) in zip(
            getattr(model, name).state_dict().items(), getattr(loaded, name).state_dict().items(), strict=False
        ):
            assert th.equal(a, b), (name, k)
    assert loaded.transition_optimizer.state_dict()["state"], "transition optimizer state not restored"
    assert len(loaded.transition_optimizer.state_dict()["state"]) == len(
        model.transition_optimizer.state_dict()["state"]
    )
    assert (loaded.method, loaded.ver, loaded.guidance_coef) == ("erpv", VERSettings(), 10.0)
    # the gate's running advantage scale σ is state and round-trips
    assert isinstance(loaded.advice_gate, AdvantageGate) and loaded.advice_gate.scale is not None
    assert loaded.advice_gate.scale == model.advice_gate.scale
    assert loaded.guidance_term is not None and loaded.guidance_term.gate is loaded.advice_gate  # type: ignore[attr-defined]
    # the student alone loads with plain SB3 (the teacher is a training-time aid), also from a file object
    plain = SAC.load(tmp_path / "guided.zip", device="cpu")
    np.testing.assert_array_equal(model.predict(obs, deterministic=True)[0], plain.predict(obs, deterministic=True)[0])
    stream = io.BytesIO()
    model.save(stream)
    again = GuidedSAC.load(stream, env=_pendulum())
    for a, b in zip(again.transition_model.parameters(), model.transition_model.parameters(), strict=True):
        assert th.equal(a, b)
    loaded.learn(40, reset_num_timesteps=False)
    assert loaded.num_timesteps == 120
    # a plain SAC can load the policy alone: the saved agent never needs the advisor
    policy_only = SAC("MlpPolicy", "Pendulum-v1", policy_kwargs=dict(net_arch=[16]))
    policy_only.policy.load_state_dict(loaded.policy.state_dict())
    np.testing.assert_array_equal(
        policy_only.predict(obs, deterministic=True)[0], loaded.predict(obs, deterministic=True)[0]
    )


def test_zip_holds_no_advisor(tmp_path: Path) -> None:
    class KeyedAdvisor(PendulumSwingUpOracle):
        api_key = "sk-PLANTED-SECRET-123"

    model = GuidedSAC("MlpPolicy", _pendulum(KeyedAdvisor()), method="varl", **SMALL)
    model.learn(30)
    model.save(tmp_path / "m.zip")
    import zipfile

    with zipfile.ZipFile(tmp_path / "m.zip") as z:
        blob = b"".join(z.read(n) for n in z.namelist())
    assert b"PLANTED" not in blob and b"KeyedAdvisor" not in blob


def test_advice_warmup_executes_the_advised_actions() -> None:
    model = GuidedSAC(
        "MlpPolicy",
        _pendulum(ConstantAdvisor(1.5)),
        method="covr",
        advice_warmup=True,
        **{**SMALL, "learning_starts": 30},
    )
    model.learn(30)
    np.testing.assert_allclose(model.replay_buffer.actions[:30, 0, 0], 0.75)  # 1.5 scaled to [-1, 1]
    assert model.n_advised_actions == 30
    off = GuidedSAC("MlpPolicy", _pendulum(ConstantAdvisor(1.5)), method="covr", **{**SMALL, "learning_starts": 30})
    off.learn(30)
    assert off.n_advised_actions == 0 and np.std(off.replay_buffer.actions[:30]) > 0.1


def test_random_alternating_exploration_phases() -> None:
    rae = RandomAlternatingExploration(3, 5, seed=0)
    turns = []
    for _ in range(200):
        turns.append(rae.advisor_mask(2))
        rae.step(np.zeros(2, dtype=bool))
    turns_arr = np.array(turns)
    for env in range(2):
        runs = np.diff(np.flatnonzero(np.diff(turns_arr[:, env].astype(int)) != 0))
        assert runs.min() >= 3 and runs.max() <= 5  # phase lengths within [min, max]
    assert 0.3 < turns_arr.mean() < 0.7
    with pytest.raises(ValueError):
        RandomAlternatingExploration(10, 5)


def test_pretrain_advice_critic_returns_a_frozen_critic_that_round_trips(tmp_path: Path) -> None:
    critic = pretrain_advice_critic(
        make_pendulum_env(), PendulumSwingUpOracle(), steps=150, min_phase=10, max_phase=20, **SMALL
    )
    assert isinstance(critic, AdviceCritic) and not any(p.requires_grad for p in critic.parameters())
    critic.save(tmp_path / "cv.pt")
    again = AdviceCritic.load(tmp_path / "cv.pt")
    obs, act = th.randn(5, 3), th.rand(5, 1) * 2 - 1
    assert th.equal(critic.q_value(obs, act), again.q_value(obs, act))
    with pytest.raises(RuntimeError, match="No advised action"), pytest.warns(UserWarning, match="VLMAdviceWrapper"):
        pretrain_advice_critic(make_pendulum_env(), steps=30, **SMALL)  # no advisor, no advice


def test_cnn_policy_on_pixel_pendulum() -> None:
    env = VLMAdviceWrapper(
        make_pixel_env("Pendulum-v1", size=40, frame_stack=2), PendulumSwingUpOracle(), query_every=5
    )
    obs, _ = env.reset(seed=0)
    assert obs.shape == (40, 40, 6) and obs.dtype == np.uint8
    request = env.get_wrapper_attr("teacher_request")()
    assert request.image is not None and request.image.ndim == 3 and "theta" in request.context
    small = {**SMALL, "buffer_size": 200, "batch_size": 4}
    pixels = make_pixel_env("Pendulum-v1", size=40, frame_stack=2)
    critic = pretrain_advice_critic(pixels, PendulumSwingUpOracle(), steps=30, policy="CnnPolicy", **small)
    model = GuidedSAC("CnnPolicy", env, method="erpv", advice_critic=critic, **small)
    model.learn(40)
    assert "train/q_f_mean" in model.logger.name_to_value
    assert model.replay_buffer.advice_valid[:40, 0].sum() == 8  # every 5th step of the episode was queried
    assert "train/transition_loss" in model.logger.name_to_value


def test_pendulum_oracle_swings_up_and_needs_the_state() -> None:
    env, oracle = make_pendulum_env(), PendulumSwingUpOracle()
    returns = []
    for seed in range(3):
        env.reset(seed=seed)
        total, done = 0.0, False
        while not done:
            action = oracle.advise([env.get_wrapper_attr("teacher_request")()])[0].action
            _, reward, terminated, truncated, _ = env.step(action)
            total, done = total + float(reward), terminated or truncated
        returns.append(total)
    assert np.mean(returns) > -400  # a random policy scores about -1200
    bad = oracle.advise([AdviceRequest(image=None, action_space=BOX)])[0]  # no state: a counted error
    assert not bad.valid and oracle.stats.errors == 1


def test_vec_env_training_with_several_envs() -> None:
    venv = make_vec_env(lambda: _pendulum(), n_envs=2)
    model = GuidedSAC("MlpPolicy", venv, method="erpv", advice_critic="rl", **SMALL)
    model.learn(80)
    assert model.replay_buffer.advice_valid[:40].all()


GIB = 2**30


def _memory(monkeypatch: pytest.MonkeyPatch, available: int) -> None:
    """Make this machine look as if ``available`` bytes were free (GuidedSAC's check and SB3's warning read it)."""
    psutil = pytest.importorskip("psutil")
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=available, total=2 * available))


def test_image_observations_get_a_replay_buffer_that_fits_in_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 16, item 5: ``GuidedSAC("CnnPolicy", env)`` on pixels asked for SB3's 1M-transition default buffer of
    image stacks (34 GiB for pixel Pendulum, 59 GiB per array for CarRacing) and failed to allocate it."""
    env = make_pixel_env("Pendulum-v1")  # (64, 64, 9) uint8 frames
    per_transition = transition_nbytes(env.observation_space, env.action_space)
    assert per_transition == 2 * 64 * 64 * 9 + 4 + 4 * 5  # obs and next_obs, the action, 5 float32 columns
    _memory(monkeypatch, 4 * GIB)
    with pytest.warns(UserWarning, match=r"buffer_size=29,\d{3} transitions .* half the 4.0 GiB"):
        model = GuidedSAC("CnnPolicy", env, method="sac", learning_starts=10, batch_size=8)
    buffer = model.replay_buffer
    assert model.buffer_size == buffer.buffer_size == 2 * GIB // per_transition
    assert buffer.observations.nbytes + buffer.next_observations.nbytes <= 2 * GIB
    model.learn(12)  # it trains
    _memory(monkeypatch, 64 * GIB)  # room for RAD's and ERPv's 100k; vector observations keep SB3's 1M
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert GuidedSAC("CnnPolicy", env, learning_starts=10, batch_size=8).buffer_size == 100_000
        assert GuidedSAC("MlpPolicy", make_pendulum_env()).buffer_size == 1_000_000


def test_a_replay_buffer_that_cannot_fit_fails_early_naming_buffer_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 16, item 5: a buffer larger than the machine failed deep in NumPy with a bare allocation error."""
    env = make_pixel_env("Pendulum-v1")
    _memory(monkeypatch, 4 * GIB)
    with pytest.raises(ValueError, match=r"buffer_size=1,000,000 transitions .* 68.7 GiB .* buffer_size=58,\d{3} or"):
        GuidedSAC("CnnPolicy", env, buffer_size=1_000_000)
    model = GuidedSAC("CnnPolicy", env, buffer_size=50_000)  # what fits is taken as given
    assert model.replay_buffer.buffer_size == 50_000
    # frames stored once: twice as many fit
    assert transition_nbytes(env.observation_space, env.action_space, optimize_memory_usage=True) < 37_000
    _memory(monkeypatch, 1_000_000)  # not even a batch of 256 frames fits
    with pytest.raises(ValueError, match=r"No replay buffer .* not even one batch of 256.*buffer_size"):
        GuidedSAC("CnnPolicy", env)


def test_a_guidance_schedule_counts_guided_gradient_steps_only() -> None:
    """Issue 17, item 16: APL's λ schedule counted every gradient step, so it annealed through COVR's cold start
    (guidance held off) and the guidance began already decayed; GuidedPPO / A2C count guided updates only."""
    schedule = LinearDecayCoef(initial=2.0, delta=0.5, every=10, floor=0.1)
    model = GuidedSAC(
        "MlpPolicy", _counter_env(), method="apl", guidance_coef=schedule, **{**SMALL, "learning_starts": 10}
    )
    model.guidance_enabled = False  # the cold start: 40 gradient steps without guidance
    model.learn(50)
    assert model._n_updates == 40 and model.current_guidance_coef == 2.0
    model.guidance_enabled = True
    model.learn(20, reset_num_timesteps=False)
    assert model._n_guided_updates == 20 and model.current_guidance_coef == 1.0  # 2 − 0.5 · ⌊20 / 10⌋
