"""The fine-tuning backends for real: LoRA on a tiny offline VLM driven by the callback, and an OpenAI-compatible
fine-tuning API on a loopback server (a job that succeeds, one that fails, one that never finishes)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from gymnasium import spaces
from stable_baselines3.common.env_util import make_vec_env

from sb3_vlm import GuidedPPO
from sb3_vlm.advice import AdviceRequest
from sb3_vlm.advisors.cache import AdviceCache
from sb3_vlm.advisors.prompts import PromptTemplate
from sb3_vlm.finetune import Example, VLMFineTuneCallback
from sb3_vlm.testing.loopback import FineTuningService, LoopbackServer
from sb3_vlm.wrappers import VLMAdviceWrapper
from tests.helpers import ColourEnv, tiny_lora

#: the synthetic task's prompt: one short question, one label per action
COLOUR_PROMPT = PromptTemplate(name="colour", user="Which way? {labels}", kind="discrete", labels=("left", "right"))
SECRET = "sk-test-PLANTED-SECRET-123"


def _views() -> list[AdviceRequest]:
    env = ColourEnv(size=32)
    views = []
    for colour in (0, 1):
        env.colour = colour
        views.append(env.teacher_request())
    return views


def _choices(answers: list) -> list[int]:
    return [int(np.argmax(a.probs)) if a.valid else -1 for a in answers]


# ---------------------------------------------------------------------- LoRA, through the callback


def test_callback_lora_rounds_teach_a_tiny_vlm_and_the_cache_forgets(tmp_path: Path) -> None:
    pytest.importorskip("peft")
    from sb3_vlm.advisors.hf import HFAdvisor
    from sb3_vlm.testing.tiny_vlm import build_tiny_llava

    path = build_tiny_llava(tmp_path / "llava")
    advisor = HFAdvisor(str(path), COLOUR_PROMPT)
    cache = AdviceCache(tmp_path / "advice.sqlite")
    env = make_vec_env(
        lambda: ColourEnv(size=32),
        n_envs=1,
        seed=0,
        wrapper_class=VLMAdviceWrapper,
        wrapper_kwargs={"advisor": advisor, "cache": cache},
    )
    cached = env.envs[0].get_wrapper_attr("advisor")
    before = cached.advise(_views())
    assert _choices(before) != [0, 1]  # the random model does not know the task
    lora = tiny_lora(epochs=20)
    ft = VLMFineTuneCallback(advisor, psi0=64, lora=lora, gamma=0.5, save_dir=tmp_path / "run")
    # seeds 0-3 all pass at this size (checked); 32-step rounds left one colour unseen for some seeds
    GuidedPPO("MlpPolicy", env, n_steps=64, seed=0).learn(128, callback=ft)
    assert [h["ok"] for h in ft.history] == [True, True], [h["message"] for h in ft.history]
    assert ft.history[-1]["loss"] < 0.5 * ft.history[0]["first_loss"]  # the eq. 6 loss fell
    assert _choices(advisor.advise(_views())) == [0, 1]  # greedy answers are right after the rounds
    hits = cached.stats.cache_hits
    after = cached.advise(_views())
    assert _choices(after) == [0, 1] and cached.stats.cache_hits == hits  # not the cached pre-fine-tune answers
    for i in (1, 2):
        assert (tmp_path / "run" / f"round_{i:03d}" / "adapter" / "adapter_config.json").exists()
    reloaded = HFAdvisor(str(path), COLOUR_PROMPT, adapter=str(tmp_path / "run" / "round_002" / "adapter"))
    np.testing.assert_allclose(
        [a.probs for a in reloaded.advise(_views())], [a.probs for a in advisor.advise(_views())], atol=1e-5
    )
    assert reloaded.identity == advisor.identity  # same adapter weights, same path: same cache identity


# ---------------------------------------------------------------------- the fine-tuning API


def _api_advisor(server: LoopbackServer):
    pytest.importorskip("openai")
    from sb3_vlm.advisors.openai_compat import OpenAIAdvisor

    return OpenAIAdvisor(
        "base-vlm", COLOUR_PROMPT, base_url=server.url + "/v1", api_key=SECRET, distribution="written", timeout=5
    )


def _examples() -> list[Example]:
    dark, bright = _views()
    return [Example(dark, np.array(0), 1.0), Example(bright, np.array(1), 0.3), Example(bright, np.array(0), 0.0)]


def _uploaded_lines(service: FineTuningService) -> list[dict]:
    raw = next(iter(service.files.values())).decode()
    return [json.loads(line) for line in raw.splitlines() if line.startswith('{"messages"')]


def test_api_backend_uploads_weighted_jsonl_and_switches_model(tmp_path: Path) -> None:
    from sb3_vlm.finetune.api import OpenAIFineTuneBackend

    service = FineTuningService("succeeded", polls=2, answer="right")
    with LoopbackServer(responder=service) as server:
        advisor = _api_advisor(server)
        identity = advisor.identity
        backend = OpenAIFineTuneBackend(advisor, poll_interval=0.01, deadline=10, hyperparameters={"n_epochs": 2})
        result = backend.finetune(_examples(), tmp_path / "round_001")
        assert result.ok, result.message
        lines = _uploaded_lines(service)
        # RALW by duplication: weight 1 -> 4 copies, 0.3 -> ceil(1.2) = 2, 0 -> none
        assert [line["messages"][-1]["content"] for line in lines] == ["left"] * 4 + ["right"] * 2
        user = lines[0]["messages"][0]
        assert user["role"] == "user" and user["content"][1]["image_url"]["url"].startswith("data:image/png;base64,")
        job = service.jobs["ftjob-1"]
        assert job["model"] == "base-vlm" and job["hyperparameters"] == {"n_epochs": 2}
        assert advisor.model == "ft:base-vlm:covr:ftjob-1" and advisor.identity != identity
        assert int(advisor.advise(_views()[:1])[0].action[0]) == 1
        assert service.chat_models[-1] == "ft:base-vlm:covr:ftjob-1"  # answers come from the new model
        assert backend.finetune(_examples(), tmp_path / "round_002").ok
        assert service.jobs["ftjob-2"]["model"] == "ft:base-vlm:covr:ftjob-1"  # rounds build on each other
    for name in ("train.jsonl", "job.json"):
        text = (tmp_path / "round_001" / name).read_text()
        assert SECRET not in text
    assert all(SECRET.encode() not in raw for raw in service.files.values())


def test_api_backend_filter_weighting(tmp_path: Path) -> None:
    from sb3_vlm.finetune.api import OpenAIFineTuneBackend, example_copies

    assert [example_copies(w, "duplicate", 4, 0.0) for w in (0.0, 0.01, 0.25, 0.26, 1.0)] == [0, 1, 1, 2, 4]
    assert [example_copies(w, "filter", 4, 0.5) for w in (0.0, 0.3, 0.6)] == [0, 0, 1]
    service = FineTuningService("succeeded", polls=1)
    with LoopbackServer(responder=service) as server:
        backend = OpenAIFineTuneBackend(_api_advisor(server), weighting="filter", poll_interval=0.01, deadline=10)
        assert backend.finetune(_examples()).ok
        assert [line["messages"][-1]["content"] for line in _uploaded_lines(service)] == ["left", "right"]


def test_api_backend_failed_job_keeps_the_model(tmp_path: Path) -> None:
    from sb3_vlm.finetune.api import OpenAIFineTuneBackend

    service = FineTuningService("failed", polls=2)
    with LoopbackServer(responder=service) as server:
        advisor = _api_advisor(server)
        result = OpenAIFineTuneBackend(advisor, poll_interval=0.01, deadline=10).finetune(_examples(), tmp_path)
    assert not result.ok and "failed" in result.message and "bad examples" in result.message
    assert advisor.model == "base-vlm"
    assert json.loads((tmp_path / "job.json").read_text())["status"] == "failed"


def test_never_finishing_job_times_out_and_training_goes_on(tmp_path: Path) -> None:
    from sb3_vlm.finetune.api import OpenAIFineTuneBackend

    service = FineTuningService("never", answer="left")
    with LoopbackServer(responder=service) as server:
        advisor = _api_advisor(server)
        backend = OpenAIFineTuneBackend(advisor, poll_interval=0.05, deadline=0.5)
        start = time.perf_counter()
        result = backend.finetune(_examples())
        assert time.perf_counter() - start < 3.0
        assert not result.ok and "deadline" in result.message
        assert service.jobs["ftjob-1"]["status"] == "cancelled"  # the job was cancelled, not left running
        # the same inside training: the round fails, the run completes on the current model
        env = make_vec_env(
            lambda: ColourEnv(size=8),
            n_envs=1,
            seed=0,
            wrapper_class=VLMAdviceWrapper,
            wrapper_kwargs={"advisor": advisor},
        )
        ft = VLMFineTuneCallback(advisor, psi0=16, gamma=0.5, backend=backend, save_dir=tmp_path)
        model = GuidedPPO("MlpPolicy", env, n_steps=16, seed=0).learn(32, callback=ft)
    assert model.num_timesteps == 32 and ft.failed_rounds >= 1 and advisor.model == "base-vlm"
    assert spaces.Discrete(2).contains(int(model.predict(np.zeros((8, 8, 3), np.uint8))[0]))
