"""
One call per paper environment: :func:`make` returns the env configured as the papers configure it, its default
prompt template and, where one exists, a scripted advisor. Every suite name is also a Gymnasium id
``sb3_vlm/<name>-v0`` (the env alone), for RL Zoo and ``gym.make``.

=========================== ====================================== ============================ =================
name                        env                                    prompt                       scripted advisor
=========================== ====================================== ============================ =================
``dmc-<domain>-<task>``     DMControl pixels (84×84×9), see         ``CONTINUOUS_CONTROL``       none
                            :data:`~sb3_vlm.envs.dmc.DMC_TASKS`
``carracing``               CarRacing-v3 pixels (84×84×9)          ``CARRACING_PROMPT``         pure pursuit
``carla-highway``           CARLA #HW (128×128×9)                  ``CARLA_HIGHWAY`` (ERPv)     none
``carla-jaywalk``           CARLA #JW / #GP (128×128×9)            ``CARLA_JAYWALK`` (ERPv)     none
``minigrid-<task>``         the LVLM2P suite + DoorKey             ``MINIGRID_PROMPT``          shortest-path oracle
``MiniGrid-…-v0``           any MiniGrid id                        ``MINIGRID_PROMPT``          shortest-path oracle
``pendulum`` (Pendulum-v1)  state + teacher view (not a paper env) ``PENDULUM_PROMPT``          swing-up + LQR
=========================== ====================================== ============================ =================
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gymnasium as gym

if TYPE_CHECKING:
    from sb3_vlm.advisors.base import Advisor
    from sb3_vlm.advisors.prompts import PromptTemplate

#: the LVLM2P MiniGrid tasks (§IV; sizes as in ``benchmarks/minigrid_distill.py``, the paper names no sizes) + DoorKey
MINIGRID_SUITE: dict[str, str] = {
    "lavagap": "MiniGrid-LavaGapS7-v0",
    "dynamic-obstacles": "MiniGrid-Dynamic-Obstacles-5x5-v0",
    "fetch": "MiniGrid-Fetch-5x5-N2-v0",
    "gotodoor": "MiniGrid-GoToDoor-5x5-v0",
    "doorkey": "MiniGrid-DoorKey-5x5-v0",
}
GYM_NAMESPACE = "sb3_vlm"


@dataclass
class EnvBundle:
    """
    What :func:`make` returns; unpacks as ``env, prompt, advisor = make(...)``.

    :param env: the ready env (its ``teacher_request()`` is what advice wrappers show the teacher)
    :param prompt: the default prompt template for a VLM advisor on this env
    :param advisor: a scripted advisor for tests and ablations, or None where none exists
    :param name: the suite name
    """

    env: gym.Env
    prompt: PromptTemplate
    advisor: Advisor | None = None
    name: str = ""

    def __iter__(self) -> Iterator[Any]:
        return iter((self.env, self.prompt, self.advisor))


@dataclass(frozen=True)
class _Entry:
    module: str  # sb3_vlm.envs.<module>, imported only when the env is made (optional dependencies)
    factory: str
    prompt: tuple[str, str]  # (module, attribute)
    advisor: str | None = None  # attribute of ``module``, constructed with no arguments
    args: tuple[Any, ...] = ()
    defaults: dict[str, Any] = field(default_factory=dict)


def _suite() -> dict[str, _Entry]:
    from sb3_vlm.envs.dmc import DMC_TASKS  # a plain table: dm_control itself is imported when an env is made

    prompts = "sb3_vlm.advisors.prompts"
    entries = {
        f"dmc-{task}": _Entry("dmc", "make_dmc_env", (prompts, "CONTINUOUS_CONTROL"), args=(task,))
        for task in DMC_TASKS
    }
    entries["carracing"] = _Entry(
        "carracing",
        "make_carracing_env",
        ("sb3_vlm.envs.carracing", "CARRACING_PROMPT"),
        advisor="CarRacingPursuitAdvisor",
    )
    entries["carla-highway"] = _Entry("carla", "make_carla_env", (prompts, "CARLA_HIGHWAY"), args=("highway",))
    entries["carla-jaywalk"] = _Entry("carla", "make_carla_env", (prompts, "CARLA_JAYWALK"), args=("jaywalk",))
    for short, env_id in MINIGRID_SUITE.items():
        entries[f"minigrid-{short}"] = _minigrid_entry(env_id)
    # not from the papers: the quick continuous-control task of the examples and benchmarks (state observations)
    entries["pendulum"] = _Entry("pendulum", "make_pendulum_env", (prompts, "PENDULUM_PROMPT"), "PendulumSwingUpOracle")
    return entries


def _minigrid_entry(env_id: str) -> _Entry:
    # LVLM2P's student sees the environment state (§III); the teacher a full render (the MiniGridTeacherView)
    return _Entry(
        "minigrid",
        "make_minigrid_env",
        ("sb3_vlm.advisors.prompts", "MINIGRID_PROMPT"),
        advisor="MiniGridOracle",
        args=(env_id,),
        defaults={"student_obs": "symbolic"},
    )


def names() -> list[str]:
    """The suite names :func:`make` knows (any ``MiniGrid-*`` id works too)."""
    return sorted(_suite())


def _suite_name(name: str) -> str:
    """A suite name from itself, its Gymnasium id ``sb3_vlm/<name>-v0``, or ``Pendulum-v1``."""
    if name.startswith(f"{GYM_NAMESPACE}/"):
        name = name[len(GYM_NAMESPACE) + 1 :].rsplit("-v", 1)[0]
    return "pendulum" if name == "Pendulum-v1" else name


def _entry(name: str) -> _Entry:
    entry = _suite().get(_suite_name(name))
    if entry is None and name.startswith("MiniGrid-"):
        entry = _minigrid_entry(name)
    if entry is None:
        raise ValueError(
            f"Unknown environment {name!r}. Known: {', '.join(names())} (or sb3_vlm/<name>-v0), any MiniGrid-* id, "
            "Pendulum-v1"
        )
    return entry


def _attribute(module: str, name: str) -> Any:
    return getattr(importlib.import_module(module), name)


def make(name: str, **overrides: Any) -> EnvBundle:
    """
    Make a paper environment with its default prompt and scripted advisor.

    :param name: a suite name (see :func:`names`) or a ``MiniGrid-*`` id
    :param overrides: keyword arguments of the env's factory (e.g. ``size=64``, ``student_obs="rgb_partial"``,
        ``host="10.0.0.2"`` for CARLA); see :func:`~sb3_vlm.envs.dmc.make_dmc_env`,
        :func:`~sb3_vlm.envs.carracing.make_carracing_env`, :func:`~sb3_vlm.envs.carla.make_carla_env`,
        :func:`~sb3_vlm.envs.minigrid.make_minigrid_env`
    """
    entry = _entry(name)
    factory: Callable[..., gym.Env] = _attribute(f"sb3_vlm.envs.{entry.module}", entry.factory)
    env = factory(*entry.args, **{**entry.defaults, **overrides})
    prompt, advisor = teacher_defaults(name)
    return EnvBundle(env=env, prompt=prompt, advisor=advisor, name=name)


def teacher_defaults(name: str) -> tuple[PromptTemplate, Advisor | None]:
    """The default prompt and a new scripted advisor (or None) of a suite name / id, without making the env."""
    entry = _entry(name)
    advisor = _attribute(f"sb3_vlm.envs.{entry.module}", entry.advisor)() if entry.advisor else None
    return _attribute(*entry.prompt), advisor


def attach_teacher(env: gym.Env) -> tuple[gym.Env, PromptTemplate | None, Advisor | None]:
    """
    Give an env made elsewhere (``gym.make``, RL Zoo) a teacher view if it has none, with its default prompt and
    scripted advisor: suite envs keep theirs; MiniGrid gets :class:`~sb3_vlm.envs.minigrid.MiniGridTeacherView`,
    Pendulum :class:`~sb3_vlm.envs.pendulum.PendulumTeacherView`; other envs are returned as they are, without a
    default prompt or advisor (the advice wrapper then shows the teacher ``env.render()``).

    :return: (env, prompt or None, scripted advisor or None)
    """
    spec_id = env.spec.id if env.spec is not None else ""
    try:
        env.get_wrapper_attr("teacher_request")
        has_view = True
    except AttributeError:
        has_view = False
    unwrapped_module = type(env.unwrapped).__module__
    if has_view:
        try:
            return (env, *teacher_defaults(spec_id))
        except ValueError:
            return env, None, None
    if unwrapped_module.startswith("minigrid"):
        from sb3_vlm.envs.minigrid import MiniGridTeacherView

        return (MiniGridTeacherView(env), *teacher_defaults("minigrid-lavagap"))
    if type(env.unwrapped).__name__ == "PendulumEnv":
        from sb3_vlm.envs.pendulum import PendulumTeacherView

        view = PendulumTeacherView(env, render_image=env.render_mode == "rgb_array")
        return (view, *teacher_defaults("pendulum"))
    return env, None, None


def make_env(name: str, **overrides: Any) -> gym.Env:
    """:func:`make`'s env alone (the entry point of the ``sb3_vlm/<name>-v0`` Gymnasium ids)."""
    return make(name, **overrides).env


def gym_id(name: str) -> str:
    """The Gymnasium id of a suite name: ``sb3_vlm/<name>-v0``."""
    return f"{GYM_NAMESPACE}/{name}-v0"


def register_envs() -> None:
    """Register every suite name as ``sb3_vlm/<name>-v0`` (idempotent; nothing heavy is imported)."""
    for name in _suite():
        if gym_id(name) not in gym.registry:
            gym.register(id=gym_id(name), entry_point=f"{__name__}:make_env", kwargs={"name": name})
