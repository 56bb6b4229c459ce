"""The robust-guidance suite's bookkeeping: teachers with fixed wrong views, thresholds, censoring, speed-ups."""

from __future__ import annotations

import json

import numpy as np
import pytest
from gymnasium import spaces

from sb3_vlm.advice import Advice, AdviceRequest
from sb3_vlm.advisors import CallableAdvisor, NoisyAdvisor
from sb3_vlm.experiments.suite import make_advisor, markdown_table, summarise, threshold_for


def _requests(n: int) -> list[AdviceRequest]:
    return [AdviceRequest(image=None, context={"view": i}, action_space=spaces.Discrete(4)) for i in range(n)]


def test_keyed_noisy_advisor_is_wrong_on_a_fixed_set_of_views() -> None:
    base = CallableAdvisor(lambda r: Advice(probs=np.array([0.7, 0.1, 0.1, 0.1], dtype=np.float32)))
    key = lambda r: str(r.context["view"]).encode()  # noqa: E731
    a = NoisyAdvisor(base, reliability=0.5, seed=3, view_key=key)
    b = NoisyAdvisor(base, reliability=0.5, seed=3, view_key=key)
    first = [int(x.probs.argmax()) for x in a.advise(_requests(200))]
    again = [int(x.probs.argmax()) for x in a.advise(_requests(200))]  # same advisor, asked again: same answers
    other = [int(x.probs.argmax()) for x in b.advise(_requests(200)[::-1])][::-1]  # another order, same views
    assert first == again == other
    assert 60 < sum(f != 0 for f in first) < 140  # about half the views are wrong


def test_adversarial_discrete_advice_is_the_next_action_every_time() -> None:
    base = CallableAdvisor(lambda r: Advice(probs=np.array([0.05, 0.05, 0.85, 0.05], dtype=np.float32)))
    adversary = NoisyAdvisor(base, reliability=0.0, seed=0, mode="adversarial")
    answers = adversary.advise(_requests(20))
    assert all(int(a.probs.argmax()) == 3 for a in answers)
    np.testing.assert_allclose(sorted(answers[0].probs), sorted([0.05, 0.05, 0.05, 0.85]), atol=1e-6)


def test_suite_advisors() -> None:
    oracle = CallableAdvisor(lambda r: Advice(action=np.array([1.0], dtype=np.float32)))
    assert make_advisor("r1.0", oracle, "continuous", 0) is oracle
    assert isinstance(make_advisor("r0.8", oracle, "continuous", 0), NoisyAdvisor)
    with pytest.raises(ValueError, match="unknown advisor"):
        make_advisor("r0.8x", oracle, "discrete", 0)
    box = spaces.Box(-2.0, 2.0, shape=(1,), dtype=np.float32)
    request = AdviceRequest(image=None, action_space=box, state=(0.5, 1.0))
    mirrored = make_advisor("adversarial", oracle, "continuous", 0).advise([request])[0]
    np.testing.assert_allclose(mirrored.action, [-1.0])
    # continuous views are named by a coarse grid: nearby states share their fate
    noisy = make_advisor("r0.5", oracle, "continuous", 0)
    near = [AdviceRequest(image=None, action_space=box, state=(0.5 + 1e-4 * i, 1.0)) for i in range(5)]
    assert len({float(a.action[0]) for a in noisy.advise(near)}) == 1


def test_threshold_works_for_both_signs_and_has_a_floor() -> None:
    assert threshold_for(0.8, 0.0) == pytest.approx(0.76)
    assert threshold_for(-200.0, -1200.0) == pytest.approx(-250.0)
    # the unguided runs barely learned: halfway to the best teacher's final return instead
    assert threshold_for(0.0, 0.0, best_final=0.9) == pytest.approx(0.45)


def test_a_lucky_early_point_does_not_count_as_getting_there() -> None:
    from sb3_vlm.experiments.runner import steps_to_threshold

    steps, means = [10, 20, 30, 40, 50, 60], [0.9, 0.1, 0.0, 0.8, 0.8, 0.8]
    assert steps_to_threshold(steps, means, 0.5) == 10
    assert steps_to_threshold(steps, means, 0.5, hold=3) == 40
    assert steps_to_threshold(steps, [0.0, 0.0, 0.0, 0.0, 0.9, 0.9], 0.5, hold=3) == 50  # the end holds what is left
    assert steps_to_threshold(steps, [0.9, 0.9, 0.0, 0.0, 0.0, 0.0], 0.5, hold=3) is None


