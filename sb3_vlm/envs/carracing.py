"""
CarRacing from pixels (ERPv appendix C.2): 84×84 RGB frames stacked over 3 steps (``(84, 84, 9)`` uint8), the
continuous ``[steer, gas, brake]`` action and episodes of 1000 frames, with a teacher view and a scripted driver.

ERPv used ``CarRacing-v1``; Gymnasium's ``CarRacing-v3`` is the maintained version of the same task, with the same
observation (96×96 RGB), action space ``Box([-1, 0, 0], [1, 1, 1])`` and reward (+1000/N per track tile visited,
−0.1 per frame, −100 for leaving the playfield). The paper states no action repeat for CarRacing: it defaults to 1
here and is configurable.

* :class:`CarRacingTeacherView`: what a teacher is shown: the full 96×96 frame, the speed as prompt context and the
  car's pose and the track as privileged ``state`` for scripted advisors;
* :class:`CarRacingPursuitAdvisor`: a scripted driver (pure pursuit + a curvature-dependent target speed) that
  scores about 900 per episode;
* :data:`CARRACING_PROMPT`: the prompt for a VLM advisor;
* :func:`make_carracing_env`: the whole pipeline.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from sb3_vlm.advice import Advice, AdviceRequest
from sb3_vlm.advisors.base import Advisor
from sb3_vlm.advisors.prompts import PromptTemplate
from sb3_vlm.envs.common import ActionRepeat, ChannelFrameStack

# Geometry of gymnasium's car (box2d/car_dynamics.py): the front wheels sit at y = +80, the rear ones at y = −82, in
# units of SIZE = 0.02; the steering joint turns each front wheel by at most 0.4 rad, and `steer` is its target angle.
_WHEELBASE = (80 + 82) * 0.02
_MAX_WHEEL_ANGLE = 0.4
# Below this speed (m/s) the velocity's direction is noise: the track's own direction is the reference instead.
_MIN_SPEED_FOR_HEADING = 5.0


def _wrap(angle: np.ndarray) -> np.ndarray:
    """Angles to [−π, π)."""
    return (angle + np.pi) % (2 * np.pi) - np.pi


@dataclass(frozen=True)
class CarRacingState:
    """
    The privileged state a scripted CarRacing driver needs (world frame, Box2D units: metres, seconds).

    :param position: the car hull's centre ``(x, y)``
    :param angle: the hull's angle (radians); the car faces ``(−sin angle, cos angle)``
    :param velocity: the hull's linear velocity ``(vx, vy)``
    :param track: the track's centre line ``(N, 2)``, in driving order (``env.unwrapped.track``'s ``x, y``), shared
        read-only between the requests of one episode
    """

    position: np.ndarray
    angle: float
    velocity: np.ndarray
    track: np.ndarray

    @property
    def speed(self) -> float:
        return float(np.hypot(self.velocity[0], self.velocity[1]))


class CarRacingTeacherView(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """
    What a teacher is shown about CarRacing: the newest full-size observation (96×96 RGB, the frame the env already
    rendered: no extra render), the car's speed as request context (the ``{speed}`` of :data:`CARRACING_PROMPT`,
    like ERPv's Carla prompts), and a :class:`CarRacingState` as ``state`` for scripted advisors.

    Caching: the cache key is the image and the context, not ``state``. The frame is drawn around the car and
    rotated with it, so the same frame at the same (rounded) speed means nearly the same pose relative to the track:
    a cached :class:`CarRacingPursuitAdvisor` answer is only approximately the one the current state would give
    (sliding, which the frame does not show, can differ). Use no cache for an exact scripted teacher.

    :param env: a ``CarRacing-v3`` env (``continuous=True``), possibly wrapped (time limit, checkers)
    :param speed_decimals: decimals of ``context["speed"]``; the prompt shows 2, so 2 keeps requests that render the
        same prompt under one cache key
    """

    def __init__(self, env: gym.Env, speed_decimals: int = 2):
        gym.utils.RecordConstructorArgs.__init__(self, speed_decimals=speed_decimals)
        super().__init__(env)
        self.speed_decimals = speed_decimals
        self._frame: np.ndarray | None = None
        self._track: np.ndarray | None = None
        self._track_source: Any = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        self._frame = obs
        return obs, info

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._frame = obs
        return obs, reward, terminated, truncated, info

    def _track_array(self, track: Any) -> np.ndarray:
        # built once per track (a new list at every reset), not once per request
        if self._track is None or self._track_source is not track:
            points = np.array([(x, y) for _alpha, _beta, x, y in track], dtype=np.float64)
            points.flags.writeable = False
            self._track, self._track_source = points, track
        return self._track

    def car_state(self) -> CarRacingState:
        """The current :class:`CarRacingState` (after ``reset()``)."""
        racing: Any = self.env.unwrapped
        car = getattr(racing, "car", None)
        if car is None:
            raise gym.error.ResetNeeded("Call reset() before teacher_request()")
        hull = car.hull
        return CarRacingState(
            position=np.array([hull.position[0], hull.position[1]], dtype=np.float64),
            angle=float(hull.angle),
            velocity=np.array([hull.linearVelocity[0], hull.linearVelocity[1]], dtype=np.float64),
            track=self._track_array(racing.track),
        )

    def teacher_request(self) -> AdviceRequest:
        state = self.car_state()
        return AdviceRequest(
            image=self._frame,
            context={"speed": round(state.speed, self.speed_decimals)},
            action_space=self.env.action_space,
            state=state,
        )


class CarRacingPursuitAdvisor(Advisor):
    """
    Scripted CarRacing driver on :class:`CarRacingTeacherView`'s state. Steering is pure pursuit: the front-wheel
    angle that puts the car on a circle through a centre-line waypoint ``lookahead + lookahead_per_speed · speed``
    points past the nearest one. Gas and brake hold a target speed that drops with how sharply the track turns in
    the next ``curve_window`` points (relative to the direction the car is moving), and gas is capped at
    ``1 − |steer|``: the car is rear-wheel driven and spins out under full gas while turning hard.

    With the defaults it scores about 900 per 1000-frame episode (seeds 0-13: mean 904, 12 of the 14 tracks
    completed, in 750-990 frames; 300 frames of seed 0: 280, against −24 for doing nothing). Its actions always lie
    in CarRacing's action space. Requests without a :class:`CarRacingState` get invalid advice.

    :param lookahead: waypoints (3.5 m apart) past the nearest one that the car aims at when standing still
    :param lookahead_per_speed: extra waypoints per m/s of speed (a longer look ahead damps weaving at speed)
    :param steer_gain: multiplies pure pursuit's wheel angle (1: pure pursuit as is)
    :param max_speed: target speed on straights (m/s)
    :param min_speed: lowest target speed, in hairpins (m/s)
    :param curve_slowdown: target speed lost per radian of upcoming turn (m/s per rad)
    :param curve_window: how many waypoints ahead the turn is measured over (braking distance)
    :param gas_gain: gas per m/s below the target speed
    :param brake_gain: brake per m/s above the target speed
    :param max_brake: brake cap; above 0.9 CarRacing locks the wheels, which steer no more
    """

    def __init__(
        self,
        lookahead: int = 3,
        lookahead_per_speed: float = 0.08,
        steer_gain: float = 1.0,
        max_speed: float = 80.0,
        min_speed: float = 25.0,
        curve_slowdown: float = 20.0,
        curve_window: int = 20,
        gas_gain: float = 0.1,
        brake_gain: float = 0.05,
        max_brake: float = 0.8,
    ):
        super().__init__()
        if lookahead < 1 or curve_window < 1:
            raise ValueError(f"lookahead and curve_window must be >= 1, got {lookahead}, {curve_window}")
        if not 0 < min_speed <= max_speed:
            raise ValueError(f"Need 0 < min_speed <= max_speed, got {min_speed}, {max_speed}")
        self.lookahead, self.lookahead_per_speed, self.steer_gain = lookahead, lookahead_per_speed, steer_gain
        self.max_speed, self.min_speed, self.curve_slowdown = max_speed, min_speed, curve_slowdown
        self.curve_window = curve_window
        self.gas_gain, self.brake_gain, self.max_brake = gas_gain, brake_gain, max_brake

    @property
    def identity(self) -> str:
        return (
            f"carracing-pursuit(la={self.lookahead}+{self.lookahead_per_speed}v,k={self.steer_gain},"
            f"v={self.min_speed}-{self.max_speed},curve={self.curve_slowdown}/{self.curve_window},"
            f"gas={self.gas_gain},brake={self.brake_gain}<={self.max_brake})"
        )

    def act(self, state: CarRacingState) -> np.ndarray:
        """The ``[steer, gas, brake]`` action for ``state`` (float32, in CarRacing's action space)."""
        track, position = state.track, state.position
        n, speed = len(track), state.speed
        nearest = int(np.argmin(np.sum((track - position) ** 2, axis=1)))

        # pure pursuit toward a waypoint further ahead the faster the car goes
        ahead = self.lookahead + int(self.lookahead_per_speed * speed)
        dx, dy = track[(nearest + ahead) % n] - position
        cos, sin = math.cos(state.angle), math.sin(state.angle)
        right, forward = dx * cos + dy * sin, -dx * sin + dy * cos  # car frame: local +x is right, +y forward
        alpha = math.atan2(right, forward)
        wheel = math.atan2(2.0 * _WHEELBASE * math.sin(alpha), max(math.hypot(right, forward), 1e-6))
        steer = float(np.clip(self.steer_gain * wheel / _MAX_WHEEL_ANGLE, -1.0, 1.0))  # > 0 turns right

        # the sharpest turn ahead, measured from where the car is going (so a car still sliding out of a corner
        # keeps slowing down even once the track ahead is straight)
        points = track[(nearest + np.arange(self.curve_window + 2)) % n]
        segments = np.diff(points, axis=0)
        headings = np.arctan2(segments[:, 1], segments[:, 0])
        if speed > _MIN_SPEED_FOR_HEADING:
            reference = math.atan2(state.velocity[1], state.velocity[0])
        else:
            reference = float(headings[0])
        turn = float(np.max(np.abs(_wrap(headings - reference))))
        target_speed = max(self.min_speed, self.max_speed - self.curve_slowdown * turn)

        brake = float(np.clip(self.brake_gain * (speed - target_speed), 0.0, self.max_brake))
        gas = 0.0 if brake > 0 else float(np.clip(self.gas_gain * (target_speed - speed), 0.0, 1.0))
        gas = min(gas, max(0.0, 1.0 - abs(steer)))  # rear-wheel drive: full gas while steering hard spins the car
        return np.array([steer, gas, brake], dtype=np.float32)

    def _advise(self, requests: Sequence[AdviceRequest]) -> list[Advice]:
        out = []
        for r in requests:
            if not isinstance(r.state, CarRacingState):
                # not a backend failure, just nothing to drive on: masked, not counted as an error
                out.append(Advice.invalid(source=self.identity, raw="no CarRacingState: use CarRacingTeacherView"))
                continue
            out.append(Advice(action=self.act(r.state), source=self.identity))
        return out


class ResizeFrame(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """
    Resize ``(H, W, 3)`` uint8 frames to ``(size, size, 3)`` with PIL's bilinear filter (no OpenCV needed, unlike
    Gymnasium's ``ResizeObservation``).

    :param env: an env with RGB image observations
    :param size: side of the square output frame
    """

    def __init__(self, env: gym.Env, size: int = 84):
        gym.utils.RecordConstructorArgs.__init__(self, size=size)
        super().__init__(env)
        space = env.observation_space
        if not (isinstance(space, spaces.Box) and len(space.shape) == 3 and space.shape[-1] == 3):
            raise ValueError(f"ResizeFrame needs (H, W, 3) RGB observations, got {space}")
        if size < 8:
            raise ValueError(f"size must be >= 8, got {size}")
        self.size = int(size)
        self.observation_space = spaces.Box(0, 255, (self.size, self.size, 3), dtype=np.uint8)

    def observation(self, observation: Any) -> np.ndarray:
        from PIL import Image

        frame = Image.fromarray(np.asarray(observation, dtype=np.uint8))
        return np.asarray(frame.resize((self.size, self.size), Image.Resampling.BILINEAR), dtype=np.uint8)


#: CarRacing (context from :class:`CarRacingTeacherView`): the task, the speed, the three action bounds
CARRACING_PROMPT = PromptTemplate(
    name="carracing",
    system="You drive a race car in a top-down 2D racing game. You answer with one action and nothing else.",
    user=(
        "The image is a top-down view that moves and turns with the car: the red car is near the bottom centre and "
        "faces up, the track is grey, the grass green; the black bar at the bottom shows the score, the speed, the "
        "steering and the rotation. "
        "Drive forward along the track as fast as possible without leaving it. The car's speed is {speed:.2f} m/s. "
        "The action is {action_bounds}: steer < 0 turns left, steer > 0 turns right, gas accelerates and brake "
        "slows down; slow down before sharp bends and do not use much gas while steering hard. "
        "Output ONLY in this exact format: action:[steer, gas, brake]"
    ),
    kind="continuous",
    action_names=("steer", "gas", "brake"),
)


def make_carracing_env(
    size: int = 84,
    frame_stack: int = 3,
    action_repeat: int = 1,
    max_episode_steps: int = 1000,
    render_mode: str | None = None,
    **make_kwargs: Any,
) -> gym.Env:
    """
    ``CarRacing-v3`` (continuous actions) as ERPv runs CarRacing: ``size × size`` RGB frames stacked over
    ``frame_stack`` steps along channels, ``(84, 84, 9)`` uint8 by default (``s_t = {o_t, o_{t-1}, o_{t-2}}``),
    and episodes of ``max_episode_steps`` frames. The wrappers are, inside out: :class:`CarRacingTeacherView`
    (its ``teacher_request()`` reaches the advice wrappers through the others), :class:`ResizeFrame`,
    :class:`~sb3_vlm.envs.common.ActionRepeat` (only if ``action_repeat > 1``) and
    :class:`~sb3_vlm.envs.common.ChannelFrameStack`. Every wrapper records its arguments, so ``gym.make(env.spec)``
    rebuilds the same stack.

    :param size: side of the square observation frame (ERPv: 84)
    :param frame_stack: frames stacked along channels (ERPv: 3)
    :param action_repeat: frames per agent step (the paper states none for CarRacing: 1); the episode limit stays in
        frames, so an agent sees ``max_episode_steps / action_repeat`` steps
    :param max_episode_steps: episode length in frames (ERPv: 1000, CarRacing's own limit)
    :param render_mode: CarRacing's render mode (``"rgb_array"`` for videos); the observations do not need it
    :param make_kwargs: further ``CarRacing-v3`` arguments (``lap_complete_percent``, ``domain_randomize``)
    :return: the wrapped env
    """
    if not make_kwargs.pop("continuous", True):
        raise ValueError("make_carracing_env needs continuous=True: the advice is a [steer, gas, brake] action")
    env = gym.make(
        "CarRacing-v3", continuous=True, render_mode=render_mode, max_episode_steps=max_episode_steps, **make_kwargs
    )
    env = ResizeFrame(CarRacingTeacherView(env), size=size)
    if action_repeat > 1:
        env = ActionRepeat(env, action_repeat)
    return ChannelFrameStack(env, frame_stack)
