"""Tiny, randomly initialised models built offline, for tests, benchmarks and the built-in demo.

`build_tiny_model(out_dir, arch)` writes an ordinary Hugging Face model directory (config,
safetensors, tokenizer, image/video processor configs, chat template) that
`AutoModelForImageTextToText.from_pretrained` (or `AutoModelForCausalLM` for the text arch) and
vLLM's CPU server load like a hub checkpoint. Nothing is downloaded:

- the tokenizer is a byte-level BPE trained here with `tokenizers` on text made from MELLM's own
  vocabularies and prompts, so domain words ("negative", "lip corner puller") are few tokens;
  it has Qwen's special tokens and Qwen's pre-tokenizer, and loads as `Qwen2Tokenizer`;
- the chat template is Qwen2-VL's layout with `{% generation %}` markers around the assistant
  turn (trl's assistant-only loss reads them);
- text head_dim 32 (vLLM's CPU attention has kernels for 32, 64, 80, ... only: a head_dim of 16
  built fine in transformers but crashed vLLM at its first request), 2 layers, vocab 1024; a
  2-block vision tower.

`real_size_config(name)` gives the published Qwen2.5-VL-3B/7B architectures (random weights) for
throughput benchmarks on a GPU.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from mellm.errors import ConfigError

TINY_ARCHS = ("qwen2_5_vl", "qwen2_vl", "qwen3_vl", "qwen2")  # qwen2: text-only causal LM

# Qwen's special tokens, in Qwen's order. They get the top ids of the vocabulary, as in Qwen.
SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)

# Qwen2-VL's chat layout, written out so the assistant turn sits inside {% generation %}. The
# content loops iterate over message['content'] directly (no macros): vLLM inspects the template
# to decide that it takes OpenAI-style content lists, and would otherwise flatten them to text.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- generation -%}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for content in message['content'] -%}"
    "{%- if 'text' in content -%}{{- content['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endgeneration -%}"
    "{%- else -%}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for content in message['content'] -%}"
    "{%- if content['type'] == 'image' or 'image' in content or 'image_url' in content -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif content['type'] == 'video' or 'video' in content -%}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif 'text' in content -%}{{- content['text'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

# Image sizes for the tiny processors: at most 112x112 pixels per image (16 merged tokens with
# 14-px patches), so three images cost ~50 tokens and a CPU step stays well under a second.
TINY_MIN_PIXELS = 28 * 28
TINY_MAX_PIXELS = 112 * 112

_GENERIC_TEXT = """\
The quick brown fox jumps over the lazy dog. A face shows what a person feels, sometimes for
less than half a second. Please answer the question in one word or a short sentence. The model
reads the images and the text, then writes an answer. Yes, no, left, right, both, none.
What is shown? Which side moves? How many events appear in this video? Describe it in detail.
Regions: inner brow, outer brow, upper eyelid, lower eyelid, nostril wing, mouth corner, upper
lip, lower lip, chin, cheek, nose tip. Directions: up, down, inward, outward, up-outward,
down-inward, no significant motion, no clear dominant direction. Magnitude in pixels, mean and
maximum, coherence and strain. Onset, apex, offset; frames per second; a micro-expression event
and a macro-expression event in a long video.
"""


def domain_corpus(n_random: int = 400, seed: int = 0) -> list[str]:
    """Text to train the tiny tokenizer on: prompts and answers as MELLM writes them."""
    from mellm.labels import AU_NAMES, COARSE_CLASSES, COARSE_OF_FINE, FINE_EMOTIONS
    from mellm.prompts import IMAGE_ROLE_TEXT, SYSTEM_PROMPT, user_text
    from mellm.vqa import QType, combined_answer, question_text

    rng = random.Random(seed)
    lines = [SYSTEM_PROMPT, _GENERIC_TEXT, *IMAGE_ROLE_TEXT.values(), *FINE_EMOTIONS, *COARSE_CLASSES]
    lines += [f"{name} (AU{num})" for num, name in AU_NAMES.items()]
    aus = list(AU_NAMES)[:26]
    for _ in range(n_random):
        picked = sorted(rng.sample(aus, rng.randint(1, 3)))
        fine = rng.choice(list(COARSE_OF_FINE))
        qtype = rng.choice([QType.COARSE, QType.FINE, QType.AU_LIST, QType.AU_YESNO, QType.AU_SIDE, QType.COMBINED])
        q = question_text(qtype, n_aus=len(picked), au=picked[0])
        evidence = ", ".join(f"{AU_NAMES[a]} on the {rng.choice(['left', 'right', 'both sides'])}" for a in picked)
        lines.append(user_text(q, ("onset", "apex", "flow"), f"Motion suggests {evidence}."))
        lines.append(combined_answer(picked, fine, COARSE_OF_FINE[fine]))
    return lines


def train_tokenizer(vocab_size: int = 1024, seed: int = 0):
    """A Qwen2Tokenizer (byte-level BPE, Qwen pre-tokenizer and special tokens) trained locally.
    The special tokens take the ids after the learnt ones; the corpus is small, so the tokenizer
    can end up with fewer than `vocab_size` tokens (the model's embedding keeps spare rows, as Qwen's do)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import AddedToken, Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte stays encodable
        show_progress=False,
    )
    bpe.train_from_iterator(domain_corpus(seed=seed), trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tok = Qwen2Tokenizer(
        vocab=model["vocab"], merges=merges, unk_token=None, bos_token=None,
        eos_token="<|im_end|>", pad_token="<|endoftext|>",
    )
    tok.add_special_tokens({"additional_special_tokens": [
        AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS
    ]})
    tok.model_max_length = 4096
    if len(tok) > vocab_size:  # fewer is fine (as in Qwen: the embedding has spare rows)
        raise RuntimeError(f"tiny tokenizer has {len(tok)} tokens, more than the vocabulary of {vocab_size}")
    return tok


def _special_ids(tok) -> dict:
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    return {
        "image_token_id": ids["<|image_pad|>"], "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"], "vision_end_token_id": ids["<|vision_end|>"],
        "eos": ids["<|im_end|>"], "pad": ids["<|endoftext|>"],
    }


