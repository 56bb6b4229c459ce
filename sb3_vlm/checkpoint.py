"""
Crash-safe checkpoints: :class:`VLMCheckpointCallback` saves everything a run needs to go on (model, replay buffer
with its advice columns, advisor counters, the COVR fine-tuning state, RNG states) atomically, and on Ctrl-C;
:func:`load_checkpoint` restores it.

A checkpoint is a folder ``<save_path>/step_<n>/`` (``step_<n>_<k>`` when step ``n`` is saved again) written under a
temporary name and renamed when complete (a rename within one file system is atomic), then ``<save_path>/latest`` is
replaced atomically to name it; older checkpoints are deleted only after that. A run killed at any moment leaves the
previous complete checkpoint, and the loader takes the newest complete one when ``latest`` names none.

``state.json`` lists every file of the checkpoint with its size (how the loader tells a complete one); the RNG states
and the COVR state are in ``extra.json`` and ``extra.npz``, read without pickle. The model zip and the replay buffer
are SB3's own files, which *are* pickles: load checkpoints from trusted sources only, as with any SB3 zip.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import random
import re
import shutil
import signal
import sys
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

from sb3_vlm.advice import AdviceRequest
from sb3_vlm.callbacks import collect_advice_counters
from sb3_vlm.finetune.data import TrajectoryCollector
from sb3_vlm.wrappers.vec_advice import restore_advice_counters

#: version of the layout below; ``state.json`` of checkpoints before issue 17 has no ``checkpoint_format``
CHECKPOINT_FORMAT = 2
MODEL_FILE, BUFFER_FILE, STATE_FILE = "model.zip", "replay_buffer.pkl", "state.json"
EXTRA_JSON, EXTRA_NPZ, LEGACY_EXTRA = "extra.json", "extra.npz", "extra.pkl"
_REQUIRED = (MODEL_FILE, EXTRA_JSON, EXTRA_NPZ)
_FOLDER = re.compile(r"step_(\d+)(?:_(\d+))?")
# what a killed save or prune leaves behind: temporary folders, the temporary `latest`, folders being deleted
_LEFTOVERS = (".tmp_step_*", ".latest.*", ".trash_*")


def _fsync(path: Path) -> None:
    """Flush a file, or a folder's entries (best effort: Windows cannot open a folder)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if path.is_dir():
            return
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


def _remove(path: Path) -> None:
    """Delete a folder of ``save_path``: renamed away first, so that a kill mid-delete leaves no half checkpoint
    under a checkpoint's name (only a ``.trash_*`` leftover, cleaned at the next start)."""
    try:
        trash = Path(tempfile.mkdtemp(dir=path.parent, prefix=".trash_"))
        os.replace(path, trash / path.name)
    except OSError:
        return  # already gone, or the disk refuses: left for the next prune
    shutil.rmtree(trash, ignore_errors=True)


