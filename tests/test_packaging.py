"""The declared dependency floors match what the code needs."""

import re
import subprocess
import sys
from pathlib import Path

import sb3_vlm
from sb3_vlm._compat import MIN_SB3_VERSION, _version_tuple

ROOT = Path(__file__).resolve().parents[1]


def test_sb3_floor_in_pyproject_is_the_version_the_code_needs() -> None:
    # GuidedSAC passes SAC(n_steps=...), first in stable-baselines3 2.7.0; pyproject once said >=2.3
    # read as text: tomllib is Python >= 3.11 only
    match = re.search(r'"stable-baselines3>=([\d.]+)"', (ROOT / "pyproject.toml").read_text())
    assert match is not None
    assert _version_tuple(match.group(1)) + (0,) * (3 - len(match.group(1).split("."))) == MIN_SB3_VERSION
    assert MIN_SB3_VERSION >= (2, 7, 0)


def test_version_parsing_handles_local_and_pre_release_tags() -> None:
    assert _version_tuple("2.10.1a0+cpu") == (2, 10, 1)
    assert _version_tuple("2.7.0") == (2, 7, 0)
    assert _version_tuple("3.0") == (3, 0)
    assert _version_tuple(sb3_vlm.__version__) == (0, 1, 0)


def test_an_older_sb3_fails_at_import_with_the_fix_named() -> None:
    code = "import stable_baselines3; stable_baselines3.__version__ = '2.3.2'; import sb3_vlm"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "needs stable-baselines3>=2.7.0, found 2.3.2" in proc.stderr


def test_examples_run_torch_on_one_thread() -> None:
    # on a loaded 2-core machine torch's default threads made 60 SAC gradient steps take 54 s instead of 0.5 s
    for example in sorted((ROOT / "examples").glob("*.py")):
        assert "th.set_num_threads(1)" in example.read_text(), example.name
