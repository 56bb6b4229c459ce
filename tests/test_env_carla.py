from __future__ import annotations

import os
import socket
import sys
import time
from types import SimpleNamespace
from typing import Any
from unittest import mock

import numpy as np
import pytest

from sb3_vlm.envs.carla import action_to_control, highway_reward, jaywalk_reward

needs_server = pytest.mark.skipif(not os.environ.get("CARLA_HOST"), reason="needs a CARLA server (set CARLA_HOST)")


# -- pure functions ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("speed", "collision", "steer", "expected"),
    [
        (10.0, 2000.0, -0.3, 10.0 * 0.05 - 1e-4 * 2000.0 - 1.0 * 0.3),  # = 0.5 - 0.2 - 0.3 = 0.0
        (20.0, 0.0, 0.0, 20.0 * 0.05),  # = 1.0
        (0.0, 50_000.0, 1.0, -1e-4 * 50_000.0 - 1.0),  # = -6.0
        (5.0, 0.0, 0.5, 5.0 * 0.05 - 0.5),  # = -0.25
    ],
)
def test_highway_reward_is_eq_15(speed: float, collision: float, steer: float, expected: float) -> None:
    assert highway_reward(speed, 0.05, collision, steer) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("speed", "collision", "lane", "steer", "expected"),
    [
        (10.0, 2000.0, 1, -0.3, 10.0 * 0.05 - 1e-3 * 2000.0 - 1e-2 * 1 - 0.1 * 0.3),  # = 0.5 - 2 - 0.01 - 0.03
        (8.0, 0.0, 0, 0.0, 8.0 * 0.05),  # = 0.4
        (8.0, 0.0, 2, 0.2, 8.0 * 0.05 - 1e-2 * 2 - 0.1 * 0.2),  # = 0.4 - 0.02 - 0.02 = 0.36
    ],
)
def test_jaywalk_reward_is_eq_16(speed: float, collision: float, lane: int, steer: float, expected: float) -> None:
    assert jaywalk_reward(speed, 0.05, collision, lane, steer) == pytest.approx(expected)


def test_rewards_take_custom_coefficients() -> None:
    # 2·10·0.1 − 0.5·4 − 3·|−0.5| = 2 − 2 − 1.5
    assert highway_reward(10.0, 0.1, 4.0, -0.5, coefs=(2.0, 0.5, 3.0)) == pytest.approx(-1.5)
    # 2·10·0.1 − 0.5·4 − 0.25·2 − 3·|0.5| = 2 − 2 − 0.5 − 1.5
    assert jaywalk_reward(10.0, 0.1, 4.0, 2, 0.5, coefs=(2.0, 0.5, 0.25, 3.0)) == pytest.approx(-2.0)


def test_action_to_control() -> None:
    assert action_to_control([0.25, 0.7]) == pytest.approx((0.25, 0.7, 0.0))  # accelerate
    assert action_to_control(np.array([-0.5, -0.4], dtype=np.float32)) == pytest.approx((-0.5, 0.0, 0.4))  # brake
    steer, throttle, brake = action_to_control([0.0, 0.0])  # throttle 0 is "slow down" with zero brake
    assert (steer, throttle, brake) == (0.0, 0.0, 0.0)
    assert np.signbit(brake) == np.False_  # no -0.0 sent to CARLA
    assert action_to_control([3.0, 2.0]) == (1.0, 1.0, 0.0)  # clipped
    assert action_to_control([-3.0, -2.0]) == (-1.0, 0.0, 1.0)
    for bad in ([np.nan, 0.5], [0.1, np.inf], [0.1, -np.inf]):
        with pytest.raises(ValueError, match="finite"):
            action_to_control(bad)
    with pytest.raises(ValueError, match=r"\[steer, throttle\]"):
        action_to_control([0.1, 0.2, 0.3])


