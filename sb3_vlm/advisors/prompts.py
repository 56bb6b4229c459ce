"""Prompt templates as data: system and user text, fields filled from the request's context, and the answer format."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import numpy as np
from gymnasium import spaces

from sb3_vlm.advice import AdviceRequest

#: MiniGrid's action names, in ``env.actions`` order; each is one token for common tokenizers
MINIGRID_LABELS = ("left", "right", "forward", "pickup", "drop", "toggle", "done")


class _Fields(dict):
    """``str.format_map`` mapping that names the missing field instead of a bare KeyError."""

    def __init__(self, data: dict[str, Any], template: str):
        super().__init__(data)
        self.template = template

    def __missing__(self, key: str) -> Any:
        raise KeyError(f"prompt {self.template!r} needs the context field {key!r}; the teacher view must provide it")


@dataclass(frozen=True)
class PromptTemplate:
    """
    One prompt. ``system`` and ``user`` are ``str.format`` templates over the request's ``context`` plus
    ``{action_bounds}``, ``{action_names}`` and ``{labels}``, which the template fills in itself.

    :param name: short name (part of the advisor identity)
    :param user: the user message (the image is attached next to it)
    :param system: the system message ("" for none)
    :param kind: ``"continuous"`` (Box actions) or ``"discrete"``
    :param action_names: continuous: each component's name, in action-vector order (how the answer names them)
    :param labels: discrete: each action's label, in index order; single-token labels allow log-prob scoring
    :param describe_first: two-stage prompting (LVLM2P): a first question whose answer is put before ``user``
    :param version: bump it when the wording changes, so cached answers to the old wording are never reused
    :param answer_template: how an answer is written, for fine-tuning targets (:meth:`format_answer`): a
        ``str.format`` template over the action components' names (continuous), ``{values}`` (all of them,
        comma-separated) or ``{label}`` (discrete). "" means ``action:[v1, v2]`` (COVR's format) or the bare label.
    """

    name: str
    user: str
    system: str = ""
    kind: Literal["continuous", "discrete"] = "continuous"
    action_names: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    describe_first: str = ""
    version: str = "1"
    answer_template: str = ""

    def fields(self, request: AdviceRequest) -> dict[str, Any]:
        values: dict[str, Any] = dict(request.context)
        space = request.action_space
        if isinstance(space, spaces.Box):
            low, high = np.asarray(space.low).reshape(-1), np.asarray(space.high).reshape(-1)
            names = self.action_names or tuple(f"a{i}" for i in range(low.size))
            values.setdefault(
                "action_bounds",
                ", ".join(f"{n} in [{lo:g}, {hi:g}]" for n, lo, hi in zip(names, low, high, strict=False)),
            )
        values.setdefault("action_names", ", ".join(self.action_names))
        values.setdefault("labels", ", ".join(self.labels))
        return values

    def render(self, request: AdviceRequest, description: str = "") -> tuple[str, str]:
        """:return: (system, user) texts for ``request``; ``description`` is the first stage's answer, if any"""
        fields = _Fields(self.fields(request), self.name)
        user = self.user.format_map(fields)
        if description:
            user = f"Scene description: {description.strip()}\n\n{user}"
        return self.system.format_map(fields), user

    def render_describe(self, request: AdviceRequest) -> str:
        return self.describe_first.format_map(_Fields(self.fields(request), self.name))

    @property
    def identity(self) -> str:
        """Name, version and a hash of every field: any change to the wording changes the cache key."""
        fields = asdict(self)
        if not fields["answer_template"]:  # added later: unset, it keeps the identities (and caches) of before
            del fields["answer_template"]
        digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]
        return f"{self.name}@{self.version}:{digest}"

    def format_answer(self, action: Any, action_space: spaces.Space | None) -> str:
        """
        ``action`` written as this prompt asks the model to answer: COVR's fine-tuning targets are the agent's
        executed actions in the prompt's answer format, continuous values with 2 decimals. A discrete action is
        written as its label: the first answer token is what label scoring reads, whatever else the prompt asks for.

        :raises ValueError: for a non-finite action, an index outside the labels, or a space that has no format
        """
        values = np.asarray(action, dtype=np.float64).reshape(-1)
        if not np.all(np.isfinite(values)):
            raise ValueError(f"cannot write a non-finite action {values.tolist()} as an answer")
        if isinstance(action_space, spaces.Discrete):
            index = int(values[0]) - int(action_space.start)
            if not self.labels or not 0 <= index < len(self.labels):
                raise ValueError(
                    f"prompt {self.name!r} has no label for action {int(values[0])} (labels {self.labels})"
                )
            return self.answer_template.format(label=self.labels[index]) if self.answer_template else self.labels[index]
        if isinstance(action_space, spaces.Box):
            values = np.clip(values, action_space.low.reshape(-1), action_space.high.reshape(-1))
            # round first, then add 0.0: "-0.00" would teach the model a sign that means nothing
            written = [f"{round(float(v), 2) + 0.0:.2f}" for v in values]
            if not self.answer_template:
                return f"action:[{', '.join(written)}]"
            names = self.action_names or tuple(f"a{i}" for i in range(values.size))
            return self.answer_template.format(values=", ".join(written), **dict(zip(names, written, strict=False)))
        raise ValueError(f"no answer format for {type(action_space).__name__} action spaces (need Discrete or Box)")

    def with_(self, **changes: Any) -> PromptTemplate:
        """A modified copy (e.g. ``MINIGRID_PROMPT.with_(user=...)``)."""
        return replace(self, **changes)


