"""A planted API key appears in no artefact of a run: model zip, replay buffer, advice cache, checkpoint, logs (CSV,
TensorBoard), RL-Zoo-style config, nor in the advisor's repr or the log records."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from stable_baselines3.common.logger import configure

from sb3_vlm import VLMAdviceWrapper
from sb3_vlm.advisors.openai_compat import OpenAIAdvisor
from sb3_vlm.advisors.prompts import PENDULUM_PROMPT
from sb3_vlm.callbacks import AdviceMetricsCallback
from sb3_vlm.checkpoint import VLMCheckpointCallback
from sb3_vlm.envs.pendulum import make_pendulum_env
from sb3_vlm.sac import GuidedSAC
from sb3_vlm.testing import LoopbackServer, Reply, chat_completion

KEY = "sk-planted-0123456789-SECRET-abcdef"


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