# -- construction without a server -------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_no_server_raises_a_clear_error_within_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("carla")
    from sb3_vlm.envs.carla import CarlaConnectionError, CarlaEnv

    monkeypatch.delenv("CARLA_HOST", raising=False)
    port = _free_port()
    start = time.monotonic()
    with pytest.raises(CarlaConnectionError) as info:
        CarlaEnv(port=port, timeout=1.0)
    assert time.monotonic() - start < 1.0 + 3.0
    message = str(info.value)
    assert isinstance(info.value, ConnectionError)
    assert f"127.0.0.1:{port}" in message
    assert "CarlaUE4.sh -RenderOffScreen" in message and "carlasim/carla:0.9.16" in message
    assert "CARLA_HOST" in message and "CARLA_PORT" in message


def test_host_and_port_default_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("carla")
    from sb3_vlm.envs.carla import CarlaConnectionError, CarlaEnv

    port = _free_port()
    monkeypatch.setenv("CARLA_HOST", "localhost")
    monkeypatch.setenv("CARLA_PORT", str(port))
    with pytest.raises(CarlaConnectionError, match=f"localhost:{port}"):
        CarlaEnv(timeout=0.5)
    with pytest.raises(CarlaConnectionError, match=f"127.0.0.1:{port}"):  # explicit arguments win
        CarlaEnv(host="127.0.0.1", timeout=0.5)


def test_missing_client_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from sb3_vlm.envs.carla import CarlaEnv

    monkeypatch.setitem(sys.modules, "carla", None)  # makes `import carla` fail
    with pytest.raises(ImportError, match=r"pip install 'sb3-vlm\[carla\]'"):
        CarlaEnv()


# -- a small fake server: just enough of the client API for reset/step/cleanup ---------------------------------------


class FakeBlueprint:
    def __init__(self, bp_id: str):
        self.id = bp_id
        self.attributes: dict[str, str] = {}

    def set_attribute(self, name: str, value: str) -> None:
        self.attributes[name] = value

    def has_attribute(self, name: str) -> bool:
        return True

    def get_attribute(self, name: str) -> str:
        return "4" if name == "number_of_wheels" else self.attributes.get(name, "")


class FakeActor:
    def __init__(self, world: FakeWorld, bp: FakeBlueprint, transform: Any, parent: FakeActor | None):
        self.world, self.type_id, self.transform, self.parent = world, bp.id, transform, parent
        self.bp = bp
        self.id = len(world.spawned) + 1
        self.alive = True
        self.callback: Any = None
        self.controls: list[Any] = []
        self.autopilot = False

    # vehicles and walkers
    def apply_control(self, control: Any) -> None:
        self.controls.append(control)

    def set_autopilot(self, enabled: bool, port: int) -> None:
        self.autopilot = enabled

    def get_velocity(self) -> Any:
        # the fake ego moves at 10 m/s per unit of throttle, along +x (yaw 0)
        throttle = self.controls[-1].throttle if self.controls else 0.0
        return SimpleNamespace(x=10.0 * throttle, y=0.0, z=0.0)

    def get_transform(self) -> Any:
        return self.transform

    def get_location(self) -> Any:
        return self.transform.location

    # sensors
    def listen(self, callback: Any) -> None:
        self.callback = callback

    def stop(self) -> None:
        self.callback = None

    def destroy(self) -> bool:
        self.alive = False
        return True


class FakeWaypoint:
    def __init__(self, carla: Any, x: float, y: float = 0.0, lane_id: int = -1):
        self.carla = carla
        self.transform = carla.Transform(carla.Location(x=x, y=y, z=0.0), carla.Rotation(yaw=0.0))
        self.lane_id, self.lane_width, self.lane_type = lane_id, 3.5, carla.LaneType.Driving

    def next(self, distance: float) -> list[FakeWaypoint]:
        loc = self.transform.location
        return [FakeWaypoint(self.carla, loc.x + distance, loc.y, self.lane_id)]

    def get_left_lane(self) -> None:
        return None

    def get_right_lane(self) -> None:
        return None


