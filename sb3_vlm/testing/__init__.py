"""Offline test helpers, public so users can test their prompts and pipelines without keys or weights:
a loopback HTTP server that plays an OpenAI / Gemini endpoint, and tiny random VLM checkpoints."""

from sb3_vlm.testing.loopback import LoopbackServer, Reply, chat_completion

__all__ = ["LoopbackServer", "Reply", "chat_completion"]
