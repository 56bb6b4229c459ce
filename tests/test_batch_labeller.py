"""The Batch API labeller against a loopback server that plays the whole protocol (upload, create, poll, download)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gymnasium import spaces

pytest.importorskip("openai")

from sb3_vlm.advice import AdviceRequest
from sb3_vlm.advisors.batch import BatchLabeller, load_views, save_views
from sb3_vlm.advisors.cache import AdviceCache, CachedAdvisor
from sb3_vlm.advisors.openai_compat import OpenAIAdvisor
from sb3_vlm.advisors.pricing import price_for
from sb3_vlm.advisors.prompts import MINIGRID_PROMPT, MINIGRID_TWO_STAGE
from sb3_vlm.testing.loopback import BatchService, LoopbackServer, multipart_file

SPACE = spaces.Discrete(7)


def _view(i: int) -> AdviceRequest:
    image = np.full((8, 8, 3), i, dtype=np.uint8)
    return AdviceRequest(image=image, context={"mission": f"go to goal {i}"}, action_space=SPACE)


def _answer(body: dict[str, Any]) -> str | None:
    """forward, except view 3 (a refusal) and view 4 (the server fails the line)"""
    text = json.dumps(body["messages"])
    if "goal 3" in text:
        return "I cannot determine what the agent should do."
    if "goal 4" in text:
        return None
    return "forward"


def _advisor(server: LoopbackServer, **kwargs: Any) -> OpenAIAdvisor:
    return OpenAIAdvisor("gpt-4o-mini", MINIGRID_PROMPT, base_url=server.url + "/v1", api_key="sk-test", **kwargs)


def _labeller(advisor: OpenAIAdvisor, cache: AdviceCache, **kwargs: Any) -> tuple[BatchLabeller, list[float]]:
    sleeps: list[float] = []
    return BatchLabeller(advisor, cache, poll_interval=5.0, sleep=sleeps.append, **kwargs), sleeps


def test_batch_labels_land_where_the_training_cache_looks(tmp_path: Path) -> None:
    service = BatchService(_answer, polls=3, tokens=101)
    with LoopbackServer(responder=service) as server:
        advisor = _advisor(server, distribution="written")
        cache = AdviceCache(tmp_path / "advice.sqlite")
        views = [_view(i) for i in range(6)] + [_view(0), _view(1)]  # two views twice
        # view 5 is in the cache already (asked during an earlier run): not sent again
        CachedAdvisor(advisor, cache).advise([views[5]])
        assert service.chat_calls == 1
        labeller, sleeps = _labeller(advisor, cache)
        report = labeller.label(views)

        assert (report.views, report.distinct, report.cached, report.sent) == (8, 6, 1, 5)
        assert (report.stored, report.unusable, report.failed, report.status) == (3, 1, 1, "completed")
        assert sleeps == [5.0, 5.0, 5.0]  # polled until the third status read completed it
        # the uploaded file: one line per view to send, its cache key as custom_id, the advisor's own request
        lines = [json.loads(line) for line in service.files["file-1"].decode().splitlines()]
        keys = {v.cache_key(advisor.identity) for v in views[:5]}
        assert {line["custom_id"] for line in lines} == keys
        assert all(line["url"] == "/v1/chat/completions" and line["body"]["model"] == "gpt-4o-mini" for line in lines)
        assert all(line["body"]["messages"][-1]["content"][1]["type"] == "image_url" for line in lines)
        # tokens and money at the batch price (half the standard one), also on the advisor's own counters
        price = price_for("gpt-4o-mini")
        assert price is not None
        assert (report.tokens_in, report.tokens_out) == (4 * 100, 4 * 1)  # four answers came back
        assert report.cost_usd == pytest.approx(0.5 * price.cost(400, 4))
        assert advisor.cost_usd == pytest.approx(0.5 * price.cost(400, 4) + price.cost(100, 1))

        # training: the labelled views are cache hits; only the refused and failed ones reach the server
        before = service.chat_calls
        trained = CachedAdvisor(advisor, cache)
        answers = trained.advise(views)
        assert service.chat_calls - before == 2
        assert [int(np.asarray(a.action).reshape(-1)[0]) for a in answers[:3]] == [2, 2, 2]  # forward
        # labelling again sends only the two views that still have no usable answer
        again = labeller.label(views)
        assert (again.cached, again.sent) == (4, 2)


def test_labelling_again_sends_only_what_is_still_missing(tmp_path: Path) -> None:
    service = BatchService(_answer, polls=1)
    with LoopbackServer(responder=service) as server:
        cache = AdviceCache(tmp_path / "advice.sqlite")
        labeller, _ = _labeller(_advisor(server, distribution="written"), cache)
        assert labeller.label([_view(i) for i in range(4)]).stored == 3
        again = labeller.label([_view(i) for i in range(4)])
        assert (again.cached, again.sent) == (3, 1)  # the refused view is asked again, nothing else
        assert len(service.batches) == 2


def test_a_batch_past_its_deadline_is_cancelled_and_reported(tmp_path: Path) -> None:
    service = BatchService(_answer, outcome="never")
    with LoopbackServer(responder=service) as server:
        cache = AdviceCache(tmp_path / "advice.sqlite")
        labeller, sleeps = _labeller(_advisor(server, distribution="written"), cache, deadline=20.0)
        report = labeller.label([_view(i) for i in range(3)])
    assert sleeps == [5.0] * 4 and report.status == "cancelled"
    assert (report.sent, report.stored, report.failed) == (3, 0, 3)
    assert "not done after 20 s" in report.errors[0]
    assert cache.summary()["entries"] == 0


def test_a_failed_batch_stores_nothing_and_says_why(tmp_path: Path) -> None:
    service = BatchService(_answer, outcome="failed", polls=1)
    with LoopbackServer(responder=service) as server:
        cache = AdviceCache(tmp_path / "advice.sqlite")
        report = _labeller(_advisor(server, distribution="written"), cache)[0].label([_view(0), _view(1)])
    assert (report.status, report.stored, report.failed) == ("failed", 0, 2)


def test_logprob_labels_are_one_token_requests_scored_like_the_advisor(tmp_path: Path) -> None:
    service = BatchService(lambda body: "forward", polls=1)
    with LoopbackServer(responder=service) as server:
        advisor = _advisor(server, distribution="logprobs")
        labeller, _ = _labeller(advisor, AdviceCache(tmp_path / "advice.sqlite"))
        body = labeller.body(_view(0))
        assert (body["max_tokens"], body["logprobs"], body["top_logprobs"]) == (1, True, 20)
        # the loopback's completions carry no log-probabilities: each view is unusable, counted, not stored
        report = labeller.label([_view(0)])
    assert (report.stored, report.unusable) == (0, 1)
    assert advisor.parse_failures == 1


def test_the_labeller_refuses_two_turn_prompts_and_other_advisors(tmp_path: Path) -> None:
    with LoopbackServer(responder=BatchService(_answer)) as server:
        two_turn = OpenAIAdvisor("m", MINIGRID_TWO_STAGE, base_url=server.url, api_key="k")
        with pytest.raises(ValueError, match="two turns"):
            BatchLabeller(two_turn, AdviceCache(tmp_path / "a.sqlite"))
    from sb3_vlm.envs.minigrid import MiniGridOracle

    with pytest.raises(TypeError, match="OpenAIAdvisor"):
        BatchLabeller(MiniGridOracle(), AdviceCache(tmp_path / "a.sqlite"))  # type: ignore[arg-type]


def test_views_round_trip_through_npz_with_their_content_keys(tmp_path: Path) -> None:
    views = [_view(i) for i in range(3)]
    lazy = AdviceRequest(image=np.zeros((8, 8, 3), np.uint8), context={"mission": "m"}, content_key="grid:42")
    path = tmp_path / "views.npz"
    assert save_views(path, [*views, lazy]) == 4
    loaded = load_views(path, SPACE)
    for got, want in zip(loaded, [*views, lazy], strict=True):
        want.action_space = SPACE
        assert got.cache_key("a") == want.cache_key("a") and np.array_equal(got.image, want.image)
    assert loaded[3].content_key == "grid:42"
    with pytest.raises(ValueError, match="differ in shape"):
        save_views(tmp_path / "bad.npz", [views[0], AdviceRequest(image=np.zeros((4, 4, 3), np.uint8))])


def test_multipart_file_reads_the_uploaded_part() -> None:
    raw = (
        b'--xyz\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="v.jsonl"\r\n\r\n{"a": 1}\n\r\n--xyz--\r\n'
    )
    assert multipart_file(raw) == b'{"a": 1}\n'


def test_the_label_command_collects_views_and_fills_the_cache_training_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from sb3_vlm.advisors.factory import advisor_from_spec
    from sb3_vlm.cli import main
    from sb3_vlm.experiments.runs import make_env_bundle
    from sb3_vlm.wrappers.advice import fit_teacher_view

    monkeypatch.setenv("OPENAI_API_KEY", "sk-label-test")
    service = BatchService(lambda body: "forward", polls=2)
    views, cache = tmp_path / "views.npz", tmp_path / "advice.sqlite"
    with LoopbackServer(responder=service) as server:
        url = server.url + "/v1"
        args = ["label", str(views), "--env", "MiniGrid-LavaGapS7-v0", "--advisor", "openai:gpt-4o-mini",
                "--base-url", url, "--cache", str(cache), "--collect", "40", "--poll", "0.01"]  # fmt: skip
        assert main(args) == 0
        report = json.loads(capsys.readouterr().out.split("\n", 1)[1])
        assert report["views"] == 40 and report["sent"] == report["distinct"] == report["stored"] > 1
        assert service.chat_calls == 0 and len(service.batches) == 1
        # the training run's advisor (same spec, env and cache) finds every collected view in the cache
        env, prompt, _ = make_env_bundle("MiniGrid-LavaGapS7-v0")
        advisor = advisor_from_spec("openai:gpt-4o-mini", prompt, base_url=url)
        fit_teacher_view(env, advisor)
        env.reset(seed=0)
        request = env.get_wrapper_attr("teacher_request")()
        request.action_space = env.action_space
        trained = CachedAdvisor(advisor, AdviceCache(cache))
        assert trained.advise([request])[0].valid and trained.stats.cache_hits == 1 and service.chat_calls == 0
        # a spec the Batch API cannot serve: one line, exit 2
        assert main(["label", str(views), "--env", "MiniGrid-LavaGapS7-v0", "--advisor", "oracle", "--cache",
                     str(cache)]) == 2  # fmt: skip
    assert "openai:MODEL" in capsys.readouterr().err