def _run(advisor: str, seed: int, reach_at: int | None, final: float, steps: int = 100) -> dict:
    curve_steps = list(range(10, steps + 1, 10))
    returns = [final if reach_at is not None and s >= reach_at else 0.0 for s in curve_steps]
    return dict(algo="ppo", env="LavaGapS7", advisor=advisor, seed=seed, steps=steps, curve_steps=curve_steps,
                curve_returns=returns, eval_return=final)  # fmt: skip


def test_summary_counts_censored_runs_as_the_budget() -> None:
    runs = [
        _run("none", 0, 80, 0.8),
        _run("none", 1, None, 0.0),  # never got there: counts as 100
        _run("r0.8", 0, 20, 0.9),
        _run("r0.8", 1, 40, 0.9),
        _run("constant", 0, None, 0.0),
    ]
    records = {r["advisor"]: r for r in summarise(runs)}
    good = records["r0.8"]
    # unguided final (mean of the last curve points) 0.4, best teacher 0.9: threshold max(0.38, 0.45) = 0.45
    assert good["threshold"] == pytest.approx(0.45)
    assert good["steps_to_threshold"] == [20, 40] and good["unguided_steps_to_threshold"] == [80, 100]
    assert good["unguided_censored"] == [False, True]
    assert good["speedup"] == pytest.approx(90 / 30)
    assert records["constant"]["censored"] == [True] and records["constant"]["final_ratio"] == 0.0
    # an unguided run of a seed no guided run has yet is left out of the comparison
    paired = {r["advisor"]: r for r in summarise([*runs, _run("none", 7, 10, 0.8)])}
    assert paired["r0.8"]["unguided_seeds"] == [0, 1] and paired["r0.8"]["speedup"] == pytest.approx(90 / 30)
    table = markdown_table(list(records.values()))
    assert "≥ 3.00" in table and "1 guided censored" in table


def test_one_suite_run_records_curve_eval_and_guidance_trace() -> None:
    from sb3_vlm.experiments.suite import run_one

    job = dict(algo="ppo", env="LavaGapS7", advisor="adversarial", seed=0, steps=2048, eval_episodes=2)
    out = run_one(job)
    assert out["curve_steps"] and len(out["curve_steps"]) == len(out["curve_returns"])
    assert np.isfinite(out["eval_return"])
    assert out["trace"] and {"teacher_trust", "teacher_coef", "advice_gated_frac"} <= set(out["trace"][0])


def _replacing_worker(job: dict) -> dict:
    """A run during which the log is replaced by a copy of itself (what `git stash` / `git checkout` do)."""
    import os
    from pathlib import Path

    if job["replace"]:
        log = Path(job["log"])
        tmp = log.with_suffix(".tmp")
        tmp.write_text(log.read_text())
        os.replace(tmp, log)
    return {**job, "done": True}


def test_a_sweep_log_replaced_while_the_sweep_runs_keeps_every_line(tmp_path) -> None:
    """A handle held open for the whole sweep wrote every line after such a replacement into the replaced file:
    ten runs of a real sweep were lost that way."""
    from sb3_vlm.experiments.runner import run_jobs

    log = tmp_path / "runs.jsonl"
    # a line from an earlier sweep, so the file exists whenever the replacing run starts (the pool runs jobs
    # ahead of the parent's writes: a log created by this sweep may not exist yet when job 0 runs)
    log.write_text(json.dumps(dict(id=-1)) + "\n")
    jobs = [dict(id=i, replace=(i == 0), log=str(log)) for i in range(4)]
    runs = run_jobs(jobs, _replacing_worker, lambda j: j["id"], log, workers=1)
    assert sorted(r["id"] for r in runs) == [0, 1, 2, 3]
    assert sorted(json.loads(line)["id"] for line in log.read_text().splitlines()) == [-1, 0, 1, 2, 3]
