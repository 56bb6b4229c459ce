"""
Which views to ask the teacher about: query selection for the advice wrappers.

Every advice wrapper asks a :class:`QuerySelector` which of the observations due for advice are worth a query; the
others carry invalid advice (``source="skipped"``). The selector sees a :class:`QueryBatch`: the envs' indices,
their episode steps, their observations and, built only where a selector asks for it, each one's teacher view (for
MiniGrid a lazy request whose image is rendered only on a cache miss).

**Known answers are free.** A selector that saves queries (:attr:`QuerySelector.free_hits`: all but
:class:`EveryK`) is offered only the views whose answer is *not* in the wrapper's cache: a view the cache already
answers gets that answer whatever the selector would say, since serving it costs no query. So the selector decides
which *new* views reach the backend, a :class:`Paced` budget counts backend queries, and a view asked about once
is advised on every later visit. :class:`EveryK` stays a schedule (ERPv asks every 10th frame, cached or not), and
without a cache nothing is known in advance.

- :class:`EveryK` (the default, ``query_every=k``): every k-th step of each episode (ERPv asks every 10 frames);
- :class:`Novelty`: the first ``max_asks`` times a view's digest is seen (count-based; the digest defaults to the
  view's content, pass a coarser ``key`` to ask about fewer);
- :class:`Familiar`: a view once it has been seen ``min_visits`` times (where the agent keeps coming back);
- :class:`Uncertainty`: where the learner's policy is unsure, its normalised entropy (discrete actions) or its
  Gaussian's standard deviation (continuous) at least ``threshold``; needs the learner, bound by the guided
  algorithms when ``learn()`` starts (:func:`bind_learner`: no global state);
- :class:`Paced`: a budget of queries spent evenly over the run, never beyond it: at ``t`` of ``T`` steps at most
  ``burst + max_queries · t / T`` views have been selected; composed after any other selector (the rows it keeps).

They compose: ``AllOf(Uncertainty(0.5), Paced(500))`` asks about uncertain views, within a paced budget of 500.
A selector counts views it selected; a selected view may still be answered by the cache (free), so a budget over
*backend* queries is the advisor's ``max_queries`` / ``max_cost_usd`` (hard caps), which a :class:`Paced` selector
spreads over the run instead of spending at the start.
"""

from __future__ import annotations

import hashlib
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sb3_vlm.advice import Advice, AdviceRequest

logger = logging.getLogger(__name__)


@dataclass
class QueryBatch:
    """
    The observations due for advice in one step of one wrapper.

    :param env_indices: (rows,) which env of the wrapper each row is (0 for a per-env wrapper)
    :param episode_steps: (rows,) each row's step in its episode (0: the episode's first observation)
    :param observations: each row's observation, as the wrapper sees it
    :param view: ``view(j)``: row ``j``'s teacher view (built once, on first use)
    :param num_timesteps: the learner's env steps so far (None: no learner bound)
    """

    env_indices: np.ndarray
    episode_steps: np.ndarray
    observations: Sequence[Any]
    view: Callable[[int], AdviceRequest]
    num_timesteps: int | None = None

    def __len__(self) -> int:
        return len(self.env_indices)