_MINIGRID_SYSTEM = (
    "You are an expert player of MiniGrid, a 2D grid world seen from above. The red triangle is the agent; it "
    "points in the direction it faces. Walls are grey, lava is orange, the goal is a green square, doors, keys, "
    "balls and boxes have colours."
)

#: LVLM2P-style MiniGrid prompt: a probability for every action (§IV-B)
MINIGRID_PROMPT = PromptTemplate(
    name="minigrid",
    system=_MINIGRID_SYSTEM,
    user=(
        "Mission: {mission}.\nThe agent can: left (turn left), right (turn right), forward (move one cell ahead), "
        "pickup, drop, toggle (open a door / box), done. Give the probability that each action is the best next "
        "action for the mission. Answer with one line per action, exactly as: left: 0.10, right: 0.10, "
        "forward: 0.60, pickup: 0.05, drop: 0.05, toggle: 0.05, done: 0.05"
    ),
    kind="discrete",
    labels=MINIGRID_LABELS,
)

#: LVLM2P's two stages: first describe (agent and target positions, orientation), then give the probabilities
MINIGRID_TWO_STAGE = MINIGRID_PROMPT.with_(
    name="minigrid-two-stage",
    describe_first=(
        "Mission: {mission}.\nDescribe the scene briefly: the agent's cell (column, row from the top-left), the "
        "direction it faces, where the mission's target is, and any lava, walls or closed doors in between."
    ),
)

_CARLA_SYSTEM = (
    "You are an AI assistant integrated into an autonomous driving system in Carla. Your task is to analyze the RGB "
    "camera image taken from the front of the ego vehicle and output throttle and steering values."
)
_CARLA_RANGES = (
    "It should be noted that the throttle range is [-1, 1], the throttle <=0 indicates slowing down, and the "
    "throttle >0 indicates different acceleration. Steering ranges from -1 to 1, with steering >0 indicating a right "
    "turn, steering <0 indicating a left turn, and steering=0 indicating straight driving."
)

#: ERPv Fig. 12 (#HW); context: ``speed`` (m/s) and ``yaw``. Action vector [steer, throttle].
CARLA_HIGHWAY = PromptTemplate(
    name="carla-highway-erpv",
    system=_CARLA_SYSTEM,
    user=(
        "The scene where ego is located is a high-speed scene in automatic driving. Ego needs to avoid collisions on "
        "highways, try to stay in the same lane. Please describe the image in detail to determine whether there is "
        "a immediate danger of collision. If so, ego needs to consider slowing down (set throttle <0). Furthermore, "
        "please describe the image in detail to determine if the ego is going through a bend. If so, the ego's "
        f"steering needs to be adjusted. {_CARLA_RANGES} In addition to the image, ego's current speed is "
        "{speed:.2f}m/s, yaw is {yaw:.2f}. If there is no immediate danger of collision, ego can set throttle=1 to "
        "accelerate. Finally, design reasonable throttle and steering output values for the ego based on the "
        "description of the image, the current speed and yaw. Please follow the following template to output "
        "content: \nDescribe:xxx \nthrottle:xxx \nsteer:xxx"
    ),
    action_names=("steer", "throttle"),
    answer_template="throttle:{throttle} \nsteer:{steer}",
)

