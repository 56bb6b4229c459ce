from __future__ import annotations

import hashlib
import json
import pickle
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from gymnasium import spaces

from sb3_vlm.advice import Advice, AdviceRequest
from sb3_vlm.advisors import AdviceCache, CachedAdvisor, CallableAdvisor


def _request(i: int) -> AdviceRequest:
    img = np.full((2, 2, 3), i % 256, dtype=np.uint8)
    return AdviceRequest(image=img, context={"i": i}, action_space=spaces.Discrete(2))


def test_cached_advisor_queries_only_misses(tmp_path: Path) -> None:
    calls: list[int] = []

    def fn(r: AdviceRequest) -> Advice:
        calls.append(r.context["i"])
        return Advice(probs=np.array([0.3, 0.7]))

    advisor = CachedAdvisor(CallableAdvisor(fn, name="f"), tmp_path / "c.sqlite")
    advisor.advise([_request(0), _request(1)])
    out = advisor.advise([_request(1), _request(2), _request(0)])
    assert calls == [0, 1, 2]
    assert advisor.stats.cache_hits == 2 and advisor.stats.cache_misses == 3 and advisor.stats.queries == 3
    np.testing.assert_allclose(out[0].probs, [0.3, 0.7])
    assert out[0].latency == 0.0


def test_invalid_answers_are_not_cached(tmp_path: Path) -> None:
    answers = iter([None, np.array([0.5, 0.5])])
    advisor = CachedAdvisor(CallableAdvisor(lambda r: next(answers), name="g"), AdviceCache(tmp_path / "c.sqlite"))
    assert not advisor.advise([_request(0)])[0].valid
    assert advisor.advise([_request(0)])[0].valid  # asked again, not served the failure
    assert len(advisor.cache) == 1


def test_a_refused_view_is_not_paid_for_again_and_again(tmp_path: Path) -> None:
    """Issue 16, item 4: invalid answers were never cached, so a view the VLM always refuses was asked every time.
    A refusal is now served for its view for a bounded count (and time), then the view is asked again; failures that
    may be transient (HTTP errors) are not remembered."""
    import time

    import pytest

    pytest.importorskip("openai")
    from sb3_vlm.advisors.openai_compat import OpenAIAdvisor
    from sb3_vlm.advisors.prompts import MINIGRID_PROMPT
    from sb3_vlm.testing import LoopbackServer, Reply, chat_completion

    grid = AdviceRequest(image=np.zeros((8, 8, 3), np.uint8), context={"mission": "m"}, action_space=spaces.Discrete(7))
    refusal = Reply(body=chat_completion("I'm sorry, I can't tell where the agent is."))
    with LoopbackServer([refusal]) as server:
        vlm = OpenAIAdvisor("m", MINIGRID_PROMPT, base_url=f"{server.url}/v1", api_key="k", distribution="written")
        cached = CachedAdvisor(vlm, tmp_path / "c.sqlite", refusal_uses=5)
        out = [cached.advise([grid])[0] for _ in range(11)]
        assert len(server.requests) == 2  # asked, served 5 times, asked again, served 4 times
        assert not any(a.valid for a in out) and all(a.refused for a in out)
        assert vlm.parse_failures == 2 and cached.stats.refusal_hits == 9 and cached.stats.cache_hits == 9
        assert len(cached.cache) == 0  # kept in memory only: the database holds answers
        key = grid.cache_key(cached.identity)
        assert cached.lookup(key, grid.action_space) is not None  # the non-blocking path is served it too (5th use)
        assert cached.lookup(key, grid.action_space) is None  # uses spent: the next request asks again

        ttl = CachedAdvisor(vlm, tmp_path / "c.sqlite", refusal_ttl=0.2)
        ttl.advise([grid])
        ttl.advise([grid])
        time.sleep(0.3)
        ttl.advise([grid])
        assert len(server.requests) == 4  # the second ask was served; after 0.2 s the view is asked again

    with LoopbackServer([Reply(status=503, body={"error": {"message": "overloaded"}})]) as server:
        vlm = OpenAIAdvisor("m", MINIGRID_PROMPT, base_url=f"{server.url}/v1", api_key="k", max_retries=0)
        cached = CachedAdvisor(vlm, tmp_path / "c.sqlite")
        out = [cached.advise([grid])[0] for _ in range(3)]
    assert len(server.requests) == 3 and not any(a.refused for a in out)  # an outage is asked again every time


