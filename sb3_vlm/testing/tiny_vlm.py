"""Tiny randomly initialised VLMs with an offline-trained tokenizer, saved to disk like a hub checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch as th

SPECIALS_LLAVA = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]
SPECIALS_QWEN = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
CORPUS = [
    " left right forward pickup drop toggle done",
    "left right forward pickup drop toggle done",
    "action: [0.1, -0.5] steer throttle Mission: get to the green goal square system user assistant",
] * 50
#: the language model of both tiny VLMs: two layers (one layer cannot learn, by LoRA, to route the image into the
#: answer position: fine-tuning stalls at the image-blind solution), 32 wide, grouped-query attention
TINY_TEXT: dict[str, Any] = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    max_position_embeddings=512,
    # wider than the usual 0.02 so a 32-wide model can still make confident predictions once fine-tuned
    initializer_range=0.3,
)


def _tokenizer(specials: list[str], corpus: list[str] = CORPUS, vocab_size: int = 2000):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=specials[3] if "<unk>" in specials else None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok.train_from_iterator(
        corpus, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, initial_alphabet=alphabet)
    )
    return tok


def build_tiny_llava(path: Path) -> Path:
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    fast = PreTrainedTokenizerFast(
        tokenizer_object=_tokenizer(SPECIALS_LLAVA),
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        padding_side="left",
    )
    fast.add_special_tokens({"additional_special_tokens": ["<image>"]})
    vision = CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14
    )
    text = LlamaConfig(
        vocab_size=len(fast),
        **TINY_TEXT,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=int(fast.convert_tokens_to_ids("<image>")),  # type: ignore[arg-type]
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    th.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    template = (
        "{% for m in messages %}{{ m['role'].upper() }}: {% if m['content'] is string %}{{ m['content'] }}{% else %}"
        "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}"
        "{% endfor %}{% endif %}{{ '\\n' }}{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
    )
    image_processor = CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=fast,
        patch_size=14,
        vision_feature_select_strategy="default",
        chat_template=template,
        num_additional_image_tokens=1,
    )
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


QWEN_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}{{ '\\n' }}{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant{{ '\\n' }}{% endif %}"
)


def build_qwen2vl(
    path: Path,
    text: dict[str, Any],
    vision: dict[str, Any],
    image_processor: dict[str, Any],
    corpus: list[str] | None = None,
    vocab_size: int = 2000,
    seed: int = 0,
    config_extra: dict[str, Any] | None = None,
) -> Path:
    """
    A randomly initialised Qwen2-VL with a byte-level BPE tokenizer trained offline on ``corpus``, saved to ``path``
    like a hub checkpoint (model, tokenizer with Qwen's chat template, PIL image processor).

    :param text: the language model's config (vocabulary size and special token ids are filled in)
    :param vision: the vision tower's config
    :param image_processor: ``Qwen2VLImageProcessorPil`` arguments
    :param config_extra: attributes set on the model config (saved in ``config.json``)
    """
    from transformers import PreTrainedTokenizerFast, Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil

    fast = PreTrainedTokenizerFast(
        tokenizer_object=_tokenizer(SPECIALS_QWEN, corpus or CORPUS, vocab_size),
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        padding_side="left",
    )
    fast.add_special_tokens({"additional_special_tokens": SPECIALS_QWEN[1:]})
    ids = {t: int(fast.convert_tokens_to_ids(t)) for t in SPECIALS_QWEN}  # type: ignore[arg-type]
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(fast),
            **text,
            bos_token_id=None,
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=0,
        ),
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    for key, value in (config_extra or {}).items():
        setattr(config, key, value)
    th.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    fast.chat_template = QWEN_CHAT_TEMPLATE
    model.save_pretrained(path)
    fast.save_pretrained(path)
    Qwen2VLImageProcessorPil(**image_processor).save_pretrained(path)
    return path


def build_tiny_qwen2vl(path: Path) -> Path:
    return build_qwen2vl(
        path,
        text=dict(
            **TINY_TEXT,
            rope_theta=10000.0,
            tie_word_embeddings=True,
            rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
        ),
        vision=dict(
            depth=1,
            embed_dim=16,
            hidden_size=32,
            num_heads=2,
            mlp_ratio=2,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            in_channels=3,
        ),
        image_processor=dict(
            min_pixels=28 * 28, max_pixels=56 * 56, patch_size=14, merge_size=2, temporal_patch_size=2
        ),
    )
