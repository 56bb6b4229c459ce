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
    "nonblocking": {"model.learn(20_000)": "model.learn(2_048)"},
    "covr": {"psi0=2_500": "psi0=256", ".learn(30_000,": ".learn(2_048,"},
    "checkpoint": {
        ".learn(20_000,": ".learn(300,",
        "save_freq=5_000": "save_freq=100",
        "20_000 - model.num_timesteps": "400 - model.num_timesteps",
    },
}


def _blocks(language: str = "bash") -> dict[str, str]:
    return {name: code for name, lang, code in _BLOCK.findall((ROOT / "README.md").read_text()) if lang == language}


#: the README's code blocks that no test runs, by their first line, and why (every other block must be marked)
_NOT_RUN = {
    "make demo": "the set-up commands: `make test` is what CI runs; `make demo` takes ~6 min (CLI block: `demo`)",
    "env ──step──►": "a diagram, not code",
    "python benchmarks/suite.py --workers 2": "hours of benchmarks (`--quick`: tests/test_cli_and_benchmark.py)",
    "python benchmarks/paper_protocol.py": "GPU benchmarks (`--quick`: tests/test_cli_and_benchmark.py)",
    "python benchmarks/query_budget.py --envs": "hours of benchmarks (`--quick`: tests/test_cli_and_benchmark.py)",
    'pip install -e ".[fleet]"': "needs an OpenAI key (the Redis path: tests/test_cache_redis.py)",
}


def test_readme_has_the_tested_blocks() -> None:
    """Every code block of the README runs in a test below, or is listed in ``_NOT_RUN`` with the reason."""
    assert set(_blocks()) == {"cli", "zoo"} and set(_blocks("python")) == {*_SHORTER, "vlms"}
    marked = {code for code in {**_blocks(), **_blocks("python")}.values()}
    text = (ROOT / "README.md").read_text()
    unmarked = [code for code in re.findall(r"```\w*\n(.*?)```", text, re.S) if code not in marked]
    assert sorted(k for k in _NOT_RUN if any(code.startswith(k) for code in unmarked)) == sorted(_NOT_RUN)
    assert all(any(code.startswith(k) for k in _NOT_RUN) for code in unmarked), [c[:60] for c in unmarked]


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
    if name == "covr":  # the loop ran: at least one round fine-tuned the teacher
        rounds = re.search(r"(\d+) fine-tuning rounds", done.stdout)
        assert rounds is not None and int(rounds.group(1)) >= 1, done.stdout[-2000:]
    if name == "checkpoint":  # resumed from a saved checkpoint and trained on to the total
        assert (tmp_path / "ckpt" / "latest").exists()
    if name == "nonblocking":
        assert (tmp_path / "advice.sqlite").stat().st_size > 0


def test_readme_vlm_advisors_block_runs(tmp_path: Path) -> None:
    """The VLM advisors block as written: API keys from the environment (never called), and the local model from
    a hub cache that holds a tiny randomly initialised Qwen2-VL under the README's model id (no network)."""
    pytest.importorskip("transformers")
    pytest.importorskip("google.genai")
    from sb3_vlm.testing.tiny_vlm import build_tiny_qwen2vl

    repo = tmp_path / "hub" / "models--Qwen--Qwen2-VL-2B-Instruct"
    commit = "0" * 40
    build_tiny_qwen2vl(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    (tmp_path / "block.py").write_text(_blocks("python")["vlms"])
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT),
        "HF_HUB_CACHE": str(tmp_path / "hub"),
        "HF_HUB_OFFLINE": "1",
        "OPENAI_API_KEY": "sk-readme-test",
        "GEMINI_API_KEY": "readme-test",
    }
    done = subprocess.run(
        [sys.executable, "block.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