def test_cache_survives_process_restart(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    script = textwrap.dedent(
        f"""
        import numpy as np
        from sb3_vlm.advice import Advice
        from sb3_vlm.advisors import AdviceCache
        cache = AdviceCache({str(path)!r})
        cache.put("k", Advice(probs=np.array([0.1, 0.9]), source="first-process"))
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    cache = AdviceCache(path)
    got = cache.get("k")
    assert got is not None and got.source == "first-process"
    np.testing.assert_allclose(got.probs, [0.1, 0.9])
    assert cache.get("missing") is None
    assert (cache.hits, cache.misses) == (1, 1)


def test_values_are_stored_as_json_not_pickle(tmp_path: Path) -> None:
    cache = AdviceCache(tmp_path / "c.sqlite")
    cache.put("k", Advice(action=np.array([1.0]), raw="hello"))
    value = sqlite3.connect(tmp_path / "c.sqlite").execute("SELECT value FROM advice").fetchone()[0]
    assert value.startswith("{") and '"raw": "hello"' in value


def test_two_writer_processes_share_one_file(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite"
    script = textwrap.dedent(
        """
        import sys
        import numpy as np
        from sb3_vlm.advice import Advice
        from sb3_vlm.advisors import AdviceCache
        cache = AdviceCache(sys.argv[1])
        for i in range(300):
            cache.put(f"{sys.argv[2]}-{i}", Advice(action=np.array([i, 1.0])))
            cache.put("common", Advice(action=np.array([1.0, 1.0]), source=sys.argv[2]))
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(path), name]) for name in ("a", "b")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    cache = AdviceCache(path)
    assert len(cache) == 601
    for name in ("a", "b"):
        got = cache.get(f"{name}-299")
        assert got is not None and got.action[0] == 299


def test_cache_pickles_without_its_connection(tmp_path: Path) -> None:
    cache = AdviceCache(tmp_path / "c.sqlite")
    cache.put("k", Advice(action=np.array([2.0])))
    clone = pickle.loads(pickle.dumps(cache))
    got = clone.get("k")
    assert got is not None and got.action[0] == 2.0


def test_a_damaged_cache_is_moved_aside_and_recreated(tmp_path, caplog) -> None:
    import logging

    path = tmp_path / "advice.sqlite"
    cache = AdviceCache(path)
    for i in range(200):
        cache.put(f"k{i}", Advice(probs=np.array([0.5, 0.5]), raw="x" * 50))
    cache.close()
    damaged = bytearray(path.read_bytes())
    damaged[4096:] = b"\xa5" * (len(damaged) - 4096)  # page 1 (header, schema) intact: still recognisably ours
    path.write_bytes(bytes(damaged))
    cache = AdviceCache(path)
    with caplog.at_level(logging.WARNING, logger="sb3_vlm.advisors.cache"):
        assert cache.get("k1") is None  # no crash: an empty cache in its place
    assert "unreadable" in caplog.text
    aside = list(tmp_path.glob("advice.sqlite.corrupt-*[0-9]"))
    assert len(aside) == 1 and aside[0].read_bytes() == bytes(damaged)
    cache.put("k", Advice(action=None, probs=None, valid=True, source="s"))
    assert AdviceCache(path).get("k") is not None  # the new file is a working cache


def test_a_file_that_is_not_a_cache_is_refused_and_never_moved(tmp_path: Path) -> None:
    """Issue 17, item 8: `sb3-vlm cache stats model.zip` moved the user's model aside."""
    import pytest

    from sb3_vlm.advisors.cache import NotACacheError

    model = tmp_path / "model.zip"
    model.write_bytes(b"PK\x03\x04 not an sqlite database" * 100)
    with pytest.raises(NotACacheError, match="not an advice cache"):
        AdviceCache(model)
    with pytest.raises(NotACacheError):
        CachedAdvisor(CallableAdvisor(lambda r: 1), model)
    other = tmp_path / "app.db"  # another program's SQLite database
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE users (name TEXT)")
    conn.commit()
    conn.close()
    before = other.read_bytes()
    with pytest.raises(NotACacheError, match="without an advice table"):
        AdviceCache(other).get("k")
    assert model.read_bytes() == b"PK\x03\x04 not an sqlite database" * 100 and other.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.db", "model.zip"]  # nothing moved, nothing created


def _advisor_and_row(tmp_path: Path) -> tuple[CachedAdvisor, list[int], AdviceRequest, str]:
    calls: list[int] = []

    def fn(r: AdviceRequest) -> Advice:
        calls.append(r.context["i"])
        return Advice(probs=np.array([0.25, 0.75], dtype=np.float32), source="fresh")

    advisor = CachedAdvisor(CallableAdvisor(fn, name="f"), AdviceCache(tmp_path / "c.sqlite", memory_entries=0))
    request = _request(0)
    return advisor, calls, request, request.cache_key(advisor.identity)