class FakeWorld:
    def __init__(self, carla: Any, town: str = "Town04"):
        self.carla = carla
        self.map = SimpleNamespace(
            name=f"Carla/Maps/{town}",
            get_waypoint_xodr=lambda road, lane, s: FakeWaypoint(carla, s, 3.5 * lane, lane),
            get_spawn_points=lambda: [carla.Transform(carla.Location(x=7.0, y=1.0, z=0.0))],
            get_waypoint=lambda loc: FakeWaypoint(carla, loc.x, loc.y),
        )
        self.settings = SimpleNamespace(synchronous_mode=False, fixed_delta_seconds=None)
        self.settings_history: list[tuple[bool, float | None]] = []
        self.spawned: list[FakeActor] = []
        self.fail_on: str | None = None  # a blueprint id whose spawn raises
        self.frame = 0
        self.pending_impulses: list[tuple[float, float, float]] = []

    def get_map(self) -> Any:
        return self.map

    def get_blueprint_library(self) -> Any:
        ids = ["vehicle.tesla.model3", "vehicle.audi.a2", "walker.pedestrian.0001"]
        return SimpleNamespace(
            find=FakeBlueprint, filter=lambda pattern: [FakeBlueprint(i) for i in ids if i.startswith(pattern[:-1])]
        )

    def get_settings(self) -> Any:  # a fresh copy, as the real client returns
        return SimpleNamespace(**vars(self.settings))

    def apply_settings(self, settings: Any) -> int:
        self.settings = SimpleNamespace(**vars(settings))
        self.settings_history.append((settings.synchronous_mode, settings.fixed_delta_seconds))
        return self.frame

    def set_weather(self, weather: Any) -> None:
        self.weather = weather

    def spawn_actor(self, bp: FakeBlueprint, transform: Any, attach_to: Any = None) -> FakeActor:
        if bp.id == self.fail_on:
            raise RuntimeError(f"Spawn failed because of collision at spawn position ({bp.id})")
        actor = FakeActor(self, bp, transform, attach_to)
        self.spawned.append(actor)
        return actor

    def try_spawn_actor(self, bp: FakeBlueprint, transform: Any, attach_to: Any = None) -> FakeActor | None:
        try:
            return self.spawn_actor(bp, transform, attach_to)
        except RuntimeError:
            return None

    def alive(self) -> list[FakeActor]:
        return [a for a in self.spawned if a.alive]

    def tick(self, seconds: float = 0.0) -> int:
        assert self.settings.synchronous_mode, "the env ticks only in synchronous mode"
        self.frame += 1
        for actor in self.alive():
            if actor.callback is None:
                continue
            if actor.type_id == "sensor.camera.rgb":
                size = int(actor.bp.attributes["image_size_x"])
                assert actor.parent is not None
                x = int(actor.parent.transform.location.x) % 256  # deterministic given the episode's placement
                bgra = np.zeros((size, size, 4), dtype=np.uint8)
                bgra[..., 0], bgra[..., 2] = 200, x  # blue 200, red = x
                actor.callback(SimpleNamespace(frame=self.frame, width=size, height=size, raw_data=bgra.tobytes()))
            elif actor.type_id == "sensor.other.collision":
                for impulse in self.pending_impulses:
                    actor.callback(SimpleNamespace(normal_impulse=SimpleNamespace(x=impulse[0], y=impulse[1], z=0)))
        self.pending_impulses = []
        return self.frame


class FakeClient:
    world: FakeWorld
    traffic_manager: mock.MagicMock

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port

    def set_timeout(self, seconds: float) -> None:
        pass

    def get_server_version(self) -> str:
        return "0.9.16"

    def get_client_version(self) -> str:
        return "0.9.16"

    def get_world(self) -> FakeWorld:
        return self.world

    def load_world(self, town: str) -> FakeWorld:
        self.world = FakeWorld(self.world.carla, town)
        return self.world

    def get_trafficmanager(self, port: int) -> mock.MagicMock:
        return self.traffic_manager


@pytest.fixture
def fake_server(monkeypatch: pytest.MonkeyPatch) -> FakeWorld:
    """Replace ``carla.Client`` by :class:`FakeClient`; the env's other carla types are the real (pure data) ones."""
    carla = pytest.importorskip("carla")
    world = FakeWorld(carla)
    FakeClient.world = world
    FakeClient.traffic_manager = mock.MagicMock()
    monkeypatch.setattr(carla, "Client", FakeClient)
    return world


