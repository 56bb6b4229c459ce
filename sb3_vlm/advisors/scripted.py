"""Scripted advisors: stand-ins for a VLM in tests, ablations and benchmarks (no weights, no network)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
from gymnasium import spaces

from sb3_vlm.advice import Advice, AdviceRequest
from sb3_vlm.advisors.base import Advisor


def _space_of(request: AdviceRequest) -> spaces.Space:
    if request.action_space is None:
        raise ValueError("This advisor needs AdviceRequest.action_space (the wrapper fills it in)")
    return request.action_space


class CallableAdvisor(Advisor):
    """
    Wrap any function of the request.

    :param fn: ``fn(request)`` returning an :class:`Advice`, a probability vector / continuous action (ndarray),
        an ``int`` discrete action, or ``None`` for "no advice".
    :param name: identity used in cache keys; give different functions different names.
    """

    def __init__(self, fn: Callable[[AdviceRequest], Advice | np.ndarray | int | None], name: str = "callable"):
        super().__init__()
        self.fn = fn
        self.name = name

    @property
    def identity(self) -> str:
        return f"callable:{self.name}"

    def _advise(self, requests: Sequence[AdviceRequest]) -> list[Advice]:
        return [self._convert(self.fn(r), r) for r in requests]

    def _convert(self, out: Advice | np.ndarray | int | None, request: AdviceRequest) -> Advice:
        if out is None:
            return Advice.invalid(source=self.identity)
        if isinstance(out, Advice):
            return out
        space = request.action_space
        if isinstance(out, (int, np.integer)):
            return Advice(action=np.asarray([out]), source=self.identity)
        arr = np.asarray(out, dtype=np.float32)
        if isinstance(space, spaces.Discrete) and arr.shape == (int(space.n),):
            return Advice(probs=arr, source=self.identity)
        return Advice(action=arr, source=self.identity)


class ConstantAdvisor(Advisor):
    """
    Always the same advice. With the default it is ERPv's "Worst Model", which outputs zeros.

    :param action: the advised continuous action (broadcast to the action shape) or discrete action index
    """

    def __init__(self, action: float | int | np.ndarray = 0.0):
        super().__init__()
        self.action = np.asarray(action, dtype=np.float32)

    @property
    def identity(self) -> str:
        return f"constant:{self.action.tolist()}"

    def _advise(self, requests: Sequence[AdviceRequest]) -> list[Advice]:
        out = []
        for r in requests:
            space = _space_of(r)
            if isinstance(space, spaces.Discrete):
                out.append(Advice(action=self.action.reshape(1)[:1].copy(), source=self.identity))
            else:
                assert isinstance(space, spaces.Box)
                out.append(Advice(action=np.broadcast_to(self.action, space.shape).copy(), source=self.identity))
        return out


def _random_answer(space: spaces.Space, rng: np.random.Generator, source: str) -> Advice:
    if isinstance(space, spaces.Discrete):
        return Advice(action=np.asarray([int(space.start) + int(rng.integers(int(space.n)))]), source=source)
    assert isinstance(space, spaces.Box)
    return Advice(action=rng.uniform(space.low, space.high).astype(np.float32), source=source)


class RandomAdvisor(Advisor):
    """
    Uniformly random advice: a random discrete action, or a uniform sample of a (bounded) Box.

    :param seed: seed of the advisor's own generator
    """

    def __init__(self, seed: int | None = None):
        super().__init__()
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    @property
    def identity(self) -> str:
        return f"random:{self.seed}"

    def _advise(self, requests: Sequence[AdviceRequest]) -> list[Advice]:
        return [_random_answer(_space_of(r), self.rng, self.identity) for r in requests]


class NoisyAdvisor(Advisor):
    """
    Make an advisor only partially reliable: a stand-in for a VLM that is right some of the time.

    With probability ``1 - reliability`` the base answer is replaced by a wrong one:

    - ``Discrete``: the teacher's mass is moved to another action (the shape of the distribution, i.e. its
      smoothing, is kept): ``mode="random"`` draws it uniformly among those the base does not rank first,
      ``mode="adversarial"`` always takes the next one after the base's choice (``a + 1 mod n``, skipping the base's
      best actions), a systematic confusion;
    - ``Box``: ``mode="random"`` draws a uniform action, ``mode="adversarial"`` mirrors the base action
      through the centre of the box (``low + high - a``).

    ``reliability=1`` is the base advisor, ``reliability=0`` is always wrong. Behind a cache the wrong answers are
    fixed per teacher view, like a deterministic (temperature 0) VLM that is wrong about some states. With
    ``view_key``, the wrong views are fixed without a cache too: whether a view is corrupted (and how, for
    ``mode="random"``) is a hash of ``(seed, view_key(request))``, so a key that maps nearby states to one value
    (e.g. a coarse grid over a continuous state) makes the teacher wrong on whole regions, as a VLM is.

    :param base: the advisor to corrupt (usually an oracle)
    :param reliability: probability of passing the base answer through
    :param seed: seed of the corruption
    :param mode: how answers are corrupted, ``"random"`` or ``"adversarial"`` (systematic, see above)
    :param view_key: ``f(request) -> bytes`` naming the view; None draws from the advisor's generator per request
    """

    def __init__(
        self,
        base: Advisor,
        reliability: float = 0.8,
        seed: int | None = None,
        mode: Literal["random", "adversarial"] = "random",
        view_key: Callable[[AdviceRequest], bytes] | None = None,
    ):
        super().__init__()
        if not 0.0 <= reliability <= 1.0:
            raise ValueError(f"reliability must be in [0, 1], got {reliability}")
        if mode not in ("random", "adversarial"):
            raise ValueError(f"mode must be 'random' or 'adversarial', got {mode!r}")
        self.base = base
        self.reliability = reliability
        self.seed = seed
        self.mode = mode
        self.view_key = view_key
        self.rng = np.random.default_rng(seed)
        self.n_corrupted = 0

    @property
    def identity(self) -> str:
        # a view key may name itself (ProjectedGridKey does), so two ways of cutting views never share a cache
        keyed = f",views={getattr(self.view_key, 'identity', 'keyed')}" if self.view_key is not None else ""
        return f"noisy({self.base.identity},r={self.reliability},seed={self.seed},mode={self.mode}{keyed})"

    def _view_rng(self, request: AdviceRequest) -> np.random.Generator:
        """The generator deciding this request's fate: the advisor's own, or one seeded by the view's hash."""
        if self.view_key is None:
            return self.rng
        digest = hashlib.sha256(f"{self.seed}".encode() + b"\x00" + self.view_key(request)).digest()
        return np.random.default_rng(int.from_bytes(digest[:8], "little"))

    def _advise(self, requests: Sequence[AdviceRequest]) -> list[Advice]:
        answers = self.base.advise(requests)
        out = []
        for request, advice in zip(requests, answers, strict=True):
            rng = self._view_rng(request)
            if advice.valid and rng.random() >= self.reliability:
                self.n_corrupted += 1
                advice = self._corrupt(advice, _space_of(request), rng)
            out.append(advice)
        return out

    def _corrupt(self, advice: Advice, space: spaces.Space, rng: np.random.Generator) -> Advice:
        source = f"{advice.source}:wrong"
        if isinstance(space, spaces.Discrete):
            n = int(space.n)
            if advice.probs is not None:
                probs = np.asarray(advice.probs, dtype=np.float64)
                best = probs >= probs.max() - 1e-12
                floor = float(probs.min())
            else:
                best = np.zeros(n, dtype=bool)
                best[int(np.asarray(advice.action).reshape(-1)[0]) - int(space.start)] = True
                floor = 0.0
            wrong = np.flatnonzero(~best)
            if wrong.size == 0:  # the base says every action is equally good: nothing is "wrong"
                return advice
            if self.mode == "adversarial":
                # systematic: the next action after the base's first choice (cyclically) that it does not rank
                # first, the same for every view, like a VLM that always confuses two labels
                first = int(np.flatnonzero(best)[0])
                choice = int(wrong[np.argmin((wrong - first) % n)])
            else:
                choice = int(rng.choice(wrong))
            probs_out = np.full(n, floor)
            probs_out[choice] = 1.0 - floor * (n - 1)
            return Advice(probs=probs_out.astype(np.float32), source=source, raw=advice.raw)
        assert isinstance(space, spaces.Box)
        if self.mode == "adversarial" and advice.action is not None:
            action = (space.low + space.high - np.asarray(advice.action, dtype=np.float32)).astype(np.float32)
            return Advice(action=np.clip(action, space.low, space.high), source=source, raw=advice.raw)
        return _random_answer(space, rng, source)