def test_a_stored_value_that_is_not_json_is_a_counted_miss_and_is_overwritten(tmp_path: Path) -> None:
    advisor, calls, request, key = _advisor_and_row(tmp_path)
    advisor.advise([request])
    with sqlite3.connect(tmp_path / "c.sqlite") as conn:
        conn.execute("UPDATE advice SET value = ? WHERE key = ?", ('{"probs": [0.2', key))
    out = advisor.advise([request])[0]  # used to raise JSONDecodeError out of training
    assert calls == [0, 0] and out.source == "fresh"
    assert advisor.stats.cache_corrupt == 1 and advisor.stats.cache_misses == 2 and advisor.cache.corrupt == 1
    assert advisor.advise([request])[0].source == "fresh" and calls == [0, 0]  # the row was overwritten: a hit
    assert advisor.stats.cache_corrupt == 1 and advisor.stats.cache_hits == 1


def test_a_changed_digit_fails_the_checksum(tmp_path: Path) -> None:
    advisor, calls, request, key = _advisor_and_row(tmp_path)
    advisor.advise([request])
    conn = sqlite3.connect(tmp_path / "c.sqlite")
    value, checksum = conn.execute("SELECT value, checksum FROM advice WHERE key = ?", (key,)).fetchone()
    assert checksum == hashlib.sha256(f"{key}\x00{value}".encode()).hexdigest()
    with conn:  # still valid JSON and still sums to 1: only the checksum can tell
        conn.execute(
            "UPDATE advice SET value = ? WHERE key = ?", (value.replace("0.75", "0.95").replace("0.25", "0.05"), key)
        )
    conn.close()
    out = advisor.advise([request])[0]
    np.testing.assert_allclose(out.probs, [0.25, 0.75])
    assert calls == [0, 0] and advisor.stats.cache_corrupt == 1
    assert advisor.cache.summary()["corrupt"] == 0  # overwritten with the fresh answer and a matching checksum


def test_rows_without_a_checksum_are_migrated_and_validated_on_read(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)  # the schema before checksums
    conn.execute("CREATE TABLE advice (key TEXT PRIMARY KEY, value TEXT NOT NULL, created REAL NOT NULL)")
    stored = {
        0: Advice(probs=np.array([0.4, 0.6]), source="old"),  # fine: served
        1: Advice(probs=np.array([0.4, 0.9]), source="old"),  # does not sum to 1
        2: Advice(probs=np.array([0.2, 0.3, 0.5]), source="old"),  # three actions for Discrete(2)
        3: Advice(action=np.array([5]), source="old"),  # not an action of Discrete(2)
        4: Advice(probs=np.array([np.nan, 1.0]), source="old"),
    }
    identity = CallableAdvisor(lambda r: None, name="v").identity
    for i, advice in stored.items():
        value = json.dumps(advice.to_dict())
        conn.execute("INSERT INTO advice VALUES (?, ?, 0.0)", (_request(i).cache_key(identity), value))
    for i, value in ((5, '{"action": ["left"], "valid": true}'), (6, '{"probs": [0.2')):  # undecodable
        conn.execute("INSERT INTO advice VALUES (?, ?, 0.0)", (_request(i).cache_key(identity), value))
    conn.commit()
    conn.close()
    advisor = CachedAdvisor(CallableAdvisor(lambda r: np.array([0.5, 0.5]), name="v"), path)
    out = advisor.advise([_request(i) for i in range(7)])
    assert [a.source for a in out] == ["old"] + ["callable:v"] * 6
    assert advisor.stats.cache_corrupt == 6 and advisor.stats.queries == 6 and advisor.stats.cache_hits == 1
    conn = sqlite3.connect(path)
    rows = conn.execute("SELECT checksum IS NOT NULL FROM advice").fetchall()
    assert sorted(r[0] for r in rows) == [0, 1, 1, 1, 1, 1, 1]  # the column was added; recomputed rows carry one


def test_answers_that_could_not_be_served_back_are_not_stored(tmp_path: Path) -> None:
    answers = iter([np.array([2.0, 6.0]), Advice(action=np.asarray(["left"])), np.array([np.nan, 1.0])])
    advisor = CachedAdvisor(CallableAdvisor(lambda r: next(answers), name="u"), tmp_path / "c.sqlite")
    advisor.advise([_request(0), _request(1), _request(2)])
    assert len(advisor.cache) == 1  # only the unnormalised probabilities, stored normalised
    got = AdviceCache(tmp_path / "c.sqlite").get(_request(0).cache_key(advisor.identity), spaces.Discrete(2))
    assert got is not None
    np.testing.assert_allclose(got.probs, [0.25, 0.75])


