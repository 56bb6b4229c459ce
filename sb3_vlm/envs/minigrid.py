"""MiniGrid as LVLM2P sets it up: the student sees its own observation, the teacher a fully observable render.

- :func:`make_minigrid_env` builds the env with a choice of student observation and a teacher view.
- :class:`MiniGridTeacherView` exposes ``teacher_request()``, which :class:`~sb3_vlm.wrappers.VLMAdviceWrapper`
  uses by default: the full RGB render (drawn only when a backend looks at it; the cache keys the view by the grid
  encoding), the mission text, and a compact state snapshot for scripted advisors.
- :class:`MiniGridOracle` is a shortest-path planner over the full grid giving soft probabilities over the
  optimal actions (a stand-in for a perfect VLM teacher).
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from sb3_vlm.advice import Advice, AdviceRequest
from sb3_vlm.advisors.base import Advisor

try:
    import minigrid  # noqa: F401  (registers the MiniGrid-* ids)
    from minigrid.core.constants import COLOR_NAMES, COLOR_TO_IDX, OBJECT_TO_IDX, STATE_TO_IDX
    from minigrid.core.grid import Grid
    from minigrid.wrappers import FullyObsWrapper, RGBImgObsWrapper, RGBImgPartialObsWrapper
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("MiniGrid support needs the 'minigrid' extra: pip install 'sb3-vlm[minigrid]'") from exc

# MiniGrid's actions (minigrid.core.actions.Actions)
LEFT, RIGHT, FORWARD, PICKUP, DROP, TOGGLE, DONE = range(7)
ACTION_NAMES = ("turn left", "turn right", "move forward", "pick up", "drop", "toggle", "done")
_DIR_TO_VEC = ((1, 0), (0, 1), (-1, 0), (0, -1))
_MISSION_WORDS = (*COLOR_NAMES, "door", "key", "ball", "box")

StudentObs = Literal["symbolic", "symbolic_partial", "rgb_partial", "rgb_full"]
TaskKind = Literal["goal", "doorkey", "goto_door", "fetch", "keycorridor", "unsupported"]


@dataclass
class MiniGridState:
    """
    What the oracle plans on: the encoded full grid and the agent. Everything here is visible in the full render or
    stated in the mission/context, so caching on (image, context) or on the view's content key is sound.

    :param grid: ``grid.encode()``, shape (W, H, 3): object index, colour index, state
    :param agent_pos: (x, y)
    :param agent_dir: 0 right, 1 down, 2 left, 3 up
    :param carrying: (object index, colour index) of the carried object, or None
    :param task: which planning problem the env poses
    :param target: (object index, colour index) for GoToDoor / Fetch, else None
    """

    grid: np.ndarray
    agent_pos: tuple[int, int]
    agent_dir: int
    carrying: tuple[int, int] | None
    task: TaskKind
    target: tuple[int, int] | None = None


def _task_of(env: Any) -> tuple[TaskKind, tuple[int, int] | None]:
    name = type(env).__name__
    if name == "DoorKeyEnv":
        return "doorkey", None
    if name == "GoToDoorEnv":
        return "goto_door", (OBJECT_TO_IDX["door"], COLOR_TO_IDX[env.target_color])
    if name == "FetchEnv":
        return "fetch", (OBJECT_TO_IDX[env.targetType], COLOR_TO_IDX[env.targetColor])
    if name == "KeyCorridorEnv" and getattr(env, "obj", None) is not None:
        return "keycorridor", (OBJECT_TO_IDX[env.obj.type], COLOR_TO_IDX[env.obj.color])
    return "goal", None


_EMPTY_CELL = (OBJECT_TO_IDX["empty"], 0, 0)


def encode_grid(grid: Grid) -> np.ndarray:
    """
    ``grid.encode()`` (shape (W, H, 3) uint8), read-only, in half the time: one pass over the cell list instead of
    numpy indexing per cell (it runs on every step: the content key and the oracle's state both read it).
    """
    cells = [_EMPTY_CELL if obj is None else obj.encode() for obj in grid.grid]  # row-major: index j * width + i
    flat = np.frombuffer(bytes(itertools.chain.from_iterable(cells)), dtype=np.uint8)
    out = np.ascontiguousarray(flat.reshape(grid.height, grid.width, 3).transpose(1, 0, 2))
    out.flags.writeable = False  # shared by the state, the content key and the lazy render
    return out


def minigrid_state(env: gym.Env, grid: np.ndarray | None = None) -> MiniGridState:
    """Snapshot the state of a (possibly wrapped) MiniGrid env for :class:`MiniGridOracle`; ``grid``: its
    :func:`encode_grid` where the caller has it already."""
    u: Any = env.unwrapped
    task, target = _task_of(u)
    carrying = None
    if u.carrying is not None:
        carrying = (OBJECT_TO_IDX[u.carrying.type], COLOR_TO_IDX[u.carrying.color])
    return MiniGridState(
        grid=encode_grid(u.grid) if grid is None else grid,
        agent_pos=(int(u.agent_pos[0]), int(u.agent_pos[1])),
        agent_dir=int(u.agent_dir),
        carrying=carrying,
        task=task,
        target=target,
    )


def render_full_grid(grid: Grid | np.ndarray, agent_pos: tuple[int, int], agent_dir: int, tile_size: int) -> np.ndarray:
    """
    The teacher's full RGB render of a grid or of its encoding (a snapshot, which lazy requests render from): the
    same image either way, since MiniGrid draws each cell from its (object, colour, state) encoding alone.
    """
    if isinstance(grid, np.ndarray):
        grid, _ = Grid.decode(grid)
    # grid.render directly: get_full_render also computes the agent's visibility mask, which costs as much again
    return grid.render(tile_size, agent_pos, agent_dir, highlight_mask=None)


def view_content_key(state: MiniGridState, mission: str, tile_size: int) -> str:
    """
    Digest of everything the teacher's render and context show: the grid encoding, the agent's position and
    direction, what it carries, the mission, and the tile size (the image a cache miss would render).
    """
    h = hashlib.blake2b(digest_size=16)
    h.update(state.grid.tobytes())
    h.update(f"{state.grid.shape}|{state.agent_pos}|{state.agent_dir}|{state.carrying}|{tile_size}|".encode())
    h.update(mission.encode())
    return h.hexdigest()


#: pixels per cell of the teacher image when neither the caller nor the advisor asks for more (scripted teachers)
TEACHER_TILE_SIZE = 8


class GridEncodingMemo:
    """
    :func:`encode_grid` of a grid, reused while the grid holds the same objects in the same cells and its doors and
    boxes the same states (the agent turning and walking, most steps, changes none of that; its position is not in
    the encoding). The fingerprint is each cell's object identity plus the doors' open / locked flags and what the
    boxes hold, within one episode: a few microseconds against ~20 for the encoding of a 7x7 grid. The memo keeps
    the objects it fingerprinted alive, so no identity in it can be reused by a new object; an env that recolours
    or retypes an object in place (none of MiniGrid's) would need a fresh memo.
    """

    def __init__(self) -> None:
        self.episode = 0
        self._key: tuple[Any, ...] | None = None
        self._stateful: list[Any] = []
        self._states: tuple[Any, ...] = ()
        self._encoding: np.ndarray | None = None
        self._objects: tuple[Any, ...] = ()

    def new_episode(self) -> None:
        self.episode += 1
        self._key = None

    def encode(self, grid: Grid) -> np.ndarray:
        cells = grid.grid
        key = (self.episode, id(grid), tuple(map(id, cells)))
        if key == self._key and self._encoding is not None:
            states = tuple(_object_state(obj) for obj in self._stateful)
            if states == self._states:
                return self._encoding
        self._key = key
        self._objects = (grid, list(cells))  # alive while their identities are in the key
        self._stateful = [obj for obj in cells if obj is not None and obj.type in ("door", "box")]
        self._states = tuple(_object_state(obj) for obj in self._stateful)
        self._encoding = encode_grid(grid)
        return self._encoding


def _object_state(obj: Any) -> tuple[Any, ...]:
    """What of an object can change in place: a door's flags, what a box holds."""
    return (getattr(obj, "is_open", None), getattr(obj, "is_locked", None), id(getattr(obj, "contains", None)))


class MiniGridTeacherView(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """
    Give the teacher a fully observable RGB render of the grid plus the mission (LVLM2P's setup).

    The request is lazy (issue 18): it carries a content key of the state (:func:`view_content_key`), which the
    advice cache keys by, and renders the image only when a backend reads it, i.e. on a cache miss of an advisor
    that looks at images: rendering every step is a large share of a guided PPO run's time.

    :param env: a MiniGrid env (any wrappers)
    :param tile_size: pixels per grid cell of the teacher image; None (default): :data:`TEACHER_TILE_SIZE` (8 keeps
        hashing and rendering cheap for scripted teachers) until an advice wrapper asks for its advisor's
        :attr:`~sb3_vlm.advisors.base.Advisor.preferred_view_size` (:meth:`prefer_view_size`: VLM advisors get
        32-pixel tiles, 224×224 for a 7x7 grid)
    :param content_key: True: lazy requests keyed by content; False: render every view and key it by its pixels
        (how caches filled before issue 18 are keyed)
    """

    def __init__(self, env: gym.Env, tile_size: int | None = None, content_key: bool = True):
        gym.utils.RecordConstructorArgs.__init__(self, tile_size=tile_size, content_key=content_key)
        super().__init__(env)
        self.fixed_tile_size = tile_size is not None
        self.tile_size = TEACHER_TILE_SIZE if tile_size is None else int(tile_size)
        self.content_key = content_key
        self._grid_memo = GridEncodingMemo()

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        self._grid_memo.new_episode()
        return self.env.reset(**kwargs)

    def prefer_view_size(self, pixels: int | None) -> int:
        """
        Render the teacher image about ``pixels`` wide (the longer side; never below :data:`TEACHER_TILE_SIZE` per
        cell), unless a tile size was given. Called by the advice wrappers with their advisor's preferred size.

        :return: the tile size now used
        """
        if pixels is not None and not self.fixed_tile_size:
            u: Any = self.env.unwrapped
            cells = max(int(u.width), int(u.height))
            self.tile_size = max(TEACHER_TILE_SIZE, -(-int(pixels) // cells))
        return self.tile_size

    def teacher_request(self) -> AdviceRequest:
        u: Any = self.env.unwrapped
        state = minigrid_state(self.env, self._grid_memo.encode(u.grid))
        carrying = "nothing" if u.carrying is None else f"{u.carrying.color} {u.carrying.type}"
        context = {"mission": u.mission, "carrying": carrying}
        if not self.content_key:
            image = render_full_grid(u.grid, u.agent_pos, u.agent_dir, self.tile_size)
            return AdviceRequest(image=image, context=context, action_space=self.env.action_space, state=state)
        return AdviceRequest(
            context=context,
            action_space=self.env.action_space,
            state=state,
            content_key=view_content_key(state, u.mission, self.tile_size),
            render=partial(render_full_grid, state.grid, state.agent_pos, state.agent_dir, self.tile_size),
        )


class SymbolicObsWrapper(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """
    Compact student observation: a symbolic grid (object, colour, state indices scaled to [0, 1]), the agent's
    direction one-hot, and a bag of mission words (colours and object types, so that GoToDoor and Fetch are
    solvable). A flat float vector for ``MlpPolicy``; much faster to learn from on a CPU than pixels.

    :param env: a MiniGrid env
    :param full: True: the whole grid with the agent in it (LVLM2P's student "operates on the environment's state",
        §III); False: the agent's egocentric 7x7 view (partially observable: a teacher with the full view then knows
        things the student cannot see, which caps how well the student can imitate it)
    """

    def __init__(self, env: gym.Env, full: bool = True):
        gym.utils.RecordConstructorArgs.__init__(self, full=full)
        super().__init__(env)
        # FullyObsWrapper's transform is used in place (not as a wrapper) so that the env stays re-creatable
        source = FullyObsWrapper(env) if full else env
        self._full_view = source.observation if isinstance(source, FullyObsWrapper) else None
        img_space = source.observation_space["image"]  # type: ignore[index]
        # state channel: door state 0..2, or the agent's direction 0..3 in the full grid
        self._scale = np.array([max(OBJECT_TO_IDX.values()), max(COLOR_TO_IDX.values()), 3], dtype=np.float32)
        size = int(np.prod(img_space.shape)) + 4 + len(_MISSION_WORDS)
        self.observation_space = spaces.Box(0.0, 1.0, shape=(size,), dtype=np.float32)
        self._mission: str | None = None
        self._mission_vec = np.zeros(len(_MISSION_WORDS), dtype=np.float32)

    def observation(self, observation: dict[str, Any]) -> np.ndarray:
        if self._full_view is not None:
            observation = self._full_view(observation)
        image = observation["image"].astype(np.float32) / self._scale
        direction = np.zeros(4, dtype=np.float32)
        direction[int(observation["direction"])] = 1.0
        mission = observation["mission"]
        if mission != self._mission:  # missions change only at reset
            words = set(re.findall(r"[a-z]+", mission.lower()))
            self._mission_vec = np.array([w in words for w in _MISSION_WORDS], dtype=np.float32)
            self._mission = mission
        return np.concatenate([image.reshape(-1), direction, self._mission_vec])


class RGBObsWrapper(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """
    RGB student observation: MiniGrid's egocentric (``partial=True``) or whole-grid RGB render as a bare image.
    (MiniGrid's own RGB wrappers cannot be re-created from an env spec, which Gymnasium's ``check_env`` needs.)

    :param env: a MiniGrid env
    :param partial: the agent's view (True) or the full grid (False)
    :param tile_size: pixels per cell
    """

    def __init__(self, env: gym.Env, partial: bool = True, tile_size: int = 8):
        gym.utils.RecordConstructorArgs.__init__(self, partial=partial, tile_size=tile_size)
        inner = RGBImgPartialObsWrapper(env, tile_size) if partial else RGBImgObsWrapper(env, tile_size)
        super().__init__(env)
        self._render = inner.observation
        self.observation_space = inner.observation_space["image"]  # type: ignore[index]

    def observation(self, observation: dict[str, Any]) -> np.ndarray:
        return self._render(observation)["image"]


def make_minigrid_env(
    env_id: str,
    student_obs: StudentObs = "rgb_partial",
    teacher_tile_size: int | None = None,
    student_tile_size: int = 8,
    render_mode: str | None = None,
    teacher_content_key: bool = True,
    **env_kwargs: Any,
) -> gym.Env:
    """
    Make a MiniGrid env with a student observation and a teacher view (LVLM2P setup).

    :param env_id: e.g. ``"MiniGrid-LavaGapS7-v0"``
    :param student_obs: ``"rgb_partial"`` (the agent's egocentric view as 56x56 RGB, for ``CnnPolicy``),
        ``"rgb_full"`` (the whole grid as RGB), ``"symbolic"`` (the full grid state as a flat vector, LVLM2P's
        student input, for ``MlpPolicy``; the fast choice on a CPU) or ``"symbolic_partial"`` (the egocentric view
        as a flat vector); see :class:`SymbolicObsWrapper`
    :param teacher_tile_size: pixels per cell of the teacher's full render; None: by advisor (see
        :class:`MiniGridTeacherView`: 8 for scripted teachers, 32 for VLMs)
    :param student_tile_size: pixels per cell of the RGB student observations
    :param render_mode: passed to ``gym.make``
    :param teacher_content_key: key teacher views by content and render them lazily (see :class:`MiniGridTeacherView`)
    :param env_kwargs: passed to ``gym.make`` (e.g. ``max_steps``)
    """
    env = gym.make(env_id, render_mode=render_mode, **env_kwargs)
    if student_obs in ("symbolic", "symbolic_partial"):
        env = SymbolicObsWrapper(env, full=student_obs == "symbolic")
    elif student_obs in ("rgb_partial", "rgb_full"):
        env = RGBObsWrapper(env, partial=student_obs == "rgb_partial", tile_size=student_tile_size)
    else:
        raise ValueError(f"student_obs must be 'symbolic', 'rgb_partial' or 'rgb_full', got {student_obs!r}")
    return MiniGridTeacherView(env, tile_size=teacher_tile_size, content_key=teacher_content_key)


# --------------------------------------------------------------------------------------------- oracle planner
def _passable(cell: np.ndarray, through_closed: bool = False) -> bool:
    """Free to walk into; ``through_closed``: a closed (not locked) door counts too, the plan toggles it open."""
    obj = int(cell[0])
    if obj in (OBJECT_TO_IDX["empty"], OBJECT_TO_IDX["floor"], OBJECT_TO_IDX["goal"]):
        return True
    open_states = (STATE_TO_IDX["open"], STATE_TO_IDX["closed"]) if through_closed else (STATE_TO_IDX["open"],)
    return obj == OBJECT_TO_IDX["door"] and int(cell[2]) in open_states


def _closed_door(cell: np.ndarray) -> bool:
    return int(cell[0]) == OBJECT_TO_IDX["door"] and int(cell[2]) == STATE_TO_IDX["closed"]


def _through_closed_doors(state: MiniGridState) -> bool:
    # KeyCorridor's rooms are joined by closed doors: the plan walks through them, toggling each open on the way
    return state.task == "keycorridor"


_MOVABLE = (OBJECT_TO_IDX["key"], OBJECT_TO_IDX["ball"], OBJECT_TO_IDX["box"])


def _may_move_objects(state: MiniGridState) -> bool:
    # DoorKey and KeyCorridor: an agent can drop the key where it blocks the only way on (a doorway, KeyCorridor's
    # one-cell-wide corridors); the plan then picks it up again. Never in Fetch, where picking up the wrong object
    # ends the episode
    return state.task in ("doorkey", "keycorridor")


def _cells_reachable(passable: np.ndarray, start: tuple[int, int]) -> np.ndarray:
    """Cells reachable from ``start`` through ``passable`` ones (4-neighbour flood fill; turning is free)."""
    w, h = passable.shape
    seen = np.zeros((w, h), dtype=bool)
    seen[start] = True
    queue: deque[tuple[int, int]] = deque([start])
    while queue:
        x, y = queue.popleft()
        for dx, dy in _DIR_TO_VEC:
            nx, ny = x + dx, y + dy
            if 0 <= nx < w and 0 <= ny < h and passable[nx, ny] and not seen[nx, ny]:
                seen[nx, ny] = True
                queue.append((nx, ny))
    return seen


def _harmless_drop_cells(state: MiniGridState, targets: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """
    Empty cells where an object put down does not cut the agent off from ``targets``: from every free cell next to
    it (where the agent may stand to put it down), a cell next to a target stays reachable. So a plan that drops the
    key in a one-cell-wide corridor drops it behind the agent, never between the agent and the ball, nor back where
    it just picked it up.
    """
    grid = state.grid
    w, h = grid.shape[:2]
    through = _through_closed_doors(state)
    passable = np.array([[_passable(grid[x, y], through) for y in range(h)] for x in range(w)])
    passable[state.agent_pos] = True
    near = {(tx + dx, ty + dy) for tx, ty in targets for dx, dy in _DIR_TO_VEC}
    near = {(x, y) for x, y in near if 0 <= x < w and 0 <= y < h and passable[x, y]}
    cells = []
    for x, y in zip(*np.nonzero(grid[..., 0] == OBJECT_TO_IDX["empty"]), strict=True):
        cell = (int(x), int(y))
        blocked = passable.copy()
        blocked[cell] = False
        sides = [(x + dx, y + dy) for dx, dy in _DIR_TO_VEC]
        sides = [(sx, sy) for sx, sy in sides if 0 <= sx < w and 0 <= sy < h and blocked[sx, sy]]
        if sides and all(any(_cells_reachable(blocked, side)[c] for c in near - {cell}) for side in sides):
            cells.append(cell)
    return cells


@dataclass
class _Goal:
    """Planning target: states of distance 0 and the action to take there (None: being there is success)."""

    cells: list[tuple[int, int]]
    facing: bool  # True: goal states *face* one of ``cells``; False: they stand on one of them
    final_action: int | None


def _goal_for(state: MiniGridState) -> _Goal | None:
    grid = state.grid
    w, h = grid.shape[:2]

    def find(obj: int, color: int | None = None, door_state: int | None = None) -> list[tuple[int, int]]:
        return [
            (x, y)
            for x in range(w)
            for y in range(h)
            if grid[x, y, 0] == obj
            and (color is None or grid[x, y, 1] == color)
            and (door_state is None or grid[x, y, 2] == door_state)
        ]

    door, key, goal = OBJECT_TO_IDX["door"], OBJECT_TO_IDX["key"], OBJECT_TO_IDX["goal"]
    if state.task == "doorkey":
        locked = find(door, door_state=STATE_TO_IDX["locked"])
        carrying_key = state.carrying is not None and state.carrying[0] == key
        if locked and not carrying_key:
            return _Goal(find(key), facing=True, final_action=PICKUP)
        closed = locked + find(door, door_state=STATE_TO_IDX["closed"])
        if closed:
            return _Goal(closed, facing=True, final_action=TOGGLE)
        return _Goal(find(goal), facing=False, final_action=None)
    if state.task == "goto_door":
        assert state.target is not None
        doors = find(door, color=state.target[1])
        around = {(x + dx, y + dy) for x, y in doors for dx, dy in _DIR_TO_VEC}
        cells = [(x, y) for x, y in around if 0 <= x < w and 0 <= y < h and _passable(grid[x, y])]
        return _Goal(cells, facing=False, final_action=DONE)
    if state.task == "fetch":
        assert state.target is not None
        return _Goal(find(state.target[0], color=state.target[1]), facing=True, final_action=PICKUP)
    if state.task == "keycorridor":
        # the ball waits behind a locked door whose key lies in another room: fetch the key, unlock the door, put
        # the key down (the agent carries one object at a time), pick up the ball
        assert state.target is not None
        locked = find(door, door_state=STATE_TO_IDX["locked"])
        carrying_key = state.carrying is not None and state.carrying[0] == key
        if locked and not carrying_key:
            return _Goal(find(key), facing=True, final_action=PICKUP)
        if locked:
            return _Goal(locked, facing=True, final_action=TOGGLE)
        target = find(state.target[0], color=state.target[1])
        if carrying_key:
            return _Goal(_harmless_drop_cells(state, target), facing=True, final_action=DROP)
        return _Goal(target, facing=True, final_action=PICKUP)
    if state.task == "goal":
        cells = find(goal)
        return _Goal(cells, facing=False, final_action=None) if cells else None
    return None


def shortest_path_distances(state: MiniGridState, movable: bool = False) -> tuple[np.ndarray, _Goal] | None:
    """
    Backward breadth-first search over (x, y, direction) with the moves left / right / forward.

    :param movable: cells holding a key, ball or box count as passable (the plan picks the object up on the way)
    :return: distance-to-goal array (W, H, 4) with ``-1`` for unreachable, and the goal; None if the task has none
    """
    goal = _goal_for(state)
    if goal is None or not goal.cells:
        return None
    grid = state.grid
    w, h = grid.shape[:2]
    through = _through_closed_doors(state)
    passable = np.array([[_passable(grid[x, y], through) for y in range(h)] for x in range(w)])
    if movable:
        passable |= np.isin(grid[..., 0], _MOVABLE)
    passable[state.agent_pos] = True  # the agent's own cell is free (grid.encode() omits the agent)
    dist = np.full((w, h, 4), -1, dtype=np.int64)
    queue: deque[tuple[int, int, int]] = deque()
    for gx, gy in goal.cells:
        for d, (dx, dy) in enumerate(_DIR_TO_VEC):
            if goal.facing:
                x, y = gx - dx, gy - dy  # stand behind the target, facing it
                if not (0 <= x < w and 0 <= y < h and passable[x, y]):
                    continue
            else:
                x, y = gx, gy
            if dist[x, y, d] < 0:
                dist[x, y, d] = 0
                queue.append((x, y, d))
    while queue:
        x, y, d = queue.popleft()
        nd = dist[x, y, d] + 1
        # predecessors: turning left from d+1 or right from d-1 reaches d; moving forward from one cell back
        preds = [(x, y, (d + 1) % 4), (x, y, (d - 1) % 4)]
        px, py = x - _DIR_TO_VEC[d][0], y - _DIR_TO_VEC[d][1]
        if 0 <= px < w and 0 <= py < h and passable[px, py]:
            preds.append((px, py, d))
        for p in preds:
            if dist[p] < 0:
                dist[p] = nd
                queue.append(p)
    return dist, goal


def optimal_actions(state: MiniGridState) -> list[int]:
    """
    All actions that start a shortest plan from the current state (empty when the task cannot be solved). Where
    only an object the agent dropped blocks the way (DoorKey, KeyCorridor) and its hands are free, the plan picks
    it up on the way.
    """
    planned = shortest_path_distances(state)
    if planned is None:
        return []
    dist, goal = planned
    x, y = state.agent_pos
    d = state.agent_dir
    here = int(dist[x, y, d])
    movable = False
    if here < 0 and state.carrying is None and _may_move_objects(state):
        replanned = shortest_path_distances(state, movable=True)
        if replanned is not None and replanned[0][x, y, d] >= 0:
            (dist, goal), movable = replanned, True
            here = int(dist[x, y, d])
    if here < 0:
        # DynamicObstacles: moving balls can block every route for a moment; turning in place is the safe way to
        # wait (moving forward into a ball ends the episode with -1)
        moving_obstacles = state.task == "goal" and bool((state.grid[..., 0] == OBJECT_TO_IDX["ball"]).any())
        return [LEFT, RIGHT] if moving_obstacles else []
    if here == 0:
        return [goal.final_action] if goal.final_action is not None else []
    w, h = dist.shape[:2]
    best = []
    nexts = {LEFT: (x, y, (d - 1) % 4), RIGHT: (x, y, (d + 1) % 4)}
    fx, fy = x + _DIR_TO_VEC[d][0], y + _DIR_TO_VEC[d][1]
    if 0 <= fx < w and 0 <= fy < h:
        nexts[FORWARD] = (fx, fy, d)
    for action, nxt in nexts.items():
        if dist[nxt] == here - 1:
            best.append(action)
    if FORWARD in best and _through_closed_doors(state) and _closed_door(state.grid[fx, fy]):
        best[best.index(FORWARD)] = TOGGLE  # the way on is through this door: open it first
    if FORWARD in best and movable and int(state.grid[fx, fy, 0]) in _MOVABLE:
        best[best.index(FORWARD)] = PICKUP  # the way on is through this object: take it along
    return best


class MiniGridOracle(Advisor):
    """
    Scripted perfect teacher for MiniGrid: soft probabilities over the actions that start a shortest plan.

    Supports goal-reaching tasks (Empty, LavaGap, LavaCrossing, SimpleCrossing, DynamicObstacles — moving obstacles
    are walls at their current cells, and the oracle says "turn" to wait when they block every route), DoorKey
    (key, door, goal), GoToDoor (reach a cell next to the named door, then ``done``), Fetch (face the named
    object, then ``pick up``) and KeyCorridor (key, locked door, drop the key, pick up the ball; closed doors are
    toggled open on the way). Reads the planning
    state from ``AdviceRequest.state`` (see :class:`MiniGridTeacherView`); answers ``valid=False`` when the request
    has no state, the task is unsupported, or no plan exists.

    The output is ``(1 - smoothing)`` spread evenly over the optimal actions plus ``smoothing / n`` everywhere:
    soft targets, as the LVLM's probabilities in LVLM2P (§IV-B) are soft.

    :param smoothing: probability mass spread uniformly over all actions
    """

    def __init__(self, smoothing: float = 0.1):
        super().__init__()
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
        self.smoothing = smoothing

    @property
    def identity(self) -> str:
        return f"minigrid-oracle(smoothing={self.smoothing})"

    def _advise(self, requests: Sequence[AdviceRequest]) -> list[Advice]:
        return [self._one(r) for r in requests]

    def _one(self, request: AdviceRequest) -> Advice:
        state = request.state
        if not isinstance(state, MiniGridState):
            return Advice.invalid(source="oracle", raw="request carries no MiniGridState")
        n = int(request.action_space.n) if isinstance(request.action_space, spaces.Discrete) else len(ACTION_NAMES)
        best = optimal_actions(state)
        if not best:
            return Advice.invalid(source="oracle", raw="no plan")
        probs = np.full(n, self.smoothing / n)
        probs[best] += (1.0 - self.smoothing) / len(best)
        return Advice(probs=probs.astype(np.float32), source="oracle", raw=", ".join(ACTION_NAMES[a] for a in best))
