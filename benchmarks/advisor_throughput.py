"""Advisor throughput: OpenAIAdvisor against a loopback server with simulated latency, and HFAdvisor's one-pass
label scoring against generation on a tiny random VLM.

- API: requests/s at concurrency 1, 8, 32 with ``--latency`` (200 ms) per reply; target ≥ 0.8 × concurrency × 5.
- HF: milliseconds per request for label scoring (one forward) vs generation (``--new-tokens`` tokens) on the
  tiny LLaVA, batch 8; scoring must be faster.

Writes ``throughput.json`` and ``throughput.md`` under ``--out``.

Usage::

    python benchmarks/advisor_throughput.py           # about a minute
    python benchmarks/advisor_throughput.py --quick   # CI smoke
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium import spaces


def _serve(latency: float, urls: Any, stop: Any) -> None:
    from sb3_vlm.testing import LoopbackServer, Reply, chat_completion

    with LoopbackServer([Reply(body=chat_completion("action:[0.0, 1.0]"), delay=latency)]) as server:
        urls.put(server.url)
        stop.wait()


def api_throughput(concurrency: int, latency: float, n_requests: int) -> float:
    from sb3_vlm.advice import AdviceRequest
    from sb3_vlm.advisors.openai_compat import OpenAIAdvisor
    from sb3_vlm.advisors.prompts import COVR_HIGHWAY

    box = spaces.Box(-1.0, 1.0, (2,), dtype=np.float32)
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    # the server runs in its own process, like a remote endpoint: it must not share the client's GIL and core
    ctx = mp.get_context("spawn")
    urls, stop = ctx.Queue(), ctx.Event()
    server = ctx.Process(target=_serve, args=(latency, urls, stop), daemon=True)
    server.start()
    try:
        url = urls.get(timeout=60)
        advisor = OpenAIAdvisor("bench", COVR_HIGHWAY, base_url=f"{url}/v1", api_key="none", concurrency=concurrency)
        # warm-up wave: the pool's threads and keep-alive connections exist before timing (steady state)
        advisor.advise([AdviceRequest(image=image, action_space=box) for _ in range(concurrency)])
        start = time.perf_counter()
        answers = advisor.advise([AdviceRequest(image=image, action_space=box) for _ in range(n_requests)])
        elapsed = time.perf_counter() - start
    finally:
        stop.set()
        server.join(timeout=10)
    assert all(a.valid for a in answers)
    return n_requests / elapsed


def hf_costs(new_tokens: int, repeats: int) -> dict[str, float]:
    import torch as th

    from sb3_vlm.advice import AdviceRequest
    from sb3_vlm.advisors.hf import HFAdvisor
    from sb3_vlm.advisors.prompts import MINIGRID_PROMPT
    from sb3_vlm.testing.tiny_vlm import build_tiny_llava

    th.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        path = str(build_tiny_llava(Path(tmp)))
        requests = [
            AdviceRequest(
                image=np.zeros((32, 32, 3), np.uint8), context={"mission": "go"}, action_space=spaces.Discrete(7)
            )
            for _ in range(8)
        ]
        out = {}
        for name, kwargs in (("label scoring", {}), ("generation", {"distribution": "written"})):
            advisor = HFAdvisor(path, MINIGRID_PROMPT, batch_size=8, max_new_tokens=new_tokens, **kwargs)
            advisor.advise(requests)  # warm-up
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                advisor.advise(requests)
                times.append((time.perf_counter() - start) / len(requests))
            out[name] = 1000 * float(np.median(times))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--requests-per-slot", type=int, default=8, help="requests = this x concurrency (min 16)")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results/advisor_throughput")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.concurrency, args.requests_per_slot, args.repeats, args.new_tokens = [1, 8], 2, 1, 4
    lines = ["| backend | setting | result | target |", "|---|---|---|---|"]
    api = {}
    for c in args.concurrency:
        rate = api_throughput(c, args.latency, max(16, args.requests_per_slot * c))
        target = 0.8 * c / args.latency
        api[c] = dict(requests_per_s=rate, target=target, met=rate >= target)
        lines.append(
            f"| OpenAIAdvisor | concurrency {c}, {args.latency * 1000:.0f} ms latency | {rate:.1f} req/s "
            f"| ≥ {target:.1f} ({'met' if rate >= target else 'missed'}) |"
        )
    hf = hf_costs(args.new_tokens, args.repeats)
    faster = hf["label scoring"] < hf["generation"]
    for name, ms in hf.items():
        lines.append(
            f"| HFAdvisor (tiny LLaVA, batch 8) | {name} | {ms:.1f} ms / request | "
            f"{'scoring < generation: ' + ('met' if faster else 'missed') if name == 'label scoring' else ''} |"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "throughput.json").write_text(json.dumps(dict(args=vars(args), api=api, hf=hf), indent=1))
    (out / "throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
