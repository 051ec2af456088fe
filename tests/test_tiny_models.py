"""The tiny local models: built offline, loadable through the Auto classes like hub checkpoints,
with a chat template that marks the answer and a vLLM-compatible head size."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from mellm.prompts import build_messages  # noqa: E402
from mellm.train.tiny_models import TINY_ARCHS, build_tiny_model  # noqa: E402

VLM_ARCHS = [a for a in TINY_ARCHS if a != "qwen2"]


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {arch: build_tiny_model(root / arch, arch) for arch in TINY_ARCHS}


def _images():
    from PIL import Image

    return [Image.new("RGB", (56, 56), c) for c in ((120, 120, 120), (128, 128, 128), (200, 40, 160))]


@pytest.mark.parametrize("arch", VLM_ARCHS)
def test_vlm_loads_and_runs_with_images(tiny_dirs, arch):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = tiny_dirs[arch]
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == arch
    text = config["text_config"]
    head_dim = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
    assert head_dim >= 32  # vLLM's CPU attention has no kernel below 32

    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    messages = build_messages("What is the coarse expression class?", evidence_text="lip corner puller on both sides")
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt.count("<|vision_start|><|image_pad|><|vision_end|>") == 3
    assert prompt.endswith("<|im_start|>assistant\n")
    enc = processor(text=[prompt], images=_images(), return_tensors="pt")
    # 56x56 images, 2x2 merge: a handful of tokens per image keeps CPU steps fast
    n_image_tokens = int((enc["input_ids"] == config["image_token_id"]).sum())
    assert 3 <= n_image_tokens <= 3 * 16
    out = model.generate(**enc, max_new_tokens=3, do_sample=False)
    assert out.shape[1] > enc["input_ids"].shape[1]


def test_text_model_loads_and_generates(tiny_dirs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dirs["qwen2"])
    model = AutoModelForCausalLM.from_pretrained(tiny_dirs["qwen2"]).eval()
    messages = build_messages("What is the coarse expression class?", evidence_text="brow lowerer", text_only=True)
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 3 or tok.eos_token_id in out[0].tolist()


def test_tokenizer_is_qwen_style_with_domain_words(tiny_dirs):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dirs["qwen2_5_vl"])
    assert type(tok).__name__ == "Qwen2Tokenizer"
    assert len(tok) <= 1024
    for special in ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|image_pad|>", "<|video_pad|>"):
        assert tok.convert_tokens_to_ids(special) is not None and tok.tokenize(special) == [special]
    for word in (" negative", " positive", " surprise", " lowerer"):
        assert len(tok.tokenize(word)) == 1, word
    text = "Ünïcode and digits 0123 still round-trip"
    assert tok.decode(tok(text)["input_ids"]) == text  # byte-level: nothing is unknown


def test_chat_template_marks_exactly_the_answer(tiny_dirs):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_dirs["qwen2_5_vl"])
    assert "{%- generation -%}" in processor.chat_template
    tok = processor.tokenizer
    rendered = tok.apply_chat_template(
        build_messages("What is the coarse expression class?", answer="positive", text_only=True),
        tokenize=True, return_dict=True, return_assistant_tokens_mask=True, chat_template=processor.chat_template,
    )
    ids, mask = rendered["input_ids"], rendered["assistant_masks"]
    answer = tok.decode([i for i, m in zip(ids, mask) if m])
    assert answer == "positive<|im_end|>\n"


def test_unknown_arch_is_a_clear_error(tmp_path):
    from mellm.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown tiny arch 'llama'"):
        build_tiny_model(tmp_path / "x", "llama")


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen2"])
def test_head_gain_makes_next_token_distributions_peakable(tiny_dirs, tmp_path, arch):
    """At the default gain the random model's next-token distribution is nearly flat (entropy
    close to ln 1024), which makes every sampled GRPO answer noise; head_gain=10 lets it peak."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    cls = AutoModelForCausalLM if arch == "qwen2" else AutoModelForImageTextToText
    peaked_dir = build_tiny_model(tmp_path / arch, arch, head_gain=10.0)

    def entropy(path):
        model = cls.from_pretrained(path).eval()
        with torch.no_grad():
            logits = model(input_ids=torch.arange(10, 30)[None]).logits[0]
        p = logits.softmax(-1)
        return float(-(p * p.clamp_min(1e-12).log()).sum(-1).mean())

    flat, peaked = entropy(tiny_dirs[arch]), entropy(peaked_dir)
    assert flat > 0.95 * torch.log(torch.tensor(1024.0))
    assert peaked < flat - 1.0
    assert "final norm gain 10.0" in (peaked_dir / "TINY_MODEL.md").read_text()


def test_head_gain_must_be_positive(tmp_path):
    from mellm.errors import ConfigError

    with pytest.raises(ConfigError, match="head_gain 0.0 must be > 0"):
        build_tiny_model(tmp_path / "x", "qwen2", head_gain=0.0)
