"""Crash safety: a training subprocess killed mid-run resumes from its last checkpoint with the replay buffer and its
advice intact; Ctrl-C leaves a usable checkpoint; the COVR schedule and D_f survive a checkpoint. Issue 17: a kill
while a step is saved again, a damaged or missing file, a full disk, a learn() that raises and a tampered checkpoint
each leave a usable checkpoint (or a clear error) and run no code."""

from __future__ import annotations

import errno
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch as th

from sb3_vlm.checkpoint import VLMCheckpointCallback, latest_checkpoint, load_checkpoint, rng_state
from sb3_vlm.envs.pendulum import swing_up_torque
from sb3_vlm.sac import GuidedSAC
from tests.checkpoint_job import SAC_KWARGS, make_env

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


# ---------------------------------------------------------------------------------------------- issue 17, items 10-12


class _Killed(BaseException):
    """A SIGKILL at a chosen file-system operation: nothing after it runs, no cleanup either."""


def _small_sac(n_steps: int = 0) -> GuidedSAC:
    model = GuidedSAC("MlpPolicy", make_env(), method="dpl", **SAC_KWARGS)
    if n_steps:
        model.learn(n_steps)
    return model


@pytest.fixture(scope="module")
def trained() -> GuidedSAC:
    return _small_sac(150)


def _saver(save_path: Path, model: GuidedSAC, **kwargs: Any) -> VLMCheckpointCallback:
    callback = VLMCheckpointCallback(save_path, save_freq=0, handle_signals=False, **kwargs)
    callback.init_callback(model)
    save_path.mkdir(parents=True, exist_ok=True)  # as when training starts
    return callback


def _rewrite_manifest(folder: Path, legacy: bool = False) -> None:
    """What a tamperer does so that the files they changed pass the completeness check."""
    state = json.loads((folder / "state.json").read_text())
    if legacy:  # the layout before issue 17: no format, no file list
        state.pop("checkpoint_format", None), state.pop("files", None)
    else:
        state["files"] = {p.name: p.stat().st_size for p in folder.iterdir() if p.name != "state.json"}
    (folder / "state.json").write_text(json.dumps(state))


def _to_legacy(folder: Path, extra: object) -> None:
    (folder / "extra.json").unlink(missing_ok=True)
    (folder / "extra.npz").unlink(missing_ok=True)
    (folder / "extra.pkl").write_bytes(pickle.dumps(extra))
    _rewrite_manifest(folder, legacy=True)


