"""TeacherEpisodes: whole episodes by the advisor while they return more than the learner's."""

from __future__ import annotations

import numpy as np
import pytest
import torch as th

from sb3_vlm import GuidedSAC, TeacherEpisodes, VLMAdviceWrapper
from sb3_vlm.advisors import ConstantAdvisor
from sb3_vlm.envs.pendulum import PendulumSwingUpOracle, make_pendulum_env

SMALL = dict(learning_starts=20, batch_size=16, buffer_size=2_000, policy_kwargs=dict(net_arch=[16]), seed=0)


def _episodes(explore: TeacherEpisodes, returns: dict[bool, float], n: int, length: int = 3) -> list[bool]:
    """Run ``n`` episodes of one env; who acted in each (True: the advisor), rewards ``returns[who] / length``."""
    who = []
    for _ in range(n):
        teacher = bool(explore.advisor_mask(1)[0])
        who.append(teacher)
        for t in range(length):
            explore.step(np.array([t == length - 1]), np.array([returns[teacher] / length]))
    return who


def test_a_teacher_that_returns_more_keeps_its_share_and_a_worse_one_loses_it() -> None:
    good = TeacherEpisodes(share=0.5, window=3, seed=0)
    who = _episodes(good, {True: 90.0, False: -30.0}, 200)
    assert 0.4 < np.mean(who) < 0.6 and good.current_share == 0.5
    np.testing.assert_allclose(good.teacher_returns, [90.0] * 3)  # the last `window` of each kind, summed per episode

    bad = TeacherEpisodes(share=0.5, window=3, seed=0)
    who = _episodes(bad, {True: -100.0, False: -30.0}, 200)
    assert bad.current_share == 0.0 and not bad.teacher_pays
    first_learner = who.index(False)
    assert sum(who) <= first_learner + 1  # once both are known, no further teacher episode

    # negative rewards on both sides: "more" is the comparison of means, whatever the sign
    close = TeacherEpisodes(share=0.5, window=3, seed=0)
    _episodes(close, {True: -150.0, False: -1200.0}, 20)
    assert close.teacher_pays


def test_the_learner_catching_up_ends_the_teachers_turns() -> None:
    explore = TeacherEpisodes(share=0.5, window=2, seed=1)
    _episodes(explore, {True: 50.0, False: 0.0}, 20)
    assert explore.current_share == 0.5
    _episodes(explore, {True: 50.0, False: 80.0}, 6)  # the learner now does better
    assert explore.current_share == 0.0
    who = _episodes(explore, {True: 50.0, False: 80.0}, 30)
    assert not any(who)


def test_not_allowed_starts_no_teacher_episode_and_bad_arguments_are_refused() -> None:
    explore = TeacherEpisodes(share=1.0, seed=0)
    assert not explore.advisor_mask(2).any()  # the first episodes are the learner's
    explore.step(np.array([True, False]), np.zeros(2))
    assert explore.advisor_mask(2).tolist() == [True, False]
    explore.step(np.array([True, True]), np.zeros(2), allowed=False)
    assert not explore.advisor_mask(2).any()  # not allowed: the ended episodes go to the learner
    for kwargs in (dict(share=1.5), dict(window=0)):
        with pytest.raises(ValueError):
            TeacherEpisodes(**kwargs)


def test_guided_sac_acts_whole_teacher_episodes_and_logs_the_share() -> None:
    env = VLMAdviceWrapper(make_pendulum_env(max_episode_steps=20), PendulumSwingUpOracle())
    model = GuidedSAC("MlpPolicy", env, advice_exploration="teacher_episodes", **SMALL)
    assert isinstance(model.advice_exploration, TeacherEpisodes) and model.advice_exploration.share == 0.5
    model.advice_exploration = TeacherEpisodes(window=100, seed=0)  # keeps every episode's return
    model.learn(200)  # ten episodes of 20 steps
    explore = model.advice_exploration
    assert explore.teacher_returns and explore.learner_returns
    assert model.n_advised_actions == 20 * len(explore.teacher_returns) + 20 * int(explore.advisor_turn[0])
    assert model.logger.name_to_value["train/teacher_episode_share"] == explore.current_share
    with pytest.raises(ValueError, match="advice_exploration"):
        GuidedSAC("MlpPolicy", env, advice_exploration="always", **SMALL)  # type: ignore[arg-type]


def test_advice_that_ignores_the_view_acts_no_teacher_episode() -> None:
    env = VLMAdviceWrapper(make_pendulum_env(max_episode_steps=20), ConstantAdvisor(0.5))
    model = GuidedSAC(
        "MlpPolicy", env, advice_exploration=TeacherEpisodes(share=1.0, seed=0), diversity_window=16, **SMALL
    )
    model.learn(200)
    assert model.advice_diversity() == 0.0
    assert model.n_advised_actions == 0 and len(model.advice_exploration.learner_returns) == 5  # window
    sac = GuidedSAC("MlpPolicy", env, method="sac", diversity_window=16, **SMALL).learn(200)
    for name, value in sac.policy.state_dict().items():  # such a teacher leaves the run SAC's exactly
        assert th.equal(value, model.policy.state_dict()[name]), name


