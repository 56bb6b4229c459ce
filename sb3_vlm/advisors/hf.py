"""A local VLM advisor on ``transformers`` (``AutoModelForImageTextToText`` + processor), batched."""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch as th
from gymnasium import spaces

from sb3_vlm.advice import Advice, AdviceRequest, image_as_uint8
from sb3_vlm.advisors.prompted import Call, Generation, PromptedAdvisor, RetryDecision
from sb3_vlm.advisors.prompts import PromptTemplate

logger = logging.getLogger(__name__)


class SplitProcessor:
    """
    What ``AutoProcessor`` gives for Qwen2-VL-style models, built from the tokenizer and the PIL image processor
    when the real processor cannot load (Qwen2-VL's needs torchvision for its video processor). It expands each
    ``<|image_pad|>`` to the image's patch count and returns ``mm_token_type_ids`` as the real processor does.
    """

    def __init__(self, tokenizer: Any, image_processor: Any, image_token: str = "<|image_pad|>"):
        self.tokenizer, self.image_processor, self.image_token = tokenizer, image_processor, image_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        self.merge = int(getattr(image_processor, "merge_size", 2)) ** 2

    def apply_chat_template(self, messages: list[dict[str, Any]], **kwargs: Any) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)

    def __call__(self, images: list[Any] | None = None, text: list[str] | None = None, **kwargs: Any) -> dict[str, Any]:
        assert text is not None
        out: dict[str, Any] = {}
        if images:
            pixels = self.image_processor(images=images, return_tensors="pt")
            counts = [int(g.prod()) // self.merge for g in pixels["image_grid_thw"]]
            expanded, k = [], 0
            for t in text:
                parts = t.split(self.image_token)
                rebuilt = parts[0]
                for part in parts[1:]:
                    rebuilt += self.image_token * counts[k] + part
                    k += 1
                expanded.append(rebuilt)
            text = expanded
            out.update(pixels)
        tokens = self.tokenizer(text, return_tensors="pt", padding=True)
        out.update(tokens)
        out["mm_token_type_ids"] = (tokens["input_ids"] == self.image_token_id).long()
        return out

    def batch_decode(self, ids: Any, **kwargs: Any) -> list[str]:
        return self.tokenizer.batch_decode(ids, **kwargs)


#: VLMs that ship inside the package (no download): short name -> directory. ``pocket-minigrid`` is the pocket
#: Qwen2-VL of issue 20, rebuilt by ``python -m sb3_vlm.experiments.pocket --out DIR``
POCKET_MODELS = {"pocket-minigrid": Path(__file__).parent / "pocket" / "minigrid"}


def resolve_model(model: str) -> tuple[str, str]:
    """
    ``(path_or_hub_id, name)`` for ``model``: a :data:`POCKET_MODELS` name becomes its directory, named with a digest
    of its weights (so caches never serve a rebuilt model's predecessor's answers); anything else is itself.
    """
    if model not in POCKET_MODELS:
        return model, model
    path = POCKET_MODELS[model]
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(
            f"The {model} weights are missing from {path} (a broken install?); rebuild them with "
            f"python -m sb3_vlm.experiments.pocket --out {path}"
        )
    return str(path), f"{model}@{hashlib.sha256(weights.read_bytes()).hexdigest()[:10]}"


def load_processor(path: str, **kwargs: Any) -> Any:
    """``AutoProcessor``, or a :class:`SplitProcessor` when it needs torchvision (logged, not silent)."""
    from transformers import AutoConfig, AutoProcessor, AutoTokenizer

    try:
        return AutoProcessor.from_pretrained(path, **kwargs)
    except ImportError as exc:
        if "orchvision" not in str(exc):
            raise
        model_type = AutoConfig.from_pretrained(path, **kwargs).model_type
        if model_type not in ("qwen2_vl", "qwen2_5_vl"):
            raise ImportError(f"The processor of {path} ({model_type}) needs torchvision: {exc}") from exc
        from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil

        logger.warning(
            "torchvision is not installed, so %s's processor cannot load; using its tokenizer and the PIL image "
            "processor instead (images only, no video)",
            path,
        )
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        return SplitProcessor(tokenizer, Qwen2VLImageProcessorPil.from_pretrained(path, **kwargs))


class HFAdvisor(PromptedAdvisor):
    """
    A local VLM (LLaVA, Qwen2-VL, Qwen2.5-VL, SmolVLM ... anything ``AutoModelForImageTextToText`` loads).

    - Batches of requests go through one padded (left) forward pass or ``generate`` call, ``batch_size`` at a time.
    - Discrete actions with ``distribution="logprobs"`` (default here): the labels are scored in ONE forward pass
      from the next-token logits (softmax over the labels' first tokens), no generation at all.
    - Continuous actions (or ``distribution="written"``): greedy generation, parsed like API answers.

    :param model: a hub id, a local directory, or a model shipped with the package (:data:`POCKET_MODELS`:
        ``"pocket-minigrid"``)
    :param prompt: the :class:`~sb3_vlm.advisors.prompts.PromptTemplate`
    :param device: torch device (``"cpu"``, ``"cuda"``, ``"cuda:1"``); ``"auto"``: CUDA where there is a GPU, else
        the CPU
    :param dtype: ``"auto"``, ``"float32"``, ``"bfloat16"``, ``"float16"``
    :param batch_size: requests per forward pass
    :param max_new_tokens: generation budget
    :param adapter: path of a LoRA adapter (peft) to load on top (COVR's fine-tuned rounds)
    :param distribution: ``"logprobs"`` (label scoring) or ``"written"`` (generated, parsed)
    :param temperature: 0 for greedy generation
    :param model_kwargs: extra ``from_pretrained`` arguments (``local_files_only=True`` ...)
    """

    def __init__(
        self,
        model: str,
        prompt: PromptTemplate,
        device: str = "cpu",
        dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto",
        batch_size: int = 16,
        max_new_tokens: int = 64,
        adapter: str | None = None,
        distribution: Literal["logprobs", "written"] = "logprobs",
        temperature: float = 0.0,
        model_kwargs: dict[str, Any] | None = None,
    ):
        super().__init__(
            prompt,
            distribution=distribution,
            temperature=temperature,
            max_retries=0,
            max_tokens=max_new_tokens,
            concurrency=1,
        )
        try:
            from transformers import AutoModelForImageTextToText
        except ImportError as exc:
            raise ImportError("HFAdvisor needs the 'hf' extra: pip install 'sb3-vlm[hf]'") from exc
        if distribution not in ("logprobs", "written"):
            raise ValueError(f"HFAdvisor's distribution is 'logprobs' or 'written', got {distribution!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        kwargs = dict(model_kwargs or {})
        if device == "auto":
            device = "cuda" if th.cuda.is_available() else "cpu"
        model, name = resolve_model(model)
        if name != model:
            kwargs["local_files_only"] = True  # a shipped model never touches the hub
        self.model_name, self.device, self.batch_size, self.adapter = name, device, batch_size, adapter
        self.adapter_digest = ""
        self.dtype = dtype
        torch_dtype: Any = dtype if dtype == "auto" else getattr(th, dtype)
        self.processor = load_processor(
            model, **{k: v for k, v in kwargs.items() if k in ("local_files_only", "revision")}
        )
        self.model = AutoModelForImageTextToText.from_pretrained(model, dtype=torch_dtype, **kwargs).to(device)  # type: ignore[arg-type]
        if adapter is not None:
            self.load_adapter(adapter)
        self.model.eval()
        # a model trained on views of one size says so in its config (the pocket VLM: one image token per cell)
        view_size = getattr(self.model.config, "sb3_vlm_view_size", None)
        if view_size is not None:
            self.preferred_view_size = int(view_size)
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        self.tokenizer.padding_side = "left"  # generation and last-position scoring need left padding
        self._label_ids: list[int] | None = None
        self._answer_prefix = ""
        #: held while the model answers and while it is fine-tuned (COVR), so background advice never runs
        #: generation on a model that is half-way through a LoRA round
        self.model_lock = threading.RLock()

    def load_adapter(self, path: str) -> None:
        """Put a (new) LoRA adapter on the model; the adapter path is part of the cache identity."""
        try:
            from peft import PeftModel
        except ImportError as exc:
            raise ImportError("LoRA adapters need the 'hf' extra (peft): pip install 'sb3-vlm[hf]'") from exc
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        self.model = PeftModel.from_pretrained(base, path).to(self.device).eval()
        self.note_adapter(path)

    def note_adapter(self, path: str | None) -> None:
        """
        Record the adapter the model answers with now: its path and a digest of its LoRA weights. Both are in the
        cache identity, so answers given before a fine-tuning round are never served after it, even when a
        later run saves a different adapter under the same path.
        """
        digest = hashlib.sha256()
        for name, tensor in sorted(self.model.state_dict().items()):
            if "lora_" in name:
                digest.update(name.encode())
                digest.update(tensor.detach().float().cpu().numpy().tobytes())
        self.adapter = path
        self.adapter_digest = digest.hexdigest()[:12]

    @property
    def identity(self) -> str:
        # no adapter reads "adapter=None", as before adapters had digests (older caches stay valid)
        adapter = f"{self.adapter}#{self.adapter_digest}" if self.adapter_digest else str(self.adapter)
        return f"hf:{self.model_name}:adapter={adapter}:{self.settings_identity()}:dtype={self.dtype}"

    def __repr__(self) -> str:
        return f"HFAdvisor(model={self.model_name!r}, adapter={self.adapter!r}, prompt={self.prompt.name!r})"

    # ------------------------------------------------------------------ inputs

    def label_token_ids(self) -> list[int]:
        """First token of each label, with or without a leading space, whichever keeps them all distinct."""
        if self._label_ids is None:
            for prefix in (" ", ""):
                ids = [
                    self.tokenizer.encode(prefix + label, add_special_tokens=False)[0] for label in self.prompt.labels
                ]
                if len(set(ids)) == len(ids):
                    self._label_ids, self._answer_prefix = ids, prefix
                    break
            else:
                raise ValueError(f"The labels {self.prompt.labels} share first tokens; use labels that differ at once")
        return self._label_ids

    @property
    def answer_prefix(self) -> str:
        """
        What goes between the generation prompt and an answer: the leading space of the label tokens that
        :meth:`score_labels` reads (``" left"``, not ``"left"``), so fine-tuning teaches the tokens scored.
        """
        if self.prompt.labels and self.distribution == "logprobs":
            self.label_token_ids()
            return self._answer_prefix
        return ""

    def chat_prompt(self, request: AdviceRequest, description: str = "") -> tuple[str, Any]:
        """The generation prompt for ``request`` (chat template applied) and its PIL image, or None without one."""
        from PIL import Image

        system, user = self.prompt.render(request, description)
        content: list[dict[str, Any]] = []
        image = None
        if request.image is not None:
            content.append({"type": "image"})
            image = Image.fromarray(np.ascontiguousarray(image_as_uint8(request.image)))
        content.append({"type": "text", "text": user})
        messages = ([{"role": "system", "content": [{"type": "text", "text": system}]}] if system else []) + [
            {"role": "user", "content": content}
        ]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True), image

    def _inputs(self, requests: Sequence[AdviceRequest], descriptions: Sequence[str] | None = None) -> dict[str, Any]:
        texts, images = [], []
        for i, request in enumerate(requests):
            text, image = self.chat_prompt(request, descriptions[i] if descriptions else "")
            texts.append(text)
            if image is not None:
                images.append(image)
        inputs = self.processor(images=images or None, text=texts, return_tensors="pt", padding=True)
        return {k: (v.to(self.device) if isinstance(v, th.Tensor) else v) for k, v in dict(inputs).items()}

    # ------------------------------------------------------------------ batched backends

    def score_labels(self, requests: Sequence[AdviceRequest], descriptions: Sequence[str] | None = None) -> np.ndarray:
        """Label probabilities for each request from ONE forward pass: softmax of the next-token label logits."""
        inputs = self._inputs(requests, descriptions)
        with th.no_grad():
            logits = self.model(**inputs).logits[:, -1, :]
        label_logits = logits[:, self.label_token_ids()].float()
        return th.softmax(label_logits, dim=-1).cpu().numpy()

    def generate_texts(self, requests: Sequence[AdviceRequest], descriptions: Sequence[str] | None = None) -> list[str]:
        inputs = self._inputs(requests, descriptions)
        sample = self.temperature > 0
        with th.no_grad():
            out = self.model.generate(
                **inputs,
                max_new_tokens=self.max_tokens,
                do_sample=sample,
                temperature=self.temperature if sample else None,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        return self.processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)

    def _advise(self, requests: Sequence[AdviceRequest]) -> list[Advice]:
        answers: list[Advice] = []
        starts = range(0, len(requests), self.batch_size)
        with self.model_lock:
            for start in self._progress(starts, len(starts), len(requests), unit="batch"):
                chunk = list(requests[start : start + self.batch_size])
                answers += self._advise_chunk(chunk)
        return answers

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["model_lock"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.model_lock = threading.RLock()

    def _advise_chunk(self, chunk: list[AdviceRequest]) -> list[Advice]:
        descriptions = self._describe(chunk) if self.prompt.describe_first else None
        discrete = all(isinstance(r.action_space, spaces.Discrete) for r in chunk)
        if discrete and self.distribution == "logprobs":
            probs = self.score_labels(chunk, descriptions)
            return [Advice(probs=p.astype(np.float32), source=self.identity) for p in probs]
        texts = self.generate_texts(chunk, descriptions)
        return [self.parse(text, r.action_space) for text, r in zip(texts, chunk, strict=True)]

    def _describe(self, chunk: list[AdviceRequest]) -> list[str]:
        first = self.prompt.with_(user=self.prompt.describe_first, describe_first="")
        saved, self.prompt = self.prompt, first
        try:
            return self.generate_texts(chunk)
        finally:
            self.prompt = saved

    def answer(self, request: AdviceRequest) -> Advice:
        """One request, as a batch of one (what :meth:`advise` gives it; raises on a backend failure like the other
        prompted advisors' ``answer``, where :meth:`advise` counts it and returns invalid advice)."""
        with self.model_lock:
            return self._advise_chunk([request])[0]

    def _generate(self, request: AdviceRequest, call: Call) -> Generation:
        # PromptedAdvisor's per-request API path: a local model answers whole batches (answer / advise) instead
        raise TypeError("HFAdvisor generates in batches: call advise() or answer(), not the per-call API path")

    def _classify(self, exc: Exception) -> RetryDecision | None:
        return None