class QuerySelector(ABC):
    """Decides which rows of a :class:`QueryBatch` are asked about (see the module docstring)."""

    #: whether :meth:`select` needs the learner (:meth:`bind`)
    needs_learner: bool = False
    #: whether views the cache already answers are served without asking the selector (see the module docstring)
    free_hits: bool = True

    def __init__(self) -> None:
        self.selected = 0  # rows selected so far
        self.considered = 0  # rows offered so far

    def bind(self, learner: Any) -> None:  # noqa: B027 (optional hook: most selectors need no learner)
        """Called with the learning algorithm when its ``learn()`` starts (:func:`bind_learner`)."""

    def __call__(self, batch: QueryBatch) -> np.ndarray:
        """``(rows,)`` booleans: which rows to ask about (counted in :attr:`selected` / :attr:`considered`)."""
        keep = np.asarray(self.select(batch), dtype=bool).reshape(-1)
        if keep.shape != (len(batch),):
            raise ValueError(f"{type(self).__name__}.select returned {keep.shape[0]} rows for a batch of {len(batch)}")
        self.considered += len(batch)
        self.selected += int(keep.sum())
        return keep

    @abstractmethod
    def select(self, batch: QueryBatch) -> np.ndarray:
        """Which rows to ask about (no counting: :meth:`__call__` does it)."""

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to go on selecting as before (JSON-able)."""
        return {"selected": self.selected, "considered": self.considered}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.selected = int(state.get("selected", 0))
        self.considered = int(state.get("considered", 0))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class EveryK(QuerySelector):
    """
    Every ``k``-th step of each episode, starting with its first observation (a schedule: the steps between carry no
    advice even where the cache knows it).

    :param k: a positive int (with 2.5, ``step % 2.5 == 0`` would silently ask on every 5th step)
    """

    free_hits = False

    def __init__(self, k: int = 1):
        super().__init__()
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"query_every must be a positive int, got {k!r}")
        self.k = int(k)

    def select(self, batch: QueryBatch) -> np.ndarray:
        return np.asarray(batch.episode_steps) % self.k == 0

    def due(self, episode_step: int) -> bool:
        """One observation's decision, counted as :meth:`__call__` counts (the per-env wrapper's hot path)."""
        keep = episode_step % self.k == 0
        self.considered += 1
        self.selected += keep
        return keep

    def __repr__(self) -> str:
        return f"EveryK({self.k})"


def view_digest(request: AdviceRequest) -> str:
    """A view's content: its content key where it has one (MiniGrid's lazy views), else a hash of its image,
    state and context."""
    if request.content_key is not None:
        return request.content_key
    h = hashlib.sha256()
    for part in (request.image, request.state):
        if part is not None:
            array = np.ascontiguousarray(part)
            h.update(str((array.shape, array.dtype.str)).encode())
            h.update(array.tobytes())
    h.update(repr(sorted((request.context or {}).items())).encode())
    return h.hexdigest()


class Novelty(QuerySelector):
    """
    Count-based: ask about a view the first ``max_asks`` times its digest is seen.

    With the default digest (the view's content) and ``max_asks=1`` this is "every distinct view" without even a
    cache lookup for the repeats; a coarser ``key`` (say, the agent's cell and heading) asks about fewer.

    :param key: ``key(request) -> hashable`` digest of a view (default :func:`view_digest`)
    :param max_asks: how many times one digest is asked about
    """

    def __init__(self, key: Callable[[AdviceRequest], Hashable] | None = None, max_asks: int = 1):
        super().__init__()
        if max_asks < 1:
            raise ValueError(f"max_asks must be >= 1, got {max_asks}")
        self.key = key or view_digest
        self.max_asks = max_asks
        self.counts: dict[Hashable, int] = {}

    def select(self, batch: QueryBatch) -> np.ndarray:
        keep = np.zeros(len(batch), dtype=bool)
        for j in range(len(batch)):
            digest = self.key(batch.view(j))
            seen = self.counts.get(digest, 0)
            if seen < self.max_asks:
                keep[j] = True
                self.counts[digest] = seen + 1
        return keep

    def state_dict(self) -> dict[str, Any]:
        # digests of the default key are strings; others may not be JSON-able and are not kept
        counts = {k: v for k, v in self.counts.items() if isinstance(k, str)}
        return {**super().state_dict(), "counts": counts}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.counts.update(state.get("counts", {}))

    def __repr__(self) -> str:
        return f"Novelty(max_asks={self.max_asks})"


class Familiar(QuerySelector):
    """
    Ask about a view once it has been seen ``min_visits`` times (count-based, over the view's digest): a view the
    agent keeps coming back to (a start state, a bottleneck) is worth a query, one it passes once is not. With a
    cache (known answers are free) the view is then advised on every later visit.

    :param min_visits: the visit on which a view is first asked about (1: every new view)
    :param key: ``key(request) -> hashable`` digest of a view (default :func:`view_digest`)
    """

    def __init__(self, min_visits: int = 3, key: Callable[[AdviceRequest], Hashable] | None = None):
        super().__init__()
        if min_visits < 1:
            raise ValueError(f"min_visits must be >= 1, got {min_visits}")
        self.min_visits = int(min_visits)
        self.key = key or view_digest
        self.visits: dict[Hashable, int] = {}

    def select(self, batch: QueryBatch) -> np.ndarray:
        keep = np.zeros(len(batch), dtype=bool)
        for j in range(len(batch)):
            digest = self.key(batch.view(j))
            seen = self.visits.get(digest, 0) + 1
            self.visits[digest] = seen
            keep[j] = seen >= self.min_visits
        return keep

    def state_dict(self) -> dict[str, Any]:
        visits = {k: v for k, v in self.visits.items() if isinstance(k, str)}
        return {**super().state_dict(), "visits": visits}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.visits.update(state.get("visits", {}))

    def __repr__(self) -> str:
        return f"Familiar(min_visits={self.min_visits})"


def policy_uncertainty(policy: Any, observations: Sequence[Any]) -> np.ndarray:
    """
    How unsure ``policy`` is on each observation, in [0, 1]: the entropy of its action distribution over
    ``log(n_actions)`` (discrete), or its Gaussian's mean standard deviation, capped at 1 (continuous: SB3's
    Gaussian policies start at a standard deviation of 1 and narrow it as they learn; for SAC, that of the
    distribution before the tanh squashing).
    """
    import torch as th
    from gymnasium import spaces

    obs: Any
    if isinstance(policy.observation_space, spaces.Dict):
        obs = {k: np.stack([o[k] for o in observations]) for k in policy.observation_space.spaces}
    else:
        obs = np.stack([np.asarray(o) for o in observations])
    with th.no_grad():
        obs_tensor, _ = policy.obs_to_tensor(obs)
        actor = getattr(policy, "actor", None)
        if actor is not None and hasattr(actor, "get_action_dist_params"):  # SAC / TD3-style actor
            _, log_std, _ = actor.get_action_dist_params(obs_tensor)
            return np.minimum(th.exp(log_std).mean(dim=1).cpu().numpy(), 1.0).astype(np.float64)
        dist = policy.get_distribution(obs_tensor).distribution
        if isinstance(dist, th.distributions.Categorical):
            n = dist.probs.shape[-1]
            return (
                (dist.entropy() / math.log(n)).cpu().numpy().astype(np.float64)
                if n > 1
                else np.zeros(len(observations))
            )
        scale = getattr(dist, "scale", None)
        if scale is not None:
            return np.minimum(scale.reshape(scale.shape[0], -1).mean(dim=1).cpu().numpy(), 1.0).astype(np.float64)
    raise TypeError(f"Uncertainty cannot measure a {type(dist).__name__} policy distribution")


class Uncertainty(QuerySelector):
    """
    Ask where the learner is unsure: :func:`policy_uncertainty` at least ``threshold``.

    Before a learner is bound (the env is stepped outside ``learn()``) every row is asked about.

    :param threshold: in [0, 1]; 0.5: half the entropy of a uniform policy (discrete), half the initial standard
        deviation (continuous)
    """

    needs_learner = True

    def __init__(self, threshold: float = 0.5):
        super().__init__()
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        self.threshold = threshold
        self.policy: Any = None
        self.last_uncertainty: np.ndarray | None = None
        self.failures = 0  # batches the policy could not be evaluated on (asked about in full)

    def bind(self, learner: Any) -> None:
        self.policy = learner.policy

    def select(self, batch: QueryBatch) -> np.ndarray:
        if self.policy is None:
            return np.ones(len(batch), dtype=bool)
        try:
            self.last_uncertainty = policy_uncertainty(self.policy, batch.observations)
        except (ValueError, TypeError, RuntimeError) as exc:  # e.g. a wrapper between it and the policy reshaped obs
            self.failures += 1
            if self.failures == 1:
                logger.warning("Uncertainty cannot evaluate the policy on the advice wrapper's observations (%s): "
                               "asking about every view (counted in .failures)", exc)  # fmt: skip
            return np.ones(len(batch), dtype=bool)
        return self.last_uncertainty >= self.threshold

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "policy": None}  # a worker process gets no copy of the learner

    def __repr__(self) -> str:
        return f"Uncertainty({self.threshold})"


class Paced(QuerySelector):
    """
    A budget of ``max_queries`` selected views spent evenly over ``total_steps`` env steps: after ``t`` steps at
    most ``burst + max_queries · t / total_steps`` (and never more than ``max_queries``) have been selected; rows
    beyond that are skipped, the earliest rows of a batch first.

    :param max_queries: the budget
    :param total_steps: the run's length in env steps; None: the learner's ``learn()`` total (bound when it starts)
    :param burst: views that may be selected ahead of the even pace (the first episodes' views)
    :param horizon: the share of the run the budget is spread over (1: all of it; 0.5: the first half, where
        GuidedPPO / GuidedA2C still weight the teacher before their fade hands the run back to the rewards)
    """

    needs_learner = False

    def __init__(
        self, max_queries: int, total_steps: int | None = None, burst: int | None = None, horizon: float = 1.0
    ):
        super().__init__()
        if max_queries < 0 or (total_steps is not None and total_steps < 1):
            raise ValueError(f"max_queries must be >= 0 and total_steps >= 1, got {max_queries}, {total_steps}")
        if not 0.0 < horizon <= 1.0:
            raise ValueError(f"horizon must be in (0, 1], got {horizon}")
        self.max_queries, self.total_steps, self.horizon = int(max_queries), total_steps, float(horizon)
        self.burst = max(1, self.max_queries // 20) if burst is None else int(burst)
        self._learner: Any = None

    def bind(self, learner: Any) -> None:
        self._learner = learner
        if self.total_steps is None:
            self.total_steps = int(learner._total_timesteps)

    def allowance(self, num_timesteps: int | None) -> int:
        """How many views may have been selected by ``num_timesteps`` (the whole budget without a clock)."""
        if num_timesteps is None or self.total_steps is None:
            return self.max_queries
        paced = self.burst + self.max_queries * min(num_timesteps / (self.horizon * self.total_steps), 1.0)
        return int(min(self.max_queries, math.floor(paced)))

    def select(self, batch: QueryBatch) -> np.ndarray:
        # the learner's clock where bound: a selector shared by per-env wrappers sees each env's own count in the
        # batch (1/n_envs of the run), which would spend only that share of the budget
        steps = int(self._learner.num_timesteps) if self._learner is not None else batch.num_timesteps
        room = max(self.allowance(steps) - self.selected, 0)
        keep = np.zeros(len(batch), dtype=bool)
        keep[:room] = True
        return keep

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_learner": None}

    def __repr__(self) -> str:
        return f"Paced({self.max_queries}, total_steps={self.total_steps}, horizon={self.horizon})"


def _subset(batch: QueryBatch, rows: np.ndarray) -> QueryBatch:
    """The rows ``rows`` of ``batch`` as a batch of their own (views still built once, by the full batch)."""
    return QueryBatch(
        env_indices=batch.env_indices[rows],
        episode_steps=batch.episode_steps[rows],
        observations=[batch.observations[int(r)] for r in rows],
        view=lambda j: batch.view(int(rows[j])),
        num_timesteps=batch.num_timesteps,
    )


class AllOf(QuerySelector):
    """
    Ask where every one of ``selectors`` agrees, in order: each sees only the rows the ones before it kept (so a
    :class:`Paced` budget last counts only what is really asked, and a :class:`Novelty` count after an
    :class:`Uncertainty` filter counts only uncertain views).
    """

    def __init__(self, *selectors: QuerySelector):
        super().__init__()
        if not selectors:
            raise ValueError("AllOf needs at least one selector")
        self.selectors = list(selectors)

    @property
    def needs_learner(self) -> bool:  # type: ignore[override]
        return any(s.needs_learner for s in self.selectors)

    @property
    def free_hits(self) -> bool:  # type: ignore[override]
        return all(s.free_hits for s in self.selectors)

    def bind(self, learner: Any) -> None:
        for selector in self.selectors:
            selector.bind(learner)

    def select(self, batch: QueryBatch) -> np.ndarray:
        rows = np.arange(len(batch))
        for selector in self.selectors:
            if rows.size == 0:
                break
            keep = selector(_subset(batch, rows))
            rows = rows[keep]
        out = np.zeros(len(batch), dtype=bool)
        out[rows] = True
        return out

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "selectors": [s.state_dict() for s in self.selectors]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        for selector, sub in zip(self.selectors, state.get("selectors", []), strict=False):
            selector.load_state_dict(sub)

    def __repr__(self) -> str:
        return f"AllOf({', '.join(map(repr, self.selectors))})"


def select_with_known(
    selector: QuerySelector, batch: QueryBatch, known: Callable[[AdviceRequest], Advice | None] | None
) -> tuple[np.ndarray, dict[int, Advice]]:
    """
    The wrappers' one selection step: which rows of ``batch`` to ask about, and the answers of the rows ``known``
    (the cache's lookup) already has (served without a query; only where ``selector.free_hits``).

    :return: ``keep`` (rows to ask about) and ``{row: advice}`` for the rows answered already
    """
    answered: dict[int, Advice] = {}
    if known is not None and selector.free_hits:
        for j in range(len(batch)):
            advice = known(batch.view(j))
            if advice is not None:
                answered[j] = advice
    if not answered:
        return selector(batch), answered
    keep = np.zeros(len(batch), dtype=bool)
    rows = np.array([j for j in range(len(batch)) if j not in answered], dtype=np.int64)
    if rows.size:
        keep[rows] = selector(_subset(batch, rows))
    return keep, answered


def resolve_selector(query: QuerySelector | None, query_every: int) -> QuerySelector:
    """The wrappers' selector: ``query`` where given (then ``query_every`` must be left at 1), else
    :class:`EveryK` ``(query_every)``."""
    if query is None:
        return EveryK(query_every)
    if not isinstance(query, QuerySelector):
        raise TypeError(f"query must be a QuerySelector, got {type(query).__name__}")
    if query_every != 1:
        raise ValueError("give query_every or query=, not both (query=EveryK(k) is query_every=k)")
    return query


def bind_learner(env: Any, learner: Any) -> int:
    """
    Give the query selectors of ``env``'s advice wrappers the learner (the seam :class:`Uncertainty` and
    :class:`Paced` use; called by the guided algorithms when ``learn()`` starts). VecEnv-level wrappers are bound
    directly; per-env wrappers only where they live in this process (a ``DummyVecEnv``): inside ``SubprocVecEnv``
    workers a selector that needs the learner cannot have it, which is warned about (wrap the VecEnv with
    :class:`~sb3_vlm.wrappers.VecVLMAdviceWrapper` instead). Returns how many selectors were bound.
    """
    from stable_baselines3.common.vec_env import DummyVecEnv, VecEnvWrapper

    bound = 0
    current = env
    while isinstance(current, VecEnvWrapper):
        selector = getattr(current, "query_selector", None)
        if isinstance(selector, QuerySelector):
            selector.bind(learner)
            bound += 1
        current = current.venv
    if isinstance(current, DummyVecEnv):
        for sub in current.envs:
            selector = _find_selector(sub)
            if selector is not None:
                selector.bind(learner)
                bound += 1
    elif current is not None:
        try:
            needs = current.get_attr("query_selector")
        except AttributeError:
            needs = []
        if any(getattr(s, "needs_learner", False) for s in needs):
            logger.warning(
                "a query selector that needs the learner runs inside %s workers, which cannot see it: it asks "
                "about every view; wrap the VecEnv with VecVLMAdviceWrapper(query=...) instead",
                type(current).__name__,
            )
    return bound


def _find_selector(env: Any) -> QuerySelector | None:
    current = env
    while current is not None:
        selector = current.__dict__.get("query_selector") if hasattr(current, "__dict__") else None
        if isinstance(selector, QuerySelector):
            return selector
        current = getattr(current, "env", None)
    return None


#: what :func:`selector_from_spec` reads
SELECTOR_SPEC_HELP = (
    "'+'-joined parts, applied in order: every:K | novelty[:MAX_ASKS] | familiar[:MIN_VISITS] | "
    "uncertainty[:THRESHOLD] | paced:MAX_QUERIES[:HORIZON] (e.g. 'familiar:3+paced:500:0.5')"
)


def selector_from_spec(spec: str) -> QuerySelector:
    """A selector from a short spec (:data:`SELECTOR_SPEC_HELP`), for the command line and JSON job files."""
    parts: list[QuerySelector] = []
    for part in spec.split("+"):
        name, _, value = part.strip().partition(":")
        try:
            if name == "every":
                parts.append(EveryK(int(value or 1)))
            elif name == "novelty":
                parts.append(Novelty(max_asks=int(value or 1)))
            elif name == "familiar":
                parts.append(Familiar(int(value or 3)))
            elif name == "uncertainty":
                parts.append(Uncertainty(float(value or 0.5)))
            elif name == "paced" and value:
                budget, _, horizon = value.partition(":")
                parts.append(Paced(int(budget), horizon=float(horizon or 1.0)))
            else:
                raise ValueError
        except ValueError:
            raise ValueError(f"query selector spec {spec!r}: cannot read {part!r}; {SELECTOR_SPEC_HELP}") from None
    return parts[0] if len(parts) == 1 else AllOf(*parts)
