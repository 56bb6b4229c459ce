"""Per-update cost of GuidedSAC against SB3's SAC on the same replay data (the issue's ≤ 1.5x budget).

For each setting (state Pendulum with SB3's default 256x256 MLP and batch 256; pixel Pendulum 64x64x9 with CnnPolicy
and batch 64) one replay buffer is filled with advised transitions, then SB3's ``SAC.train`` and ``GuidedSAC.train``
for each method run ``--steps`` gradient steps on it (after a warm-up), several times alternating, and the median
milliseconds per gradient step are reported. Writes ``update_cost.json`` and ``update_cost.md`` under ``--out``.

Usage::

    python benchmarks/sac_update_cost.py            # about 3 minutes on a CPU core (the CNN dominates)
    python benchmarks/sac_update_cost.py --quick    # CI smoke
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch as th

METHODS = ["sac", "erpv", "varl", "covr", "apl", "rsf"]


def _models(setting: str, fill: int, batch_size: int) -> tuple[Any, dict[str, Any]]:
    from stable_baselines3 import SAC
    from stable_baselines3.common.logger import configure

    from sb3_vlm import VLMAdviceWrapper
    from sb3_vlm.envs.pendulum import PendulumSwingUpOracle, make_pendulum_env, make_pixel_env
    from sb3_vlm.policies import AdviceCritic
    from sb3_vlm.sac import GuidedSAC

    if setting == "mlp":
        env, policy, policy_kwargs = VLMAdviceWrapper(make_pendulum_env(), PendulumSwingUpOracle()), "MlpPolicy", {}
    else:
        env = VLMAdviceWrapper(make_pixel_env("Pendulum-v1", size=64, frame_stack=3), PendulumSwingUpOracle())
        policy, policy_kwargs = "CnnPolicy", {}
    common = dict(
        learning_starts=fill, batch_size=batch_size, buffer_size=fill + 10, seed=0, policy_kwargs=policy_kwargs
    )
    filler = GuidedSAC(policy, env, method="sac", **common)
    filler.learn(fill)  # learning_starts = fill: collects only
    models: dict[str, Any] = {}
    for method in METHODS[1:]:
        critic: Any = "rl"
        if method in ("erpv", "rsf"):
            # an (untrained) advice critic of the policy's architecture: the cost is what matters here
            critic = AdviceCritic.from_sac_critic(filler.critic, filler.policy)
        model = GuidedSAC(policy, env, method=method, advice_critic=critic, **common)
        model.replay_buffer = filler.replay_buffer
        models[method] = model
    sac = SAC(policy, env, **common)
    sac.replay_buffer = filler.replay_buffer
    for model in (sac, *models.values()):
        model.set_logger(configure(None, []))  # train() records to a logger; learn() is never called here
    return sac, models


def _ms_per_step(model: Any, steps: int, batch_size: int) -> float:
    np.random.seed(0)
    th.manual_seed(0)
    start = time.perf_counter()
    model.train(steps, batch_size)
    return 1000 * (time.perf_counter() - start) / steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--settings", nargs="+", default=["mlp", "cnn"], choices=["mlp", "cnn"])
    parser.add_argument("--out", default="benchmarks/results/sac_guidance")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.repeats, args.settings = 5, 1, ["mlp"]
    th.set_num_threads(1)
    results: dict[str, dict[str, float]] = {}
    for setting in args.settings:
        batch_size = 256 if setting == "mlp" else 64
        sac, models = _models(setting, fill=1000 if setting == "mlp" else 300, batch_size=batch_size)
        everyone = {"sac (SB3)": sac, **{f"guided {m}": mo for m, mo in models.items()}}
        times: dict[str, list[float]] = {name: [] for name in everyone}
        for model in everyone.values():
            _ms_per_step(model, 3, batch_size)  # warm-up (allocations, first-call overheads)
        for _ in range(args.repeats):  # alternate so drifts in machine load hit every model alike
            for name, model in everyone.items():
                times[name].append(_ms_per_step(model, args.steps, batch_size))
        base = float(np.median(times["sac (SB3)"]))
        results[setting] = {name: float(np.median(t)) for name, t in times.items()}
        results[setting]["_ratio_max"] = max(v / base for k, v in results[setting].items() if k != "sac (SB3)")
    lines = ["| setting | model | ms / gradient step | × SAC |", "|---|---|---|---|"]
    for setting, row in results.items():
        base = row["sac (SB3)"]
        for name, ms in row.items():
            if not name.startswith("_"):
                lines.append(f"| {setting} | {name} | {ms:.2f} | {ms / base:.2f} |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "update_cost.json").write_text(json.dumps(dict(args=vars(args), results=results), indent=1))
    (out / "update_cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