def test_fake_episode_reward_termination_and_teacher_view(fake_server: FakeWorld) -> None:
    from sb3_vlm.envs.carla import CarlaEnv

    env = CarlaEnv("highway", image_size=16, max_episode_steps=3, seed=0)
    obs, info = env.reset()
    assert obs.shape == (16, 16, 3) and obs.dtype == np.uint8
    # BGRA (200, 0, x, 0) -> RGB (x, 0, 200); the ego starts at s = 100 m of the highway
    assert obs[0, 0].tolist() == [100, 0, 200]
    assert fake_server.settings.synchronous_mode and fake_server.settings.fixed_delta_seconds == pytest.approx(0.05)
    kinds = sorted(a.type_id.split(".")[0] for a in fake_server.alive())
    assert kinds == ["sensor"] * 3 + ["vehicle"] * 5  # ego + 4 NPCs (ERPv), camera, collision, lane invasion
    assert sum(a.autopilot for a in fake_server.alive()) == 4
    assert info["distance"] == 0.0

    # throttle 0.8 -> the fake ego drives 8 m/s: r = 8·0.05 − 1·|0.5|
    obs, reward, terminated, truncated, info = env.step(np.array([0.5, 0.8], dtype=np.float32))
    assert reward == pytest.approx(8 * 0.05 - 0.5)
    assert info["speed"] == pytest.approx(8.0) and info["distance"] == pytest.approx(8 * 0.05)
    assert not terminated and not truncated
    request = env.teacher_request()
    assert request.context == {"speed": 8.0, "yaw": 0.0}
    assert request.image is not None and request.image.shape == (16, 16, 3)
    assert request.action_space == env.action_space

    fake_server.pending_impulses = [(3000.0, 4000.0, 0.0)]  # |impulse| = 5000
    obs, reward, terminated, truncated, info = env.step([0.0, -1.0])  # full brake: no throttle, fake speed 0
    assert reward == pytest.approx(-1e-4 * 5000.0)
    assert terminated and info["collided"] and info["collision"] == pytest.approx(5000.0)

    env.reset()
    env.step([0.0, 1.0])
    env.step([0.0, 1.0])
    assert env.step([0.0, 1.0])[3]  # truncated after max_episode_steps
    env.close()
    assert fake_server.alive() == []
    assert fake_server.settings_history[-1] == (False, None)  # the original (asynchronous) settings
    FakeClient.traffic_manager.set_synchronous_mode.assert_called_with(False)


def test_fake_pedestrians_cross_when_the_ego_comes_near(fake_server: FakeWorld) -> None:
    from sb3_vlm.envs.carla import CarlaEnv

    env = CarlaEnv("jaywalk", town="Town04", image_size=8, seed=1, trigger_distance=30.0)
    env.reset()
    walkers = [a for a in fake_server.alive() if a.type_id.startswith("walker")]
    assert len(walkers) == 3
    assert [a.type_id for a in fake_server.alive() if a.type_id.startswith("vehicle")] == ["vehicle.tesla.model3"]
    ego = next(a for a in fake_server.alive() if a.type_id == "vehicle.tesla.model3")
    for walker in walkers:  # beside the lane (right of it, y > ego's), ahead of the ego
        assert walker.transform.location.x > ego.transform.location.x
        assert walker.transform.location.y > ego.transform.location.y
    nearest = min(walkers, key=lambda w: w.transform.location.x)
    # the fake ego does not move: teleport it next to the first pedestrian
    carla = fake_server.carla
    ego.transform = carla.Transform(carla.Location(x=nearest.transform.location.x - 10.0, y=1.0))
    env.step([0.0, 0.0])
    assert len(nearest.controls) == 1 and nearest.controls[0].speed > 0
    assert nearest.controls[0].direction.y < 0  # walking right to left, across the ego's lane
    assert all(w.controls == [] for w in walkers if w is not nearest)
    env.close()


def test_fake_spawn_failure_destroys_spawned_actors_and_restores_settings(fake_server: FakeWorld) -> None:
    from sb3_vlm.envs.carla import CarlaEnv

    fake_server.fail_on = "sensor.other.collision"  # ego and camera are already up when this spawn raises
    env = CarlaEnv("highway", image_size=8)
    with pytest.raises(RuntimeError, match="Spawn failed"):
        env.reset()
    assert [a.type_id for a in fake_server.spawned] == ["vehicle.tesla.model3", "sensor.camera.rgb"]
    assert fake_server.alive() == []
    assert fake_server.spawned[1].callback is None  # the camera was stopped
    assert fake_server.settings_history == [(True, 0.05), (False, None)]

    fake_server.fail_on = None  # the env is usable again after the failure
    env.reset()
    assert fake_server.settings.synchronous_mode
    env.close()
    assert fake_server.alive() == [] and not fake_server.settings.synchronous_mode