def tiny_config(arch: str, tok_ids: dict, vocab_size: int = 1024):
    """The tiny architecture's config. Text: hidden 128, 4 heads of 32, 2 KV heads, 2 layers."""
    import transformers as tf

    text = dict(
        vocab_size=vocab_size, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-6,
        bos_token_id=None, eos_token_id=tok_ids["eos"], pad_token_id=tok_ids["pad"],
    )
    mm = {k: tok_ids[k] for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")}
    mrope = {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [4, 6, 6]}  # sums to head_dim/2
    if arch == "qwen2":
        return tf.Qwen2Config(**text, rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
                              tie_word_embeddings=True)
    if arch == "qwen2_5_vl":
        vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=128,
                      patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                      fullatt_block_indexes=[1], tokens_per_second=2)
        return tf.Qwen2_5_VLConfig(text_config={**text, "rope_parameters": mrope}, vision_config=vision,
                                   tie_word_embeddings=True, **mm)
    if arch == "qwen2_vl":
        vision = dict(depth=2, embed_dim=32, hidden_size=128, mlp_ratio=2, num_heads=2,
                      patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
        return tf.Qwen2VLConfig(text_config={**text, "rope_parameters": mrope}, vision_config=vision,
                                tie_word_embeddings=True, **mm)
    if arch == "qwen3_vl":
        vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=128,
                      patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64,
                      deepstack_visual_indexes=[0])
        rope = {"rope_type": "default", "rope_theta": 5_000_000.0, "mrope_section": [4, 6, 6],
                "mrope_interleaved": True}
        return tf.Qwen3VLConfig(text_config={**text, "head_dim": 32, "rope_parameters": rope},
                                vision_config=vision, tie_word_embeddings=True, **mm)
    raise ConfigError(f"unknown tiny arch {arch!r}; known: {', '.join(TINY_ARCHS)}")


