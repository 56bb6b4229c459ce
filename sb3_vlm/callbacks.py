"""
Callbacks that are not tied to one algorithm: advisor metrics for TensorBoard (and every other SB3 logger).

:func:`advisor_counters` and :func:`advice_counters` live in :mod:`sb3_vlm.advisors.base` (the advice wrappers need
them, and imports point down the layers); they are importable from here too.
"""

from __future__ import annotations

from typing import Any

from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import DISABLED, KVWriter
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper

from sb3_vlm.advisors.background import BACKGROUND_COUNTERS
from sb3_vlm.advisors.base import advice_counters, advisor_counters

__all__ = ["ADVISOR_KEYS", "AdviceMetricsCallback", "advice_counters", "advisor_counters", "collect_advice_counters"]

#: the logger keys of :class:`AdviceMetricsCallback`
ADVISOR_KEYS = (
    "advisor/queries",
    "advisor/cache_hits",
    "advisor/cache_hit_rate",
    "advisor/refusal_hits",
    "advisor/cache_corrupt",
    "advisor/mean_latency_s",
    "advisor/invalid",
    "advisor/malformed",
    "advisor/errors",
    "advisor/parse_failures",
    "advisor/retries",
    "advisor/http_errors",
    "advisor/tokens",
    "advisor/tokens_in",
    "advisor/tokens_out",
    "advisor/cost_usd",
    "advisor/circuit_skips",
    "advisor/budget_skips",
    "advisor/pending",
    "advisor/deduplicated",
    "advisor/overflow",
    "advisor/query_skips",
)


def collect_advice_counters(env: VecEnv) -> dict[str, dict[str, float]]:
    """Counters of every advisor in a VecEnv: VecEnv-level advice wrappers and per-env ``VLMAdviceWrapper``\\ s."""
    found: dict[str, dict[str, float]] = {}
    current: Any = env
    while isinstance(current, VecEnvWrapper):
        if callable(getattr(current, "advice_counters", None)):
            key, counters = current.advice_counters()
            found[key] = counters
        current = current.venv
    try:
        per_env = env.env_method("advice_counters")
    except AttributeError:  # no env-level advice wrapper
        per_env = []
    for key, counters in per_env:
        found[key] = counters
    return found


class AdviceMetricsCallback(BaseCallback):
    """
    Log the advisors' counters under ``advisor/*`` (TensorBoard, CSV, stdout): queries, cache hits and hit rate,
    requests answered by a remembered refusal (``refusal_hits``), cached rows found corrupt and asked again
    (``cache_corrupt``), mean latency, invalid answers and, among them, answers that were marked valid but could not
    be used (``malformed``), backend errors, parse failures, retries, HTTP errors, tokens (in all, of prompts and
    of answers) and their cost in US dollars, requests held back by an open circuit breaker or a spent query or
    dollar budget and, with non-blocking advice, requests still being answered
    (``pending``), identical requests in flight sent once (``deduplicated``) and requests refused by a full queue
    (``overflow``), summed over the training env's advisors (a shared advisor counts once).

    Each refresh logs the latest values, so a dump shows the counters as they are then (not as they were at the first
    refresh after the previous dump, issue 16). SB3 dumps only at its logging intervals, so at training's end the
    final counters are written to the logger's outputs at once (a row of ``advisor/*`` keys at the last step; the
    other keys recorded since the last dump stay pending, as SB3 leaves them). A key some other code logged in the
    current interval is left alone.

    :param log_every: refresh the values at the end of a rollout once this many env steps have passed since the
        last refresh (0: every rollout; collecting them asks every env worker, so raise it for off-policy training
        on a ``SubprocVecEnv``, whose rollouts are single steps)
    :param verbose: 1 prints the counters when training ends
    """

    def __init__(self, log_every: int = 0, verbose: int = 0):
        super().__init__(verbose)
        self.log_every = log_every
        self._last = -1
        self.latest: dict[str, float] = {}
        self._logged: dict[str, float] = {}  # what this callback put into the logger, to tell it from others' values

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        if self._last < 0 or self.num_timesteps - self._last >= self.log_every:
            self.record()

    def _on_training_end(self) -> None:
        self.record()
        self._write_now()
        if self.verbose:
            print("advisor:", {k.split("/", 1)[1]: round(v, 4) for k, v in self.latest.items()})

    def _write_now(self) -> None:
        """Write this callback's values of the current interval to the logger's outputs, as a dump would, without
        dumping (which would also write and clear what others recorded)."""
        ours = {k: v for k, v in self._logged.items() if self.logger.name_to_value.get(k) is v}
        if not ours or self.logger.level == DISABLED:
            return
        for output in self.logger.output_formats:
            if isinstance(output, KVWriter):
                output.write(ours, {k: self.logger.name_to_excluded.get(k, ("",)) for k in ours}, self.num_timesteps)

    def record(self) -> dict[str, float]:
        """Collect and log the counters now; returns what was logged."""
        self._last = self.num_timesteps
        found = collect_advice_counters(self.training_env)
        if not found:
            return {}
        total: dict[str, float] = {}
        for counters in found.values():
            for key, value in counters.items():
                total[key] = total.get(key, 0.0) + value
        looked_up = total["cache_hits"] + total["cache_misses"]
        values = {
            "advisor/queries": total["queries"],
            "advisor/cache_hits": total["cache_hits"],
            "advisor/cache_hit_rate": total["cache_hits"] / looked_up if looked_up else 0.0,
            "advisor/refusal_hits": total["refusal_hits"],
            "advisor/cache_corrupt": total["cache_corrupt"],
            "advisor/mean_latency_s": total["total_latency"] / total["queries"] if total["queries"] else 0.0,
            "advisor/invalid": total["invalid"],
            "advisor/malformed": total["malformed"],
            "advisor/errors": total["errors"],
            "advisor/parse_failures": total["parse_failures"],
            "advisor/retries": total["retries"],
            "advisor/http_errors": total["http_errors"],
            "advisor/tokens": total["tokens"],
            "advisor/tokens_in": total["tokens_in"],
            "advisor/tokens_out": total["tokens_out"],
            "advisor/cost_usd": total["cost_usd"],
            "advisor/circuit_skips": total["circuit_skips"],
            "advisor/budget_skips": total["budget_skips"],
            **{f"advisor/{key}": total.get(key, 0.0) for key in BACKGROUND_COUNTERS},
            "advisor/query_skips": total.get("query_skips", 0.0),
        }
        already = self.logger.name_to_value
        for key, value in values.items():
            # overwrite our own value of this interval (the latest wins), never someone else's
            if key not in already or (key in self._logged and already[key] is self._logged[key]):
                self.logger.record(key, value)
                self._logged[key] = value
        self.latest = values
        return values
