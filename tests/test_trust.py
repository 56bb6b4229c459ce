"""Adaptive trust of the on-policy guidance: the estimator on hand-built rollouts, and in GuidedPPO / GuidedA2C."""

from __future__ import annotations

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import DummyVecEnv

from sb3_vlm import GuidedA2C, GuidedPPO
from sb3_vlm.advice import Advice
from sb3_vlm.advisors import CallableAdvisor
from sb3_vlm.guidance.distill import advised_action_nll, capped_rows, kl_distill_loss
from sb3_vlm.guidance.trust import (
    TrustEstimator,
    TrustSettings,
    advice_diversity,
    advice_evidence,
    fade_factor,
    followed_continuous,
    followed_discrete,
    imitation_cap,
    row_gate,
    updated_trust,
)
from sb3_vlm.wrappers import VLMAdviceWrapper
from tests.helpers import ColourEnv


def _probs(best: list[int], n: int = 3) -> np.ndarray:
    p = np.full((len(best), n), 0.1 / n)
    p[np.arange(len(best)), best] += 0.9
    return p


def test_followed_discrete_uses_the_teachers_top_action_and_skips_uniform_rows() -> None:
    probs = _probs([0, 1, 2, 0])
    probs[3] = 1 / 3  # a teacher that ranks all actions equally gives nothing to follow
    followed, informative = followed_discrete(np.array([0, 2, 2, 0]), probs, np.array([1, 1, 0, 1]))
    np.testing.assert_array_equal(followed, [True, False, False, False])
    np.testing.assert_array_equal(informative, [True, True, False, False])


def test_followed_continuous_means_the_sample_moved_towards_the_advice() -> None:
    mean = np.zeros((3, 1))
    advised = np.array([[1.0], [1.0], [-1.0]])
    followed, informative = followed_continuous(np.array([[0.5], [-0.5], [0.5]]), mean, advised, np.ones(3))
    np.testing.assert_array_equal(followed, [True, False, False])
    assert informative.all()


def test_evidence_is_the_t_statistic_of_the_importance_weighted_contrast() -> None:
    adv = np.array([1.0, 2.0, 3.0, 4.0, -1.0, 0.0, 1.0, 0.0])
    followed = np.array([True] * 4 + [False] * 4)
    informative = np.ones(8, dtype=bool)
    # p = 1/2: d = 2A on followed rows, -2A on the others = [2, 4, 6, 8, 2, 0, -2, 0]; mean 2.5, var 78/7
    expected = 2.5 / np.sqrt(78 / 7 / 8)
    assert advice_evidence(adv, followed, informative, 0.5, min_rows=4) == pytest.approx(expected)
    assert advice_evidence(-adv, followed, informative, 0.5, min_rows=4) == pytest.approx(-expected)
    # too few rows in one group, or no advice at all: no evidence
    assert advice_evidence(adv, followed, informative, 0.5, min_rows=5) == 0.0
    assert advice_evidence(adv, followed, np.zeros(8, dtype=bool)) == 0.0
    # constant advantages (sparse reward before any success): no evidence, not a division by zero
    assert advice_evidence(np.zeros(8), followed, informative) == 0.0


def test_evidence_is_immune_to_a_state_dependent_baseline_error() -> None:
    # two states; the advice is worth +1 in both. The policy follows it 90 % of the time in state A, 10 % in B, and
    # the critic's baseline is off by -3 in A and +3 in B: pooled means say "following hurts" (Simpson's paradox)
    followed = np.array([True] * 9 + [False] + [True] + [False] * 9)
    true_adv = np.where(followed, 1.0, 0.0)
    bias = np.array([-3.0] * 10 + [3.0] * 10)
    p = np.array([0.9] * 10 + [0.1] * 10)
    adv = true_adv + bias
    assert adv[followed].mean() < adv[~followed].mean()
    assert advice_evidence(adv, followed, np.ones(20, dtype=bool), p) > 0
    assert advice_evidence(-true_adv + bias, followed, np.ones(20, dtype=bool), p) < 0


