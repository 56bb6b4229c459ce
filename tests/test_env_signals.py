"""Envs that render through pygame still stop on SIGTERM (issue 16, item 7): SDL must not install its own handler."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# renders once (gymnasium's Pendulum calls pygame.init(), which installs SDL's signal handlers unless told not to),
# then waits to be stopped
_CHILD = """
import sys, time
from pathlib import Path
from sb3_vlm.envs.pendulum import make_pixel_env
env = make_pixel_env("Pendulum-v1")
env.reset(seed=0)
env.step(env.action_space.sample())
Path(sys.argv[1]).write_text("rendered")
time.sleep(120)
"""


def test_pixel_pendulum_does_not_ignore_sigterm(tmp_path: Path) -> None:
    """``make_pixel_env("Pendulum-v1")`` runs ignored SIGTERM for minutes: pygame's SDL took the signal over."""
    ready = tmp_path / "ready"
    # the variable the package sets must come from the package, not be inherited from this test process
    env = {k: v for k, v in os.environ.items() if k != "SDL_NO_SIGNAL_HANDLERS"}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(ready)], cwd=ROOT, env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "the env did not render within 120 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pytest.fail("SIGTERM was ignored for 10 s after the env rendered")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        assert proc.stderr is not None
        proc.stderr.close()
    assert code == -signal.SIGTERM
