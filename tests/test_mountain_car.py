"""MountainCarContinuous with its energy-pumping teacher (the suite's sparse-reward continuous task)."""

from __future__ import annotations

import numpy as np

from sb3_vlm.advice import AdviceRequest
from sb3_vlm.advisors import NoisyAdvisor
from sb3_vlm.envs.mountain_car import MountainCarOracle, make_mountain_car_env
from sb3_vlm.experiments.suite import default_view_key, make_advisor


def test_the_oracle_reaches_the_flag_and_its_mirror_does_not() -> None:
    env, oracle = make_mountain_car_env(), MountainCarOracle()
    adversary = make_advisor("adversarial", oracle, "continuous", seed=0)
    for advisor, reaches in ((oracle, True), (adversary, False)):
        for seed in range(2):
            env.reset(seed=seed)
            total, terminated, truncated = 0.0, False, False
            while not (terminated or truncated):
                action = advisor.advise([env.get_wrapper_attr("teacher_request")()])[0].action
                _, reward, terminated, truncated, _ = env.step(action)
                total += float(reward)
            assert terminated == reaches  # terminated: the flag
            assert (total > 80) == reaches


def test_the_oracle_needs_the_state_and_the_noisy_teacher_is_wrong_on_regions() -> None:
    oracle = MountainCarOracle()
    space = make_mountain_car_env().action_space
    (stateless,) = oracle.advise([AdviceRequest(action_space=space)])  # no state: invalid advice, counted
    assert not stateless.valid and oracle.stats.errors == 1 and oracle.stats.invalid == 1
    key = default_view_key(oracle, "continuous")
    teacher = make_advisor("r0.8", oracle, "continuous", seed=0)
    assert isinstance(teacher, NoisyAdvisor)
    rng = np.random.default_rng(0)
    states = np.stack([rng.uniform(-1.2, 0.6, 400), rng.uniform(-0.07, 0.07, 400)], axis=1)
    requests = [AdviceRequest(action_space=space, state=s) for s in states]
    answers = zip(teacher.advise(requests), oracle.advise(requests), strict=True)
    right = np.array([np.allclose(a.action, o.action) for a, o in answers])
    assert 0.6 < right.mean() < 0.95
    cells = [key(r) for r in requests]
    by_cell: dict[bytes, set[bool]] = {}
    for cell, ok in zip(cells, right, strict=True):
        by_cell.setdefault(cell, set()).add(bool(ok))
    assert all(len(v) == 1 for v in by_cell.values())  # right or wrong by region, not by step
    assert 5 < len(by_cell) < 200