def test_trust_moves_outside_the_dead_zone_only_and_stays_in_unit_interval() -> None:
    s = TrustSettings(initial=0.2, rate=0.1, dead_zone=2.0)
    assert updated_trust(0.2, 1.9, s) == 0.2 and updated_trust(0.2, -1.9, s) == 0.2
    assert updated_trust(0.2, 2.5, s) == pytest.approx(0.25)
    assert updated_trust(0.2, -2.5, s) == pytest.approx(0.15)
    assert updated_trust(0.2, 50.0, s) == pytest.approx(0.3)  # at most η per window
    assert updated_trust(0.05, -50.0, s) == 0.0
    assert updated_trust(0.95, 50.0, s) == 1.0
    assert updated_trust(0.4, float("nan"), s) == 0.4


def test_estimator_rises_with_positive_advantages_of_advised_steps_and_falls_with_negative() -> None:
    rng = np.random.default_rng(0)
    followed = rng.random(256) < 0.5
    informative = np.ones(256, dtype=bool)
    noise = rng.normal(size=256)
    good, bad = TrustEstimator(TrustSettings(window=512)), TrustEstimator(TrustSettings(window=512))
    assert good.observe(noise + followed, followed, informative) is None  # half a window: no update yet
    assert good.trust == 0.2
    for _ in range(11):
        good.observe(noise + followed, followed, informative)
        bad.observe(noise - followed, followed, informative, follow_prob=0.5)
    assert good.trust == pytest.approx(0.2 + 0.1 * 6)  # 12 half windows: 6 full ones, z past the clip
    assert bad.trust == 0.0
    assert good.last_evidence > 2.0 > -2.0 > bad.last_evidence
    empty = TrustEstimator(TrustSettings())
    assert empty.observe(np.ones(256), followed, np.zeros(256, dtype=bool)) is None and empty.trust == 0.2


def test_row_gate_closes_where_the_rows_own_advantage_contradicts_the_advice() -> None:
    adv = np.array([2.0, -2.0, 2.0, -2.0, 0.1, 2.0])
    followed = np.array([True, True, False, False, True, True])
    informative = np.array([True, True, True, True, True, False])
    valid = np.array([1, 1, 1, 1, 1, 0])
    weight = row_gate(adv, followed, informative, valid, margin=0.5)
    # std(adv) ≈ 1.72: ±2 is ±1.16 std; followed & worse, and not followed & better, are switched off
    np.testing.assert_array_equal(weight, [1, 0, 0, 1, 1, 0])
    np.testing.assert_array_equal(row_gate(adv, followed, informative, valid, margin=None), valid)


def test_weighted_distillation_terms_against_hand_computed_values() -> None:
    p = th.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])
    log_pi = th.log(th.tensor([[0.5, 0.5], [0.25, 0.75], [0.5, 0.5]]))
    valid = th.tensor([1.0, 1.0, 0.0])
    weight = th.tensor([1.0, 0.0, 1.0])
    # row 0: KL = log 2; row 1 gated off; row 2 invalid; mean over the two valid rows
    assert kl_distill_loss(p, log_pi, valid, weight).item() == pytest.approx(np.log(2) / 2)
    assert kl_distill_loss(p, log_pi, valid).item() == pytest.approx(
        (np.log(2) + 0.5 * np.log(0.5 / 0.25) + 0.5 * np.log(0.5 / 0.75)) / 2
    )
    nll = advised_action_nll(th.tensor([-1.0, -3.0, -5.0]), valid, weight)
    assert nll.item() == pytest.approx(0.5)


def _colour_model(algo, right: bool, **kwargs):
    """ColourEnv (action = colour is rewarded at once) with a teacher that is always right or always wrong."""

    def teacher(request):
        colour = int(request.image[0, 0, 0] > 0)
        return Advice(action=np.asarray([colour if right else 1 - colour]))

    advisor = CallableAdvisor(teacher)
    venv = DummyVecEnv([lambda: VLMAdviceWrapper(ColourEnv(), advisor) for _ in range(4)])
    return algo("MlpPolicy", venv, seed=0, device="cpu", **kwargs)