def test_fake_step_failure_cleans_up(fake_server: FakeWorld) -> None:
    from sb3_vlm.envs.carla import CarlaEnv

    env = CarlaEnv("highway", image_size=8, n_vehicles=0)
    env.reset()
    assert len(fake_server.alive()) == 4
    with pytest.raises(ValueError, match="finite"):  # a NaN action is refused before the simulator is touched
        env.step([np.nan, 0.0])
    assert len(fake_server.alive()) == 4
    tick_fails = mock.patch.object(FakeWorld, "tick", side_effect=RuntimeError("time-out of 10000ms"))
    with tick_fails, pytest.raises(RuntimeError, match="time-out"):
        env.step([0.0, 0.5])
    assert fake_server.alive() == [] and not fake_server.settings.synchronous_mode
    with pytest.raises(RuntimeError, match="reset"):
        env.step([0.0, 0.5])


def test_fake_check_env_and_wrappers(fake_server: FakeWorld) -> None:
    from gymnasium.utils.env_checker import check_env

    from sb3_vlm.envs.carla import CarlaEnv, make_carla_env

    env = CarlaEnv("highway", image_size=16)
    check_env(env, skip_render_check=True)
    env.close()

    wrapped = make_carla_env("highway", image_size=16)
    obs, _ = wrapped.reset(seed=3)
    assert obs.shape == (16, 16, 9) and wrapped.observation_space.shape == (16, 16, 9)
    frame = fake_server.frame
    obs, _, _, _, info = wrapped.step(wrapped.action_space.sample())
    assert fake_server.frame == frame + 4 and info["action_repeat_steps"] == 4
    request = wrapped.get_wrapper_attr("teacher_request")()
    assert request.image.shape == (16, 16, 3) and set(request.context) == {"speed", "yaw"}
    wrapped.close()
    assert fake_server.alive() == []


# -- with a real server ----------------------------------------------------------------------------------------------


@needs_server
def test_server_reset_step_shapes() -> None:
    from sb3_vlm.envs.carla import make_carla_env

    env = make_carla_env("highway")
    try:
        obs, info = env.reset(seed=0)
        assert obs.shape == (128, 128, 9) and obs.dtype == np.uint8
        for _ in range(3):
            obs, reward, terminated, truncated, info = env.step(np.array([0.0, 1.0], dtype=np.float32))
            assert obs.shape == (128, 128, 9) and np.isfinite(float(reward))
            assert {"speed", "collision", "lane_invasion", "distance"} <= set(info)
            if terminated or truncated:
                break
        request = env.get_wrapper_attr("teacher_request")()
        assert request.image.shape == (128, 128, 3) and request.context["speed"] >= 0
    finally:
        env.close()


@needs_server
def test_server_check_env() -> None:
    from gymnasium.utils.env_checker import check_env

    from sb3_vlm.envs.carla import CarlaEnv

    env = CarlaEnv("jaywalk")
    try:
        check_env(env, skip_render_check=True)
    finally:
        env.close()


@needs_server
def test_server_actors_cleaned_up_and_settings_restored() -> None:
    import carla

    from sb3_vlm.envs.carla import CarlaEnv

    env = CarlaEnv("highway")
    world = env._world
    before = {a.id for a in world.get_actors()}
    was_synchronous = world.get_settings().synchronous_mode
    env.reset(seed=1)
    env.step([0.0, 1.0])
    assert len({a.id for a in world.get_actors()} - before) >= 4  # ego, camera, two sensors (+ NPCs)
    env.close()
    client = carla.Client(env.host, env.port)
    client.set_timeout(10.0)
    world = client.get_world()
    assert {a.id for a in world.get_actors()} - before == set()
    assert world.get_settings().synchronous_mode == was_synchronous
