"""AdviceMetricsCallback's counters, the learning-curve readers, and the ``sb3-vlm`` train / eval / compare / cache /
envs commands as a new user runs them."""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import yaml
from stable_baselines3.common.logger import KVWriter, Logger
from stable_baselines3.common.vec_env import DummyVecEnv

from sb3_vlm import CallableAdvisor, GuidedPPO, GuidedSAC, VLMAdviceWrapper
from sb3_vlm.advice import Advice
from sb3_vlm.advisors.cache import AdviceCache, CachedAdvisor
from sb3_vlm.callbacks import ADVISOR_KEYS, AdviceMetricsCallback, advisor_counters
from sb3_vlm.checkpoint import latest_checkpoint, load_checkpoint
from sb3_vlm.cli import main
from sb3_vlm.envs.pendulum import PendulumSwingUpOracle, make_pendulum_env
from sb3_vlm.experiments.runs import default_label, group_runs, monitor_curve, run_algo, run_curve
from sb3_vlm.testing.loopback import LoopbackServer, Reply, chat_completion
from sb3_vlm.wrappers import VecVLMAdviceWrapper
from tests.helpers import ColourEnv

ROOT = Path(__file__).resolve().parents[1]


class _Tokens(CallableAdvisor):
    """A scripted advisor that also keeps the API counters (as PromptedAdvisor does)."""

    def __init__(self) -> None:
        super().__init__(lambda r: Advice(probs=np.array([0.5, 0.5], np.float32)), name="tokens")
        self.tokens, self.parse_failures, self.retries, self.http_errors = 0, 0, 0, {}
        self.tokens_in, self.tokens_out, self.cost_usd = 0, 0, 0.0

    def _advise(self, requests):  # type: ignore[no-untyped-def]
        self.tokens += 7 * len(requests)
        self.tokens_in += 5 * len(requests)
        self.tokens_out += 2 * len(requests)
        self.cost_usd += 0.25 * len(requests)
        self.http_errors["429"] = self.http_errors.get("429", 0) + 1
        return super()._advise(requests)


def test_metrics_count_a_shared_advisor_once_and_keep_existing_keys(tmp_path: Path) -> None:
    advisor = _Tokens()
    cached = CachedAdvisor(advisor, tmp_path / "c.sqlite")
    venv = DummyVecEnv([lambda: VLMAdviceWrapper(ColourEnv(), cached) for _ in range(2)])  # one advisor, two envs
    model = GuidedPPO("MlpPolicy", venv, n_steps=16, batch_size=32, n_epochs=1, seed=0)
    callback = AdviceMetricsCallback()
    model.learn(32, callback=callback)
    model.logger.record("advisor/tokens", -1.0)  # something else logged it in this interval: left alone
    callback.record()
    assert model.logger.name_to_value["advisor/tokens"] == -1.0
    assert model.logger.name_to_value["advisor/queries"] == advisor.stats.queries
    stats = advisor.stats
    values = callback.latest
    assert values["advisor/queries"] == stats.queries == 2  # black and white: the cache answers everything else
    assert values["advisor/cache_hits"] == stats.cache_hits and stats.cache_hits + stats.cache_misses >= 32
    assert values["advisor/cache_hit_rate"] == pytest.approx(stats.cache_hits / (stats.cache_hits + stats.cache_misses))
    assert values["advisor/tokens"] == 14 and values["advisor/http_errors"] == advisor.http_errors["429"]
    assert (values["advisor/tokens_in"], values["advisor/tokens_out"], values["advisor/cost_usd"]) == (10, 4, 0.5)
    assert values["advisor/mean_latency_s"] == pytest.approx(stats.total_latency / stats.queries)
    counters = advisor_counters(cached)
    assert counters["tokens"] == 14  # found through the cache wrapper


def test_metrics_from_a_vec_advice_wrapper_reach_the_logger() -> None:
    advisor = CallableAdvisor(lambda r: None, name="never")  # no advice: every answer invalid
    venv = VecVLMAdviceWrapper(DummyVecEnv([ColourEnv, ColourEnv]), advisor)
    model = GuidedPPO("MlpPolicy", venv, n_steps=8, batch_size=16, n_epochs=1, seed=0)
    callback = AdviceMetricsCallback()
    model.learn(16, callback=callback)
    assert callback.latest["advisor/invalid"] == advisor.stats.invalid == advisor.stats.queries == 2 * (8 + 1)
    # logged at the end of training: each env's first observation and the one after each of its 8 steps
    assert "advisor/invalid" in model.logger.name_to_value
    assert model.logger.name_to_value["advisor/invalid"] == 18