@pytest.mark.parametrize(
    "algo, kwargs", [(GuidedPPO, dict(n_steps=128, batch_size=128, n_epochs=2)), (GuidedA2C, dict(n_steps=8))]
)
def test_trust_follows_the_runs_evidence(algo, kwargs) -> None:
    right = _colour_model(algo, True, **kwargs).learn(6_000)
    wrong = _colour_model(algo, False, **kwargs).learn(6_000)
    assert right.teacher_trust >= TrustSettings().initial + 2 * TrustSettings().rate  # risen by two windows or more
    assert wrong.teacher_trust == 0.0
    assert wrong.current_teacher_coef == 0.0
    logged = wrong.logger.name_to_value
    assert logged["train/teacher_trust"] == 0.0 and logged["train/advice_gated_frac"] > 0.0


def test_trust_off_is_lvlm2p_and_the_trust_round_trips_through_save(tmp_path) -> None:
    fixed = _colour_model(GuidedPPO, False, n_steps=64, batch_size=64, n_epochs=1, trust=False, teacher_coef=0.3)
    assert fixed.teacher_trust == 1.0 and fixed.current_teacher_coef == 0.3
    fixed.learn(512)
    assert fixed.current_teacher_coef == 0.3  # a fixed λ: nothing adapts
    np.testing.assert_array_equal(fixed.rollout_buffer.advice_weight, fixed.rollout_buffer.advice_valid)

    model = _colour_model(GuidedPPO, False, n_steps=128, batch_size=128, n_epochs=1).learn(2_048)
    assert model.teacher_trust < TrustSettings().initial
    model.save(tmp_path / "m.zip")
    loaded = GuidedPPO.load(tmp_path / "m.zip", device="cpu")
    assert loaded.teacher_trust == model.teacher_trust


def test_no_advice_leaves_the_trust_alone() -> None:
    venv = DummyVecEnv([ColourEnv for _ in range(2)])
    with pytest.warns(UserWarning, match="received no advice"):
        model = GuidedPPO("MlpPolicy", venv, n_steps=64, batch_size=64, n_epochs=1, seed=0, device="cpu").learn(256)
    assert model.teacher_trust == TrustSettings().initial
    assert not model.rollout_buffer.advice_weight.any()


def test_trust_settings_are_validated() -> None:
    for bad in (dict(initial=1.5), dict(rate=0.0), dict(dead_zone=-1.0), dict(window=0), dict(row_margin=-1.0)):
        with pytest.raises(ValueError):
            TrustSettings(**bad)
    with pytest.raises(TypeError, match="trust must be"):
        GuidedPPO("MlpPolicy", DummyVecEnv([ColourEnv]), trust="yes")  # type: ignore[arg-type]


def test_box_actions_use_the_policy_mean_to_tell_following() -> None:
    from tests.helpers import CounterEnv, counter_view

    def teacher(request):
        return Advice(action=np.asarray([1.0], dtype=np.float32))

    box = spaces.Box(-2.0, 2.0, shape=(1,), dtype=np.float32)
    venv = DummyVecEnv(
        [lambda: VLMAdviceWrapper(CounterEnv(box), CallableAdvisor(teacher), teacher_view=counter_view)] * 2
    )
    model = GuidedPPO("MlpPolicy", venv, n_steps=64, batch_size=64, n_epochs=1, seed=0, device="cpu").learn(128)
    frac = model.logger.name_to_value["train/advice_followed_frac"]
    assert 0.2 < frac < 0.8  # Gaussian exploration moves half the samples towards a fixed target