def test_without_an_advice_wrapper_teacher_episodes_leave_the_run_sacs() -> None:
    import warnings

    from stable_baselines3 import SAC

    kwargs = {**SMALL, "learning_starts": 50}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = GuidedSAC(
            "MlpPolicy", make_pendulum_env(max_episode_steps=20), method="sac", advice_exploration="teacher_episodes",
            **kwargs,
        ).learn(200)  # fmt: skip
    assert not [w for w in caught if "advice_exploration" in str(w.message)]
    assert model.n_advised_actions == 0 and isinstance(model.advice_exploration, TeacherEpisodes)
    sac = SAC("MlpPolicy", make_pendulum_env(max_episode_steps=20), **kwargs).learn(200)
    for name, value in sac.policy.state_dict().items():
        assert th.equal(value, model.policy.state_dict()[name]), name
    assert GuidedSAC("MlpPolicy", make_pendulum_env(), advice_exploration="off", **SMALL).advice_exploration is None


def test_an_advisor_episode_the_advice_did_not_act_in_counts_for_neither() -> None:
    explore = TeacherEpisodes(share=1.0, window=10, seed=0)
    _episodes(explore, {True: 0.0, False: -30.0}, 1)  # the learner's first episode
    assert explore.advisor_mask(1)[0]
    for t in range(4):  # the advisor's turn, but its answers were pending or invalid on 3 of 4 steps
        explore.step(np.array([t == 3]), np.array([25.0]), advised=np.array([t == 0]))
    assert explore.teacher_returns == [] and explore.learner_returns == [-30.0]
    for t in range(4):  # advised on half the steps: the advisor's
        explore.step(np.array([t == 3]), np.array([25.0]), advised=np.array([t < 2]))
    assert explore.teacher_returns == [100.0]
    explore.step(np.zeros(3, dtype=bool), np.zeros(3))  # a different number of envs: a fresh start for them
    assert explore.n_envs == 3 and not explore.advisor_mask(3).any() and explore.teacher_returns == [100.0]


def test_the_share_bounds_the_advisors_steps_as_well_as_its_episodes() -> None:
    """A teacher that balances plays long episodes: with a share of episodes alone it took nearly every step."""
    explore = TeacherEpisodes(share=0.5, window=3, seed=0)
    who = []
    for _ in range(300):
        teacher = bool(explore.advisor_mask(1)[0])
        who.append(teacher)
        length = 50 if teacher else 5  # the teacher's episodes ten times as long, and returning more
        for t in range(length):
            explore.step(np.array([t == length - 1]), np.array([1.0 if teacher else 0.1]))
    assert explore.teacher_pays
    assert explore.step_share <= 0.5 + 50 / (explore.teacher_steps + explore.learner_steps)  # one episode over
    assert explore.step_share > 0.4  # and the bound is what limits it, not the evidence
    assert np.mean(who) < 0.15  # so far fewer than half of the episodes are the teacher's


def test_diversity_is_read_on_the_learners_transitions_not_the_advisors() -> None:
    """On the teacher's own trajectory a good teacher may advise nearly the same everywhere (a balanced pendulum):
    the diversity check must not take it for a teacher that ignores the view."""
    model = GuidedSAC("MlpPolicy", VLMAdviceWrapper(make_pendulum_env(), ConstantAdvisor(0.0)), **SMALL)
    buf = model.replay_buffer
    rng = np.random.default_rng(0)
    n = 200
    buf.advice_valid[:n] = 1.0
    buf.advice_actions[:n] = rng.uniform(-1, 1, size=(n, 1, 1))  # varied advice where the learner acted
    buf.actions[:n] = rng.uniform(-1, 1, size=(n, 1, 1))
    buf.pos = n
    assert model.advice_diversity() > 0.8
    buf.advice_actions[n : 2 * n] = 0.01  # then the teacher's own episode: one action, which is the one taken
    buf.actions[n : 2 * n] = 0.01
    buf.advice_valid[n : 2 * n] = 1.0
    buf.pos = 2 * n
    model.diversity_window = 150  # only the teacher's rows in the window: the last value on the learner's stands
    assert model.advice_diversity() > 0.8
    buf.actions[n : 2 * n] = rng.uniform(-1, 1, size=(n, 1, 1))  # had the learner acted there: no diversity
    assert model.advice_diversity() < 0.05


def test_teacher_episodes_saved_before_the_step_counts_load_and_count_from_zero() -> None:
    import pickle

    explore = TeacherEpisodes(seed=0)
    explore.reset(1)
    old = explore.__dict__.copy()
    del old["teacher_steps"], old["learner_steps"]
    restored = TeacherEpisodes.__new__(TeacherEpisodes)
    restored.__setstate__(old)
    restored.step(np.array([False]), np.zeros(1))
    assert (restored.teacher_steps, restored.learner_steps) == (0, 1)
    assert pickle.loads(pickle.dumps(restored)).learner_steps == 1
