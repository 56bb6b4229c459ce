"""A planted API key appears in no artefact of a run: model zip, replay buffer, advice cache, checkpoint, logs (CSV,
TensorBoard), RL-Zoo-style config, nor in the advisor's repr or the log records."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from stable_baselines3.common.logger import configure

from sb3_vlm import VLMAdviceWrapper
from sb3_vlm.advice import AdviceRequest
from sb3_vlm.advisors.cache import AdviceCache, CachedAdvisor
from sb3_vlm.advisors.openai_compat import OpenAIAdvisor
from sb3_vlm.advisors.prompts import PENDULUM_PROMPT
from sb3_vlm.callbacks import AdviceMetricsCallback
from sb3_vlm.checkpoint import VLMCheckpointCallback
from sb3_vlm.envs.pendulum import make_pendulum_env
from sb3_vlm.sac import GuidedSAC
from sb3_vlm.testing import LoopbackServer, Reply, chat_completion

KEY = "sk-planted-0123456789-SECRET-abcdef"


def _view(theta: float) -> AdviceRequest:
    """A Pendulum teacher view."""
    return AdviceRequest(context={"theta": theta, "theta_dot": 0.0}, action_space=make_pendulum_env().action_space)


def test_planted_key_is_in_no_artefact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)  # keys come from the environment
    replies = [Reply(body=chat_completion("action:[0.5]")), Reply(status=500, body={"error": {"message": "x"}})]
    replies += [Reply(body=chat_completion("action:[0.5]"))]
    with caplog.at_level(logging.DEBUG), LoopbackServer(replies) as server:
        advisor = OpenAIAdvisor("m", PENDULUM_PROMPT, base_url=f"{server.url}/v1", max_retries=1, max_backoff=0.01)
        env = VLMAdviceWrapper(make_pendulum_env(), advisor, query_every=10, cache=tmp_path / "advice.sqlite")
        model = GuidedSAC("MlpPolicy", env, method="dpl", learning_starts=20, batch_size=16, buffer_size=500, seed=0)
        model.set_logger(configure(str(tmp_path / "logs"), ["csv", "tensorboard", "log"]))
        model.learn(60, callback=[AdviceMetricsCallback(), VLMCheckpointCallback(tmp_path / "ckpt", save_freq=30)])
        model.save(tmp_path / "model.zip")
        model.save_replay_buffer(tmp_path / "buffer.pkl")
        assert server.headers and server.headers[0].get("authorization", "").endswith(KEY)  # the key was used
    assert advisor.stats.queries > 0 and KEY not in repr(advisor) and KEY not in advisor.identity
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) >= 8  # model, buffer, cache, checkpoint parts, CSV, TensorBoard, text log
    leaking = [str(p) for p in files if KEY.encode() in p.read_bytes()]
    assert leaking == []
    assert KEY not in caplog.text


def test_key_a_server_echoes_is_redacted_from_logs_advice_and_cache(tmp_path: Path, caplog) -> None:
    """Issue 17, item 5: an error body was logged verbatim, so a server that echoed the API key put it in stderr."""
    echo = f"invalid key {KEY}; the first characters were {KEY[:14]}…"
    replies = [
        Reply(status=500, body={"error": {"message": echo}}),
        Reply(status=401, body={"error": {"message": echo}}),
        Reply(body=chat_completion(f"action:[0.5] (key: {KEY})")),
    ]
    with caplog.at_level(logging.DEBUG), LoopbackServer(replies) as server:
        advisor = OpenAIAdvisor("m", PENDULUM_PROMPT, base_url=f"{server.url}/v1", api_key=KEY, max_retries=0,
                                concurrency=1)  # fmt: skip
        cached = CachedAdvisor(advisor, AdviceCache(tmp_path / "advice.sqlite"))
        requests = [_view(theta=0.1 * i) for i in range(3)]
        answers = cached.advise(requests)
    assert [a.valid for a in answers] == [False, False, True] and len(server.requests) == 3
    assert "[redacted]" in caplog.text and "[redacted]" in answers[0].raw and "[redacted]" in answers[2].raw
    stored, _ = cached.cache.read(requests[2].cache_key(advisor.identity), requests[2].action_space)
    assert stored is not None and "[redacted]" in stored.raw  # the valid answer was cached, redacted
    on_disk = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file()).decode("latin-1")  # WAL included
    for text in (caplog.text, *(a.raw for a in answers), on_disk):
        assert KEY not in text and KEY[:14] not in text


def test_cache_identity_names_the_url_actually_called(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 17, item 5: with base_url=None the identity said api.openai.com while OPENAI_BASE_URL sent the requests
    elsewhere, so answers of two servers shared cache entries."""
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    default = OpenAIAdvisor("m", PENDULUM_PROMPT, api_key=KEY)
    assert default.identity.startswith("openai:api.openai.com:m:")  # OpenAI's own: the identity caches always had
    with LoopbackServer([Reply(body=chat_completion("action:[0.5]"))]) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", f"{server.url}/v1")
        advisor = OpenAIAdvisor("m", PENDULUM_PROMPT, api_key=KEY)
        assert advisor.advise([_view(theta=0.0)])[0].valid
    assert len(server.requests) == 1  # the request did go there
    assert advisor.identity.startswith(f"openai:{server.url}/v1:m:") and "api.openai.com" not in advisor.identity
