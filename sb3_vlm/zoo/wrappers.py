"""The advice wrapper as RL Zoo builds env wrappers: a callable taking the env and the yml's keyword arguments."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

import gymnasium as gym

logger = logging.getLogger(__name__)

#: True while RL Zoo builds an env that needs no advice (evaluation envs, ``enjoy``): the wrapper then only adds the
#: teacher view. Set by :func:`sb3_vlm.zoo.main`; with SubprocVecEnv workers it is not seen (they query anyway).
ADVICE_OFF = False
_SECRET_KEYS = ("api_key", "key", "token", "password")


def advice_wrapper(
    env: gym.Env,
    advisor: str = "oracle",
    advisor_kwargs: dict[str, Any] | None = None,
    prompt: str | None = None,
    query_every: int = 1,
    cache: str | None = None,
) -> gym.Env:
    """
    Attach VLM advice to an env built by RL Zoo, from the yml's ``env_wrapper`` entry::

        env_wrapper:
          - sb3_vlm.zoo.advice_wrapper: {advisor: "openai:gpt-4o-mini", query_every: 10, cache: advice.sqlite}

    The env gets its teacher view first (:func:`~sb3_vlm.envs.registry.attach_teacher`: MiniGrid, Pendulum and the
    ``sb3_vlm/<name>-v0`` suite know theirs), then :class:`~sb3_vlm.wrappers.VLMAdviceWrapper`.

    :param env: the env RL Zoo made (after its Monitor and any earlier ``env_wrapper`` entries)
    :param advisor: an advisor spec (:data:`~sb3_vlm.advisors.factory.SPEC_HELP`); ``oracle`` = the env's scripted
        expert
    :param advisor_kwargs: passed to the advisor (``base_url``, ``device``, ``concurrency`` ...). API keys are
        refused here: they come from the environment (``OPENAI_API_KEY``, ``GEMINI_API_KEY``), because RL Zoo copies
        the yml into the run's log folder
    :param prompt: a built-in prompt name (default: the env's)
    :param query_every: ask on every k-th step
    :param cache: path of an advice cache (SQLite), shared by runs and workers, or the URL of a cache server shared
        by machines (``redis://host:6379/0``; its password in ``SB3_VLM_CACHE_PASSWORD``)
    """
    from sb3_vlm.advisors.factory import advisor_from_spec
    from sb3_vlm.advisors.prompts import BUILTIN_PROMPTS
    from sb3_vlm.envs.registry import attach_teacher
    from sb3_vlm.wrappers import VLMAdviceWrapper

    kwargs = dict(advisor_kwargs or {})
    secrets = sorted(k for k in kwargs if k.lower() in _SECRET_KEYS)
    if secrets:
        raise ValueError(
            f"advisor_kwargs must not hold secrets ({', '.join(secrets)}): RL Zoo saves the config next to the model. "
            "Set OPENAI_API_KEY / GEMINI_API_KEY in the environment instead."
        )
    if cache is not None and "://" in str(cache) and urlsplit(str(cache)).password is not None:
        raise ValueError(
            "the cache URL must not hold a password: RL Zoo saves the config next to the model. Set "
            "SB3_VLM_CACHE_PASSWORD in the environment instead."
        )
    env, default_prompt, oracle = attach_teacher(env)
    if ADVICE_OFF:
        return env
    if prompt is not None:
        if prompt not in BUILTIN_PROMPTS:
            raise ValueError(f"Unknown prompt {prompt!r}; built-in prompts: {sorted(BUILTIN_PROMPTS)}")
        chosen = BUILTIN_PROMPTS[prompt]
    elif default_prompt is not None:
        chosen = default_prompt
    elif advisor.partition(":")[0] in ("openai", "gemini", "hf"):
        raise ValueError(f"No default prompt for {env.spec.id if env.spec else env}: give `prompt:` in the yml")
    else:
        chosen = BUILTIN_PROMPTS["continuous-control"]  # unused by scripted and constant advisors
    return VLMAdviceWrapper(
        env, advisor_from_spec(advisor, chosen, oracle=oracle, **kwargs), query_every=query_every, cache=cache
    )