def test_idle_decay_lowers_trust_in_proportion_to_how_much_the_advice_is_copied() -> None:
    rng = np.random.default_rng(1)
    noise = rng.normal(size=512) * 1e-3  # no evidence either way
    informative = np.ones(512, dtype=bool)
    copied = rng.random(512) < 0.8
    off = TrustEstimator(TrustSettings())
    on = TrustEstimator(TrustSettings(idle_decay=0.5))
    off.observe(noise, copied, informative)
    on.observe(noise, copied, informative)
    assert abs(on.last_evidence) < 2.0
    assert off.trust == 0.2  # the default: no evidence, no change
    assert on.trust == pytest.approx(0.2 - 0.5 * 0.1 * copied.mean())


def test_capped_rows_are_pulled_back_to_the_cap_and_the_others_to_the_teacher() -> None:
    p = th.tensor([[0.9, 0.1], [0.2, 0.8], [0.9, 0.1], [0.55, 0.45]])
    log_pi = th.log(th.tensor([[0.7, 0.3], [0.5, 0.5], [0.4, 0.6], [0.8, 0.2]])).requires_grad_(True)
    # row 0 takes the advice with 0.7 >= c = 0.6: capped; rows 1 (0.5) and 2 (0.4) are below the cap; row 3's
    # teacher gives only 0.55 < c, so its own KL already holds the student below the cap
    assert capped_rows(p, log_pi, 0.6).tolist() == [True, False, False, False]
    assert not capped_rows(p, log_pi, 1.0).any()
    valid = th.ones(4)
    loss = kl_distill_loss(p, log_pi, valid, cap=0.6)
    kl = (th.xlogy(p, p) - p * log_pi.detach()).sum(dim=-1)
    binary = 0.6 * np.log(0.6 / 0.7) + 0.4 * np.log(0.4 / 0.3)
    assert loss.item() == pytest.approx((binary + kl[1] + kl[2] + kl[3]).item() / 4)  # mean over every valid row
    loss.backward()
    assert log_pi.grad is not None
    assert log_pi.grad[0, 0] > 0  # descent lowers π(a_v|s) of the capped row towards c
    assert log_pi.grad[2, 0] < 0  # and raises it on a row below the cap
    with pytest.raises(ValueError, match="imitation cap"):
        capped_rows(p, log_pi, 0.0)
    with pytest.raises(ValueError, match="imitation cap"):
        kl_distill_loss(p, log_pi, valid, cap=1.5)
    # a cap of 1 is LVLM2P's term unchanged
    assert kl_distill_loss(p, log_pi, valid, cap=1.0).item() == pytest.approx(kl.mean().item())


def test_imitation_cap_grows_with_trust() -> None:
    settings = TrustSettings(cap_floor=0.5)
    assert imitation_cap(0.0, settings, 7) == 0.5
    assert imitation_cap(0.2, settings, 7) == pytest.approx(0.6)
    assert imitation_cap(1.0, settings, 7) == 1.0
    # the default floor is a uniform policy's probability: an untrusted teacher adds no preference
    assert imitation_cap(0.0, TrustSettings(), 7) == pytest.approx(1 / 7)
    assert imitation_cap(0.2, TrustSettings(), 4) == pytest.approx(0.25 + 0.75 * 0.2)
    assert imitation_cap(0.3, TrustSettings(cap=False), 7) is None
    with pytest.raises(ValueError, match="cap_floor"):
        TrustSettings(cap_floor=0.0)


class _Rewardless(ColourEnv):
    """ColourEnv without rewards: nothing the run does can show whether the advice pays."""

    def step(self, action):
        obs, _, terminated, truncated, info = super().step(action)
        return obs, 0.0, terminated, truncated, info


def _unrewarded_ppo(venv, learning_rate: float, cap: bool, teacher_coef: float) -> GuidedPPO:
    """GuidedPPO trained 4k steps on an env without rewards: only the distillation term moves the policy."""
    return GuidedPPO(
        "MlpPolicy",
        venv,
        n_steps=64,
        batch_size=64,
        n_epochs=4,
        learning_rate=learning_rate,
        normalize_advantage=False,  # else the value net's noise, scaled to unit variance, drives the policy alone
        teacher_coef=teacher_coef,
        trust=TrustSettings(cap=cap, min_diversity=0.0),  # the cap alone: a constant teacher would not be imitated
        seed=0,
        device="cpu",
    ).learn(4_096)


