"""The README's `sb3-vlm` and RL Zoo sections work copy-pasted: each block marked ``<!-- readme-test: NAME -->``
runs as a bash script in an empty folder, with this interpreter's environment first on PATH."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_BLOCK = re.compile(r"<!-- readme-test: (\w+) -->\s*```bash\n(.*?)```", re.S)


def _blocks() -> dict[str, str]:
    return dict(_BLOCK.findall((ROOT / "README.md").read_text()))


def test_readme_has_the_tested_blocks() -> None:
    assert set(_blocks()) == {"cli", "zoo"}


@pytest.mark.parametrize("name", ["cli", "zoo"])
def test_readme_block_runs(name: str, tmp_path: Path) -> None:
    pytest.importorskip("rl_zoo3")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    script = "set -euo pipefail\n" + _blocks()[name]
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    if name == "cli":
        assert (tmp_path / "compare.png").stat().st_size > 10_000
        assert (tmp_path / "runs" / "guided_0" / "model.zip").exists() and "mean return" in done.stdout
    else:
        assert (tmp_path / "logs" / "guided_sac" / "Pendulum-v1_1" / "Pendulum-v1.zip").exists()
        assert "Mean reward" in done.stdout and any((tmp_path / "tb").rglob("events.out.tfevents*"))