def test_a_read_only_cache_serves_hits_and_creates_or_changes_nothing(tmp_path: Path) -> None:
    import pytest

    path = tmp_path / "c.sqlite"
    writer = AdviceCache(path)
    writer.put("k", Advice(probs=np.array([0.5, 0.5]), source="s"))
    writer.close()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    cache = AdviceCache(path, read_only=True)
    assert cache.get("k") is not None and cache.get("missing") is None and len(cache) == 1
    assert cache.summary()["entries"] == 1
    with pytest.raises(sqlite3.OperationalError):
        cache.put("new", Advice(source="s"))
    cache.close()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    with pytest.raises(FileNotFoundError):
        AdviceCache(tmp_path / "missing.sqlite", read_only=True)


def test_size_cap_evicts_the_oldest_entries(tmp_path) -> None:
    import pytest

    from sb3_vlm.advice import Advice
    from sb3_vlm.advisors.cache import AdviceCache

    cache = AdviceCache(tmp_path / "c.sqlite", max_entries=3)
    for i in range(5):
        cache.put(f"k{i}", Advice(source=str(i)))
    assert len(cache) == 3 and cache.evicted == 2
    assert cache.get("k0") is None and cache.get("k1") is None and cache.get("k4").source == "4"
    cache.put("k2", Advice(source="again"))  # replacing an entry evicts nothing
    assert len(cache) == 3 and cache.evicted == 2
    with pytest.raises(ValueError, match="max_entries"):
        AdviceCache(max_entries=0)


def test_identical_requests_in_one_batch_are_sent_once(tmp_path) -> None:
    import numpy as np

    from sb3_vlm.advice import AdviceRequest
    from sb3_vlm.advisors import CallableAdvisor
    from sb3_vlm.advisors.cache import CachedAdvisor

    seen: list[int] = []

    def answer(request: AdviceRequest) -> np.ndarray:
        seen.append(int(request.context["v"]))
        return np.array([float(request.context["v"])], dtype=np.float32)

    advisor = CachedAdvisor(CallableAdvisor(answer, name="dedupe"), tmp_path / "c.sqlite")
    batch = [AdviceRequest(image=None, context={"v": v}) for v in (1, 2, 1, 1, 3, 2)]
    answers = advisor.advise(batch)
    assert sorted(seen) == [1, 2, 3]  # three distinct views, three backend requests
    assert [float(a.action[0]) for a in answers] == [1, 2, 1, 1, 3, 2]
    assert answers[0] is answers[2]  # advice is immutable: identical views share one answer
    assert advisor.stats.queries == 3 and advisor.stats.cache_misses == 6


def test_hits_are_decoded_once_and_served_from_memory(tmp_path: Path) -> None:
    cache = AdviceCache(tmp_path / "c.sqlite")
    cache.put("k", Advice(probs=np.array([0.5, 0.5]), source="s"))
    first = cache.get("k")
    assert first is not None and cache.get("k") is first and cache.hits == 2  # no JSON decode on a repeated hit
    fresh = AdviceCache(tmp_path / "c.sqlite")  # another process's view of the file: read from disk
    assert fresh.get("k") == first and fresh.get("k") is not first
    assert pickle.loads(pickle.dumps(cache))._recent == {}  # copies sent to workers read the file
    unkept = AdviceCache(tmp_path / "c.sqlite", memory_entries=0)
    assert unkept.get("k") is not unkept.get("k")
    small = AdviceCache(memory_entries=2)
    for key in ("a", "b", "c"):
        small.put(key, Advice(source=key))
    assert list(small._recent) == ["b", "c"] and small.get("a") is not None  # dropped from memory, not from the file
    cache.clear()
    assert cache.get("k") is None


def test_a_cached_advisor_hit_copies_the_answer_once_not_on_every_hit() -> None:
    """Issue 18, item 3: every hit made a dataclass copy of the answer to set its latency to 0 (a third of a hit's
    time on MiniGrid)."""
    request = AdviceRequest(image=np.zeros((2, 2, 3), np.uint8), action_space=spaces.Discrete(2))
    slow = CallableAdvisor(lambda r: Advice(probs=np.array([0.25, 0.75], np.float32), latency=1.5), name="slow")
    cached = CachedAdvisor(slow, AdviceCache())
    asked = cached.advise([request])[0]
    first, second = cached.advise([request])[0], cached.advise([request])[0]
    assert asked.latency == 1.5 and first.latency == 0.0 and second is first  # one copy, then served as it is
    np.testing.assert_array_equal(second.probs, asked.probs)
    assert cached.stats.cache_hits == 2 and cached.stats.queries == 1
