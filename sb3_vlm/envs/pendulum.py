"""
Pendulum for continuous-control guidance: a teacher view with the pendulum's state, a scripted swing-up advisor
(energy pumping + LQR), and pixel observations (``make_pixel_env``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from sb3_vlm.advice import Advice, AdviceRequest
from sb3_vlm.advisors.base import Advisor

# gymnasium's Pendulum-v1: θ'' = 3g/(2l) sin θ + 3/(m l²) u, θ = 0 upright, dt = 0.05, |u| ≤ 2
_G, _M, _L, _DT, _MAX_TORQUE = 10.0, 1.0, 1.0, 0.05, 2.0
_A_SIN = 3 * _G / (2 * _L)
_B_U = 3 / (_M * _L**2)


def _lqr_gain(q: tuple[float, float] = (10.0, 1.0), r: float = 0.1, iterations: int = 2000) -> np.ndarray:
    """Discrete-time LQR gain of the pendulum linearised upright (Euler step as gymnasium integrates it)."""
    a = np.array([[1.0, _DT], [_A_SIN * _DT, 1.0]])
    b = np.array([[0.0], [_B_U * _DT]])
    qm, rm = np.diag(q), np.array([[r]])
    p = qm.copy()
    for _ in range(iterations):  # Riccati iteration: 2x2, converges in well under the bound
        k = np.linalg.solve(rm + b.T @ p @ b, b.T @ p @ a)
        p = qm + a.T @ p @ (a - b @ k)
    return np.linalg.solve(rm + b.T @ p @ b, b.T @ p @ a).reshape(-1)


def swing_up_torque(theta: float, theta_dot: float, k_energy: float = 0.5, lqr_region: float = 0.5) -> float:
    """
    The classic swing-up controller: LQR once near upright (``cos θ > cos(lqr_region)``), energy pumping elsewhere.
    Energy ``E = ½θ̇² + 3g/(2l)(cos θ − 1)`` is 0 upright at rest; ``dE/dt = θ̇ · 3u/(ml²)``, so ``u ∝ θ̇ (0 − E)``.
    """
    theta = float(np.arctan2(np.sin(theta), np.cos(theta)))
    if np.cos(theta) > np.cos(lqr_region):
        u = -float(_LQR_K @ np.array([theta, theta_dot]))
    else:
        energy = 0.5 * theta_dot**2 + _A_SIN * (np.cos(theta) - 1.0)
        u = k_energy * theta_dot * (0.0 - energy)
        if abs(theta_dot) < 1e-3:  # at rest at the bottom: push to start swinging
            u = _MAX_TORQUE
    return float(np.clip(u, -_MAX_TORQUE, _MAX_TORQUE))


_LQR_K = _lqr_gain()


class PendulumTeacherView(gym.Wrapper):
    """
    What a teacher is shown about Pendulum: the angle and angular velocity as request context (like ERPv's speed and
    yaw), the same as ``state`` for scripted advisors, and the rendered frame when ``render_mode="rgb_array"``.
    The context makes the cache key exact (a frame alone does not show the velocity).

    :param env: a Pendulum env (``gym.make("Pendulum-v1")``)
    :param render_image: put the rendered frame in the request (needs ``render_mode="rgb_array"``)
    """

    def __init__(self, env: gym.Env, render_image: bool = False):
        super().__init__(env)
        if render_image and env.render_mode != "rgb_array":
            raise ValueError("render_image=True needs gym.make('Pendulum-v1', render_mode='rgb_array')")
        self.render_image = render_image

    def teacher_request(self) -> AdviceRequest:
        theta, theta_dot = (float(x) for x in self.env.unwrapped.state)  # type: ignore[attr-defined]
        theta = float(np.arctan2(np.sin(theta), np.cos(theta)))
        image = np.asarray(self.env.render()) if self.render_image else None
        return AdviceRequest(
            image=image,
            context={"theta": theta, "theta_dot": theta_dot},
            action_space=self.env.action_space,
            state=(theta, theta_dot),
        )


class PendulumSwingUpOracle(Advisor):
    """
    Scripted continuous-control expert for Pendulum: energy-pumping swing-up and an LQR balance controller, from
    the request's ``state`` (or ``context``) as :class:`PendulumTeacherView` provides it. Wrap it in
    :class:`~sb3_vlm.advisors.NoisyAdvisor` for a partially reliable advisor; :class:`~sb3_vlm.advisors.ConstantAdvisor`
    (zeros) is ERPv's "worst model".

    :param k_energy: gain of the energy pumping
    :param lqr_region: angle from upright (radians) inside which LQR balances
    """

    def __init__(self, k_energy: float = 0.5, lqr_region: float = 0.5):
        super().__init__()
        self.k_energy, self.lqr_region = k_energy, lqr_region

    @property
    def identity(self) -> str:
        return f"pendulum-swingup(k={self.k_energy},region={self.lqr_region})"

    def _advise(self, requests: Sequence[AdviceRequest]) -> list[Advice]:
        out = []
        for r in requests:
            if r.state is not None:
                theta, theta_dot = r.state
            elif "theta" in r.context and "theta_dot" in r.context:
                theta, theta_dot = r.context["theta"], r.context["theta_dot"]
            else:
                raise ValueError("PendulumSwingUpOracle needs the pendulum state: use PendulumTeacherView")
            u = swing_up_torque(float(theta), float(theta_dot), self.k_energy, self.lqr_region)
            out.append(Advice(action=np.array([u], dtype=np.float32), source=self.identity))
        return out


def make_pendulum_env(render_image: bool = False, **make_kwargs: Any) -> gym.Env:
    """``Pendulum-v1`` (state observations) wrapped in :class:`PendulumTeacherView`."""
    if render_image:
        make_kwargs.setdefault("render_mode", "rgb_array")
    return PendulumTeacherView(gym.make("Pendulum-v1", **make_kwargs), render_image=render_image)


class PixelObservation(gym.ObservationWrapper):
    """
    Replace the observation by the rendered frame, resized to ``size × size`` and stacked over the last ``frame_stack``
    frames along channels: ``(size, size, 3·frame_stack)`` uint8, what SB3's ``CnnPolicy`` expects.
    Its ``teacher_request()`` shows the teacher the newest full-size frame, plus whatever an inner teacher view adds
    (e.g. :class:`PendulumTeacherView`'s state context).

    :param env: an env made with ``render_mode="rgb_array"``
    :param size: side of the square frame (ERPv/COVR: 84 on DMControl and CarRacing)
    :param frame_stack: number of stacked frames (ERPv: 3)
    """

    def __init__(self, env: gym.Env, size: int = 64, frame_stack: int = 3):
        super().__init__(env)
        if env.render_mode != "rgb_array":
            raise ValueError("PixelObservation needs an env made with render_mode='rgb_array'")
        if size < 8 or frame_stack < 1:
            raise ValueError(f"Need size >= 8 and frame_stack >= 1, got {size}, {frame_stack}")
        self.size, self.frame_stack = size, frame_stack
        self.observation_space = spaces.Box(0, 255, (size, size, 3 * frame_stack), dtype=np.uint8)
        self._frames: deque[np.ndarray] = deque(maxlen=frame_stack)
        self._last_full: np.ndarray | None = None

    def _frame(self) -> np.ndarray:
        from PIL import Image

        full = np.asarray(self.env.render(), dtype=np.uint8)
        self._last_full = full
        return np.asarray(
            Image.fromarray(full).resize((self.size, self.size), Image.Resampling.BILINEAR), dtype=np.uint8
        )

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        _, info = self.env.reset(seed=seed, options=options)
        frame = self._frame()
        for _ in range(self.frame_stack):
            self._frames.append(frame)
        return self.observation(None), info

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        _, reward, terminated, truncated, info = self.env.step(action)
        self._frames.append(self._frame())
        return self.observation(None), reward, terminated, truncated, info

    def observation(self, observation: Any) -> np.ndarray:
        return np.concatenate(list(self._frames), axis=-1)

    def teacher_request(self) -> AdviceRequest:
        try:
            inner = self.env.get_wrapper_attr("teacher_request")
        except AttributeError:
            inner = None
        request = inner() if inner is not None else AdviceRequest(image=None, action_space=self.env.action_space)
        request.image = self._last_full
        return request


def make_pixel_env(env_id: str = "Pendulum-v1", size: int = 64, frame_stack: int = 3, **make_kwargs: Any) -> gym.Env:
    """
    A Gymnasium env observed through its rendered frames (:class:`PixelObservation`). For ``Pendulum-v1`` the teacher
    view also carries the state (:class:`PendulumTeacherView`), so :class:`PendulumSwingUpOracle` can advise on it.
    """
    env = gym.make(env_id, render_mode="rgb_array", **make_kwargs)
    if env_id.startswith("Pendulum"):
        env = PendulumTeacherView(env)
    return PixelObservation(env, size=size, frame_stack=frame_stack)
