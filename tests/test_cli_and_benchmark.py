from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from sb3_vlm.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_demo_writes_table_png_and_json(tmp_path: Path, capsys) -> None:
    assert main(["demo", "--steps", "2048", "--no-progress", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "GuidedPPO" in out and "cache hits" in out
    png = tmp_path / "demo_learning_curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    results = json.loads((tmp_path / "demo_results.json").read_text())
    assert [r["guided"] for r in results] == [False, True]
    guided = results[1]
    # every step of the guided run got advice, from the advisor or from the cache
    assert guided["advisor_queries"] > 0 and guided["cache_hits"] > 0
    assert guided["advisor_queries"] == guided["distinct_views"]  # the cache never asks twice for one view


def _run_benchmark(name: str, *args: str, out: Path) -> None:
    """A benchmark script in a subprocess, as a user runs it from the repository root."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), *args, "--out", str(out)]
    subprocess.run(cmd, check=True, timeout=600, cwd=ROOT)


def test_benchmark_quick_smoke(tmp_path: Path) -> None:
    _run_benchmark("minigrid_distill", "--quick", "--steps", "1024", out=tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    labels = {(r["algo"], r["label"]) for r in summary["rows"]}
    assert ("ppo", "unguided") in labels and ("a2c", "guided r=0.8") in labels
    assert (tmp_path / "LavaGap.png").stat().st_size > 10_000
    runs = json.loads((tmp_path / "LavaGap.json").read_text())
    assert len(runs) == 6 and all(r["curve_steps"] for r in runs)


def test_sac_benchmarks_quick_smoke(tmp_path: Path) -> None:
    _run_benchmark("sac_guidance", "--quick", out=tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert {(r["method"], r["advisor"]) for r in summary["rows"]} == {
        ("sac", "-"),
        ("erpv", "oracle"),
        ("varl", "oracle"),
    }
    erpv = next(r for r in summary["rows"] if r["method"] == "erpv")
    assert erpv["critic_steps"] == 300 and "final_within_10pct_of_sac" in erpv
    assert (tmp_path / "pendulum.png").stat().st_size > 10_000
    runs = json.loads((tmp_path / "runs.json").read_text())
    assert len(runs) == 3 and all(len(r["curve_steps"]) == 2 for r in runs)

    _run_benchmark("sac_update_cost", "--quick", out=tmp_path)
    cost = json.loads((tmp_path / "update_cost.json").read_text())["results"]["mlp"]
    assert {"sac (SB3)", "guided erpv", "guided varl"} <= set(cost) and all(v > 0 for v in cost.values())


def test_advisor_throughput_quick_smoke(tmp_path: Path) -> None:
    _run_benchmark("advisor_throughput", "--quick", out=tmp_path)
    result = json.loads((tmp_path / "throughput.json").read_text())
    assert set(result["api"]) == {"1", "8"} and all(v["requests_per_s"] > 0 for v in result["api"].values())
    assert set(result["hf"]) == {"label scoring", "generation"}


def test_covr_loop_quick_smoke(tmp_path: Path) -> None:
    _run_benchmark("covr_loop", "--quick", out=tmp_path)
    rows = {r["variant"]: r for r in json.loads((tmp_path / "summary.json").read_text())["rows"]}
    assert set(rows) == {"unguided", "poor", "covr"}
    covr = rows["covr"]
    assert len(covr["accuracy_by_round"]) >= 3  # before + at least two rounds in 3k steps with ψ0 = 1000
    assert rows["poor"]["accuracy_after"] is not None and rows["unguided"]["accuracy_after"] is None
    for png in ("learning.png", "accuracy.png"):
        assert (tmp_path / png).stat().st_size > 10_000
