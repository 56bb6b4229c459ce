"""The Redis-backed advice cache (issue 21) against a real redis-server started on 127.0.0.1 by the test."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from gymnasium import spaces

from sb3_vlm.advice import Advice, AdviceRequest
from sb3_vlm.advisors import AdviceCache, CachedAdvisor, CallableAdvisor
from sb3_vlm.testing.redis_server import RedisServer

redis = pytest.importorskip("redis") if not os.environ.get("SB3_VLM_REQUIRE_REDIS") else __import__("redis")


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[RedisServer]:
    try:
        srv = RedisServer(tmp_path)
    except FileNotFoundError:
        if os.environ.get("SB3_VLM_REQUIRE_REDIS"):
            raise  # CI installs the Debian package
        pytest.skip("redis-server is not installed")
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


GRID = spaces.Discrete(3)


def _request(i: int) -> AdviceRequest:
    return AdviceRequest(image=np.full((4, 4, 3), i, np.uint8), context={"mission": "m"}, action_space=GRID)


def _counting() -> CallableAdvisor:
    def answer(request: AdviceRequest) -> np.ndarray:
        i = int(request.image[0, 0, 0]) % 3
        return np.eye(3, dtype=np.float32)[i] * 0.8 + 0.2 / 3

    return CallableAdvisor(answer, name="counting")


def test_a_redis_url_gives_a_server_cache_with_the_same_keys_answers_and_counts_as_a_file(server, tmp_path) -> None:
    from sb3_vlm.advisors.cache_redis import RedisRows

    remote, local = AdviceCache(server.url), AdviceCache(tmp_path / "c.sqlite")
    assert isinstance(remote._server, RedisRows) and local._server is None and remote.claims and not local.claims
    on_server, on_file = CachedAdvisor(_counting(), remote), CachedAdvisor(_counting(), local)
    requests = [_request(i) for i in (0, 1, 2, 1, 0)]
    for advisor in (on_server, on_file):
        first = advisor.advise(requests)
        again = advisor.advise(requests)
        assert [a.probs.tolist() for a in first] == [a.probs.tolist() for a in again]
        assert advisor.stats.queries == 3 and advisor.stats.cache_hits == 5  # repeats in one batch are asked once
    assert sorted(k for k, *_ in remote._row_all()) == sorted(k for k, *_ in local._row_all())  # the same keys
    assert len(remote) == 3 and remote.summary()["entries"] == 3
    # another process (a fresh object, nothing in memory) reads what this one wrote
    other = CachedAdvisor(_counting(), pickle.loads(pickle.dumps(AdviceCache(server.url))))
    assert all(a.valid for a in other.advise(requests[:3])) and other.stats.queries == 0


def test_a_tampered_row_is_a_counted_miss_and_the_size_cap_evicts_the_oldest(server) -> None:
    cache = AdviceCache(server.url, max_entries=2, memory_entries=0)
    for i in range(3):
        cache.put(f"k{i}", Advice(probs=np.array([0.5, 0.25, 0.25], np.float32), source=f"s{i}"))
        time.sleep(0.01)
    assert len(cache) == 2 and cache.get("k0") is None and cache.get("k2") is not None and cache.evicted == 1
    client = redis.Redis.from_url(server.url)
    client.hset("sb3vlm:advice:k2", "value", client.hget("sb3vlm:advice:k2", "value").replace(b"0.5", b"0.9"))
    advice, corrupt = cache.read("k2", GRID)
    assert advice is None and corrupt and cache.corrupt == 1
    cache.clear()
    assert len(cache) == 0 and not client.keys("sb3vlm:advice:*")


def test_training_goes_on_while_the_server_is_down_and_the_cache_serves_again_when_it_is_back(server) -> None:
    advisor = _counting()
    cache = AdviceCache(server.url, timeout=0.5, memory_entries=0)
    cache._server.retry_after = 0.0  # type: ignore[union-attr]  # try the server again at once
    cached = CachedAdvisor(advisor, cache)
    assert cached.advise([_request(0)])[0].valid and advisor.stats.queries == 1
    server.stop()
    down = cached.advise([_request(0), _request(1)])  # misses: the advisor answers, nothing is stored
    assert all(a.valid for a in down) and advisor.stats.queries == 3
    assert cached.cache.unavailable >= 2
    server.start()  # a fresh server: empty
    assert cached.advise([_request(0)])[0].valid and advisor.stats.queries == 4
    assert cached.advise([_request(0)])[0].valid and advisor.stats.queries == 4  # stored again, then a hit


def test_the_url_password_is_never_shown(server, tmp_path) -> None:
    from sb3_vlm.advisors.cache_redis import redact_url

    assert redact_url("redis://:s3cret@db.example:6379/1") == "redis://:***@db.example:6379/1"
    assert redact_url("redis://user:s3cret@db/0") == "redis://user:***@db/0"
    cache = AdviceCache(server.url.replace("redis://", "redis://:s3cret@"))
    assert "s3cret" not in repr(cache) and "s3cret" not in cache.display_path
    with pytest.raises(ValueError, match="read_only"):
        AdviceCache(server.url, read_only=True)
    from sb3_vlm.experiments.runs import RunSetupError, train

    with pytest.raises(RunSetupError, match="SB3_VLM_CACHE_PASSWORD"):  # run.json would keep it
        train("MiniGrid-Empty-5x5-v0", cache=server.url.replace("redis://", "redis://:s3cret@"), out=tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_four_training_processes_sharing_the_server_cache_ask_the_vlm_about_each_distinct_view_once(
    server, tmp_path
) -> None:
    """Issue 21's acceptance: four `sb3-vlm train` processes (standing in for four machines), the same seed (so
    their first views coincide, asked at the same moment), one loopback VLM that counts requests and answers after
    50 ms: the VLM is asked about each distinct view once, whichever process saw it first; 0 repeated."""
    import json
    import math
    import sys

    from sb3_vlm.testing.loopback import LoopbackServer, Reply, chat_completion

    top = [("forward", math.log(0.6)), ("left", math.log(0.2)), ("right", math.log(0.2))]
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_BASE_URL", "OPENAI_API_KEY")}
    with LoopbackServer([Reply(body=chat_completion("forward", top_logprobs=top), delay=0.05)]) as vlm:
        env.update(OPENAI_BASE_URL=f"{vlm.url}/v1", OPENAI_API_KEY="sk-test", OMP_NUM_THREADS="1")
        runs = []
        for i in range(4):
            cmd = [sys.executable, "-m", "sb3_vlm", "train", "MiniGrid-LavaGapS7-v0", "--advisor", "openai:m",
                   "--cache", server.url, "--steps", "128", "--n-envs", "1", "--seed", "0", "--no-progress",
                   "--out", str(tmp_path / f"run{i}"), "--hyperparams", "n_steps=64", "batch_size=64",
                   "n_epochs=1"]  # fmt: skip
            runs.append(subprocess.Popen(cmd, env=env, cwd=Path(__file__).resolve().parents[1]))
        assert [p.wait(timeout=300) for p in runs] == [0, 0, 0, 0]
        asked = len(vlm.requests)
    distinct = len(AdviceCache(server.url))  # every answer was valid, so every distinct view has its row
    queries = [json.loads((tmp_path / f"run{i}" / "run.json").read_text())["advisor_counters"] for i in range(4)]
    assert distinct > 10 and asked == distinct  # 0 repeated across the four
    assert sum(q["advisor/queries"] for q in queries) == asked
    assert all(json.loads((tmp_path / f"run{i}" / "run.json").read_text())["cache"] == server.url for i in range(4))


def test_cache_export_import_and_merge_move_rows_between_a_file_and_a_server(server, tmp_path, capsys) -> None:
    from sb3_vlm.cli import main

    local = tmp_path / "c.sqlite"
    CachedAdvisor(_counting(), AdviceCache(local)).advise([_request(i) for i in range(4)])
    rows = tmp_path / "rows.jsonl"
    assert main(["cache", "export", str(local), str(rows)]) == 0
    lines = rows.read_text().splitlines()
    assert len(lines) == 4
    remote = AdviceCache(server.url)
    remote.put("already", Advice(probs=np.array([1.0, 0.0, 0.0], np.float32), source="kept"))
    tampered = json.loads(lines[0])
    tampered["value"] = tampered["value"].replace('"valid": true', '"valid": false')
    same_key = dict(json.loads(lines[1]), key="already")  # its checksum names the other key: corrupt
    rows.write_text("\n".join([json.dumps(tampered), *lines[1:], json.dumps(same_key), "not json"]) + "\n")
    assert main(["cache", "merge", server.url, str(rows)]) == 0
    assert "3 rows written" in capsys.readouterr().out
    fresh = AdviceCache(server.url)
    assert len(fresh) == 4 and fresh.get("already").source == "kept"  # type: ignore[union-attr]
    served = CachedAdvisor(_counting(), fresh).advise([_request(i) for i in range(1, 4)])
    assert all(a.valid for a in served)
    assert main(["cache", "stats", server.url]) == 0 and '"entries": 4' in capsys.readouterr().out
    assert main(["cache", "export", server.url]) == 2  # no file given


def test_the_zoo_wrapper_takes_the_server_url_as_its_cache_and_refuses_one_with_a_password(server) -> None:
    from sb3_vlm.envs.minigrid import make_minigrid_env
    from sb3_vlm.zoo import advice_wrapper

    env = advice_wrapper(make_minigrid_env("MiniGrid-Empty-5x5-v0", student_obs="symbolic"), cache=server.url)
    env.reset(seed=0)
    env.step(2)
    assert env.advisor.cache.claims and len(AdviceCache(server.url)) >= 1  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="SB3_VLM_CACHE_PASSWORD"):
        advice_wrapper(make_minigrid_env("MiniGrid-Empty-5x5-v0"), cache=server.url.replace("//", "//:pw@"))


def test_a_training_run_goes_on_through_a_server_restart(server) -> None:
    """Issue 21's acceptance: the server stops mid-run and comes back; training neither stops nor crashes, the
    lookups meanwhile are counted misses, and afterwards the cache serves again."""
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.vec_env import DummyVecEnv

    from sb3_vlm.envs.minigrid import MiniGridOracle, make_minigrid_env
    from sb3_vlm.ppo import GuidedPPO
    from sb3_vlm.wrappers import VLMAdviceWrapper

    oracle = MiniGridOracle()
    cache = AdviceCache(server.url, timeout=0.5)
    cache._server.retry_after = 0.0  # type: ignore[union-attr]
    env = DummyVecEnv(
        [
            lambda: VLMAdviceWrapper(
                make_minigrid_env("MiniGrid-Empty-5x5-v0", student_obs="symbolic"), oracle, cache=cache
            )
        ]
    )

    class Outage(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps == 40:
                server.stop()
            if self.num_timesteps == 80:
                server.start()
            return True

    model = GuidedPPO("MlpPolicy", env, n_steps=32, batch_size=32, n_epochs=1, seed=0)
    model.learn(128, callback=Outage())
    wrapped = env.envs[0].advisor.cache  # type: ignore[attr-defined]
    assert model.num_timesteps == 128 and wrapped.unavailable > 0
    assert len(AdviceCache(server.url)) > 0  # written again once the (fresh, empty) server was back
