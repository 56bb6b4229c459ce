from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sb3_vlm.cli import main
from tests.helpers import require_gl

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


def test_suite_quick_smoke(tmp_path: Path) -> None:
    """The README's suite commands end to end (one env, PPO): runs, resumes from its log, summary, plot, table."""
    args = ("--quick", "--envs", "LavaGapS7", "--algos", "ppo", "--workers", "1")
    _run_benchmark("suite", *args, out=tmp_path)
    runs = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert sorted(r["advisor"] for r in runs) == ["adversarial", "none"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [(r["algo"], r["env"], r["advisor"]) for r in summary] == [("ppo", "LavaGapS7", "adversarial")]
    assert (tmp_path / "LavaGapS7.png").stat().st_size > 10_000
    assert "| ppo | LavaGapS7 | adversarial |" in (tmp_path / "table.md").read_text()
    _run_benchmark("suite", *args, out=tmp_path)  # resumes: nothing is run again
    assert len((tmp_path / "runs.jsonl").read_text().splitlines()) == 2


def test_query_budget_quick_smoke(tmp_path: Path) -> None:
    _run_benchmark("query_budget", "--quick", "--envs", "LavaGapS7", out=tmp_path)
    records = {r["policy"]: r for r in json.loads((tmp_path / "summary.json").read_text())}
    assert set(records) == {"every", "uncertainty:0.5+paced:20"}
    every, paced = records["every"], records["uncertainty:0.5+paced:20"]
    assert 0 < paced["queries"][0] <= 20 < every["queries"][0]  # the paced budget held; every distinct view is more
    assert paced["query_ratio"] == pytest.approx(every["queries"][0] / paced["queries"][0])
    assert (tmp_path / "query_budget.png").stat().st_size > 5_000


def test_cache_backends_quick_smoke(tmp_path: Path) -> None:
    import os
    import shutil

    if shutil.which("redis-server") is None and not os.environ.get("SB3_VLM_REQUIRE_REDIS"):
        pytest.skip("redis-server is not installed")
    _run_benchmark("cache_backends", "--quick", out=tmp_path)
    median = json.loads((tmp_path / "cache_backends.json").read_text())["median"]
    assert set(median) == {"sqlite", "redis"} and all(m["hit_us"] > 0 for m in median.values())


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


def test_async_advice_quick_smoke(tmp_path: Path) -> None:
    _run_benchmark("async_advice", "--quick", out=tmp_path)
    result = json.loads((tmp_path / "async_advice.json").read_text())
    modes = {(r["algo"], r["mode"]) for r in result["rows"]}
    assert modes == {(a, m) for a in ("GuidedSAC", "GuidedPPO") for m in ("instant", "non-blocking")}
    for row in result["rows"]:
        assert row["wall_s"] > 0 and 0 < row["advised_rows"] <= row["rows"]
    slow = [r for r in result["rows"] if r["mode"] == "non-blocking"]
    assert all(r["queries"] > 0 for r in slow)  # the loopback VLM was really asked
    assert (tmp_path / "async_advice.png").stat().st_size > 5_000


def test_covr_loop_quick_smoke(tmp_path: Path) -> None:
    _run_benchmark("covr_loop", "--quick", out=tmp_path)
    rows = {r["variant"]: r for r in json.loads((tmp_path / "summary.json").read_text())["rows"]}
    assert set(rows) == {"unguided", "poor", "covr"}
    covr = rows["covr"]
    assert len(covr["accuracy_by_round"]) >= 3  # before + at least two rounds in 3k steps with ψ0 = 1000
    assert rows["poor"]["accuracy_after"] is not None and rows["unguided"]["accuracy_after"] is None
    for png in ("learning.png", "accuracy.png"):
        assert (tmp_path / png).stat().st_size > 10_000


def _factory_params(name: str) -> set[str]:
    """Keyword arguments the env factory behind a suite name accepts (CARLA's factory passes the rest to CarlaEnv)."""
    import importlib
    import inspect

    from sb3_vlm.envs.registry import _entry

    entry = _entry(name)
    module = importlib.import_module(f"sb3_vlm.envs.{entry.module}")
    params = set(inspect.signature(getattr(module, entry.factory)).parameters)
    if entry.module == "carla":
        params |= set(inspect.signature(module.CarlaEnv).parameters)
    return params


def test_paper_protocol_configs_are_valid() -> None:
    """Every shipped config names suite envs, constructor arguments the algorithm takes, and fine-tuning settings
    the callback takes (the full runs need a GPU and are not run here)."""
    import inspect

    from sb3_vlm.envs import names
    from sb3_vlm.experiments.protocol import finetune_kwargs, load_config
    from sb3_vlm.experiments.runs import algo_class as _algo_class
    from sb3_vlm.finetune import LoraSettings, VLMFineTuneCallback

    configs = sorted((ROOT / "benchmarks" / "configs").glob("*.yml"))
    assert len(configs) >= 6
    callback_params = set(inspect.signature(VLMFineTuneCallback).parameters)
    for path in configs:
        for quick in (False, True):
            config = load_config(path, quick=quick)
            assert set(config["envs"]) <= set(names()), path
            params = set(inspect.signature(_algo_class(config["algo"])).parameters)
            for env in config["envs"]:
                env_kwargs = {
                    **config.get("env_kwargs", {}),
                    **config.get("per_env", {}).get(env, {}).get("env_kwargs", {}),
                }
                assert set(env_kwargs) <= _factory_params(env), (path, env, env_kwargs)
                kwargs = {
                    **config.get("algo_kwargs", {}),
                    **config.get("per_env", {}).get(env, {}).get("algo_kwargs", {}),
                }
                assert set(kwargs) <= params, (path, set(kwargs) - params)
            if config.get("finetune"):
                kwargs = finetune_kwargs(config["finetune"])
                assert set(kwargs) <= callback_params and isinstance(kwargs.get("lora"), LoraSettings)
        full = load_config(path)
        assert full["total_timesteps"] == 100_000 and full["seeds"] == [0, 1, 2]
        assert full["eval_episodes"] in (10, 20)  # COVR reports 10 evaluation episodes, ERPv and LVLM2P 20


def test_paper_protocol_quick_smoke(tmp_path: Path) -> None:
    require_gl()
    for name in ("lvlm2p_minigrid", "erpv_dmc", "erpv_carracing"):
        cmd = [sys.executable, str(ROOT / "benchmarks" / "paper_protocol.py"), f"benchmarks/configs/{name}.yml"]
        subprocess.run([*cmd, "--quick", "--out", str(tmp_path / name)], check=True, timeout=600, cwd=ROOT)
        rows = [json.loads(line) for line in (tmp_path / name / "runs.jsonl").read_text().splitlines()]
        assert len(rows) == 1 and rows[0]["curve_steps"] and np.isfinite(rows[0]["final_mean"])
        assert rows[0]["advisor_stats"]["queries"] > 0  # the advisor was asked during training
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        env = summary["rows"][0]["env"]
        assert (tmp_path / name / f"{env}.png").stat().st_size > 5_000


def test_dmc_render_speed_quick_smoke(tmp_path: Path) -> None:
    require_gl()
    _run_benchmark("dmc_render_speed", "--quick", out=tmp_path)
    result = json.loads((tmp_path / "render_speed.json").read_text())
    row = result["results"]["cartpole-swingup"]
    assert row["tuned_fps"] > row["default_fps"] > 0  # the tuned wrapper renders faster than dm_control's default
    assert (tmp_path / "render_speed.png").stat().st_size > 5_000


def test_cache_queries_quick_smoke(tmp_path: Path) -> None:
    _run_benchmark("cache_queries", "--quick", out=tmp_path)
    rows = json.loads((tmp_path / "cache_queries.json").read_text())["rows"]
    assert {r["mode"] for r in rows} == {"VecVLMAdviceWrapper", "per-env wrappers"}
    for r in rows:
        assert r["queries"] == r["distinct_views"] < r["requests"] and r["repeated_queries"] == 0
    assert (tmp_path / "cache_queries.png").stat().st_size > 5_000


def test_pixels_quick_smoke(tmp_path: Path) -> None:
    """The pixel benchmark end to end on pixel Pendulum: SB3's CnnPolicy, the DrQ pixel SAC with and without a
    teacher, resumable, the suite's record shape with env steps/s."""
    _run_benchmark("pixels", "--quick", out=tmp_path)
    runs = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert sorted((r["algo"], r["advisor"], r["policy"]) for r in runs) == [
        ("sac", "adversarial", "DrQPolicy"),
        ("sac", "none", "DrQPolicy"),
        ("sac_cnn", "none", "CnnPolicy"),
    ]
    assert all(r["curve_steps"] and np.isfinite(r["eval_return"]) for r in runs)
    (record,) = json.loads((tmp_path / "summary.json").read_text())
    assert (record["algo"], record["env"], record["advisor"]) == ("sac", "PixelPendulum", "adversarial")
    assert record["env_steps_per_s"][0] > 0 and len(record["unguided_final_return"]) == 1
    assert (tmp_path / "PixelPendulum.png").stat().st_size > 10_000
    _run_benchmark("pixels", "--quick", out=tmp_path)  # resumes: nothing is run again
    assert len((tmp_path / "runs.jsonl").read_text().splitlines()) == 3


def test_pixel_update_speed_quick_smoke(tmp_path: Path) -> None:
    out = tmp_path / "speed.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "pixel_update_speed.py"), "--quick", "--out", str(out)]
    subprocess.run(cmd, check=True, timeout=600, cwd=ROOT)
    result = json.loads(out.read_text())
    assert set(result["seconds_per_update"]) == {"sb3_cnn", "guided_cnn", "drq_shift"}
    assert all(s > 0 for s in result["seconds_per_update"].values())
    assert result["speedup_vs_sb3_cnn"]["sb3_cnn"] == 1.0
    assert result["parameters"]["drq_shift"] < result["parameters"]["sb3_cnn"]


def test_readme_blocks_are_replaced_between_their_markers_and_missing_markers_fail(tmp_path: Path) -> None:
    from sb3_vlm.experiments.runner import write_readme_block

    readme = tmp_path / "README.md"
    readme.write_text(
        "intro\n<!-- t:start -->\nold \\1 table\n<!-- t:end -->\nafter\n<!-- u:start -->\nkeep\n<!-- u:end -->\n"
    )
    write_readme_block(readme, "t", "| new | \\1 |")  # backslashes in a table are text, not regex groups
    assert (
        readme.read_text()
        == "intro\n<!-- t:start -->\n| new | \\1 |\n<!-- t:end -->\nafter\n<!-- u:start -->\nkeep\n<!-- u:end -->\n"
    )
    with pytest.raises(SystemExit, match="no <!-- v:start -->"):
        write_readme_block(readme, "v", "x")
