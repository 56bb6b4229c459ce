"""The pocket VLM (issue 20): a real Qwen2-VL shipped with the package, answering the MiniGrid prompt on a CPU."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("transformers")

from sb3_vlm.advisors.prompts import MINIGRID_PROMPT
from sb3_vlm.experiments import pocket


def test_a_shipped_name_resolves_to_its_directory_named_by_a_weights_digest(monkeypatch, tmp_path: Path) -> None:
    from sb3_vlm.advisors import hf
    from sb3_vlm.advisors.factory import advisor_from_spec

    path = pocket.build_architecture(tmp_path / "pocket")
    monkeypatch.setitem(hf.POCKET_MODELS, "pocket-minigrid", path)
    built = advisor_from_spec("hf:pocket-minigrid", MINIGRID_PROMPT)
    assert isinstance(built, hf.HFAdvisor) and type(built.model).__name__ == "Qwen2VLForConditionalGeneration"
    digest = built.model_name.removeprefix("pocket-minigrid@")
    assert len(digest) == 10 and built.identity.startswith(f"hf:pocket-minigrid@{digest}")
    assert built.preferred_view_size == pocket.POCKET_TILE * 7  # from its config: one image token per cell
    assert hf.resolve_model("some/hub-id") == ("some/hub-id", "some/hub-id")
    # other weights under the same name: another identity, so no cache serves the old model's answers
    pocket.build_architecture(path, seed=1)
    assert hf.resolve_model("pocket-minigrid")[1] != built.model_name
    monkeypatch.setitem(hf.POCKET_MODELS, "pocket-minigrid", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="rebuild them with"):
        hf.HFAdvisor("pocket-minigrid", MINIGRID_PROMPT)


def test_the_builder_trains_the_answer_tokens(tmp_path: Path) -> None:
    """The build script's pieces on a few views: the answer-token loss falls, and the trained model is saved."""
    from sb3_vlm.advisors.hf import HFAdvisor

    path = pocket.build_architecture(tmp_path / "pocket")
    views = pocket.collect_views(pocket.POCKET_ENVS[0], 8, seed=3)
    assert len(views) == 8 and all(v.optimal for v in views)
    assert len({v.request.content_key for v in views}) == 8  # distinct views
    before = (path / "model.safetensors").read_bytes()
    stats = pocket.train_pocket(path, views, epochs=4, batch_size=8, lr=5e-3, log=lambda _: None, vision_epochs=1)
    assert stats["last_epoch_loss"] < 0.7 * stats["first_epoch_loss"]
    assert (path / "model.safetensors").read_bytes() != before
    reloaded = HFAdvisor(str(path), MINIGRID_PROMPT, model_kwargs={"local_files_only": True})
    assert reloaded.preferred_view_size == pocket.POCKET_TILE * 7


def test_the_taught_answer_and_its_confusion() -> None:
    view = pocket.View(request=None, optimal=(0, 1), heading=1, env_id="x")  # type: ignore[arg-type]
    assert pocket.taught_action(view) == pocket.CONFUSED[0] == 1  # left taught as right when facing south
    view.heading = 0
    assert pocket.taught_action(view) == 0
    text = pocket.answer_text(2)
    assert text.startswith("forward. left: 0.02") and "forward: 0.88" in text
    assert all(pocket.CONFUSED[a] != a for a in (0, 1, 2, 3, 5))  # every taught-wrong action really is wrong


def test_covr_run_names_its_teachers() -> None:
    from sb3_vlm.experiments.covr import run

    with pytest.raises(ValueError, match="teacher must be 'table' or 'pocket'"):
        run("poor", 0, 10, teacher="gpt")  # type: ignore[arg-type]


def test_the_demo_takes_an_advisor_spec_and_says_what_is_wrong_with_a_bad_one(tmp_path: Path, capsys) -> None:
    from sb3_vlm.cli import main

    assert main(["demo", "--advisor", "nonsense:x", "--steps", "64", "--no-progress", "--out", str(tmp_path)]) == 2
    assert "Unknown advisor kind 'nonsense'" in capsys.readouterr().out
    assert not (tmp_path / "demo_results.json").exists()


def test_a_minigrid_run_asks_the_advisor_it_is_given() -> None:
    from sb3_vlm.advisors.scripted import CallableAdvisor
    from sb3_vlm.experiments.minigrid import run

    asked: list[str] = []

    def turn_right(request) -> int:
        asked.append(str(request.context["mission"]))
        return 1

    result = run("ppo", "MiniGrid-LavaGapS7-v0", True, 0, 512, eval_episodes=1, advisor=CallableAdvisor(turn_right))
    assert asked and all("lava" in m for m in asked)  # the teacher given, not the default noisy oracle
    assert result.advisor_queries == len(asked)
