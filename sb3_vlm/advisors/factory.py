"""Advisors from short specs (``openai:gpt-4o-mini``, ``gemini:gemini-2.0-flash``, ``hf:PATH``, ``oracle``)."""

from __future__ import annotations

from typing import Any

from sb3_vlm.advisors.base import Advisor
from sb3_vlm.advisors.prompts import PromptTemplate

SPEC_HELP = (
    "openai:MODEL | gemini:MODEL | hf:MODEL_OR_PATH | oracle (the env's scripted expert) | constant:VALUE (always "
    "that action: a worst-model baseline and CPU smoke runs)"
)


def advisor_from_spec(spec: str, prompt: PromptTemplate, oracle: Advisor | None = None, **kwargs: Any) -> Advisor:
    """
    Build an advisor from ``spec``; keys come from the environment (``OPENAI_API_KEY``, ``GEMINI_API_KEY``).

    :param spec: see :data:`SPEC_HELP`
    :param prompt: the prompt template for VLM advisors
    :param oracle: what ``"oracle"`` means for the env at hand
    :param kwargs: passed to the advisor (``base_url=...``, ``device=...``)
    """
    kind, _, name = spec.partition(":")
    if kind == "oracle" and not name:
        if oracle is None:
            raise ValueError("This env has no scripted oracle; use openai:, gemini: or hf:")
        return oracle
    if not name:
        raise ValueError(f"Advisor spec {spec!r} must look like {SPEC_HELP}")
    if kind == "constant":
        from sb3_vlm.advisors.scripted import ConstantAdvisor

        try:  # an integer is a discrete action index, anything else a continuous value
            return ConstantAdvisor(int(name) if name.lstrip("-").isdigit() else float(name))
        except ValueError:
            raise ValueError(f"constant:VALUE needs a number, got {name!r}") from None
    if kind == "openai":
        from sb3_vlm.advisors.openai_compat import OpenAIAdvisor

        return OpenAIAdvisor(name, prompt, **kwargs)
    if kind == "gemini":
        from sb3_vlm.advisors.gemini import GeminiAdvisor

        return GeminiAdvisor(name, prompt, **kwargs)
    if kind == "hf":
        from sb3_vlm.advisors.hf import HFAdvisor

        return HFAdvisor(name, prompt, **kwargs)
    raise ValueError(f"Unknown advisor kind {kind!r}; expected {SPEC_HELP}")
