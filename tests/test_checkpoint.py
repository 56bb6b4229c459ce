"""Crash safety: a training subprocess killed mid-run resumes from its last checkpoint with the replay buffer and its
advice intact; Ctrl-C leaves a usable checkpoint; the COVR schedule and D_f survive a checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sb3_vlm.checkpoint import latest_checkpoint, load_checkpoint
from sb3_vlm.envs.pendulum import swing_up_torque
from sb3_vlm.sac import GuidedSAC
from tests.checkpoint_job import make_env

ROOT = Path(__file__).resolve().parents[1]


def _start(out: Path, total: int) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "tests.checkpoint_job", str(out), str(total)]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(out: Path, min_step: int, proc: subprocess.Popen[str], timeout: float = 180.0) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = latest_checkpoint(out)
        if found is not None and int(found.name.split("_")[1]) >= min_step:
            return found
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise TimeoutError("no checkpoint appeared")


def test_killed_run_resumes_with_buffer_and_advice_intact(tmp_path: Path) -> None:
    total = 5_000
    proc = _start(tmp_path, total)
    _wait_for_checkpoint(tmp_path, 400, proc)
    proc.kill()  # SIGKILL: no handler, no cleanup, possibly in the middle of writing the next checkpoint
    proc.wait(timeout=30)
    folder = latest_checkpoint(tmp_path)
    assert folder is not None  # a half-written .tmp_step_* folder may be left; `latest` never names one
    saved = json.loads((folder / "state.json").read_text())["num_timesteps"]
    model = load_checkpoint(tmp_path, GuidedSAC, make_env())
    buffer = model.replay_buffer
    assert model.num_timesteps == saved >= 400 and buffer.pos == saved
    valid = buffer.advice_valid[:saved, 0].astype(bool)
    assert valid.sum() == saved // 2  # every 2nd step of 200-step episodes was advised
    obs = buffer.observations[:saved, 0][valid]
    theta, theta_dot = np.arctan2(obs[:, 1], obs[:, 0]), obs[:, 2]
    expected = np.array([swing_up_torque(t, d) for t, d in zip(theta, theta_dot, strict=True)]) / 2.0  # scaled
    np.testing.assert_allclose(buffer.advice_actions[:saved, 0][valid][:, 0], expected, atol=1e-5)
    model.learn(1_000 - saved if saved < 1_000 else 100, reset_num_timesteps=False)
    end = max(1_000, saved + 100)
    assert model.num_timesteps == end and buffer.pos == end  # the same buffer grew on
    assert buffer.advice_valid[:end, 0].sum() >= end // 2 - 1


def test_ctrl_c_leaves_a_usable_checkpoint(tmp_path: Path) -> None:
    proc = _start(tmp_path, 100_000)
    _wait_for_checkpoint(tmp_path, 200, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "done" in out, err[-2000:]  # learn() returned normally
    stopped = int(out.split("done")[1].split()[0])
    folder = latest_checkpoint(tmp_path)
    state = json.loads((folder / "state.json").read_text())
    saved = state["num_timesteps"]
    # the env stepped once more before the callback stopped the loop; that step is after the checkpoint
    assert saved == stopped - 1 and stopped < 100_000 and state["interrupted_by_signal"] == signal.SIGINT
    model = load_checkpoint(folder, GuidedSAC, make_env())
    assert model.num_timesteps == model.replay_buffer.pos == saved
    assert len(list(tmp_path.glob("step_*"))) <= 2  # keep=2


def test_finetune_schedule_and_samples_round_trip() -> None:
    from sb3_vlm.advisors import ConstantAdvisor
    from sb3_vlm.advisors.table import NearestNeighbourAdvisor
    from sb3_vlm.finetune import VLMFineTuneCallback

    callback = VLMFineTuneCallback(NearestNeighbourAdvisor(ConstantAdvisor(0)), psi0=100)
    callback.rounds, callback.successful_rounds, callback.steps_since_round = 3, 2, 17
    for _ in range(3):
        callback.psi = next(callback._intervals)
    state = callback.state_dict()
    again = VLMFineTuneCallback(NearestNeighbourAdvisor(ConstantAdvisor(0)), psi0=100)
    again.load_state_dict(state)
    assert (again.psi, again.rounds, again.steps_since_round) == (callback.psi, 3, 17) == (600, 3, 17)
    assert next(again._intervals) == next(callback._intervals) == 2400  # the schedule goes on identically
    with pytest.raises(ValueError, match="does not follow"):
        VLMFineTuneCallback(NearestNeighbourAdvisor(ConstantAdvisor(0)), psi0=50).load_state_dict(state)
