from __future__ import annotations

import contextlib

import pytest
import torch as th

from sb3_vlm.envs.dmc import select_mujoco_gl

# before any test module imports shimmy / gymnasium.envs.mujoco, which import PyOpenGL and fix its platform;
# without a backend the DMControl tests skip or fail themselves (tests.helpers.require_gl)
with contextlib.suppress(RuntimeError):
    select_mujoco_gl()


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    th.set_num_threads(1)


@pytest.fixture(autouse=True)
def _fresh_logprobs_support() -> None:
    """Each test finds out afresh whether its (loopback) backend gives log-probabilities: what an advisor identity
    showed is remembered per process, and a port can be reused by a later test's server."""
    from sb3_vlm.advisors.prompted import forget_logprobs_support

    forget_logprobs_support()
