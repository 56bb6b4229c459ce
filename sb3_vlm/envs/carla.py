"""
The CARLA driving scenarios of ERPv (appendix C.1) and COVR: highway (#HW) and jaywalk (ERPv's #JW, COVR's
"ghost pedestrian" #GP), observed through one front RGB camera and driven with ``[steer, throttle]``.

- :func:`highway_reward` and :func:`jaywalk_reward` are ERPv eq. 15 and 16 (COVR eq. 7 and 8), and
  :func:`action_to_control` maps an action to CARLA's (steer, throttle, brake); all three need no ``carla`` module.
- :class:`CarlaEnv` is the simulator env (a running CARLA server is needed, see :class:`CarlaConnectionError`);
  its ``teacher_request()`` shows the teacher the latest frame with the ego's speed and yaw, the context fields the
  ERPv prompts (:data:`~sb3_vlm.advisors.prompts.CARLA_HIGHWAY`, ``CARLA_JAYWALK``) fill in.
- :func:`make_carla_env` adds the papers' action repeat 4 and frame stack 3.

Where the papers are silent (both only give the camera table, the rewards, the action and the weather):

- collision intensity: the norm of the collision sensor's ``normal_impulse`` (N·s), summed over the events that
  arrived during the step (DBC's measure, whose highway reward has the form of eq. 15). Sensor events reach the
  client asynchronously, so an impact can be counted one step late.
- lane invasion: the number of lane markings crossed during the step (``len(event.crossed_lane_markings)`` summed).
- speed: the norm of the ego's velocity (m/s); ``dt`` the fixed simulation step ``1 / fps`` = 0.05 s; the ``steer``
  of the rewards is the applied (clipped) steer. Yaw is CARLA's, in degrees.
- maps: Town04 for the highway, starting like DBC (Zhang et al., 2021) on its highway (road 45, one of lanes −1…−4,
  s = 100 m); Town01 for jaywalking (two-lane urban streets with sidewalks), starting at a random spawn point.
- traffic: ERPv's four NPC vehicles (COVR: up to ten, ``n_vehicles=10``) spawn 20–200 m ahead of the ego in random
  lanes of its direction and drive on CARLA's Traffic Manager autopilot, 30 % below the speed limit (as DBC) so the
  ego can overtake. ERPv's three pedestrians stand beside the ego's lane 25–50 m apart along its route and walk
  across the road when the ego comes within ``trigger_distance``: a scripted ``WalkerControl`` rather than an AI
  walker controller, since the latter only crosses at crosswalks it chooses itself. COVR's parked vehicles that
  hide the pedestrians are not placed.
- an episode terminates on the first collision (``terminate_on_collision``) and is truncated after
  ``max_episode_steps`` = 1000 simulator steps (ERPv), i.e. 250 agent steps under action repeat 4.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import time
import warnings
from dataclasses import dataclass
from typing import Any, Literal, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from sb3_vlm.advice import AdviceRequest
from sb3_vlm.envs.common import ActionRepeat, ChannelFrameStack

logger = logging.getLogger(__name__)

Scenario = Literal["highway", "jaywalk"]

#: ERPv eq. 15 / COVR eq. 7: (λ1 speed, λ2 collision, λ3 steer)
HIGHWAY_COEFS: tuple[float, float, float] = (1.0, 1e-4, 1.0)
#: ERPv eq. 16 / COVR eq. 8: (λ1 speed, λ2 collision, λ3 lane invasion, λ4 steer)
JAYWALK_COEFS: tuple[float, float, float, float] = (1.0, 1e-3, 1e-2, 0.1)
#: ERPv table 5 / COVR table 6 (image size, fov and the 20 Hz tick are constructor arguments)
CAMERA_ATTRIBUTES: dict[str, str] = {
    "gamma": "2.2",
    "iso": "100",
    "exposure_min_bright": "10",
    "exposure_max_bright": "12",
    "motion_blur_intensity": "0.45",
}
DEFAULT_TOWNS: dict[str, str] = {"highway": "Town04", "jaywalk": "Town01"}
DEFAULT_VEHICLES: dict[str, int] = {"highway": 4, "jaywalk": 0}
DEFAULT_PEDESTRIANS: dict[str, int] = {"highway": 0, "jaywalk": 3}

# DBC's Town04 highway start: road id, lanes of one direction, s along the road (m)
_HIGHWAY_STARTS: dict[str, tuple[int, tuple[int, ...], float]] = {"Town04": (45, (-1, -2, -3, -4), 100.0)}
# a front camera on the hood (DBC's mount); the papers do not say where theirs is
_CAMERA_MOUNT = (1.6, 0.0, 1.7)
_SPAWN_LIFT = 0.5  # m above the waypoint: spawning on the road surface itself fails as a collision
_WARMUP_TICKS = 10  # let freshly spawned vehicles settle on the road (0.5 s) before the first observation
_NPC_AHEAD = (20.0, 200.0)  # m ahead of the ego where NPC vehicles spawn
_NPC_SPEED_DIFFERENCE = 30.0  # % below the speed limit the Traffic Manager drives NPCs at
_NPC_LEADING_DISTANCE = 2.5  # m the Traffic Manager keeps to the vehicle ahead
_CROSSING_GAP = (25.0, 50.0)  # m between successive pedestrians along the route
_PEDESTRIAN_SPEED = (1.2, 2.0)  # m/s, a brisk walk
_MAX_SPAWN_TRIES = 10


class CarlaConnectionError(ConnectionError):
    """No CARLA server answered at the given host and port within the client timeout."""


def highway_reward(
    speed: float, dt: float, collision: float, steer: float, coefs: tuple[float, float, float] = HIGHWAY_COEFS
) -> float:
    """
    ERPv eq. 15 (COVR eq. 7): ``r = λ1·v·dt − λ2·collision − λ3·|steer|``.

    :param speed: ego speed (m/s)
    :param dt: simulated time of the step (s)
    :param collision: collision intensity during the step (norm of the normal impulse, N·s)
    :param steer: applied steer in [-1, 1]
    :param coefs: (λ1, λ2, λ3); the papers use (1, 1e-4, 1)
    """
    l1, l2, l3 = coefs
    return float(l1 * speed * dt - l2 * collision - l3 * abs(steer))


def jaywalk_reward(
    speed: float,
    dt: float,
    collision: float,
    lane_invasion: float,
    steer: float,
    coefs: tuple[float, float, float, float] = JAYWALK_COEFS,
) -> float:
    """
    ERPv eq. 16 (COVR eq. 8): ``r = λ1·v·dt − λ2·collision − λ3·lane_invasion − λ4·|steer|``.

    :param speed: ego speed (m/s)
    :param dt: simulated time of the step (s)
    :param collision: collision intensity during the step (norm of the normal impulse, N·s)
    :param lane_invasion: lane markings crossed during the step
    :param steer: applied steer in [-1, 1]
    :param coefs: (λ1, λ2, λ3, λ4); the papers use (1, 1e-3, 1e-2, 0.1)
    """
    l1, l2, l3, l4 = coefs
    return float(l1 * speed * dt - l2 * collision - l3 * lane_invasion - l4 * abs(steer))


def action_to_control(action: Any) -> tuple[float, float, float]:
    """
    Map an ERPv/COVR action ``[steer, throttle]`` to CARLA's ``(steer, throttle, brake)``: both components are clipped
    to [-1, 1]; a positive throttle accelerates, a throttle ≤ 0 brakes with strength ``-throttle``.

    :param action: two numbers, steer (< 0 left, > 0 right) and throttle
    :return: (steer in [-1, 1], throttle in [0, 1], brake in [0, 1])
    :raises ValueError: for a wrong shape or a NaN/inf component (SB3 never sends one: it is a bug to surface, not to
        drive with)
    """
    a = np.asarray(action, dtype=np.float64).reshape(-1)
    if a.shape != (2,):
        raise ValueError(f"A CARLA action is [steer, throttle], got shape {np.shape(action)}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"A CARLA action must be finite, got [steer, throttle] = {a.tolist()}")
    steer, throttle = (float(x) for x in np.clip(a, -1.0, 1.0))
    if throttle > 0.0:
        return steer, throttle, 0.0
    return steer, 0.0, 0.0 - throttle  # 0.0 - x: no -0.0 brake for a zero throttle


def _import_carla() -> Any:
    try:
        import carla
    except ImportError as exc:
        raise ImportError(
            "CarlaEnv needs the CARLA Python client: pip install 'sb3-vlm[carla]' "
            "(its version must match the server's, e.g. carla==0.9.16)"
        ) from exc
    return carla


def _no_server_message(host: str, port: int, timeout: float, cause: BaseException) -> str:
    return (
        f"No CARLA server answered at {host}:{port} within {timeout:g} s ({cause}). Start one, e.g. from a CARLA "
        f"0.9.16 release: ./CarlaUE4.sh -RenderOffScreen -carla-rpc-port={port}, or with docker: docker run --rm "
        f"--gpus all --net=host carlasim/carla:0.9.16 ./CarlaUE4.sh -RenderOffScreen -carla-rpc-port={port}. "
        "Set CARLA_HOST / CARLA_PORT (or pass host= / port=) to select the server."
    )


def _default_host() -> str:
    return os.environ.get("CARLA_HOST") or "127.0.0.1"


def _default_port() -> int:
    value = os.environ.get("CARLA_PORT")
    if not value:
        return 2000
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"CARLA_PORT must be an integer port, got {value!r}") from None


def _lifted(carla: Any, transform: Any, dz: float = _SPAWN_LIFT) -> Any:
    loc, rot = transform.location, transform.rotation
    return carla.Transform(
        carla.Location(x=loc.x, y=loc.y, z=loc.z + dz), carla.Rotation(pitch=rot.pitch, yaw=rot.yaw, roll=rot.roll)
    )


def _distance_2d(a: Any, b: Any) -> float:
    return math.hypot(a.x - b.x, a.y - b.y)


@dataclass
class _Crossing:
    """A pedestrian waiting beside the road, then walking ``length`` metres across it along ``direction``."""

    walker: Any
    direction: Any  # carla.Vector3D, unit, horizontal
    speed: float
    length: float
    state: Literal["waiting", "walking", "done"] = "waiting"
    start: Any = None  # carla.Location where it started walking


class CarlaEnv(gym.Env):
    """
    ERPv's CARLA benchmarks (appendix C.1; COVR's are the same): a front RGB camera (table 5), actions
    ``[steer, throttle]`` in [-1, 1] (see :func:`action_to_control`), CloudyNoon weather, a synchronous simulation at
    ``fps`` = 20 Hz, and the rewards of eq. 15 (highway) or eq. 16 (jaywalk). The module docstring lists the choices
    the papers leave open. Actors are spawned afresh at every ``reset()``; every actor the env spawned is destroyed at
    ``close()`` and whenever ``reset()``/``step()`` fails, and ``close()`` (or a failure) puts the world back into
    the settings it had (normally asynchronous mode), so a crashed run does not leave the server frozen waiting for
    ticks.

    :param scenario: ``"highway"`` (#HW: NPC vehicles ahead) or ``"jaywalk"`` (#JW / #GP: pedestrians crossing)
    :param host: CARLA server host; default ``$CARLA_HOST`` or ``127.0.0.1``
    :param port: CARLA RPC port; default ``$CARLA_PORT`` or 2000
    :param timeout: client timeout in seconds for connecting and for every call (a map load gets at least 60 s)
    :param town: map to load if another one is loaded; default Town04 (highway) or Town01 (jaywalk)
    :param image_size: side of the square camera image (table 5: 128)
    :param fov: horizontal field of view of the camera in degrees (table 5: 60)
    :param fps: simulation and camera rate in Hz (table 5: tick 20); ``dt = 1 / fps``
    :param max_episode_steps: simulator steps before truncation (ERPv: 1000)
    :param n_vehicles: NPC vehicles ahead of the ego; default 4 on the highway (ERPv; COVR: up to 10), 0 otherwise
    :param n_pedestrians: crossing pedestrians; default 3 in the jaywalk scenario (ERPv, COVR), 0 otherwise
    :param trigger_distance: a pedestrian starts crossing when the ego comes within this many metres
    :param terminate_on_collision: end the episode at the first collision
    :param reward_coefs: the λ of eq. 15 (three) or eq. 16 (four); default the papers'
    :param ego_blueprint: blueprint id of the ego vehicle
    :param tm_port: Traffic Manager port, used when there are NPC vehicles
    :param seed: seed of the first ``reset()`` that is given none (placements, blueprints, Traffic Manager)
    :param render_mode: ``"rgb_array"`` to have ``render()`` return the latest camera frame
    """

    metadata: dict[str, Any] = {"render_modes": ["rgb_array"], "render_fps": 20}  # noqa: RUF012  (gym's convention)

    def __init__(
        self,
        scenario: Scenario = "highway",
        host: str | None = None,
        port: int | None = None,
        timeout: float = 10.0,
        town: str | None = None,
        image_size: int = 128,
        fov: float = 60.0,
        fps: int = 20,
        max_episode_steps: int = 1000,
        n_vehicles: int | None = None,
        n_pedestrians: int | None = None,
        trigger_distance: float = 25.0,
        terminate_on_collision: bool = True,
        reward_coefs: tuple[float, ...] | None = None,
        ego_blueprint: str = "vehicle.tesla.model3",
        tm_port: int = 8000,
        seed: int | None = None,
        render_mode: str | None = None,
    ):
        super().__init__()
        if scenario not in DEFAULT_TOWNS:
            raise ValueError(f"scenario must be 'highway' or 'jaywalk', got {scenario!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        if image_size < 8 or fps < 1 or max_episode_steps < 1 or timeout <= 0:
            raise ValueError(
                f"Need image_size >= 8, fps >= 1, max_episode_steps >= 1 and timeout > 0, got {image_size}, {fps}, "
                f"{max_episode_steps}, {timeout}"
            )
        n_coefs = 3 if scenario == "highway" else 4
        if reward_coefs is not None and len(reward_coefs) != n_coefs:
            raise ValueError(f"The {scenario} reward takes {n_coefs} coefficients, got {reward_coefs}")
        self.scenario: Scenario = scenario
        self.host = host if host is not None else _default_host()
        self.port = int(port) if port is not None else _default_port()
        self.timeout = float(timeout)
        self.town = town if town is not None else DEFAULT_TOWNS[scenario]
        self.image_size, self.fov, self.fps = int(image_size), float(fov), int(fps)
        self.dt = 1.0 / self.fps
        self.max_episode_steps = int(max_episode_steps)
        self.n_vehicles = int(n_vehicles if n_vehicles is not None else DEFAULT_VEHICLES[scenario])
        self.n_pedestrians = int(n_pedestrians if n_pedestrians is not None else DEFAULT_PEDESTRIANS[scenario])
        if self.n_vehicles < 0 or self.n_pedestrians < 0:
            raise ValueError(f"Need n_vehicles, n_pedestrians >= 0, got {self.n_vehicles}, {self.n_pedestrians}")
        self.trigger_distance = float(trigger_distance)
        self.terminate_on_collision = terminate_on_collision
        self.reward_coefs: tuple[float, ...] = tuple(
            reward_coefs if reward_coefs is not None else (HIGHWAY_COEFS if scenario == "highway" else JAYWALK_COEFS)
        )
        self.ego_blueprint = ego_blueprint
        self.tm_port = int(tm_port)
        self.render_mode = render_mode
        self._seed = seed

        self.observation_space = spaces.Box(0, 255, (self.image_size, self.image_size, 3), dtype=np.uint8)
        self.action_space = spaces.Box(-1.0, 1.0, (2,), dtype=np.float32)

        # episode state
        self._actors: list[Any] = []  # everything spawned this episode, in spawn order
        self._sensors: list[Any] = []
        self._crossings: list[_Crossing] = []
        self._ego: Any = None
        self._images: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._collisions: queue.SimpleQueue[float] = queue.SimpleQueue()
        self._lane_crossings: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._last_image: np.ndarray | None = None
        self._speed = self._yaw = self._distance = 0.0
        self._steps = 0
        self._synchronous = False  # whether we changed the world settings (and must restore them)
        self._traffic_manager: Any = None
        self._closed = False

        self._carla = _import_carla()
        self._client, self._world = self._connect()
        # restored at close(): the settings the world had before we made it synchronous
        self._original_settings = self._world.get_settings()

    # -- connection ------------------------------------------------------------------------------------------------

    def _connect(self) -> tuple[Any, Any]:
        carla = self._carla
        client = carla.Client(self.host, self.port)
        client.set_timeout(self.timeout)
        try:
            server_version = client.get_server_version()  # the first RPC: fails within the timeout without a server
        except RuntimeError as exc:
            raise CarlaConnectionError(_no_server_message(self.host, self.port, self.timeout, exc)) from exc
        client_version = client.get_client_version()
        if str(server_version) != str(client_version):
            warnings.warn(
                f"CARLA client {client_version} and server {server_version} differ: install the matching client "
                f"(pip install carla=={server_version})",
                stacklevel=3,
            )
        world = client.get_world()
        if world.get_map().name.split("/")[-1] != self.town:
            client.set_timeout(max(self.timeout, 60.0))  # loading a map takes longer than an ordinary call
            try:
                world = client.load_world(self.town)
            finally:
                client.set_timeout(self.timeout)
        return client, world

    # -- gym API ---------------------------------------------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        if self._closed:
            raise RuntimeError("CarlaEnv is closed")
        if seed is None and self._seed is not None:
            seed, self._seed = self._seed, None
        super().reset(seed=seed)
        try:
            self._destroy_actors()
            self._enter_synchronous_mode(seed)
            self._spawn_episode()
            for _ in range(_WARMUP_TICKS):
                obs = self._tick()
            self._drain(self._collisions)  # a bump while landing is not the agent's doing
            self._drain(self._lane_crossings)
            self._read_ego_state()
        except BaseException:
            self._cleanup()
            raise
        self._steps, self._distance = 0, 0.0
        return obs, self._info(collision=0.0, collided=False, lane_invasion=0)

    def step(self, action: Any) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        if self._ego is None:
            raise RuntimeError("Call reset() before step()")
        # validated before touching the simulator: a bad action leaves the episode intact, so no cleanup
        steer, throttle, brake = action_to_control(action)
        carla = self._carla
        try:
            self._ego.apply_control(carla.VehicleControl(throttle=throttle, steer=steer, brake=brake))
            obs = self._tick()
            self._update_crossings()
            self._read_ego_state()
        except BaseException:
            self._cleanup()
            raise
        impulses = self._drain(self._collisions)
        collision = float(sum(impulses))
        lane_invasion = int(sum(self._drain(self._lane_crossings)))
        self._steps += 1
        self._distance += self._speed * self.dt
        if self.scenario == "highway":
            l1, l2, l3 = self.reward_coefs
            reward = highway_reward(self._speed, self.dt, collision, steer, coefs=(l1, l2, l3))
        else:
            l1, l2, l3, l4 = self.reward_coefs
            reward = jaywalk_reward(self._speed, self.dt, collision, lane_invasion, steer, coefs=(l1, l2, l3, l4))
        collided = len(impulses) > 0
        terminated = self.terminate_on_collision and collided
        truncated = self._steps >= self.max_episode_steps
        return obs, reward, terminated, truncated, self._info(collision, collided, lane_invasion)

    def teacher_request(self) -> AdviceRequest:
        """
        The teacher's view (ERPv appendix C.6, Fig. 12/13): the latest camera frame, and the ego's speed (m/s) and
        yaw (degrees) as the ``speed``/``yaw`` context of the ERPv prompts, rounded to the prompt's two decimals so
        that requests the VLM sees identically share a cache key.
        """
        if self._last_image is None:
            raise RuntimeError("teacher_request() needs a camera frame: call reset() first")
        return AdviceRequest(
            image=self._last_image,
            context={"speed": round(self._speed, 2), "yaw": round(self._yaw, 2)},
            action_space=self.action_space,
        )

    def render(self) -> np.ndarray | None:  # type: ignore[override]
        return self._last_image if self.render_mode == "rgb_array" else None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._cleanup()

    # -- episode set-up --------------------------------------------------------------------------------------------

    def _enter_synchronous_mode(self, seed: int | None) -> None:
        carla = self._carla
        settings = self._world.get_settings()
        settings.synchronous_mode = True
        settings.fixed_delta_seconds = self.dt
        self._synchronous = True  # set first: a failing apply_settings may still have applied
        self._world.apply_settings(settings)
        self._world.set_weather(carla.WeatherParameters.CloudyNoon)
        if self.n_vehicles > 0:
            tm = self._client.get_trafficmanager(self.tm_port)
            self._traffic_manager = tm
            tm.set_synchronous_mode(True)  # autopilot vehicles must step with the world's ticks
            if seed is not None:
                tm.set_random_device_seed(seed)
            tm.set_global_distance_to_leading_vehicle(_NPC_LEADING_DISTANCE)
            tm.global_percentage_speed_difference(_NPC_SPEED_DIFFERENCE)

    def _spawn(self, blueprint: Any, transform: Any, attach_to: Any = None, required: bool = True) -> Any:
        """Spawn and remember an actor; ``required=False`` returns None where the spot is taken."""
        # attach_to only when given: the C++ signature takes an actor, and None need not convert on every version
        kwargs = {} if attach_to is None else {"attach_to": attach_to}
        if required:
            actor = self._world.spawn_actor(blueprint, transform, **kwargs)
        else:
            actor = self._world.try_spawn_actor(blueprint, transform, **kwargs)
        if actor is not None:
            self._actors.append(actor)
        return actor

    def _choice(self, items: list[Any]) -> Any:
        return items[int(self.np_random.integers(len(items)))]

    def _start_waypoint(self) -> Any:
        carla_map = self._world.get_map()
        # Town04_Opt (the layered variant) has Town04's roads
        start = _HIGHWAY_STARTS.get(self.town.removesuffix("_Opt")) if self.scenario == "highway" else None
        if start is not None:
            road, lanes, s = start
            waypoint = carla_map.get_waypoint_xodr(road, self._choice(list(lanes)), s)
            if waypoint is not None:
                return waypoint
        spawn_points = list(carla_map.get_spawn_points())
        if not spawn_points:
            raise RuntimeError(f"Map {self.town} has no spawn points")
        return carla_map.get_waypoint(self._choice(spawn_points).location)

    def _spawn_episode(self) -> None:
        carla = self._carla
        library = self._world.get_blueprint_library()
        start = self._start_waypoint()

        ego_bp = library.find(self.ego_blueprint)
        ego_bp.set_attribute("role_name", "hero")
        self._ego = self._spawn(ego_bp, _lifted(carla, start.transform))

        camera_bp = library.find("sensor.camera.rgb")
        for name, value in {
            "image_size_x": str(self.image_size),
            "image_size_y": str(self.image_size),
            "fov": str(self.fov),
            # every tick, i.e. at fps (the table's 20 Hz), without the float rounding of sensor_tick=0.05
            "sensor_tick": "0.0",
            **CAMERA_ATTRIBUTES,
        }.items():
            camera_bp.set_attribute(name, value)
        x, y, z = _CAMERA_MOUNT
        camera = self._spawn(camera_bp, carla.Transform(carla.Location(x=x, y=y, z=z)), attach_to=self._ego)
        self._sensors.append(camera)
        camera.listen(self._images.put)

        collision = self._spawn(library.find("sensor.other.collision"), carla.Transform(), attach_to=self._ego)
        self._sensors.append(collision)
        collision.listen(lambda event: self._collisions.put(_impulse_norm(event.normal_impulse)))

        lane = self._spawn(library.find("sensor.other.lane_invasion"), carla.Transform(), attach_to=self._ego)
        self._sensors.append(lane)
        lane.listen(lambda event: self._lane_crossings.put(len(event.crossed_lane_markings)))

        self._spawn_vehicles(library, start)
        self._spawn_pedestrians(library, start)

    def _same_direction_lanes(self, waypoint: Any) -> list[Any]:
        """The driving lanes next to ``waypoint`` that run its way (same sign of lane id)."""
        driving = self._carla.LaneType.Driving
        lanes = [waypoint]
        for side in ("get_left_lane", "get_right_lane"):
            lane = getattr(waypoint, side)()
            while lane is not None and lane.lane_type == driving and lane.lane_id * waypoint.lane_id > 0:
                lanes.append(lane)
                if len(lanes) > 8:  # a malformed map cannot loop us forever
                    break
                lane = getattr(lane, side)()
        return lanes

    def _spawn_vehicles(self, library: Any, start: Any) -> None:
        if self.n_vehicles == 0:
            return
        blueprints = [bp for bp in library.filter("vehicle.*") if int(bp.get_attribute("number_of_wheels")) == 4]
        lanes = self._same_direction_lanes(start)
        spawned = 0
        for _ in range(self.n_vehicles * _MAX_SPAWN_TRIES):
            if spawned == self.n_vehicles:
                break
            ahead = self._choice(lanes).next(float(self.np_random.uniform(*_NPC_AHEAD)))
            if not ahead:
                continue
            bp = self._choice(blueprints)
            if bp.has_attribute("role_name"):
                bp.set_attribute("role_name", "autopilot")
            vehicle = self._spawn(bp, _lifted(self._carla, ahead[0].transform), required=False)
            if vehicle is None:  # the spot is taken: draw another
                continue
            vehicle.set_autopilot(True, self.tm_port)
            spawned += 1
        if spawned < self.n_vehicles:
            logger.warning("Spawned %d of %d NPC vehicles (no free spot ahead)", spawned, self.n_vehicles)

    def _spawn_pedestrians(self, library: Any, start: Any) -> None:
        if self.n_pedestrians == 0:
            return
        carla = self._carla
        blueprints = list(library.filter("walker.pedestrian.*"))
        along = 0.0
        for _ in range(self.n_pedestrians):
            along += float(self.np_random.uniform(*_CROSSING_GAP))
            ahead = start.next(along)
            if not ahead:
                break
            waypoint = ahead[0]
            loc, right = waypoint.transform.location, waypoint.transform.get_right_vector()
            norm = math.hypot(right.x, right.y) or 1.0
            rx, ry = right.x / norm, right.y / norm
            offset = 0.5 * waypoint.lane_width + 1.5  # on the right shoulder / sidewalk, just off the ego's lane
            spot = carla.Transform(
                carla.Location(x=loc.x + rx * offset, y=loc.y + ry * offset, z=loc.z + 1.0),
                carla.Rotation(yaw=waypoint.transform.rotation.yaw - 90.0),  # facing the road
            )
            bp = self._choice(blueprints)
            if bp.has_attribute("is_invincible"):
                bp.set_attribute("is_invincible", "false")
            walker = self._spawn(bp, spot, required=False)
            if walker is None:
                logger.warning("No room for a pedestrian %.0f m ahead; the episode has one crossing fewer", along)
                continue
            self._crossings.append(
                _Crossing(
                    walker=walker,
                    direction=carla.Vector3D(x=-rx, y=-ry, z=0.0),  # right to left, across the ego's lane
                    speed=float(self.np_random.uniform(*_PEDESTRIAN_SPEED)),
                    length=2.0 * offset + 2.0 * waypoint.lane_width,  # to the far side of a two-lane road
                )
            )

    # -- simulation ------------------------------------------------------------------------------------------------

    def _tick(self) -> np.ndarray:
        """Advance the world one fixed step and return that frame's camera image (RGB)."""
        frame = self._world.tick(self.timeout)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                image = self._images.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                raise RuntimeError(f"No camera image for frame {frame} within {self.timeout:g} s") from None
            if image.frame >= frame:  # older frames are left over from before: skip them
                break
        bgra = np.frombuffer(image.raw_data, dtype=np.uint8).reshape(image.height, image.width, 4)
        self._last_image = np.ascontiguousarray(bgra[:, :, 2::-1])  # CARLA images are BGRA
        return self._last_image

    def _update_crossings(self) -> None:
        if not self._crossings:
            return
        carla = self._carla
        ego = self._ego.get_location()
        for crossing in self._crossings:
            if crossing.state == "done":
                continue
            here = crossing.walker.get_location()
            if crossing.state == "waiting" and _distance_2d(ego, here) < self.trigger_distance:
                crossing.state, crossing.start = "walking", here
                crossing.walker.apply_control(carla.WalkerControl(direction=crossing.direction, speed=crossing.speed))
            elif crossing.state == "walking" and _distance_2d(here, crossing.start) >= crossing.length:
                crossing.state = "done"
                crossing.walker.apply_control(carla.WalkerControl(direction=crossing.direction, speed=0.0))

    def _read_ego_state(self) -> None:
        v = self._ego.get_velocity()
        self._speed = math.sqrt(v.x**2 + v.y**2 + v.z**2)
        self._yaw = float(self._ego.get_transform().rotation.yaw)

    @staticmethod
    def _drain(events: queue.SimpleQueue[Any]) -> list[Any]:
        out = []
        while True:
            try:
                out.append(events.get_nowait())
            except queue.Empty:
                return out

    def _info(self, collision: float, collided: bool, lane_invasion: int) -> dict[str, Any]:
        return {
            "speed": self._speed,
            "yaw": self._yaw,
            "collision": collision,
            "collided": collided,
            "lane_invasion": lane_invasion,
            "distance": self._distance,
        }

    # -- clean-up --------------------------------------------------------------------------------------------------

    def _cleanup(self) -> None:
        """Destroy the episode's actors and give the world its settings back; never raises (it runs while another
        exception propagates)."""
        self._destroy_actors()
        self._restore_settings()

    def _destroy_actors(self) -> None:
        for sensor in self._sensors:
            try:
                sensor.stop()  # no callbacks into a half-destroyed env
            except Exception as exc:
                logger.warning("Could not stop CARLA sensor %s: %s", getattr(sensor, "id", "?"), exc)
        for actor in reversed(self._actors):  # sensors before the vehicle they are attached to
            try:
                actor.destroy()
            except Exception as exc:
                logger.warning("Could not destroy CARLA actor %s: %s", getattr(actor, "id", "?"), exc)
        self._actors, self._sensors, self._crossings, self._ego = [], [], [], None
        for events in (self._images, self._collisions, self._lane_crossings):
            self._drain(events)

    def _restore_settings(self) -> None:
        if not self._synchronous:
            return
        self._synchronous = False
        try:
            self._world.apply_settings(self._original_settings)
        except Exception as exc:
            logger.warning("Could not restore the CARLA world settings: %s", exc)
        if self._traffic_manager is not None:
            try:
                self._traffic_manager.set_synchronous_mode(False)
            except Exception as exc:
                logger.warning("Could not restore the Traffic Manager's mode: %s", exc)
            self._traffic_manager = None


def _impulse_norm(impulse: Any) -> float:
    return math.sqrt(impulse.x**2 + impulse.y**2 + impulse.z**2)


def make_carla_env(
    scenario: Scenario = "highway", action_repeat: int = 4, frame_stack: int = 3, **kwargs: Any
) -> gym.Env:
    """
    :class:`CarlaEnv` with ERPv/COVR's pixel pipeline: action repeat 4 (:class:`~sb3_vlm.envs.common.ActionRepeat`)
    and 3 frames stacked along channels (:class:`~sb3_vlm.envs.common.ChannelFrameStack`), observations
    ``(128, 128, 9)`` uint8. ``env.get_wrapper_attr("teacher_request")`` still reaches :meth:`CarlaEnv.teacher_request`
    (the newest single frame with speed and yaw).

    :param scenario: ``"highway"`` or ``"jaywalk"``
    :param action_repeat: simulator steps per agent step
    :param frame_stack: frames stacked in an observation
    :param kwargs: passed to :class:`CarlaEnv`
    """
    env: gym.Env = CarlaEnv(scenario=scenario, **kwargs)
    env = ActionRepeat(env, action_repeat)
    return ChannelFrameStack(env, frame_stack)