def rng_state() -> dict[str, Any]:
    """Python's, NumPy's global and torch's RNG states."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": th.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the states of :func:`rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    th.set_rng_state(state["torch"])


# ---------------------------------------------------------------------------------------------- state without pickle

_KIND = "__kind__"  # marks a JSON object that stands for something other than a str-keyed dict
_BIT_GENERATORS = ("MT19937", "PCG64", "PCG64DXSM", "Philox", "SFC64")


def _type_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


class _StateWriter:
    """
    A state tree as JSON plus an npz archive of its arrays, without pickle: ``None``, bools, numbers, strings, lists,
    tuples, dicts, NumPy arrays and scalars, CPU tensors, NumPy generators, Gymnasium spaces (``Box``, ``Discrete``,
    ``MultiDiscrete``, ``MultiBinary``, ``Tuple``, ``Dict``), :class:`~sb3_vlm.advice.AdviceRequest` (a lazy view is
    rendered), dataclasses and :class:`~sb3_vlm.finetune.data.TrajectoryCollector`. Anything else raises a
    ``TypeError``. An array held several times (CarRacing's track, shared by an episode's requests) is stored once.
    """

    def __init__(self) -> None:
        self.arrays: dict[str, Any] = {}  # Any: np.savez's stub types **kwds as its allow_pickle
        self._keys: dict[int, str] = {}
        self._held: list[np.ndarray] = []  # keeps the arrays alive, so that their ids stay theirs while encoding

    def _array(self, array: np.ndarray) -> str:
        if array.dtype.hasobject:
            raise TypeError("An object array cannot be stored without pickle")
        key = self._keys.get(id(array))
        if key is None:
            key = self._keys[id(array)] = f"a{len(self.arrays)}"
            self.arrays[key] = array
            self._held.append(array)
        return key

    def encode(self, value: Any) -> Any:
        if isinstance(value, np.generic):  # before float: np.float64 is a float, and would lose its dtype
            if value.dtype.hasobject:
                raise TypeError("An object scalar cannot be stored without pickle")
            return {_KIND: "scalar", "dtype": value.dtype.str, "value": value.item()}
        if value is None or isinstance(value, bool | int | float | str):
            return value
        if isinstance(value, np.ndarray):
            return {_KIND: "array", "key": self._array(value)}
        if isinstance(value, th.Tensor):
            return {_KIND: "tensor", "key": self._array(value.detach().cpu().numpy())}
        if isinstance(value, list):
            return [self.encode(v) for v in value]
        if type(value) is tuple:
            return {_KIND: "tuple", "items": [self.encode(v) for v in value]}
        if isinstance(value, dict):
            if _KIND not in value and all(isinstance(k, str) for k in value):
                return {k: self.encode(v) for k, v in value.items()}
            return {_KIND: "dict", "items": [[self.encode(k), self.encode(v)] for k, v in value.items()]}
        if isinstance(value, np.random.Generator):
            return {_KIND: "generator", "state": self.encode(value.bit_generator.state)}
        if isinstance(value, spaces.Space):
            return self._space(value)
        if isinstance(value, AdviceRequest):
            # a lazy view is drawn for the copy only (its own image stays lazy): fine-tuning needs the image
            render = value._render
            image = value.image if render is None else render()
            fields = dict(image=image, context=value.context, action_space=value.action_space, state=value.state)
            return {
                _KIND: "request",
                "content_key": value.content_key,
                **{k: self.encode(v) for k, v in fields.items()},
            }
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            attributes = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        elif isinstance(value, TrajectoryCollector):
            attributes = vars(value)
        else:
            raise TypeError(
                f"A {type(value).__name__} cannot be stored in a checkpoint without pickle; make it a dataclass of "
                "arrays, numbers and strings (a teacher view's request state, for COVR's D_f)"
            )
        fields = {name: self.encode(v) for name, v in attributes.items()}
        return {_KIND: "record", "type": _type_name(type(value)), "fields": fields}

    def _space(self, space: spaces.Space) -> dict[str, Any]:
        if isinstance(space, spaces.Box):
            low, high = self._array(space.low), self._array(space.high)
            return {_KIND: "space", "space": "Box", "low": low, "high": high, "dtype": space.dtype.str}
        if isinstance(space, spaces.Discrete):
            return {_KIND: "space", "space": "Discrete", "n": int(space.n), "start": int(space.start)}
        if isinstance(space, spaces.MultiDiscrete):
            nvec, start = self._array(space.nvec), self._array(space.start)
            return {_KIND: "space", "space": "MultiDiscrete", "nvec": nvec, "start": start, "dtype": space.dtype.str}
        if isinstance(space, spaces.MultiBinary):
            return {_KIND: "space", "space": "MultiBinary", "n": self.encode(space.n)}
        if isinstance(space, spaces.Tuple):
            return {_KIND: "space", "space": "Tuple", "spaces": [self._space(s) for s in space.spaces]}
        if isinstance(space, spaces.Dict):
            items = [[k, self._space(s)] for k, s in space.spaces.items()]
            return {_KIND: "space", "space": "Dict", "spaces": items}
        raise TypeError(f"A {type(space).__name__} space cannot be stored in a checkpoint")


class _StateReader:
    """
    Reads what :class:`_StateWriter` wrote. Nothing in the files picks code to run: records are rebuilt (as pickle
    does, without calling ``__init__``) only for dataclasses of ``sb3_vlm``, ``TrajectoryCollector`` and the
    ``state_types`` the caller names; generators only with NumPy's bit generators.

    :param arrays: the npz archive's arrays
    :param state_types: further dataclasses that may be rebuilt (a teacher view's request state)
    """

    def __init__(self, arrays: Mapping[str, np.ndarray], state_types: Sequence[type] = ()) -> None:
        self.arrays = arrays
        self._types = {_type_name(t): t for t in (TrajectoryCollector, *state_types)}

    def _array(self, key: Any) -> np.ndarray:
        if not isinstance(key, str) or key not in self.arrays:
            raise ValueError(f"extra.json refers to an array {key!r} that extra.npz does not hold")
        return self.arrays[key]

    def _record_type(self, name: str) -> type:
        cls = self._types.get(name)
        module, _, qualname = name.partition(":")
        if cls is None and (module == "sb3_vlm" or module.startswith("sb3_vlm.")):
            # only modules imported already: importing one (sb3_vlm.__main__ runs the CLI) is running code
            found: Any = sys.modules.get(module)
            for part in qualname.split("."):
                found = getattr(found, part, None)
            if isinstance(found, type) and dataclasses.is_dataclass(found):
                cls = found
        if cls is None:
            raise ValueError(
                f"The checkpoint holds a {name}, which is not a dataclass of an imported sb3_vlm module: import "
                "its module first, or pass the type in load_checkpoint(..., state_types=[...]) if it is yours"
            )
        return cls

    def decode(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self.decode(v) for v in value]
        if not isinstance(value, dict):
            return value
        kind = value.get(_KIND)
        if kind is None:
            return {k: self.decode(v) for k, v in value.items()}
        if kind == "scalar":
            dtype = np.dtype(value["dtype"])
            if dtype.hasobject:
                raise ValueError("extra.json holds an object scalar")
            return dtype.type(value["value"])
        if kind == "array":
            return self._array(value["key"])
        if kind == "tensor":
            return th.from_numpy(np.array(self._array(value["key"])))
        if kind == "tuple":
            return tuple(self.decode(v) for v in value["items"])
        if kind == "dict":
            return {self.decode(k): self.decode(v) for k, v in value["items"]}
        if kind == "generator":
            state = self.decode(value["state"])
            name = state.get("bit_generator") if isinstance(state, dict) else None
            if name not in _BIT_GENERATORS:
                raise ValueError(f"extra.json holds an unknown bit generator {name!r}")
            generator = np.random.Generator(getattr(np.random, name)())
            generator.bit_generator.state = state
            return generator
        if kind == "space":
            return self._space(value)
        if kind == "request":
            fields = {k: self.decode(value[k]) for k in ("image", "context", "action_space", "state")}
            return AdviceRequest(**fields, content_key=value["content_key"])
        if kind == "record":
            cls = self._record_type(value["type"])
            fields = {name: self.decode(v) for name, v in value["fields"].items()}
            if any(not name.isidentifier() or name.startswith("__") for name in fields):
                raise ValueError(f"extra.json's {value['type']} has a field name that no attribute has")
            if dataclasses.is_dataclass(cls) and set(fields) != {f.name for f in dataclasses.fields(cls)}:
                raise ValueError(f"extra.json's {value['type']} has fields {sorted(fields)}, not the class's")
            record: Any = object.__new__(cls)  # as pickle does: no __init__ runs
            for name, v in fields.items():
                object.__setattr__(record, name, v)  # also for frozen dataclasses
            return record
        raise ValueError(f"extra.json holds an unknown kind {kind!r}")

    def _space(self, value: dict[str, Any]) -> spaces.Space:
        name = value["space"]
        if name == "Box":
            low, high = self._array(value["low"]), self._array(value["high"])
            return spaces.Box(low=low, high=high, dtype=np.dtype(value["dtype"]))
        if name == "Discrete":
            return spaces.Discrete(int(value["n"]), start=int(value["start"]))
        if name == "MultiDiscrete":
            nvec, start = self._array(value["nvec"]), self._array(value["start"])
            return spaces.MultiDiscrete(nvec, dtype=np.dtype(value["dtype"]), start=start)
        if name == "MultiBinary":
            return spaces.MultiBinary(self.decode(value["n"]))
        if name == "Tuple":
            return spaces.Tuple([self._space(s) for s in value["spaces"]])
        if name == "Dict":
            return spaces.Dict({k: self._space(s) for k, s in value["spaces"]})
        raise ValueError(f"extra.json holds an unknown space {name!r}")


def _save_state(state: Any, folder: Path) -> None:
    """
    Write ``state`` as ``extra.json`` and ``extra.npz`` in ``folder``, without pickle (see :class:`_StateWriter`).

    :param state: the tree to write
    :param folder: where to write it
    """
    writer = _StateWriter()
    document = writer.encode(state)  # first: a TypeError leaves no file behind
    (folder / EXTRA_JSON).write_text(json.dumps(document))
    with open(folder / EXTRA_NPZ, "wb") as f:  # a file object: np.savez would append ".npz" to a name
        np.savez(f, **writer.arrays)


def _load_state(folder: Path, state_types: Sequence[type] = ()) -> Any:
    """
    Read what :func:`_save_state` wrote; no code named by the files runs (``allow_pickle=False``, an allowlist of
    types).

    :param folder: the checkpoint folder
    :param state_types: further dataclasses that may be rebuilt (a teacher view's request state)
    :return: the state tree
    """
    document = json.loads((folder / EXTRA_JSON).read_text())
    with np.load(folder / EXTRA_NPZ, allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    try:
        return _StateReader(arrays, state_types).decode(document)
    except (KeyError, TypeError, AttributeError) as e:  # a hand-edited file: say where, not deep in the reader
        raise ValueError(f"{folder / EXTRA_JSON} is malformed ({type(e).__name__}: {e})") from e


# ---------------------------------------------------------------------------------------------- finding checkpoints


def _checkpoint_folders(save_path: Path) -> list[tuple[tuple[int, int], Path]]:
    """
    The ``step_<n>[_<k>]`` folders of ``save_path`` with their ``(n, k)``, oldest first: by step, then by how often
    that step was saved (``k`` = 0 for ``step_<n>``).
    """
    found = []
    for path in save_path.glob("step_*"):
        match = _FOLDER.fullmatch(path.name)
        if match is not None and path.is_dir():
            found.append(((int(match[1]), int(match[2] or 0)), path))
    return sorted(found)


def _read_state(folder: Path) -> dict[str, Any]:
    state = json.loads((folder / STATE_FILE).read_text())
    if not isinstance(state, dict):
        raise ValueError("state.json is not an object")
    return state


def _problem(folder: Path, allow_missing_buffer: bool = False) -> str | None:
    """Why ``folder`` is not a complete checkpoint, or None when it is one."""
    try:
        state = _read_state(folder)
    except FileNotFoundError:
        return f"{STATE_FILE} missing"
    except (OSError, ValueError) as e:
        return f"{STATE_FILE} unreadable ({e})"
    if "checkpoint_format" not in state:  # written before issue 17: complete when its files are there
        missing = [name for name in (MODEL_FILE, LEGACY_EXTRA) if not (folder / name).is_file()]
        return f"{', '.join(missing)} missing" if missing else None
    if state["checkpoint_format"] != CHECKPOINT_FORMAT:
        return f"format {state['checkpoint_format']!r}, this version reads {CHECKPOINT_FORMAT}"
    files = state.get("files")
    if not isinstance(files, dict) or any(name not in files for name in _REQUIRED):
        return f"{STATE_FILE} does not list the checkpoint's files"
    for name, size in files.items():
        path = folder / str(name)
        if not path.is_file():
            if name == BUFFER_FILE and allow_missing_buffer:
                continue
            hint = " (allow_missing_buffer=True resumes with an empty replay buffer)" if name == BUFFER_FILE else ""
            return f"{name} missing{hint}"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {size} were written"
    return None


def _find_checkpoint(save_path: Path, allow_missing_buffer: bool = False) -> tuple[Path | None, list[str]]:
    """
    The folder ``latest`` names when it is complete, else the newest complete one; and why each one looked at
    before it was passed over.
    """
    skipped: list[str] = []
    candidates = [path for _, path in _checkpoint_folders(save_path)][::-1]
    pointer = save_path / "latest"
    if pointer.exists():
        name = pointer.read_text(errors="replace").strip()
        if _FOLDER.fullmatch(name) is None:  # only a name of ours: never a path out of save_path
            skipped.append(f"latest names {name[:80]!r}, not a checkpoint")
        elif not (save_path / name).is_dir():
            skipped.append(f"latest names {name}, which does not exist")
        else:
            candidates.remove(save_path / name)
            candidates.insert(0, save_path / name)
    for folder in candidates:
        problem = _problem(folder, allow_missing_buffer)
        if problem is None:
            return folder, skipped
        skipped.append(f"{folder.name}: {problem}")
    return None, skipped


def latest_checkpoint(save_path: str | os.PathLike[str], allow_missing_buffer: bool = False) -> Path | None:
    """
    The checkpoint ``latest`` names under ``save_path``; the newest complete one when that one is not complete
    (a kill between two steps of a save, a file deleted since); None when there is no complete checkpoint.

    :param save_path: the callback's folder
    :param allow_missing_buffer: count a checkpoint whose replay buffer file is missing as complete
    """
    return _find_checkpoint(Path(save_path), allow_missing_buffer)[0]


# ---------------------------------------------------------------------------------------------- saving


class VLMCheckpointCallback(BaseCallback):
    """
    Save a resumable checkpoint every ``save_freq`` calls of the env (as SB3's ``CheckpointCallback`` counts; written
    at the end of that rollout, when the buffer holds the step), when training ends, and when the process gets
    SIGINT (Ctrl-C) or SIGTERM: the signal stops training after the checkpoint at the end of the current rollout,
    so ``learn()`` returns normally. Never contains an advisor, a client or an API key: the model zip
    excludes the env, the buffer holds advice arrays only, ``state.json`` holds numbers.

    A save that fails with an ``OSError`` (disk full, quota) does not stop training: it warns, the previous
    checkpoint stays, and the next save tries again. Leftovers of a killed save are deleted when training starts
    (one run per ``save_path``). When ``learn()`` raises, no callback hook runs, so the signal handlers are handed
    back at the first signal after it (which then gets what the previous handler does), or at the next ``learn()``.

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
        #: the last checkpoint written, and how many saves failed with an OSError (training went on)
        self.last_checkpoint: Path | None = None
        self.failed_saves = 0
        self._due = self._stopping = self._saved_at_stop = False
        self._previous: dict[int, Any] = {}
        self._learn_frame: FrameType | None = None

    # ------------------------------------------------------------------ signals

    def _install_signal_handlers(self) -> None:
        self._restore_signal_handlers()  # an earlier learn() that raised left them installed
        self._learn_frame = _learn_frame_of(self.model)
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread: no handlers, periodic checkpoints only
                break

    def _restore_signal_handlers(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        self._previous.clear()
        self._learn_frame = None

    def _in_learn(self) -> bool:
        """Whether the ``learn()`` call these handlers were installed for is still running."""
        if self._learn_frame is None:  # the hooks were called by hand: assume so
            return True
        frame: FrameType | None = sys._getframe(1)
        while frame is not None and frame is not self._learn_frame:
            frame = frame.f_back
        return frame is not None

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if not self._in_learn():  # learn() raised: hand the handlers back, and this signal to the previous one
            previous = self._previous.get(signum)
            self._restore_signal_handlers()
            if callable(previous):
                previous(signum, frame)
            elif previous != signal.SIG_IGN:
                signal.raise_signal(signum)  # the default action, now that SIG_DFL is back
            return
        if self.interrupted is not None:  # a second Ctrl-C: the user insists
            self._restore_signal_handlers()
            raise KeyboardInterrupt
        self.interrupted = signum

    # ------------------------------------------------------------------ SB3 hooks

    def _on_training_start(self) -> None:
        self.interrupted = None
        self._due = self._stopping = self._saved_at_stop = False
        self.save_path.mkdir(parents=True, exist_ok=True)
        for pattern in _LEFTOVERS:
            for leftover in self.save_path.glob(pattern):
                if leftover.is_dir():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink(missing_ok=True)
        if self.handle_signals:
            self._install_signal_handlers()

    def _on_step(self) -> bool:
        # SB3 stores a step's transition after the callbacks ran: saving waits for the end of the rollout (the same
        # step for off-policy training with train_freq=1), when model and buffer agree
        if self._stopping:
            return False  # learn() returns normally; the checkpoint holds everything up to the last rollout
        if self.save_freq and self.n_calls % self.save_freq == 0:
            self._due = True
        return True

    def _on_rollout_end(self) -> None:
        if self._due or self.interrupted is not None:
            saved = self._try_save()
            self._due = False
            if self.interrupted is not None:
                self._stopping, self._saved_at_stop = True, saved

    def _on_training_end(self) -> None:
        try:
            if not self._saved_at_stop:
                self._try_save()
        finally:
            self._restore_signal_handlers()

    # ------------------------------------------------------------------ saving

    def _try_save(self) -> bool:
        """:meth:`save` from a hook: an ``OSError`` warns and training goes on; anything else stops it (a bug)."""
        try:
            self.save()
            return True
        except OSError as e:
            self.failed_saves += 1
            kept = "no checkpoint yet" if self.last_checkpoint is None else f"{self.last_checkpoint} is kept"
            warnings.warn(
                f"Checkpoint at step {self.model.num_timesteps} failed ({e}); training goes on, {kept}, the next "
                "save tries again",
                stacklevel=2,
            )
            return False
        except BaseException:
            self._restore_signal_handlers()  # learn() is about to raise
            raise

    def save(self) -> Path:
        """Write a checkpoint now; returns its folder."""
        model = self.model
        step = model.num_timesteps
        self.save_path.mkdir(parents=True, exist_ok=True)
        # a fresh name when the step was saved already (end of training right after a periodic save): the
        # checkpoint `latest` names stays until its replacement is complete and named
        saves = [key[1] for key, _ in _checkpoint_folders(self.save_path) if key[0] == step]
        final = self.save_path / (f"step_{step}_{max(saves) + 1}" if saves else f"step_{step}")
        tmp = Path(tempfile.mkdtemp(dir=self.save_path, prefix=f".tmp_step_{step}_"))
        try:
            model.save(tmp / MODEL_FILE)
            if self.save_replay_buffer and isinstance(model, OffPolicyAlgorithm) and model.replay_buffer is not None:
                resolve = getattr(model.replay_buffer, "resolve_pending", None)
                if callable(resolve):
                    resolve()  # non-blocking answers that have arrived go into the saved copy
                model.save_replay_buffer(tmp / BUFFER_FILE)
            extra: dict[str, Any] = {"rng": rng_state()}
            if self.finetune_callback is not None:
                extra["finetune"] = self.finetune_callback.state_dict()
            _save_state(extra, tmp)
            env = model.get_env()
            state = {
                "checkpoint_format": CHECKPOINT_FORMAT,
                "num_timesteps": step,
                "algo": type(model).__name__,
                "advisor_counters": collect_advice_counters(env) if env is not None else {},
                "interrupted_by_signal": self.interrupted,
                "files": {p.name: p.stat().st_size for p in sorted(tmp.iterdir())},
            }
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
            for path in [*tmp.iterdir(), tmp]:  # on disk before the rename is: a power cut names no empty file
                _fsync(path)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _atomic_write(self.save_path / "latest", final.name.encode())
        _fsync(self.save_path)
        self.last_checkpoint = final
        self._prune(final, step)
        if self.verbose:
            print(f"checkpoint: {final}")
        return final

    def _prune(self, current: Path, step: int) -> None:
        """Delete all but the ``keep`` newest checkpoints, and earlier saves of ``current``'s step; ``current`` is
        kept whatever its step (a run resumed from an older checkpoint writes lower steps)."""
        folders = _checkpoint_folders(self.save_path)
        superseded = [path for key, path in folders if key[0] == step and path != current]
        rest = [path for key, path in folders if key[0] != step]
        for old in superseded + rest[: max(len(rest) - (self.keep - 1), 0)]:
            _remove(old)


def _learn_frame_of(model: BaseAlgorithm) -> FrameType | None:
    """The innermost running ``model.learn`` frame (it returns, or raises, when training does)."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "learn" and frame.f_locals.get("self") is model:
            return frame
        frame = frame.f_back
    return None


# ---------------------------------------------------------------------------------------------- loading


def load_checkpoint(
    path: str | os.PathLike[str],
    algo: type[BaseAlgorithm],
    env: Any,
    finetune_callback: Any = None,
    allow_missing_buffer: bool = False,
    allow_legacy_pickle: bool = False,
    state_types: Sequence[type] = (),
    **load_kwargs: Any,
) -> BaseAlgorithm:
    """
    Restore a checkpoint written by :class:`VLMCheckpointCallback` (a checkpoint folder, or its ``save_path`` for
    the latest complete one): the model on ``env``, its replay buffer with the advice columns, the RNG states and,
    given the callback, the fine-tuning schedule and D_f. Go on with ``model.learn(total - model.num_timesteps,
    reset_num_timesteps=False)`` (episodes restart from a reset).

    The model zip and the replay buffer are SB3's pickles: like any SB3 zip, load checkpoints from trusted sources
    only. The rest (RNG, COVR state) is read without pickle.

    :param path: a checkpoint folder, or the callback's ``save_path``
    :param algo: the algorithm class (``GuidedSAC`` ...)
    :param env: the env to go on with
    :param finetune_callback: the :class:`~sb3_vlm.finetune.VLMFineTuneCallback` to restore
    :param allow_missing_buffer: resume an off-policy algorithm with an empty replay buffer (with a warning) when
        the checkpoint has none (a missing file, or ``save_replay_buffer=False``); by default that is an error
    :param allow_legacy_pickle: load a checkpoint of an older sb3-vlm (before format 2, issue 17), whose
        ``extra.pkl`` is unpickled (it runs code if tampered with: only for checkpoints you wrote yourself); by
        default they are refused
    :param state_types: dataclasses outside ``sb3_vlm`` that requests' ``state`` in COVR's D_f uses
    :param load_kwargs: passed to ``algo.load``
    :return: the model
    """
    folder = Path(path)
    if any((folder / name).exists() for name in (STATE_FILE, MODEL_FILE)):  # a checkpoint folder
        problem = _problem(folder, allow_missing_buffer)
        if problem is not None:
            raise FileNotFoundError(f"Checkpoint {folder} is incomplete: {problem}")
    else:
        found, skipped = _find_checkpoint(folder, allow_missing_buffer)
        if found is None:
            raise FileNotFoundError(f"No complete checkpoint in {folder}" + "".join(f"; {s}" for s in skipped))
        if skipped:
            warnings.warn(f"Loading {found}, the newest complete checkpoint: {'; '.join(skipped)}", stacklevel=2)
        folder = found
    legacy = "checkpoint_format" not in _read_state(folder)
    if legacy and not allow_legacy_pickle:
        raise ValueError(
            f"{folder} was written by an older sb3-vlm: its {LEGACY_EXTRA} is a pickle, which runs code when "
            "loaded. Pass allow_legacy_pickle=True only if you wrote it yourself."
        )
    extra = pickle.loads((folder / LEGACY_EXTRA).read_bytes()) if legacy else _load_state(folder, state_types)
    has_buffer = (folder / BUFFER_FILE).is_file()
    if issubclass(algo, OffPolicyAlgorithm) and not has_buffer:
        message = f"Checkpoint {folder} holds no replay buffer"
        if not allow_missing_buffer:
            raise FileNotFoundError(f"{message}; pass allow_missing_buffer=True to resume with an empty one")
        warnings.warn(f"{message}: training resumes with an empty replay buffer", stacklevel=2)
    model = algo.load(folder / MODEL_FILE, env=env, **load_kwargs)
    if has_buffer and isinstance(model, OffPolicyAlgorithm):
        model.load_replay_buffer(folder / BUFFER_FILE)
    if (model_env := model.get_env()) is not None:  # the run goes on counting where it stopped
        restore_advice_counters(model_env, _read_state(folder).get("advisor_counters") or {})
    set_rng_state(extra["rng"])  # last: building the model draws from torch's RNG
    if finetune_callback is not None and "finetune" in extra:
        finetune_callback.load_state_dict(extra["finetune"])
    return model