class _Rows(KVWriter):
    """A logger output that keeps every row it is given, with the advisor's true counter at that moment."""

    def __init__(self, advisor: CallableAdvisor) -> None:
        self.advisor = advisor
        self.rows: list[tuple[int, dict[str, float], int]] = []

    def write(self, key_values: dict, key_excluded: dict, step: int = 0) -> None:
        self.rows.append((step, dict(key_values), self.advisor.stats.queries))


def test_off_policy_counters_do_not_lag_a_logging_interval() -> None:
    """Issue 16, item 3: a key already recorded since the last dump was skipped, so each SAC dump showed
    advisor/queries from the first step of its interval (1, 161, 321 for 161, 321, 481), and the final value was never
    written."""
    advisor = CallableAdvisor(lambda r: np.zeros(1, np.float32), name="zero")
    env = VLMAdviceWrapper(gym.wrappers.TimeLimit(make_pendulum_env(), 10), advisor)
    model = GuidedSAC("MlpPolicy", env, learning_starts=1000, buffer_size=200, seed=0)  # no gradient steps: fast
    rows = _Rows(advisor)
    model.set_logger(Logger(folder=None, output_formats=[rows]))
    model.learn(60, callback=AdviceMetricsCallback(), log_interval=1)  # a dump after each 10-step episode
    dumps = [(values["advisor/queries"], true) for _, values, true in rows.rows if "advisor/queries" in values]
    assert len(dumps) == 7  # six episode ends and training's end
    for logged, true in dumps[:-1]:
        # refreshed after every rollout (one step): at most that step and the reset's query behind, not ten steps
        assert true - 2 <= logged <= true
    assert dumps[-1][0] == dumps[-1][1] == advisor.stats.queries == 61  # the final value, exactly
    assert [logged for logged, _ in dumps[:3]] == [10, 20, 30]  # the step before each episode's end (old: 1, 11, 21)
    step, values, _ = rows.rows[-1]
    assert step == 60 and set(values) <= set(ADVISOR_KEYS)  # the final row holds only the advisor's counters
    assert model.logger.name_to_value["advisor/queries"] == 61  # still recorded: a later dump writes it as usual