class _KillAt:
    """Wraps file-system operations: the first ``n`` run, the next one and all after it raise :class:`_Killed`."""

    def __init__(self, n: int):
        self.n, self.calls = n, 0

    def wrap(self, operation: Any) -> Any:
        def killable(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            if self.calls > self.n:
                raise _Killed(operation.__name__)
            return operation(*args, **kwargs)

        return killable


def test_kill_while_saving_the_same_step_again_leaves_a_complete_checkpoint(
    tmp_path: Path, trained: GuidedSAC, monkeypatch: pytest.MonkeyPatch
) -> None:
    # end of training right after a periodic save writes the same step twice; kill that second save at each of its
    # renames and deletions in turn: the first save of the step must stay loadable until the second is in place
    for kill_at in range(20):
        save_path = tmp_path / str(kill_at)
        saver = _saver(save_path, trained)
        saver.save()
        kill = _KillAt(kill_at)
        with monkeypatch.context() as patch:
            for module, name in ((os, "replace"), (os, "rename"), (shutil, "rmtree")):
                patch.setattr(module, name, kill.wrap(getattr(module, name)))
            try:
                saver.save()
            except _Killed:
                killed = True
            else:
                killed = False
        folder = latest_checkpoint(save_path)
        assert folder is not None, f"killed at operation {kill_at}: no complete checkpoint"
        model = load_checkpoint(save_path, GuidedSAC, make_env())
        assert model.num_timesteps == model.replay_buffer.pos == trained.num_timesteps
        if not killed:  # the whole save ran: one checkpoint of the step is left, the new one
            assert [p.name for p in save_path.glob("step_*")] == [folder.name] == ["step_150_1"]
            assert (save_path / "latest").read_text() == "step_150_1"
            break
    else:
        raise AssertionError("the second save never completed")
    assert kill_at >= 2  # the renames and deletions of the second save were each interrupted once


@pytest.mark.parametrize("damage", ["latest names a missing folder", "truncated model.zip", "no state.json"])
def test_loader_falls_back_to_the_newest_complete_checkpoint(tmp_path: Path, trained: GuidedSAC, damage: str) -> None:
    saver = _saver(tmp_path, trained, keep=3)
    older = saver.save()
    trained.num_timesteps += 50  # a later step (same weights: only the folder matters here)
    try:
        newer = saver.save()
    finally:
        trained.num_timesteps -= 50
    if damage == "latest names a missing folder":
        (tmp_path / "latest").write_text("step_999")
    elif damage == "truncated model.zip":
        with open(newer / "model.zip", "r+b") as f:
            f.truncate(100)
    else:
        (newer / "state.json").unlink()
    expected = newer if damage == "latest names a missing folder" else older
    assert latest_checkpoint(tmp_path) == expected
    with pytest.warns(UserWarning, match="newest complete checkpoint"):
        model = load_checkpoint(tmp_path, GuidedSAC, make_env())
    assert model.num_timesteps == int(expected.name.split("_")[1])
    if damage != "latest names a missing folder":
        with pytest.raises(FileNotFoundError, match="is incomplete"):  # asked for by name: said, not replaced
            load_checkpoint(newer, GuidedSAC, make_env())


def test_missing_replay_buffer_is_an_error_unless_allowed(tmp_path: Path, trained: GuidedSAC) -> None:
    folder = _saver(tmp_path / "a", trained).save()
    (folder / "replay_buffer.pkl").unlink()
    without = _saver(tmp_path / "b", trained, save_replay_buffer=False).save()
    for path in (folder, tmp_path / "a", without):
        with pytest.raises(FileNotFoundError, match="allow_missing_buffer"):
            load_checkpoint(path, GuidedSAC, make_env())
        with pytest.warns(UserWarning, match="empty replay buffer"):
            model = load_checkpoint(path, GuidedSAC, make_env(), allow_missing_buffer=True)
        assert model.num_timesteps == trained.num_timesteps and model.replay_buffer.pos == 0
    assert latest_checkpoint(tmp_path / "a") is None and latest_checkpoint(tmp_path / "a", True) == folder


def test_leftovers_of_killed_saves_are_cleaned_when_training_starts(tmp_path: Path) -> None:
    (tmp_path / ".tmp_step_100_x").mkdir(parents=True)
    (tmp_path / ".tmp_step_100_x" / "model.zip").write_bytes(b"half")
    (tmp_path / ".latest.abc").write_text("step_1")
    (tmp_path / ".trash_y" / "step_1").mkdir(parents=True)
    model = _small_sac()
    model.learn(200, callback=VLMCheckpointCallback(tmp_path, save_freq=100, handle_signals=False))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_100", "step_200_1"]
    # a total that is a multiple of save_freq saves step 200 twice: the second, after the last gradient step, wins
    loaded = load_checkpoint(tmp_path, GuidedSAC, make_env())
    for saved, final in zip(loaded.policy.parameters(), model.policy.parameters(), strict=True):
        assert th.equal(saved, final)


def test_disk_full_during_a_save_warns_and_training_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_buffer = GuidedSAC.save_replay_buffer
    kept_at_failure: list[Path | None] = []

    def disk_full_at_step_200(self: GuidedSAC, path: Any) -> None:
        if self.num_timesteps == 200:
            kept_at_failure.append(latest_checkpoint(tmp_path))
            Path(path).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        save_buffer(self, path)

    monkeypatch.setattr(GuidedSAC, "save_replay_buffer", disk_full_at_step_200)
    model, callback = _small_sac(), VLMCheckpointCallback(tmp_path, save_freq=100, handle_signals=False)
    with pytest.warns(UserWarning, match="No space left on device.*step_100 is kept"):
        model.learn(300, callback=callback)
    assert model.num_timesteps == 300 and callback.failed_saves == 1
    assert kept_at_failure == [tmp_path / "step_100"]  # the previous checkpoint stayed while the save failed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_100", "step_300_1"]  # saves went on
    assert load_checkpoint(tmp_path, GuidedSAC, make_env()).replay_buffer.pos == 300


class _FailingEnv(gym.Wrapper):
    def __init__(self, env: gym.Env, fail_at: int):
        super().__init__(env)
        self.fail_at, self.steps = fail_at, 0

    def step(self, action: Any) -> Any:
        self.steps += 1
        if self.steps == self.fail_at:
            raise RuntimeError("the simulator crashed")
        return self.env.step(action)


def test_signal_handlers_are_restored_when_learn_raises(tmp_path: Path) -> None:
    original = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    model = GuidedSAC("MlpPolicy", _FailingEnv(make_env(), fail_at=150), method="dpl", **SAC_KWARGS)
    try:
        with pytest.raises(RuntimeError, match="simulator crashed"):
            model.learn(500, callback=VLMCheckpointCallback(tmp_path, save_freq=100))
        with pytest.raises(KeyboardInterrupt):  # Ctrl-C interrupts again, as before learn()
            signal.raise_signal(signal.SIGINT)
            time.sleep(1.0)
        assert {sig: signal.getsignal(sig) for sig in original} == original
    finally:
        for sig, handler in original.items():
            signal.signal(sig, handler)
    assert latest_checkpoint(tmp_path) == tmp_path / "step_100"


class _Planted:
    """Unpickling this creates a marker file: what a tampered checkpoint would do with os.system instead."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def test_tampered_extra_files_do_not_run_code(tmp_path: Path, trained: GuidedSAC) -> None:
    marker = tmp_path / "owned"
    legacy = _saver(tmp_path / "legacy", trained).save()
    _to_legacy(legacy, {"rng": _Planted(marker)})
    with pytest.raises(ValueError, match="allow_legacy_pickle"):
        load_checkpoint(legacy, GuidedSAC, make_env())
    npz = _saver(tmp_path / "npz", trained).save()
    planted = np.empty(1, dtype=object)
    planted[0] = _Planted(marker)
    with open(npz / "extra.npz", "wb") as f:
        np.savez(f, a0=planted)
    _rewrite_manifest(npz)
    with pytest.raises(ValueError, match="allow_pickle"):
        load_checkpoint(npz, GuidedSAC, make_env())
    named = _saver(tmp_path / "json", trained).save()
    for name in ("builtins:open", "os:system", "sb3_vlm.checkpoint:VLMCheckpointCallback", "sb3_vlm.__main__:x"):
        record = {"__kind__": "record", "type": name, "fields": {}}
        (named / "extra.json").write_text(json.dumps({"rng": record}))
        _rewrite_manifest(named)
        with pytest.raises(ValueError, match="not a dataclass of an imported sb3_vlm module"):
            load_checkpoint(named, GuidedSAC, make_env())
    assert not marker.exists()


def test_checkpoint_of_the_old_format_loads_only_with_allow_legacy_pickle(tmp_path: Path, trained: GuidedSAC) -> None:
    folder = _saver(tmp_path, trained).save()
    _to_legacy(folder, {"rng": rng_state()})
    assert latest_checkpoint(tmp_path) == folder  # complete, so that loading it says why it is refused
    with pytest.raises(ValueError, match="older sb3-vlm"):
        load_checkpoint(tmp_path, GuidedSAC, make_env())
    model = load_checkpoint(tmp_path, GuidedSAC, make_env(), allow_legacy_pickle=True)
    assert model.num_timesteps == model.replay_buffer.pos == trained.num_timesteps


def test_covr_state_and_rng_round_trip_without_pickle(tmp_path: Path, trained: GuidedSAC) -> None:
    pytest.importorskip("minigrid")
    from sb3_vlm.advisors import ConstantAdvisor
    from sb3_vlm.advisors.table import NearestNeighbourAdvisor
    from sb3_vlm.envs.minigrid import MiniGridTeacherView
    from sb3_vlm.envs.pendulum import make_pendulum_env
    from sb3_vlm.finetune import TrajectoryCollector, VLMFineTuneCallback

    grid = MiniGridTeacherView(gym.make("MiniGrid-Empty-5x5-v0"))  # lazy views: a content key and a MiniGridState
    pendulum = make_pendulum_env()  # a tuple state, a Box action space
    grid.reset(seed=0), pendulum.reset(seed=0)
    collector = TrajectoryCollector(2, gamma=0.9, max_samples=3, seed=0)  # a reservoir: its generator is state too
    for t in range(5):
        requests = [{"vlm_request": grid.teacher_request()}, {"vlm_request": pendulum.teacher_request()}]
        grid.step(2), pendulum.step(np.array([0.5]))
        actions = np.array([[2.0], [0.5]])
        collector.add(requests, actions, np.array([1.0, -t]), np.array([t == 2, t == 3]))
    ft = VLMFineTuneCallback(NearestNeighbourAdvisor(ConstantAdvisor(0)), psi0=100)
    ft.collector, ft.rounds, ft.history = collector, 1, [{"round": 1, "loss": np.float64(0.25), "message": None}]
    ft.psi = next(ft._intervals)  # the schedule after one round

    folder = _saver(tmp_path, trained, finetune_callback=ft).save()
    assert sorted(p.name for p in folder.iterdir()) == [
        "extra.json",
        "extra.npz",
        "model.zip",
        "replay_buffer.pkl",
        "state.json",
    ]
    lazy = [s.request for s in collector.samples if s.request.content_key is not None]
    assert lazy and not any(r.rendered for r in lazy)  # saving drew the image for the copy only
    draws = (random.random(), np.random.rand(), th.rand(1))

    again = VLMFineTuneCallback(NearestNeighbourAdvisor(ConstantAdvisor(0)), psi0=100)
    load_checkpoint(folder, GuidedSAC, make_env(), finetune_callback=again)
    assert (random.random(), np.random.rand()) == draws[:2] and th.equal(th.rand(1), draws[2])
    restored = again.collector
    assert isinstance(restored, TrajectoryCollector) and again.psi == ft.psi and again.history == ft.history
    assert type(again.history[0]["loss"]) is np.float64
    assert (restored.n_seen, restored.n_episodes, len(restored)) == (collector.n_seen, 2, 3)
    for a, b in zip(collector.samples, restored.samples, strict=True):
        assert a.request == b.request and a.ret == b.ret and np.array_equal(a.action, b.action)
        assert b.request.rendered and np.array_equal(a.request.image, b.request.image)
        if a.request.content_key is None:
            assert a.request.state == b.request.state
        else:
            assert np.array_equal(a.request.state.grid, b.request.state.grid)
            assert (a.request.state.agent_pos, a.request.state.task) == (b.request.state.agent_pos, "goal")
    for a_ep, b_ep in zip(collector.episodes, restored.episodes, strict=True):  # episodes still running
        assert a_ep.rewards == b_ep.rewards and a_ep.requests == b_ep.requests
    assert restored._rng.integers(1 << 30) == collector._rng.integers(1 << 30)
