"""The README's blocks work copy-pasted: each block marked ``<!-- readme-test: NAME -->`` runs in an empty folder, a
bash block as a bash script with this interpreter's environment first on PATH, a Python block with this interpreter
(step counts shortened, nothing else changed)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_BLOCK = re.compile(r"<!-- readme-test: (\w+) -->\s*```(bash|python)\n(.*?)```", re.S)
#: what a Python block's test shortens (each must be in the block): step counts only
_SHORTER = {
    "script": {".learn(50_000,": ".learn(256,"},
    "sac": {"steps=20_000": "steps=100", ".learn(100_000)": ".learn(101)"},
    "envs": {"model.learn(1_000)": "model.learn(120)"},
}


def _blocks(language: str = "bash") -> dict[str, str]:
    return {name: code for name, lang, code in _BLOCK.findall((ROOT / "README.md").read_text()) if lang == language}


def test_readme_has_the_tested_blocks() -> None:
    assert set(_blocks()) == {"cli", "zoo"} and set(_blocks("python")) == set(_SHORTER)


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


@pytest.mark.parametrize("name", sorted(_SHORTER))
def test_readme_python_block_runs(name: str, tmp_path: Path) -> None:
    """Issue 16, item 5: the GuidedSAC block used an undefined ``state_env``, and its ``CnnPolicy`` model asked for
    SB3's 1M-transition buffer of 64×64×9 frames (34 GiB) and failed to allocate it."""
    code = _blocks("python")[name]
    for long, short in _SHORTER[name].items():
        assert long in code, f"the README's {name} block no longer has {long!r}: update _SHORTER"
        code = code.replace(long, short)
    (tmp_path / "block.py").write_text(code)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "block.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