def test_corrupt_cache_rows_are_counted_and_reach_the_logger(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"

    def run(callback: AdviceMetricsCallback | None = None) -> tuple[GuidedPPO, CachedAdvisor]:
        cached = CachedAdvisor(_Tokens(), AdviceCache(path))
        venv = DummyVecEnv([lambda: VLMAdviceWrapper(ColourEnv(), cached) for _ in range(2)])
        model = GuidedPPO("MlpPolicy", venv, n_steps=16, batch_size=32, n_epochs=1, seed=0)
        return model.learn(32, callback=callback), cached

    run()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM advice").fetchone()[0] == 2  # one answer per colour
        conn.execute("UPDATE advice SET value = 'not json'")
    callback = AdviceMetricsCallback()
    model, cached = run(callback)  # used to crash at the first lookup
    callback.record()
    assert "advisor/cache_corrupt" in model.logger.name_to_value
    assert model.logger.name_to_value["advisor/cache_corrupt"] == 2 == cached.stats.cache_corrupt
    assert cached.stats.queries == 2  # each bad row asked again once, then served from its overwritten row


def test_monitor_curve_merges_envs_by_end_time(tmp_path: Path) -> None:
    header = '#{"t_start": 0.0, "env_id": "X"}\nr,l,t\n'
    (tmp_path / "0.monitor.csv").write_text(header + "1.0,10,0.5\n3.0,10,2.0\n")
    (tmp_path / "1.monitor.csv").write_text(header + "2.0,5,1.0\n")
    steps, values = monitor_curve(tmp_path, window=2)
    np.testing.assert_array_equal(steps, [10, 15, 25])  # episodes ordered by their end time across the two files
    np.testing.assert_allclose(values, [1.0, 1.5, 2.5])  # rolling mean over up to 2 episodes
    assert default_label("runs/guided_seed3") == "guided" and default_label("ppo_12") == "ppo"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no \*monitor.csv files and no TensorBoard scalar"):
        run_curve(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        run_curve(tmp_path / "missing")


def test_cli_train_eval_compare_and_cache(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    cache = tmp_path / "advice.sqlite"
    common = ["--steps", "1024", "--n-envs", "2", "--no-progress", "--hyperparams", "n_steps=64", "batch_size=64"]
    env = "MiniGrid-Empty-Random-6x6-v0"  # has an entry in the shipped guided_ppo.yml
    for seed in (0, 1):
        out = str(runs / f"guided_{seed}")
        assert main(["train", env, "--out", out, "--cache", str(cache), "--seed", str(seed), *common]) == 0
    assert main(["train", env, "--algo", "ppo", "--out", str(runs / "ppo_0"), "--tensorboard", *common]) == 0
    run = json.loads((runs / "guided_0" / "run.json").read_text())
    assert run["algo"] == "guided_ppo" and run["advisor"].startswith("minigrid-oracle")
    assert run["hyperparams"]["n_steps"] == 64 and "teacher_coef" not in run["hyperparams"]  # GuidedPPO's default λ
    assert run["advisor_counters"]["advisor/queries"] > 0

    assert main(["eval", str(runs / "guided_0"), "--episodes", "3", "--json", str(tmp_path / "e.json")]) == 0
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["episodes"] == 3 and len(result["returns"]) == 3 and result["env"] == env

    png = tmp_path / "cmp.png"
    assert (
        main(["compare", str(runs / "guided_0"), str(runs / "guided_1"), str(runs / "ppo_0"), "--out", str(png)]) == 0
    )
    assert png.stat().st_size > 15_000
    out = capsys.readouterr().out
    assert "guided: 2 run(s)" in out and "ppo: 1 run(s)" in out
    # a run with only TensorBoard logs is read from its event files
    for file in (runs / "ppo_0" / "monitor").iterdir():
        file.unlink()
    tb_png = tmp_path / "tb.png"
    assert main(["compare", str(runs / "ppo_0"), "--out", str(tb_png), "--labels", "ppo (tb)"]) == 0
    assert tb_png.stat().st_size > 10_000

    capsys.readouterr()
    assert main(["cache", "stats", str(cache)]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["entries"] > 0 and stats["valid_fraction"] == 1.0 and set(stats["by_source"]) == {"oracle"}
    assert main(["cache", "clear", str(cache)]) == 0
    assert main(["cache", "stats", str(cache)]) == 0
    assert json.loads(capsys.readouterr().out.split("\n", 1)[1])["entries"] == 0


def test_cache_stats_reads_only_and_refuses_what_is_not_a_cache(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 17, item 8: `sb3-vlm cache stats model.zip` renamed the model to .corrupt-* and left an empty database."""
    model = tmp_path / "model.zip"
    content = b"PK\x03\x04" + bytes(range(256)) * 40
    model.write_bytes(content)
    for action in ("stats", "clear"):
        assert main(["cache", action, str(model)]) == 1
        assert "not an advice cache" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["model.zip"] and model.read_bytes() == content

    cache = AdviceCache(tmp_path / "advice.sqlite")
    cache.put("k", Advice(probs=np.array([0.5, 0.5], np.float32), source="oracle"))
    cache.close()
    files = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.iterdir()}
    assert main(["cache", "stats", str(tmp_path / "advice.sqlite")]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["entries"] == 1 and stats["corrupt"] == 0 and stats["by_source"] == {"oracle": 1}
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.iterdir()} == files  # nothing written


def _fake_run(folder: Path, returns: list[float], algo: str | None = None, zoo_env: str | None = None) -> Path:
    """A run folder with one Monitor file; ``run.json`` names the algorithm (sb3-vlm train), or ``<env>/args.yml``
    does, written as RL Zoo writes it (an OrderedDict)."""
    folder.mkdir(parents=True)
    rows = "".join(f"{r},10,{i + 1}.0\n" for i, r in enumerate(returns))
    (folder / "0.monitor.csv").write_text('#{"t_start": 0.0, "env_id": "X"}\nr,l,t\n' + rows)
    if zoo_env is not None:
        (folder / zoo_env).mkdir()
        args = OrderedDict([("algo", algo), ("env", zoo_env), ("seed", 0)])
        (folder / zoo_env / "args.yml").write_text(yaml.dump(args))
    elif algo is not None:
        (folder / "run.json").write_text(json.dumps({"algo": algo}))
    return folder


def test_compare_never_averages_runs_of_different_algorithms(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 16, item 2: RL Zoo folders are named after the env (logs/ppo/<env>_2, logs/guided_ppo/<env>_1), so the
    label came from the env and PPO and GuidedPPO were averaged into one band."""
    env = "MiniGrid-Empty-5x5-v0"
    ppo = [_fake_run(tmp_path / "logs" / "ppo" / f"{env}_{i}", [0.1 * i], "ppo", env) for i in (1, 2)]
    guided = _fake_run(tmp_path / "logs" / "guided_ppo" / f"{env}_1", [0.9], "guided_ppo", env)
    assert run_algo(ppo[0]) == "ppo" and run_algo(guided) == "guided_ppo"
    assert {default_label(r) for r in ppo} == {f"ppo/{env}"} and default_label(guided) == f"guided_ppo/{env}"
    assert group_runs([*ppo, guided]) == {f"ppo/{env}": ppo, f"guided_ppo/{env}": [guided]}
    # sb3-vlm train folders whose names differ only by a seed: split by their run.json's algorithm
    a0, a1 = _fake_run(tmp_path / "runs" / "a_0", [1.0], "ppo"), _fake_run(tmp_path / "runs" / "a_1", [2.0], "sac")
    assert group_runs([a0, a1]) == {"a (ppo)": [a0], "a (sac)": [a1]}
    plain = _fake_run(tmp_path / "runs" / "a_2", [3.0])  # no run.json: its algorithm is unknown, merges with any
    assert run_algo(plain) is None and group_runs([a0, plain]) == {"a": [a0, plain]}

    png = tmp_path / "cmp.png"
    assert main(["compare", *map(str, ppo), str(guided), "--out", str(png)]) == 0
    out = capsys.readouterr().out
    assert f"ppo/{env}: 2 run(s) of ppo, final 0.150" in out and f"guided_ppo/{env}: 1 run(s) of guided_ppo" in out
    with pytest.raises(SystemExit, match=r"would average runs of different algorithms \(guided_ppo, ppo\)"):
        main(["compare", str(ppo[0]), str(guided), "--out", str(png), "--labels", "same", "same"])


@pytest.mark.parametrize("command", ["train", "eval", "compare", "cache", "advise", "demo", "envs"])
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "usage: sb3-vlm" in text and len(text) > 150


def test_long_advisor_batches_get_a_progress_bar() -> None:
    from tqdm.auto import tqdm

    advisor = CallableAdvisor(lambda r: None)
    advisor.progress_threshold = 3
    items = [1, 2, 3]
    assert isinstance(advisor._progress(items, 3, n_requests=3), tqdm)
    assert advisor._progress(items, 3, n_requests=2) is items  # short batches stay quiet
    advisor.progress_threshold = None
    assert advisor._progress(items, 3, n_requests=1000) is items


# ------------------------------------------------------------------------------------ `sb3-vlm train` with a real VLM
#: a small guided_ppo run: 2 rollouts of 32 steps, each step's view asked about
TINY = ["MiniGrid-Empty-5x5-v0", "--steps", "64", "--n-envs", "1", "--no-progress"]
TINY_PPO = ["--hyperparams", "n_steps=32", "batch_size=32", "n_epochs=1"]
#: first-token log-probabilities: one HTTP request per query (no written-probability fallback), 11 tokens each
TOP = [("forward", math.log(0.6)), ("left", math.log(0.2)), ("right", math.log(0.2))]


@contextmanager
def _vlm(delay: float = 0.0) -> Iterator[LoopbackServer]:
    """A loopback OpenAI-compatible VLM that answers "forward" after ``delay`` seconds."""
    with LoopbackServer([Reply(body=chat_completion("forward", top_logprobs=TOP), delay=delay)]) as server:
        yield server


def _no_openai_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "MY_VLM_KEY"):
        monkeypatch.delenv(name, raising=False)


def test_train_records_the_real_endpoint_and_never_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 16, item 8: `train` had no --base-url; with OPENAI_BASE_URL the run trained on that server, but run.json
    and the cache identity said api.openai.com."""
    _no_openai_env(monkeypatch)
    with _vlm() as server:
        url = f"{server.url}/v1"
        monkeypatch.setenv("OPENAI_BASE_URL", url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-from-env")
        cache = tmp_path / "advice.sqlite"
        out = tmp_path / "from_env"
        assert (
            main(
                ["train", *TINY, "--advisor", "openai:test-model", "--cache", str(cache), "--out", str(out), *TINY_PPO]
            )
            == 0
        )
        run = json.loads((out / "run.json").read_text())
        assert run["advisor_endpoint"] == url and run["advisor"].startswith(f"openai:{url}:test-model")
        assert run["api_key_env"] == "OPENAI_API_KEY" and run["cache"] == str(cache)
        sources = AdviceCache(cache, read_only=True).summary()["by_source"]
        assert sources and all(source.startswith(f"openai:{url}:") for source in sources)  # the cache identity

        # --base-url and --api-key-env: another variable holds the key, the server sees it, no file holds it
        monkeypatch.delenv("OPENAI_BASE_URL")
        monkeypatch.delenv("OPENAI_API_KEY")
        monkeypatch.setenv("MY_VLM_KEY", "sk-secret-other")
        out = tmp_path / "from_flags"
        flags = ["--base-url", url, "--api-key-env", "MY_VLM_KEY", "--advice-wait", "5", "--checkpoint-every", "32"]
        assert main(["train", *TINY, "--advisor", "openai:test-model", *flags, "--out", str(out), *TINY_PPO]) == 0
        assert server.headers[-1]["authorization"] == "Bearer sk-secret-other"
    run = json.loads((out / "run.json").read_text())
    assert run["advisor_endpoint"] == url and run["api_key_env"] == "MY_VLM_KEY" and url in run["advisor"]
    assert run["advice_wait"] == 5.0 == run["advice_wait_s"] and run["checkpoint_every"] == 32
    assert json.loads((latest_checkpoint(out / "checkpoints") / "state.json").read_text())["num_timesteps"] == 64
    for path in [*tmp_path.rglob("*")]:
        if path.is_file():
            text = path.read_bytes()
            assert b"sk-secret" not in text and b"api.openai.com" not in text, path


def test_train_waits_for_a_slow_vlm_by_its_latency_and_flushes_before_counting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 16, item 11: with advice_wait=0 a slow VLM left most rows of a rollout unadvised, and run.json's counters
    were read while requests were still pending."""
    _no_openai_env(monkeypatch)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with _vlm(delay=0.2) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", f"{server.url}/v1")
        out = tmp_path / "auto"
        assert main(["train", *TINY, "--advisor", "openai:test-model", "--out", str(out), *TINY_PPO]) == 0
        asked = len(server.requests)
    run = json.loads((out / "run.json").read_text())
    counters = run["advisor_counters"]
    # every request the server answered is counted: nothing was pending when the counters were read
    assert counters["advisor/queries"] == asked == 64 + 1 and counters["advisor/tokens"] == 11 * asked
    assert counters["advisor/pending"] == 0 == run["advice_pending_at_end"]
    # the wait was picked from the measured latency (~0.2 s a request, 8 in flight): every row got its advice
    assert run["advice_wait"] == "auto" and run["advice_rows"] == 64 and run["advice_rows_missed"] == 0
    assert run["advisor_mean_latency_s"] >= 0.2 and 0.2 < run["advice_wait_s"] < 30

    with _vlm(delay=0.2) as server:  # no waiting: the rows miss their answers, and one line says what to set
        monkeypatch.setenv("OPENAI_BASE_URL", f"{server.url}/v1")
        out = tmp_path / "no_wait"
        capsys.readouterr()
        with pytest.warns(UserWarning, match="got no advice"):
            code = main(
                ["train", *TINY, "--advisor", "openai:test-model", "--advice-wait", "0", "--out", str(out), *TINY_PPO]
            )
        assert code == 0
        asked = len(server.requests)
    run = json.loads((out / "run.json").read_text())
    assert run["advice_rows_missed"] > 32 and run["advisor_counters"]["advisor/queries"] == asked == 65
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("advice:")]
    assert len(lines) == 1 and "rollout rows missed their answer" in lines[0] and "--advice-wait" in lines[0]


@pytest.mark.parametrize(
    "args, message",
    [
        (["MiniGrid-Empty-5x5-v0", "--advisor", "openai:gpt-4o-mini"], "No API key"),
        (["MiniGrid-Empty-5x5-v0", "--advisor", "llava:7b"], "Unknown advisor kind 'llava'"),
        (["NoSuchEnv-v9"], "Unknown environment 'NoSuchEnv-v9'"),
        (["CartPole-v1", "--advisor", "constant:0"], "CartPole-v1 has no teacher view"),
        (["MiniGrid-Empty-5x5-v0", "--hyperparams", "no_such_argument=1"], "argument 'no_such_argument'"),
    ],
    ids=["missing key", "unknown advisor", "unknown env", "state env without a teacher view", "bad hyperparameter"],
)
def test_train_startup_errors_print_one_line_exit_2_and_create_nothing(
    args: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 16, item 10: start-up errors arrived inside ~22-line tracebacks and left an empty run folder."""
    _no_openai_env(monkeypatch)
    out, cache = tmp_path / "runs" / "r", tmp_path / "advice.sqlite"
    assert main(["train", *args, "--steps", "64", "--no-progress", "--out", str(out), "--cache", str(cache)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sb3-vlm train: ") and message in lines[0], captured.err
    assert list(tmp_path.iterdir()) == []  # no run folder, no monitor files, no cache


def _train_process(out: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "sb3_vlm", "train", "MiniGrid-Empty-5x5-v0", "--out", str(out), *args]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_during_train_saves_the_run_and_resume_goes_on(sig: signal.Signals, tmp_path: Path) -> None:
    """Issue 16, item 9: Ctrl-C during `sb3-vlm train` printed a 43-line traceback and lost the run (no model.zip,
    no run.json)."""
    out = tmp_path / "run"
    proc = _train_process(out, "--steps", "1000000", "--n-envs", "2", "--no-progress", *TINY_PPO)
    try:
        deadline = time.monotonic() + 120
        monitor = out / "monitor" / "0.monitor.csv"
        while not (monitor.exists() and len(monitor.read_text().splitlines()) > 3):  # training is under way
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "training did not start within 120 s"
            time.sleep(0.1)
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + sig, stderr[-3000:]
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr[-3000:]
    assert f"go on with: sb3-vlm train --resume {out}" in stdout
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "interrupted" and run["interrupted_by"] == sig.name and (out / "model.zip").is_file()
    checkpoint = latest_checkpoint(out / "checkpoints")
    saved = json.loads((checkpoint / "state.json").read_text())["num_timesteps"]
    assert 0 < saved <= run["num_timesteps"] < 1_000_000

    total = saved + 128
    assert main(["train", "--resume", str(out), "--steps", str(total), "--no-progress"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "done" and run["num_timesteps"] >= total and run["resumed_from"] == str(checkpoint)
    assert [s["status"] for s in run["sessions"]] == ["interrupted", "done"] and run["sessions"][1][
        "steps_from"
    ] == saved
    assert sorted(p.name for p in (out / "monitor").iterdir())[-1] == "3.monitor.csv"  # new files for the new envs
    assert main(["train", "--resume", str(out), "--steps", "64"]) == 2  # nothing left to do: one line, exit 2


def test_resumed_sac_run_keeps_its_replay_buffer(tmp_path: Path) -> None:
    """Issue 16, item 9: `--resume` goes on with the checkpoint's replay buffer (and its advice), not an empty one."""
    from sb3_vlm.sac import GuidedSAC

    out = tmp_path / "sac"
    small = ["learning_starts=50", "batch_size=16", "buffer_size=1000", "policy_kwargs={net_arch: [16]}"]
    common = ["--algo", "guided_sac", "--no-progress", "--hyperparams", *small]
    assert (
        main(["train", "Pendulum-v1", "--steps", "150", "--checkpoint-every", "100", "--out", str(out), *common]) == 0
    )
    assert main(["train", "--resume", str(out), "--steps", "250", "--no-progress"]) == 0
    env = VecVLMAdviceWrapper(DummyVecEnv([make_pendulum_env]), PendulumSwingUpOracle(), query_every=5)
    model = load_checkpoint(out / "checkpoints", GuidedSAC, env)
    assert model.num_timesteps == 250 and model.replay_buffer.pos == 250  # 150 before the resume, 100 after
    # the oracle's advice on every 5th step of an episode (the shipped Pendulum setting): 30 in steps 0-149, 20 after
    # the resume (a new episode from step 150)
    assert model.replay_buffer.advice_valid[:250, 0].sum() == 30 + 20
