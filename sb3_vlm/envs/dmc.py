"""
DeepMind Control Suite from pixels (ERPv §4 / appendix C.2, COVR table 8, RAD's protocol), through shimmy.

``make_dmc_env("cheetah-run")`` gives 84×84 RGB observations stacked over 3 frames (``(84, 84, 9)`` uint8), the
task's action repeat, episodes of 1000 simulator steps and a ``teacher_request()`` for the advice wrappers.

Rendering on a CPU: MuJoCo needs an offscreen OpenGL. :func:`select_mujoco_gl` picks EGL, then OSMesa, by creating
a context in a subprocess (a failed GL import cannot be undone in-process), and raises an error naming the Debian
package when neither works. The pixel wrapper shrinks the offscreen buffer to the frame, turns off shadows and
multisampling, draws spheres and capsules with fewer facets, and reuses one camera (dm_control's ``physics.render``
builds a new scene every call): together 8-30× faster than the defaults here (``benchmarks/dmc_render_speed.py``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from sb3_vlm.advice import AdviceRequest
from sb3_vlm.envs.common import ActionRepeat, ChannelFrameStack

#: Debian packages that provide each offscreen GL backend (MuJoCo's ``MUJOCO_GL`` values)
GL_PACKAGES: dict[str, str] = {
    "egl": "libegl1 libegl-mesa0 libgl1-mesa-dri",
    "osmesa": "libosmesa6",
}
_MISSING_EXTRA = "DMControl needs the 'dmc' extra: pip install 'sb3-vlm[dmc]' (dm-control, shimmy, mujoco<4)"


@dataclass(frozen=True)
class DMCTask:
    """
    One DMControl task as the papers run it.

    :param domain: dm_control suite domain
    :param task: task name within the domain
    :param action_repeat: simulator steps per agent step (COVR table 8: 8 cartpole, 2 finger, 4 otherwise)
    :param camera_id: the camera RAD renders (2 for quadruped, 0 otherwise)
    :param description: the task in words, the ``{task}`` of :data:`~sb3_vlm.advisors.prompts.CONTINUOUS_CONTROL`
    """

    domain: str
    task: str
    action_repeat: int
    camera_id: int
    description: str


#: the DMControl tasks of ERPv (table 2) and COVR (table 4, "other hard tasks"), keyed ``domain-task``
DMC_TASKS: dict[str, DMCTask] = {
    t.domain + "-" + t.task: t
    for t in (
        DMCTask("cartpole", "swingup", 8, 0, "swing the pole up from hanging down and balance it upright"),
        DMCTask("reacher", "easy", 4, 0, "move the tip of the two-link arm onto the red target"),
        DMCTask("cheetah", "run", 4, 0, "make the planar cheetah run forward as fast as possible"),
        # COVR table 8 as printed (4 "otherwise"); some RAD/CURL configurations use 2 for walker
        DMCTask("walker", "walk", 4, 0, "make the planar walker walk forward upright"),
        DMCTask("finger", "spin", 2, 0, "flick the hinged body with the finger so that it keeps spinning"),
        DMCTask("ball_in_cup", "catch", 4, 0, "swing the ball on its string up into the cup"),
        DMCTask("quadruped", "walk", 4, 2, "make the four-legged robot walk forward"),
        DMCTask("quadruped", "run", 4, 2, "make the four-legged robot run forward as fast as possible"),
    )
}


# ------------------------------------------------------------------------------------------------ OpenGL backend
def _probe_gl(backend: str, timeout: float = 60.0) -> bool:
    """Whether MuJoCo can make an offscreen ``backend`` context here (in a subprocess: PyOpenGL fixes its platform
    at import, so a failed attempt would poison this process)."""
    code = (
        "import os, sys\n"
        "b = sys.argv[1]\n"
        "os.environ['MUJOCO_GL'] = os.environ['PYOPENGL_PLATFORM'] = b\n"
        "import importlib\n"
        "ctx = importlib.import_module('mujoco.' + b).GLContext(8, 8)\n"
        "ctx.make_current()\n"
        "ctx.free()\n"
    )
    try:
        done = subprocess.run([sys.executable, "-c", code, backend], capture_output=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def choose_gl_backend(candidates: Sequence[str], probe: Callable[[str], bool]) -> str:
    """
    The first backend in ``candidates`` for which ``probe`` succeeds.

    :raises RuntimeError: none works; the message names the Debian packages to install
    """
    for backend in candidates:
        if probe(backend):
            return backend
    packages = " ".join(GL_PACKAGES.get(b, "") for b in candidates).strip()
    raise RuntimeError(
        f"MuJoCo cannot render offscreen here: none of the OpenGL backends {list(candidates)} could create a "
        f"context. On Debian/Ubuntu install one: `apt-get install -y {packages}` (EGL: {GL_PACKAGES['egl']}; "
        f"OSMesa: {GL_PACKAGES['osmesa']}), or set MUJOCO_GL to a backend that works (e.g. glfw with a display)."
    )


def select_mujoco_gl(candidates: Sequence[str] = ("egl", "osmesa")) -> str:
    """
    Choose MuJoCo's offscreen GL backend for this process and its children (sets ``MUJOCO_GL`` and
    ``PYOPENGL_PLATFORM``). A ``MUJOCO_GL`` already set is respected as is. Must run before dm_control's renderer
    is imported, as :func:`make_dmc_env` does.

    :param candidates: backends to try, in order (EGL is faster than OSMesa on a CPU)
    :return: the backend in use
    """
    chosen = os.environ.get("MUJOCO_GL")
    if not chosen:
        chosen = choose_gl_backend(candidates, _probe_gl)
        os.environ["MUJOCO_GL"] = chosen
    if chosen in GL_PACKAGES:
        os.environ.setdefault("PYOPENGL_PLATFORM", chosen)
        _check_pyopengl_platform(chosen)
    return chosen


def _check_pyopengl_platform(backend: str) -> None:
    """PyOpenGL fixes its platform when first imported; an earlier import (shimmy and ``gymnasium.envs.mujoco`` import
    it) without ``PYOPENGL_PLATFORM`` picks GLX, and every later offscreen render fails with an obscure message."""
    platform = sys.modules.get("OpenGL.platform")
    loaded = type(getattr(platform, "PLATFORM", None)).__name__.lower()
    if platform is not None and not loaded.startswith(backend):
        raise RuntimeError(
            f"PyOpenGL was imported with the {loaded!r} platform before MuJoCo's backend {backend!r} was chosen "
            "(importing shimmy or gymnasium.envs.mujoco does that). Set MUJOCO_GL (e.g. MUJOCO_GL=egl) in the "
            "environment, or call sb3_vlm.envs.select_mujoco_gl() before those imports."
        )


# ------------------------------------------------------------------------------------------------ pixel wrapper
class DMCPixels(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """
    Replace a shimmy dm_control env's state observation by a ``size × size`` RGB render (uint8, ``(H, W, 3)``).
    Rendering is set up for speed (offscreen buffer of the frame size, no shadows, no multisampling, one reused
    camera). ``reset(seed=...)`` reseeds the task's own random state, which shimmy leaves alone, so equal seeds give
    equal episodes.

    ``teacher_request()`` shows the teacher the newest frame, or a ``teacher_size`` render of the same state (a VLM
    reads 84-pixel frames poorly), with the task description as ``context["task"]`` and the physics state as
    ``state`` for scripted advisors (not part of the cache key; it is a function of the frame only approximately).

    :param env: ``shimmy.DmControlCompatibilityV0`` (possibly wrapped by a time limit / action repeat)
    :param size: frame side in pixels (84 in the papers)
    :param camera_id: camera to render
    :param description: the task in words for the prompt
    :param teacher_size: side of the teacher's image; None: the observation frame itself
    :param reflections: draw the floor's reflections (MuJoCo's default); False is ~1.5-2× faster on quadruped and
        changes frames by about half a grey level on average
    """

    def __init__(
        self,
        env: gym.Env,
        size: int = 84,
        camera_id: int = 0,
        description: str = "",
        teacher_size: int | None = None,
        reflections: bool = True,
    ):
        gym.utils.RecordConstructorArgs.__init__(
            self,
            size=size,
            camera_id=camera_id,
            description=description,
            teacher_size=teacher_size,
            reflections=reflections,
        )
        super().__init__(env)
        if size < 8:
            raise ValueError(f"size must be >= 8, got {size}")
        self.size, self.camera_id, self.description, self.teacher_size = size, camera_id, description, teacher_size
        self._flags = {} if reflections else {"reflection": False}
        self.observation_space = spaces.Box(0, 255, (size, size, 3), dtype=np.uint8)
        vis = self._physics.model.vis
        # the offscreen buffer must hold the largest frame; everything beyond it is rendered and thrown away
        vis.global_.offwidth = vis.global_.offheight = max(size, teacher_size or 0)
        vis.quality.shadowsize = 0  # shadow maps and 4× multisampling dominate llvmpipe's time per frame
        vis.quality.offsamples = 0
        # spheres and capsules with 12×8 instead of 28×16 facets: invisible at 84 pixels (mean |Δ| < 0.3 of 255 on
        # ball_in_cup and quadruped), 2-4× faster on the capsule-heavy models (benchmarks/dmc_render_speed.py)
        vis.quality.numslices, vis.quality.numstacks = 12, 8
        self._cameras: dict[int, Any] = {}
        self._frame = np.zeros(self.observation_space.shape, dtype=np.uint8)
        self._teacher_frame: np.ndarray | None = None

    @property
    def _physics(self) -> Any:
        return self.env.unwrapped._env.physics  # type: ignore[attr-defined]

    def _render(self, side: int) -> np.ndarray:
        from dm_control.mujoco.engine import Camera

        physics = self._physics
        camera = self._cameras.get(side)
        if camera is None or camera._physics is not physics:  # a reloaded model needs a new scene
            try:
                camera = Camera(physics, height=side, width=side, camera_id=self.camera_id)
            except Exception as exc:
                backend = os.environ.get("MUJOCO_GL", "?")
                raise RuntimeError(
                    f"MuJoCo could not render with MUJOCO_GL={backend}: {exc}. Install its GL package "
                    f"({GL_PACKAGES.get(backend, 'see MuJoCo docs')}) or unset MUJOCO_GL to auto-detect."
                ) from exc
            self._cameras[side] = camera
        # a copy: the camera returns a view of its pixel buffer, which the next render overwrites
        return np.array(camera.render(render_flag_overrides=dict(self._flags)), dtype=np.uint8, copy=True)

    def _observe(self) -> np.ndarray:
        self._frame = self._render(self.size)
        self._teacher_frame = None
        return self._frame

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        if seed is not None:
            # shimmy reseeds only its own np_random: the dm_control task draws initial states from task.random
            self.env.unwrapped._env.task._random = np.random.RandomState(seed)  # type: ignore[attr-defined]
        _, info = self.env.reset(seed=seed, options=options)
        return self._observe(), info

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        _, reward, terminated, truncated, info = self.env.step(action)
        return self._observe(), reward, terminated, truncated, info

    def teacher_request(self) -> AdviceRequest:
        image = self._frame
        if self.teacher_size is not None and self.teacher_size != self.size:
            if self._teacher_frame is None:  # rendered once per step, and only when someone asks
                self._teacher_frame = self._render(self.teacher_size)
            image = self._teacher_frame
        return AdviceRequest(
            image=image,
            context={"task": self.description},
            action_space=self.action_space,
            state=np.array(self._physics.get_state(), copy=True),
        )

    def close(self) -> None:
        self._cameras.clear()  # the scenes hold the GL context's objects
        super().close()


def make_dmc_env(
    name: str = "cheetah-run",
    size: int = 84,
    frame_stack: int = 3,
    action_repeat: int | None = None,
    episode_length: int = 1000,
    camera_id: int | None = None,
    teacher_size: int | None = None,
    reflections: bool = True,
    seed: int | None = None,
) -> gym.Env:
    """
    A DMControl task from pixels as ERPv / COVR / RAD run it: shimmy env → time limit (simulator steps) → action
    repeat → :class:`DMCPixels` → :class:`~sb3_vlm.envs.common.ChannelFrameStack`. Observation
    ``(size, size, 3·frame_stack)`` uint8, actions in [-1, 1].

    :param name: ``domain-task``, a key of :data:`DMC_TASKS` (other suite tasks work with ``action_repeat`` given)
    :param size: frame side (84)
    :param frame_stack: stacked frames (3)
    :param action_repeat: None: the task's value from COVR table 8
    :param episode_length: simulator steps per episode (1000; the agent sees ``episode_length / action_repeat``)
    :param camera_id: None: the task's camera (RAD's)
    :param teacher_size: side of the teacher's image (None: the 84-pixel frame)
    :param reflections: draw floor reflections (see :class:`DMCPixels`)
    :param seed: seed of the task's initial-state randomness (``reset(seed=...)`` reseeds too)
    """
    spec = DMC_TASKS.get(name)
    if spec is None:
        domain, sep, task = name.partition("-")
        if not sep or action_repeat is None:
            raise ValueError(
                f"Unknown DMControl task {name!r}: known {sorted(DMC_TASKS)}; other suite tasks need "
                "'domain-task' and an explicit action_repeat"
            )
        spec = DMCTask(domain, task, action_repeat, 0, f"{domain} {task}")
    select_mujoco_gl()
    try:
        from dm_control import suite
        from shimmy.dm_control_compatibility import DmControlCompatibilityV0
    except ImportError as exc:
        raise ImportError(_MISSING_EXTRA) from exc
    # our TimeLimit owns the episode length (dm_control's own limit would stop at its default 1000 steps)
    dm_env = suite.load(spec.domain, spec.task, task_kwargs={"random": seed, "time_limit": float("inf")})
    env: gym.Env = DmControlCompatibilityV0(dm_env)
    env = gym.wrappers.TimeLimit(env, max_episode_steps=episode_length)
    repeat = spec.action_repeat if action_repeat is None else action_repeat
    if repeat > 1:
        env = ActionRepeat(env, repeat)
    env = DMCPixels(
        env,
        size=size,
        camera_id=spec.camera_id if camera_id is None else camera_id,
        description=spec.description,
        teacher_size=teacher_size,
        reflections=reflections,
    )
    return ChannelFrameStack(env, frame_stack)