@pytest.mark.parametrize("cap", [True, False])
def test_a_constant_teacher_cannot_take_over_the_policy_before_any_evidence(cap) -> None:
    advisor = CallableAdvisor(lambda request: Advice(action=np.asarray([0])))
    venv = DummyVecEnv([lambda: VLMAdviceWrapper(_Rewardless(), advisor) for _ in range(4)])
    model = _unrewarded_ppo(venv, learning_rate=3e-3, cap=cap, teacher_coef=1.0)
    assert model.teacher_trust < 0.5  # no rewards: no real evidence either way
    obs = th.as_tensor(np.stack([_Rewardless()._obs(), np.full((8, 8, 3), 255, dtype=np.uint8)]))
    with th.no_grad():
        p_advised = model.policy.get_distribution(model.policy.obs_to_tensor(obs.numpy())[0]).distribution.probs[:, 0]
    if not cap:
        assert p_advised.min().item() > 0.95  # LVLM2P's term alone: the teacher is copied outright
    else:
        cap_value = imitation_cap(model.teacher_trust, model.trust, 2)
        assert cap_value is not None and np.abs(p_advised.numpy() - cap_value).max() < 0.1  # explores the rest
        assert model.logger.name_to_value["train/imitation_cap"] == pytest.approx(cap_value)


def test_box_imitation_under_the_cap_moves_the_mean_but_never_narrows_the_exploration_noise() -> None:
    from tests.helpers import CounterEnv, counter_view

    def teacher(request):
        return Advice(action=np.asarray([1.0], dtype=np.float32))

    box = spaces.Box(-2.0, 2.0, shape=(1,), dtype=np.float32)

    def log_std_after(cap: bool, teacher_coef: float = 1.0) -> tuple[float, float]:
        venv = DummyVecEnv(
            [lambda: VLMAdviceWrapper(CounterEnv(box), CallableAdvisor(teacher), teacher_view=counter_view)] * 2
        )
        model = _unrewarded_ppo(venv, learning_rate=1e-2, cap=cap, teacher_coef=teacher_coef)
        mean = model.policy.predict(np.array([[3.0, 1.0]], dtype=np.float32), deterministic=True)[0]
        return float(model.policy.log_std.detach().mean()), float(mean[0, 0])

    (capped, capped_mean), (uncapped, _), (alone, alone_mean) = (
        log_std_after(True),
        log_std_after(False),
        log_std_after(True, teacher_coef=0.0),
    )
    assert uncapped < alone - 1.0  # LVLM2P's NLL narrows the Gaussian onto the advice
    assert abs(capped - alone) < 0.3  # under the cap, the std is the policy gradient's alone
    assert abs(capped_mean - 1.0) < abs(alone_mean - 1.0)  # while the mean still moves towards the advice


def test_the_teachers_weight_fades_over_the_second_half_of_learn() -> None:
    settings = TrustSettings()
    assert fade_factor(1.0, settings) == 1.0 and fade_factor(0.5, settings) == 1.0  # the first half: full weight
    assert fade_factor(0.25, settings) == pytest.approx(0.5)  # three quarters done: half
    assert fade_factor(0.0, settings) == 0.0
    assert fade_factor(0.1, TrustSettings(fade_start=None)) == 1.0
    with pytest.raises(ValueError, match="fade_start"):
        TrustSettings(fade_start=1.0)

    coefs: list[tuple[float, float, float]] = []

    class Record(BaseCallback):
        def _on_step(self) -> bool:
            return True

        def _on_rollout_end(self) -> None:
            model = self.model
            coefs.append((model._current_progress_remaining, model.teacher_trust, model.current_teacher_coef))

    model = _colour_model(GuidedPPO, True, n_steps=64, batch_size=64, n_epochs=1, teacher_coef=0.5)
    model.learn(4_096, callback=Record())
    for remaining, trust, coef in coefs:
        assert coef == pytest.approx(0.5 * trust * min(1.0, 2.0 * remaining))  # λ · τ · fade
    assert any(r < 0.5 and t > 0 for r, t, _ in coefs)  # the fade was measured while the teacher had a say
    assert coefs[-1][2] <= 0.5 / 8 + 1e-9  # the last rollout starts 15/16 of the way: an eighth of λ at most