def real_size_config(name: str, tok_ids: dict):
    """Published Qwen2.5-VL-3B / -7B architectures (random weights), for GPU throughput runs.
    The vocabulary size is the real one; the special-token ids follow the tokenizer in use."""
    import transformers as tf

    vision = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, window_size=112, tokens_per_second=2,
                  fullatt_block_indexes=[7, 15, 23, 31])
    mrope = {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [16, 24, 24]}
    common = dict(max_position_embeddings=128000, rms_norm_eps=1e-6, rope_parameters=mrope,
                  bos_token_id=None, eos_token_id=tok_ids["eos"], pad_token_id=tok_ids["pad"])
    sizes = {
        "qwen2_5_vl_3b": dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008,
                              num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2),
        "qwen2_5_vl_7b": dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                              num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4),
    }
    if name not in sizes:
        raise ConfigError(f"unknown real-size architecture {name!r}; known: {', '.join(sizes)}")
    text = {**sizes[name], **common}
    mm = {k: tok_ids[k] for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")}
    return tf.Qwen2_5_VLConfig(text_config=text, vision_config={**vision, "out_hidden_size": text["hidden_size"]},
                               tie_word_embeddings=name.endswith("3b"), **mm)


def tiny_processor(arch: str, tok, min_pixels: int = TINY_MIN_PIXELS, max_pixels: int = TINY_MAX_PIXELS):
    """The processor that matches `arch`: Qwen's image and video processors around `tok`."""
    import transformers as tf

    size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    if arch in ("qwen2_5_vl", "qwen2_vl"):
        image = tf.Qwen2VLImageProcessor(size=size, patch_size=14, merge_size=2, temporal_patch_size=2)
        video = tf.Qwen2VLVideoProcessor(size=size, patch_size=14, merge_size=2, temporal_patch_size=2)
        cls = tf.Qwen2_5_VLProcessor if arch == "qwen2_5_vl" else tf.Qwen2VLProcessor
    elif arch == "qwen3_vl":
        image = tf.Qwen2VLImageProcessor(size=size, patch_size=16, merge_size=2, temporal_patch_size=2,
                                         image_mean=[0.5] * 3, image_std=[0.5] * 3)
        video = tf.Qwen3VLVideoProcessor(size=size, patch_size=16, merge_size=2, temporal_patch_size=2)
        cls = tf.Qwen3VLProcessor
    else:
        raise ConfigError(f"arch {arch!r} has no image processor (text-only)")
    return cls(image_processor=image, tokenizer=tok, video_processor=video, chat_template=CHAT_TEMPLATE)


def build_tiny_model(out_dir: str | Path, arch: str = "qwen2_5_vl", seed: int = 0, vocab_size: int = 1024,
                     min_pixels: int = TINY_MIN_PIXELS, max_pixels: int = TINY_MAX_PIXELS,
                     head_gain: float | None = None) -> Path:
    """Write a tiny random model directory for `arch` (see TINY_ARCHS) and return its path.

    `head_gain`: the weight of the final RMSNorm, i.e. how large the logits can get. With random
    embeddings (std 0.02, tied to the LM head) and the norm at 1, every logit stays within a few
    units of zero, so whatever LoRA learns the next-token distribution is almost flat (entropy
    ~ln 1024): greedy decoding reads the learnt argmax, but a sampled answer is noise. A
    pretrained model's distributions are peaked; a gain of 10 lets the tiny one's be too, which
    sampling-based training (GRPO) needs in order to explore near the answer. (Scaling the tied
    embeddings instead also scales the input side, which then drowns what attention adds: the
    model stopped reading the question.)"""
    import torch
    import transformers as tf

    if arch not in TINY_ARCHS:
        raise ConfigError(f"unknown tiny arch {arch!r}; known: {', '.join(TINY_ARCHS)}")
    if head_gain is not None and not head_gain > 0:
        raise ConfigError(f"head_gain {head_gain} must be > 0 (the final norm's weight)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(vocab_size, seed=seed)
    tok.chat_template = CHAT_TEMPLATE
    ids = _special_ids(tok)
    config = tiny_config(arch, ids, vocab_size)
    torch.manual_seed(seed)
    if arch == "qwen2":
        model = tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        tok.save_pretrained(out)
    else:
        model = tf.AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
        tiny_processor(arch, tok, min_pixels, max_pixels).save_pretrained(out)
    if head_gain is not None:
        with torch.no_grad():
            model.get_decoder().norm.weight.fill_(head_gain)
    model.generation_config = tf.GenerationConfig(
        eos_token_id=[ids["eos"], ids["pad"]], pad_token_id=ids["pad"], do_sample=False,
    )
    model.save_pretrained(out)
    # A human-readable note of what this directory is, for anyone who finds it later.
    (out / "TINY_MODEL.md").write_text(
        f"Tiny random `{arch}` model built offline by `mellm tiny-model` (train/tiny_models.py), seed {seed}"
        + (f", final norm gain {head_gain}" if head_gain is not None else "") + ".\n"
        "For tests and demos only: its weights are random and it knows nothing.\n"
    )
    return out


def build_random_adapter(model_dir: str | Path, out_dir: str | Path, rank: int = 8, seed: int = 0) -> Path:
    """A LoRA adapter on `model_dir`'s language model with random, non-zero weights (peft would
    start it at zero, changing nothing), so that serving it visibly changes the answers: for the
    serving tests and benchmark, where what matters is that the adapter is applied exactly."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from mellm.train.config import LM_MODULES
    from mellm.train.lora import target_regex

    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=target_regex(LM_MODULES), init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(out_dir)
    return Path(out_dir)
