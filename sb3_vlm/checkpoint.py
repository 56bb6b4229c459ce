"""
Crash-safe checkpoints: :class:`VLMCheckpointCallback` saves everything a run needs to go on (model, replay buffer
with its advice columns, advisor counters, the COVR fine-tuning state, RNG states) atomically, and on Ctrl-C;
:func:`load_checkpoint` restores it.

A checkpoint is a folder ``<save_path>/step_<n>/`` written under a temporary name and renamed when complete (a
rename within one file system is atomic), then ``<save_path>/latest`` is replaced atomically to name it. A run killed
at any moment leaves the previous complete checkpoint and a ``latest`` pointing at one.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import signal
import tempfile
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

from sb3_vlm.callbacks import collect_advice_counters


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def rng_state() -> dict[str, Any]:
    """Python's, NumPy's global and torch's RNG states."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": th.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    th.set_rng_state(state["torch"])


class VLMCheckpointCallback(BaseCallback):
    """
    Save a resumable checkpoint every ``save_freq`` calls of the env (as SB3's ``CheckpointCallback`` counts; written
    at the end of that rollout, when the buffer holds the step), when training ends, and when the process gets
    SIGINT (Ctrl-C) or SIGTERM: the signal stops training after the checkpoint at the end of the current rollout,
    so ``learn()`` returns normally. Never contains an advisor, a client or an API key: the model zip
    excludes the env, the buffer holds advice arrays only, ``state.json`` holds numbers.

    :param save_path: folder of the checkpoints
    :param save_freq: save every this many calls of ``env.step`` (each is ``n_envs`` transitions); 0: only at the
        end and on signals
    :param keep: how many complete checkpoints to keep (the oldest are deleted)
    :param finetune_callback: a :class:`~sb3_vlm.finetune.VLMFineTuneCallback` whose schedule and D_f to save
    :param save_replay_buffer: include the replay buffer (off-policy algorithms)
    :param handle_signals: install the SIGINT / SIGTERM handlers during ``learn()`` (main thread only)
    :param verbose: 1 prints a line per checkpoint
    """

    def __init__(
        self,
        save_path: str | os.PathLike[str],
        save_freq: int = 10_000,
        keep: int = 2,
        finetune_callback: Any = None,
        save_replay_buffer: bool = True,
        handle_signals: bool = True,
        verbose: int = 0,
    ):
        super().__init__(verbose)
        if save_freq < 0 or keep < 1:
            raise ValueError("save_freq must be >= 0 and keep >= 1")
        self.save_path = Path(save_path)
        self.save_freq, self.keep = save_freq, keep
        self.finetune_callback = finetune_callback
        self.save_replay_buffer, self.handle_signals = save_replay_buffer, handle_signals
        self.interrupted: int | None = None
        self._due = self._saved_after_interrupt = False
        self._previous: dict[int, Any] = {}

    def _on_training_start(self) -> None:
        self.save_path.mkdir(parents=True, exist_ok=True)
        if self.handle_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    self._previous[sig] = signal.signal(sig, self._on_signal)
                except ValueError:  # not the main thread: no handlers, periodic checkpoints only
                    break

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.interrupted is not None:  # a second Ctrl-C: the user insists
            raise KeyboardInterrupt
        self.interrupted = signum

    def _on_step(self) -> bool:
        # SB3 stores a step's transition after the callbacks ran: saving waits for the end of the rollout (the same
        # step for off-policy training with train_freq=1), when model and buffer agree
        if self._saved_after_interrupt:
            return False  # learn() returns normally; the checkpoint holds everything up to the last rollout
        if self.save_freq and self.n_calls % self.save_freq == 0:
            self._due = True
        return True

    def _on_rollout_end(self) -> None:
        if self._due or self.interrupted is not None:
            self.save()
            self._due = False
            self._saved_after_interrupt = self.interrupted is not None

    def _on_training_end(self) -> None:
        if not self._saved_after_interrupt:
            self.save()
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def save(self) -> Path:
        """Write a checkpoint now; returns its folder."""
        model = self.model
        final = self.save_path / f"step_{model.num_timesteps}"
        tmp = Path(tempfile.mkdtemp(dir=self.save_path, prefix=f".tmp_step_{model.num_timesteps}_"))
        try:
            model.save(tmp / "model.zip")
            if self.save_replay_buffer and isinstance(model, OffPolicyAlgorithm) and model.replay_buffer is not None:
                resolve = getattr(model.replay_buffer, "resolve_pending", None)
                if callable(resolve):
                    resolve()  # non-blocking answers that have arrived go into the saved copy
                model.save_replay_buffer(tmp / "replay_buffer.pkl")
            env = model.get_env()
            state = {
                "num_timesteps": model.num_timesteps,
                "algo": type(model).__name__,
                "advisor_counters": collect_advice_counters(env) if env is not None else {},
                "interrupted_by_signal": self.interrupted,
            }
            (tmp / "state.json").write_text(json.dumps(state, indent=1))
            extra = {"rng": rng_state()}
            if self.finetune_callback is not None:
                extra["finetune"] = self.finetune_callback.state_dict()
            (tmp / "extra.pkl").write_bytes(pickle.dumps(extra))
            if final.exists():  # the same step saved twice (end of training right after a periodic save)
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _atomic_write(self.save_path / "latest", final.name.encode())
        self._prune()
        if self.verbose:
            print(f"checkpoint: {final}")
        return final

    def _prune(self) -> None:
        steps = sorted(
            (p for p in self.save_path.glob("step_*") if p.is_dir()), key=lambda p: int(p.name.split("_")[1])
        )
        for old in steps[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(save_path: str | os.PathLike[str]) -> Path | None:
    """The folder ``latest`` names under ``save_path``, or None when there is no complete checkpoint."""
    pointer = Path(save_path) / "latest"
    if not pointer.exists():
        return None
    folder = Path(save_path) / pointer.read_text().strip()
    return folder if (folder / "model.zip").exists() else None


def load_checkpoint(
    path: str | os.PathLike[str],
    algo: type[BaseAlgorithm],
    env: Any,
    finetune_callback: Any = None,
    **load_kwargs: Any,
) -> BaseAlgorithm:
    """
    Restore a checkpoint written by :class:`VLMCheckpointCallback` (a checkpoint folder, or its ``save_path`` for
    the latest one): the model on ``env``, its replay buffer with the advice columns, the RNG states and, given the
    callback, the fine-tuning schedule and D_f. Go on with ``model.learn(total - model.num_timesteps,
    reset_num_timesteps=False)`` (episodes restart from a reset).
    """
    folder = Path(path)
    if not (folder / "model.zip").exists():
        found = latest_checkpoint(folder)
        if found is None:
            raise FileNotFoundError(f"No complete checkpoint in {folder}")
        folder = found
    model = algo.load(folder / "model.zip", env=env, **load_kwargs)
    if (folder / "replay_buffer.pkl").exists() and isinstance(model, OffPolicyAlgorithm):
        model.load_replay_buffer(folder / "replay_buffer.pkl")
    extra = pickle.loads((folder / "extra.pkl").read_bytes())
    set_rng_state(extra["rng"])
    if finetune_callback is not None and "finetune" in extra:
        finetune_callback.load_state_dict(extra["finetune"])
    return model
