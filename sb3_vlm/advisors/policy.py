"""
A trained policy as a teacher: SB3 SAC's deterministic actor, exported to an ``.npz`` file and run in numpy.

The file is plain arrays (loaded with ``allow_pickle=False``), never a pickle, since a user may receive it from
elsewhere: loading it cannot run code. Inference needs numpy only; :func:`export_sac_actor` (torch, SB3) writes it.

File format (version 1), every entry a numpy array:

- ``latent_weight_<i>`` ``(h_i, h_{i-1})`` and ``latent_bias_<i>`` ``(h_i,)``, ``i = 0 .. n-1``: the actor's
  ``latent_pi`` Linear layers (``h_{-1}`` is the observation size), each followed by ``activation``;
- ``mu_weight`` ``(action_dim, h_{n-1})``, ``mu_bias`` ``(action_dim,)``: the mean head;
- ``action_low``, ``action_high`` ``(action_dim,)``: the Box the squashed action is rescaled to;
- ``obs_dim`` (int), ``env_id`` (str), ``activation`` (str, ``"relu"``), ``format_version`` (int);
- ``obs_scale`` ``(obs_dim,)``: a typical magnitude per state dimension (the std of the states the teacher trained
  on), so that views can be named by regions of a normalised state (:class:`~sb3_vlm.advisors.ProjectedGridKey`).
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium import spaces

from sb3_vlm.advice import Advice, AdviceRequest
from sb3_vlm.advisors.base import Advisor

FORMAT_VERSION = 1
_ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"relu": lambda x: np.maximum(x, 0.0)}


def _scalar(arrays: dict[str, np.ndarray], name: str, kind: type) -> Any:
    value = arrays[name]
    if value.shape != ():
        raise ValueError(f"{name} must be a scalar, got shape {value.shape}")
    item = value.item()
    if not isinstance(item, kind) or isinstance(item, bool):
        raise ValueError(f"{name} must be a {kind.__name__}, got {type(item).__name__}")
    return item


def _rows(arrays: dict[str, np.ndarray], name: str) -> int:
    """The output size of the layer whose weight is ``name``."""
    if name not in arrays:
        raise ValueError(f"missing array {name}")
    if arrays[name].ndim != 2:
        raise ValueError(f"{name} must be a matrix, got shape {arrays[name].shape}")
    return int(arrays[name].shape[0])


def _matrix(arrays: dict[str, np.ndarray], name: str, shape: tuple[int, ...]) -> np.ndarray:
    if name not in arrays:
        raise ValueError(f"missing array {name}")
    value = arrays[name]
    if value.dtype.kind != "f":
        raise ValueError(f"{name} must hold floats, got dtype {value.dtype}")
    if value.shape != shape:
        raise ValueError(f"{name} has shape {value.shape}, expected {shape}")
    if not np.all(np.isfinite(value)):
        raise ValueError(f"{name} holds NaN or infinite values")
    return value.astype(np.float64)


def content_digest(arrays: dict[str, np.ndarray]) -> str:
    """A hash of the arrays' names, dtypes, shapes and bytes: the same teacher however (and whenever) it was
    zipped (``np.savez`` stamps the zip with the current time, so the file's bytes are not a stable name)."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        value = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{value.dtype.str}:{value.shape}\x00".encode())
        h.update(value.tobytes())
    return h.hexdigest()


class PolicyAdvisor(Advisor):
    """
    A teacher that answers with a trained SAC actor's deterministic action for the request's privileged state
    (``request.state``, the env's observation vector, as :class:`~sb3_vlm.envs.mujoco_state.StateTeacherView`
    provides it): ``low + (tanh(mu(latent(s))) + 1) / 2 · (high - low)``, what SB3's
    ``SAC.predict(obs, deterministic=True)`` returns. Wrap it in :class:`~sb3_vlm.advisors.NoisyAdvisor` for a
    partially reliable teacher.

    The identity carries a hash of the file's content, so caches never mix answers of two teachers.

    :param path: an ``.npz`` file written by :func:`export_sac_actor` (format in the module docstring); it is
        validated on load (``ValueError`` on a missing array, a shape mismatch, NaN or an unknown format)
    """

    def __init__(self, path: str | os.PathLike[str]):
        super().__init__()
        self.path = Path(path)
        try:
            # allow_pickle=False: an object array (which would unpickle, i.e. run code) is an error, not a load
            data = np.load(self.path, allow_pickle=False)
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise ValueError("not an .npz archive")
            with data:
                arrays = {name: data[name] for name in data.files}
        except (ValueError, EOFError, zipfile.BadZipFile) as exc:  # a missing file stays a FileNotFoundError
            raise ValueError(f"{self.path} is not a policy teacher file: {exc}") from None
        try:
            self._load(arrays)
        except ValueError as exc:
            raise ValueError(f"{self.path} is not a valid policy teacher file: {exc}") from None
        self.digest = content_digest(arrays)

    def _load(self, arrays: dict[str, np.ndarray]) -> None:
        required = {"mu_weight", "mu_bias", "action_low", "action_high", "obs_dim", "env_id", "activation"}
        required |= {"format_version", "obs_scale", "latent_weight_0", "latent_bias_0"}
        missing = sorted(required - set(arrays))
        if missing:
            raise ValueError(f"missing arrays {missing}")
        version = _scalar(arrays, "format_version", int)
        if version != FORMAT_VERSION:
            raise ValueError(f"format_version {version}, this version reads {FORMAT_VERSION}")
        self.env_id: str = _scalar(arrays, "env_id", str)
        self.activation: str = _scalar(arrays, "activation", str)
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; known: {sorted(_ACTIVATIONS)}")
        self.obs_dim: int = _scalar(arrays, "obs_dim", int)
        n_layers = 0
        while f"latent_weight_{n_layers}" in arrays:
            n_layers += 1
        self.weights: list[np.ndarray] = []
        self.biases: list[np.ndarray] = []
        width = self.obs_dim
        for i in range(n_layers):
            out = _rows(arrays, f"latent_weight_{i}")
            self.weights.append(_matrix(arrays, f"latent_weight_{i}", (out, width)))
            self.biases.append(_matrix(arrays, f"latent_bias_{i}", (out,)))
            width = out
        action_dim = _rows(arrays, "mu_weight")
        self.mu_weight = _matrix(arrays, "mu_weight", (action_dim, width))
        self.mu_bias = _matrix(arrays, "mu_bias", (action_dim,))
        self.low = _matrix(arrays, "action_low", (action_dim,))
        self.high = _matrix(arrays, "action_high", (action_dim,))
        if not np.all(self.low < self.high):
            raise ValueError("action_low must be below action_high")
        self.obs_scale = _matrix(arrays, "obs_scale", (self.obs_dim,))
        if not np.all(self.obs_scale > 0):
            raise ValueError("obs_scale must be positive")

    @property
    def action_dim(self) -> int:
        return int(self.mu_bias.shape[0])

    @property
    def identity(self) -> str:
        return f"policy:{self.env_id}:{self.digest[:16]}"

    def predict(self, observations: np.ndarray) -> np.ndarray:
        """Deterministic actions ``(n, action_dim)`` (float32) for observations ``(n, obs_dim)`` or ``(obs_dim,)``."""
        obs = np.asarray(observations)
        single = obs.ndim == 1
        x = obs.reshape(1, -1) if single else obs
        if x.ndim != 2 or x.shape[1] != self.obs_dim:
            raise ValueError(f"{self.identity} expects states of size {self.obs_dim}, got shape {obs.shape}")
        # SB3 feeds the policy float32 tensors: round the states the same way so the answers match it
        x = x.astype(np.float32).astype(np.float64)
        act = _ACTIVATIONS[self.activation]
        for weight, bias in zip(self.weights, self.biases, strict=True):
            x = act(x @ weight.T + bias)
        squashed = np.tanh(x @ self.mu_weight.T + self.mu_bias)
        # SB3's unscale_action: [-1, 1] to [low, high]
        actions = (self.low + 0.5 * (squashed + 1.0) * (self.high - self.low)).astype(np.float32)
        return actions[0] if single else actions

    def _advise(self, requests: Sequence[AdviceRequest]) -> list[Advice]:
        for r in requests:
            if r.state is None:
                raise ValueError(f"{self.identity} needs the privileged state: use StateTeacherView")
            space = r.action_space
            if isinstance(space, spaces.Box) and space.shape != (self.action_dim,):
                raise ValueError(f"{self.identity} gives {self.action_dim}-d actions, the env takes {space.shape}")
        actions = self.predict(np.stack([np.asarray(r.state, dtype=np.float64).reshape(-1) for r in requests]))
        return [Advice(action=a, source=self.identity) for a in actions]


def export_sac_actor(
    model: Any,
    path: str | os.PathLike[str],
    env_id: str | None = None,
    obs_scale: np.ndarray | None = None,
) -> Path:
    """
    Write an SB3 ``SAC`` model's actor (``latent_pi`` Linear layers, ``mu``, action bounds) to ``path`` in the
    format :class:`PolicyAdvisor` reads.

    :param model: a trained ``stable_baselines3.SAC`` (or subclass) with an MLP actor on a flat Box observation,
        ReLU activations and no gSDE
    :param path: the ``.npz`` file to write
    :param env_id: recorded in the file; None takes the model's env spec id
    :param obs_scale: per-dimension state scale; None: the std of the states in the model's replay buffer (the
        states it trained on), floored at 1e-3 so constant dimensions do not divide by zero
    :return: the path written
    """
    import torch as th

    actor = model.actor
    obs_space, action_space = model.observation_space, model.action_space
    if not isinstance(obs_space, spaces.Box) or len(obs_space.shape) != 1:
        raise ValueError(f"export_sac_actor needs a flat Box observation space, got {obs_space}")
    if not isinstance(action_space, spaces.Box):
        raise ValueError(f"export_sac_actor needs a Box action space, got {action_space}")
    if actor.use_sde:
        raise ValueError("export_sac_actor does not support gSDE actors (use_sde=True)")
    if type(actor.features_extractor).__name__ != "FlattenExtractor":
        raise ValueError(f"export_sac_actor needs SB3's FlattenExtractor, got {type(actor.features_extractor)}")
    linears = [m for m in actor.latent_pi if isinstance(m, th.nn.Linear)]
    others = [m for m in actor.latent_pi if not isinstance(m, (th.nn.Linear, th.nn.ReLU))]
    if others or len(linears) == 0:
        raise ValueError(f"export_sac_actor needs Linear + ReLU latent layers, got {actor.latent_pi}")
    if env_id is None:
        venv = model.get_env()
        spec = venv.get_attr("spec")[0] if venv is not None else None
        env_id = spec.id if spec is not None else "unknown"
    obs_dim = int(obs_space.shape[0])
    if obs_scale is None:
        buffer = model.replay_buffer
        n = buffer.buffer_size if buffer.full else buffer.pos
        states = buffer.observations[:n].reshape(-1, obs_dim) if n > 0 else np.ones((1, obs_dim))
        obs_scale = states.std(axis=0) if n > 1 else np.ones(obs_dim)
    obs_scale = np.maximum(np.asarray(obs_scale, dtype=np.float64).reshape(obs_dim), 1e-3)

    def numpy(t: th.Tensor) -> np.ndarray:
        return t.detach().cpu().numpy().astype(np.float32)

    arrays: dict[str, np.ndarray] = {}
    for i, layer in enumerate(linears):
        arrays[f"latent_weight_{i}"] = numpy(layer.weight)
        arrays[f"latent_bias_{i}"] = numpy(layer.bias)
    arrays.update(
        mu_weight=numpy(actor.mu.weight),
        mu_bias=numpy(actor.mu.bias),
        action_low=np.asarray(action_space.low, dtype=np.float32),
        action_high=np.asarray(action_space.high, dtype=np.float32),
        obs_scale=obs_scale.astype(np.float32),
        obs_dim=np.asarray(obs_dim),
        env_id=np.asarray(env_id),
        activation=np.asarray("relu"),
        format_version=np.asarray(FORMAT_VERSION),
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:  # a file object: np.savez would append ".npz" to a path without it
        np.savez_compressed(f, **arrays)  # type: ignore[arg-type]
    PolicyAdvisor(path)  # validate what was written
    return path
