"""DMControl pixel rendering speed on this machine: dm_control's default ``physics.render`` vs the tuned pixel wrapper.

For each task: frames/s of ``physics.render(84, 84)`` with the model's own settings (640×480 offscreen buffer,
shadows, 4× multisampling, a new scene per call), frames/s of :class:`~sb3_vlm.envs.dmc.DMCPixels`' render (buffer
of the frame size, no shadows or multisampling, 12×8-facet spheres and capsules, one reused camera) and how much
the coarser facets change the frame, and agent steps/s of the whole
``make_dmc_env`` pipeline with random actions (physics × action repeat + one render + frame stack). Target: ≥ 200
tuned frames/s at 84×84.

Writes ``render_speed.json``, ``render_speed.md`` and ``render_speed.png`` under ``--out``.

Usage::

    python benchmarks/dmc_render_speed.py           # all 8 tasks, about a minute
    python benchmarks/dmc_render_speed.py --quick   # CI smoke
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

TARGET_FPS = 200.0


def _fps(render: Any, frames: int) -> float:
    render()  # the first call creates the GL context and scene: not steady state
    start = time.perf_counter()
    for _ in range(frames):
        render()
    return frames / (time.perf_counter() - start)


def measure(name: str, size: int, frames: int, steps: int) -> dict[str, float]:
    from dm_control import suite

    from sb3_vlm.envs.dmc import DMC_TASKS, make_dmc_env

    spec = DMC_TASKS[name]
    default_env = suite.load(spec.domain, spec.task, task_kwargs={"random": 0})
    default_env.reset()
    physics = default_env.physics
    default = _fps(lambda: physics.render(size, size, camera_id=spec.camera_id), frames)

    env = make_dmc_env(name, size=size, seed=0)
    first, _ = env.reset(seed=0)
    # what the coarser spheres/capsules change in the picture: the same state with MuJoCo's default 28×16 facets
    # (they must be set before the first render creates the GL context)
    fine = make_dmc_env(name, size=size, seed=0)
    fine.unwrapped._env.physics.model.vis.quality.numslices = 28
    fine.unwrapped._env.physics.model.vis.quality.numstacks = 16
    fine_first, _ = fine.reset(seed=0)
    facet_diff = float(np.abs(first[..., -3:].astype(np.int16) - fine_first[..., -3:]).mean())
    fine.close()
    pixels: Any = env.get_wrapper_attr("_render")
    tuned = _fps(lambda: pixels(size), frames)
    flat = make_dmc_env(name, size=size, seed=0, reflections=False)
    flat.reset(seed=0)
    flat_render: Any = flat.get_wrapper_attr("_render")
    no_reflections = _fps(lambda: flat_render(size), frames)
    flat.close()
    env.action_space.seed(0)
    start = time.perf_counter()
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            env.reset()
    step_rate = steps / (time.perf_counter() - start)
    env.close()
    return dict(
        default_fps=default,
        tuned_fps=tuned,
        speedup=tuned / default,
        no_reflections_fps=no_reflections,
        agent_steps_per_s=step_rate,
        facet_pixel_diff=facet_diff,
    )


def main(argv: list[str] | None = None) -> int:
    from sb3_vlm.envs.dmc import DMC_TASKS, select_mujoco_gl

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=sorted(DMC_TASKS))
    parser.add_argument("--size", type=int, default=84)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", default="benchmarks/results/dmc_render_speed")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.tasks, args.frames, args.steps = ["cartpole-swingup"], 20, 20
    backend = select_mujoco_gl()
    results = {name: measure(name, args.size, args.frames, args.steps) for name in args.tasks}
    lines = [
        f"MUJOCO_GL={backend}, {args.size}×{args.size}, {os.cpu_count()} CPU cores",
        "",
        "| task | default render | tuned render | speed-up | tuned, reflections off | env steps/s (incl. action "
        "repeat) | mean pixel change from coarser facets (of 255) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['default_fps']:.0f} fps | {r['tuned_fps']:.0f} fps | {r['speedup']:.1f}× "
            f"| {r['no_reflections_fps']:.0f} fps | {r['agent_steps_per_s']:.0f} | {r['facet_pixel_diff']:.2f} |"
        )
    met = sum(r["tuned_fps"] >= TARGET_FPS for r in results.values())
    flat = sum(r["no_reflections_fps"] >= TARGET_FPS for r in results.values())
    lines += [
        "",
        f"{met}/{len(results)} tasks at ≥ {TARGET_FPS:.0f} tuned frames/s "
        f"({flat}/{len(results)} with reflections off).",
    ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = dict(backend=backend, size=args.size, frames=args.frames, target_fps=TARGET_FPS, results=results)
    (out / "render_speed.json").write_text(json.dumps(summary, indent=2))
    (out / "render_speed.md").write_text("\n".join(lines) + "\n")
    _plot(results, out / "render_speed.png")
    print("\n".join(lines))
    return 0


def _plot(results: dict[str, dict[str, float]], path: Path) -> None:
    from sb3_vlm.experiments.plotting import plot_paired_bars

    names = list(results)
    pairs = [
        ("dm_control default", [results[n]["default_fps"] for n in names]),
        ("DMCPixels (tuned)", [results[n]["tuned_fps"] for n in names]),
    ]
    target = (f"target {TARGET_FPS:.0f} fps", TARGET_FPS)
    plot_paired_bars(names, pairs, path, ylabel="frames / s (84×84)", target=target, rotate=True)


if __name__ == "__main__":
    raise SystemExit(main())