#: ERPv Fig. 13 (#JW, pedestrians crossing); context: ``speed``, ``yaw``
CARLA_JAYWALK = CARLA_HIGHWAY.with_(
    name="carla-jaywalk-erpv",
    user=(
        "The scene where ego vehicles are located is the ghost probe scene, that is, pedestrians suddenly cross the "
        "road. Please describe the content of the image, determine if there is a pedestrian likely to appear, or "
        "cross the road, if there is, and the distance is close, ego need to consider adjusting action to avoid "
        f"collision. {_CARLA_RANGES} In addition to the image, ego's current speed is {{speed:.2f}}m/s, yaw is "
        "{yaw:.2f}. If there is no visible pedestrian in the image or the distance of the pedestrian is relatively "
        "far, ego should set the throttle =1.0 to accelerate. If ego's direction deviates from the current lane, "
        "steering adjustment is required. Finally, design reasonable throttle and steering output values for the "
        "ego based on the description of the image, the current speed and yaw. Please follow the following example "
        "to output content:\nDescribe:xxx \nthrottle:xxx \nsteer:xxx"
    ),
)

_COVR_SYSTEM = f"{_CARLA_SYSTEM} {_CARLA_RANGES.replace('Steering ranges', 'Steer ranges')}"

#: COVR Fig. 10 (highway): answer ``action:[steer, throttle]`` (also the format its fine-tuning targets use)
COVR_HIGHWAY = PromptTemplate(
    name="carla-highway-covr",
    system=_COVR_SYSTEM,
    user=(
        "The scene where ego is located is a high-speed scene in automatic driving. Ego needs to avoid collisions on "
        "highways, try to stay in the same lane. If there is no immediate danger of collision, ego should set "
        "throttle > 0.5 to accelerate. If ego's direction deviates from the current lane, ego should set steer > 0 "
        "to turn right or steer < 0 to turn left. Finally, design reasonable throttle and steering output values "
        "for the ego based on the image. Output ONLY in this exact format:action:[steer, throttle]."
    ),
    action_names=("steer", "throttle"),
)

#: COVR Fig. 10 ("ghost pedestrian" / jaywalk)
COVR_JAYWALK = COVR_HIGHWAY.with_(
    name="carla-jaywalk-covr",
    user=(
        "The scene where ego vehicles are located is the ghost probe scene, that is, pedestrians suddenly cross the "
        "road. If there is no immediate danger of collision, ego should set throttle > 0 to accelerate. If ego's "
        "direction deviates from the current lane, steering adjustment is required. Finally, design reasonable "
        "throttle and steering output values for the ego based on the image. Output ONLY in this exact "
        "format:action:[steer, throttle]."
    ),
)

#: generic continuous control: states the task (context ``task``) and the action bounds
CONTINUOUS_CONTROL = PromptTemplate(
    name="continuous-control",
    system="You control a simulated system from camera images. You answer with one action and nothing else.",
    user=(
        "Task: {task}\nThe action has these components and bounds: {action_bounds}. Choose the action that makes "
        "the most progress on the task from the state shown. Output ONLY in this exact format: action:[v1, v2, ...]"
    ),
)

#: Pendulum (context from PendulumTeacherView): the swing-up task, the state, the torque bound
PENDULUM_PROMPT = PromptTemplate(
    name="pendulum",
    system="You control an inverted pendulum seen in the image. You answer with one action and nothing else.",
    user=(
        "Swing the pendulum up and balance it upright with as little torque as possible. Its angle from upright is "
        "{theta:.2f} rad and its angular velocity {theta_dot:.2f} rad/s. The action is {action_bounds} (positive "
        "turns counter-clockwise). Output ONLY in this exact format: action:[torque]"
    ),
    action_names=("torque",),
)

BUILTIN_PROMPTS: dict[str, PromptTemplate] = {
    p.name: p
    for p in (
        MINIGRID_PROMPT,
        MINIGRID_TWO_STAGE,
        CARLA_HIGHWAY,
        CARLA_JAYWALK,
        COVR_HIGHWAY,
        COVR_JAYWALK,
        CONTINUOUS_CONTROL,
        PENDULUM_PROMPT,
    )
}