class ProjectedGridKey:
    """
    A ``view_key`` for :class:`NoisyAdvisor` on high-dimensional continuous states: the cell of a coarse grid over a
    fixed random 2-D projection of the normalised state.

    A grid over every state dimension makes each visited state of an 11-d state its own cell, so "wrong on a fixed
    set of views" would be per-step noise; a VLM rather confuses a whole class of views. Here the state is divided
    by a per-dimension ``scale`` and clipped to ``[-clip, clip]``, projected by a seeded Gaussian matrix
    ``P ~ N(0, 1/d)`` of shape ``(2, d)`` (so a state with unit-variance, independent dimensions projects to unit
    variance), and named by its cell of side ``cell`` in the plane: nearby states share a cell, and the teacher is
    wrong on whole regions of the state space.

    :param scale: typical magnitude per state dimension (e.g. :attr:`~sb3_vlm.advisors.PolicyAdvisor.obs_scale`,
        the std of the states a teacher trained on)
    :param cell: side of a cell in projected units (default 0.5: about 16 cells within one std of the centre)
    :param seed: seed of the projection (fixed per env; which cells are wrong is the :class:`NoisyAdvisor`'s seed)
    :param clip: bound of a normalised state dimension, so outliers do not scatter into cells of their own
    """

    def __init__(self, scale: np.ndarray | Sequence[float], cell: float = 0.5, seed: int = 0, clip: float = 3.0):
        self.scale = np.asarray(scale, dtype=np.float64).reshape(-1)
        if self.scale.size == 0 or not np.all(np.isfinite(self.scale)) or not np.all(self.scale > 0):
            raise ValueError("scale must be a non-empty vector of positive numbers")
        if cell <= 0 or clip <= 0:
            raise ValueError(f"cell and clip must be positive, got {cell}, {clip}")
        self.cell, self.seed, self.clip = float(cell), int(seed), float(clip)
        d = self.scale.size
        self.projection = np.random.default_rng(seed).standard_normal((2, d)) / np.sqrt(d)

    @property
    def identity(self) -> str:
        scale = hashlib.sha256(self.scale.tobytes()).hexdigest()[:8]
        return f"grid2d(d={self.scale.size},cell={self.cell:g},seed={self.seed},clip={self.clip:g},scale={scale})"

    def cell_of(self, state: np.ndarray | Sequence[float]) -> tuple[int, int]:
        """The grid cell of ``state`` (a vector of size ``len(scale)``)."""
        x = np.asarray(state, dtype=np.float64).reshape(-1)
        if x.shape != self.scale.shape:
            raise ValueError(f"expected a state of size {self.scale.size}, got shape {np.shape(state)}")
        projected = self.projection @ np.clip(x / self.scale, -self.clip, self.clip)
        i, j = np.floor(projected / self.cell).astype(np.int64)
        return int(i), int(j)

    def __call__(self, request: AdviceRequest) -> bytes:
        if request.state is None:
            raise ValueError("ProjectedGridKey names a view by its privileged state: the request has none")
        return np.asarray(self.cell_of(request.state), dtype=np.int64).tobytes()