def test_advice_diversity_is_the_share_of_rows_off_the_most_common_advice() -> None:
    assert advice_diversity(_probs([0, 0, 0, 0]), discrete=True) == 0.0
    assert advice_diversity(_probs([0, 1, 0, 2]), discrete=True) == pytest.approx(0.5)
    assert advice_diversity(_probs([1]), discrete=True) == 1.0  # one row: no evidence of sameness
    box = np.array([[0.0, 1.0], [0.01, 1.0], [0.0, 0.5], [0.02, 0.98]])
    # median (0.005, 0.99); tol 0.05 of the range 2 = 0.1: only row 2's second coordinate is off it
    assert advice_diversity(box, discrete=False, scale=np.array([2.0, 2.0]), tol=0.05) == pytest.approx(0.25)
    assert advice_diversity(box, discrete=False, scale=np.array([20.0, 20.0]), tol=0.05) == 0.0


def test_the_estimator_stops_imitation_while_the_recent_advice_ignores_the_view() -> None:
    estimator = TrustEstimator(TrustSettings(window=8))
    assert estimator.imitates  # no advice seen yet
    estimator.observe_advice(_probs([2] * 8), discrete=True)
    assert not estimator.imitates and estimator.diversity == 0.0
    # the window keeps the last 8 rows: four 2s, then 0, 1, 2, 0: 3 of 8 differ from the most common action
    estimator.observe_advice(_probs([0, 1, 2, 0]), discrete=True)
    assert estimator.imitates and estimator.diversity == pytest.approx(3 / 8)
    off = TrustEstimator(TrustSettings(min_diversity=0.0))
    off.observe_advice(_probs([2] * 8), discrete=True)
    assert off.imitates
    with pytest.raises(ValueError, match="min_diversity"):
        TrustSettings(min_diversity=1.0)


@pytest.mark.parametrize("algo, kwargs", [(GuidedPPO, dict(n_steps=32, batch_size=32, n_epochs=2)), (GuidedA2C, {})])
def test_a_teacher_whose_advice_ignores_the_view_leaves_the_base_algorithm_unchanged(algo, kwargs) -> None:
    # the constant teacher (ERPv's worst model) under the defaults: the run is the unguided one, bit for bit
    def constant_venv() -> DummyVecEnv:
        advisor = CallableAdvisor(lambda request: Advice(action=np.asarray([0])))
        return DummyVecEnv([lambda: VLMAdviceWrapper(ColourEnv(), advisor) for _ in range(2)])

    params, diversity = [], []
    for coef in (1.0, 0.0):
        model = algo("MlpPolicy", constant_venv(), teacher_coef=coef, seed=0, device="cpu", **kwargs).learn(256)
        params.append(th.nn.utils.parameters_to_vector(model.policy.parameters()).detach())
        diversity.append(model.logger.name_to_value["train/advice_diversity"])
    assert th.equal(params[0], params[1])
    assert diversity == [0.0, 0.0]
    # the same teacher is imitated once the check is off: the test can tell the two apart
    imitated = algo(
        "MlpPolicy", constant_venv(), trust=TrustSettings(min_diversity=0.0), seed=0, device="cpu", **kwargs
    ).learn(256)
    assert not th.equal(th.nn.utils.parameters_to_vector(imitated.policy.parameters()).detach(), params[1])
