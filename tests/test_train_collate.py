"""Batches and LoRA placement: loss on the answer only, for our tiny template (with generation
markers) and for the real Qwen hub templates (without); LoRA on the language model only; the
frozen vision tower's no-grad run changes no gradient."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from mellm.errors import ConfigError, MellmError  # noqa: E402
from mellm.train.collate import IGNORE, VisionCollator, split_prompt_completion, tokenize_text_example  # noqa: E402

ARCHS = ("qwen2_5_vl", "qwen2_vl", "qwen3_vl")


@pytest.fixture(scope="module")
def assets(tmp_path_factory, meu_instruct):
    import datasets

    from mellm.train.tiny_models import build_tiny_model

    root = tmp_path_factory.mktemp("collate")
    data = meu_instruct
    rows = datasets.load_from_disk(str(data / "hf"))["train"].select_columns(["messages", "images"])
    text_rows = datasets.load_from_disk(str(data / "hf_text"))["train"]
    models = {a: build_tiny_model(root / a, a) for a in (*ARCHS, "qwen2")}
    return {"rows": [rows[i] for i in range(6)], "text_rows": [text_rows[i] for i in range(6)], "models": models}


def _processor(path, chat_template=None):
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(path)
    if chat_template is not None:
        proc.chat_template = chat_template
    return proc


def _trl_batch(proc, rows, chat_template=None):
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    collator = DataCollatorForVisionLanguageModeling(proc, assistant_only_loss=True, chat_template=chat_template)
    return collator([dict(r) for r in rows])


@pytest.mark.parametrize("arch", ARCHS)
def test_batches_equal_trl_generation_marker_masking(assets, arch):
    """Our prefix split gives exactly trl's batch (ids, masks, pixels, labels) on a template whose
    {% generation %} markers tell trl where the answer is."""
    proc = _processor(assets["models"][arch])
    ours = VisionCollator(proc)([dict(r) for r in assets["rows"]])
    theirs = _trl_batch(proc, assets["rows"])
    assert sorted(ours) == sorted(theirs)
    for key in theirs:
        assert torch.equal(ours[key], theirs[key]), key
    kept = ours["labels"][0][ours["labels"][0] != IGNORE]
    assert proc.tokenizer.decode(kept) == assets["rows"][0]["messages"][-1]["content"][0]["text"] + "<|im_end|>\n"


@pytest.mark.parametrize("arch,template", [("qwen2_5_vl", "qwen2_5_vl_chat_template"),
                                           ("qwen3_vl", "qwen3_vl_chat_template")])
def test_real_qwen_templates_without_markers_mask_the_same_answer(assets, arch, template):
    """The hub chat templates of Qwen2-VL/2.5-VL and Qwen3-VL have no generation markers. trl swaps
    in a patched training copy; we render the hub template itself. Same labels either way."""
    import trl.chat_template_utils as ctu

    real = getattr(ctu, template)
    assert not ctu.has_generation_markers(real)
    proc = _processor(assets["models"][arch], chat_template=real)
    ours = VisionCollator(proc)([dict(r) for r in assets["rows"]])
    theirs = _trl_batch(proc, assets["rows"], chat_template=ctu.get_training_chat_template(proc))
    for key in ("input_ids", "labels", "attention_mask", "pixel_values"):
        assert torch.equal(ours[key], theirs[key]), key


def test_text_rows_mask_everything_but_the_answer(assets):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(assets["models"]["qwen2"])
    for row in assets["text_rows"]:
        ours = tokenize_text_example(tok, row["messages"], max_length=None)
        ref = tok.apply_chat_template(row["messages"], tokenize=True, return_dict=True,
                                      return_assistant_tokens_mask=True)
        assert ours["input_ids"] == ref["input_ids"]
        assert ours["labels"] == [t if m else IGNORE for t, m in zip(ref["input_ids"], ref["assistant_masks"])]


def test_truncation_cuts_the_answer_never_the_prompt(assets):
    proc = _processor(assets["models"]["qwen2_5_vl"])
    full = VisionCollator(proc)([dict(assets["rows"][0])])
    n_prompt = int((full["labels"][0] == IGNORE).sum())
    cut = VisionCollator(proc, max_length=n_prompt + 1)([dict(assets["rows"][0])])
    assert cut["input_ids"].shape[1] == n_prompt + 1 and int((cut["labels"] != IGNORE).sum()) == 1
    with pytest.raises(MellmError, match="not shorter than train.max_length=10"):
        VisionCollator(proc, max_length=10)([dict(assets["rows"][0])])


def test_conversation_must_end_with_an_answer_and_template_must_be_prefix_preserving(assets):
    proc = _processor(assets["models"]["qwen2_5_vl"])
    messages = assets["rows"][0]["messages"]
    with pytest.raises(MellmError, match="must end with an assistant turn"):
        split_prompt_completion(proc, messages[:-1])
    proc.chat_template = proc.chat_template.replace("{{- '<|im_start|>assistant\\n' -}}{%- endif -%}",
                                                    "{{- '<|im_start|>bot\\n' -}}{%- endif -%}")
    with pytest.raises(ConfigError, match="not prefix-preserving"):
        split_prompt_completion(proc, messages)


# --- LoRA placement ---------------------------------------------------------------------------

def _peft_model(path, vision=False):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from mellm.train.config import LM_MODULES
    from mellm.train.lora import target_regex

    model = AutoModelForImageTextToText.from_pretrained(path)
    return get_peft_model(model, LoraConfig(r=4, target_modules=target_regex(LM_MODULES, vision=vision)))


@pytest.mark.parametrize("arch", ARCHS)
def test_default_lora_is_on_language_model_modules_only(assets, arch):
    from mellm.train.lora import check_lora_placement, lora_modules

    model = _peft_model(assets["models"][arch])
    names = lora_modules(model)
    assert len(names) == 2 * 7  # 2 layers x q/k/v/o/gate/up/down
    assert all(".language_model.layers." in n for n in names)
    assert check_lora_placement(model, vision_allowed=False)["on_vision"] == 0


@pytest.mark.parametrize("arch", ARCHS)
def test_vision_lora_adds_tower_and_projector_but_not_patch_embedding(assets, arch):
    from mellm.train.lora import check_lora_placement, lora_modules

    model = _peft_model(assets["models"][arch], vision=True)
    names = lora_modules(model)
    vision = [n for n in names if ".visual." in n]
    assert any(".blocks.0.attn.qkv" in n for n in vision) and any(".merger." in n for n in vision)
    assert not any("patch_embed" in n for n in names)
    assert sum(".language_model." in n for n in names) == 14
    with pytest.raises(RuntimeError, match="vision modules"):
        check_lora_placement(model, vision_allowed=False)


def test_vision_without_grad_gives_identical_lora_gradients(assets):
    """speed.run_vision_without_grad: the same loss and bit-identical LoRA gradients, as trl runs the
    model (gradient checkpointing + input-embedding grad hooks)."""
    from mellm.train.speed import run_vision_without_grad

    proc = _processor(assets["models"]["qwen2_5_vl"])
    batch = VisionCollator(proc)([dict(r) for r in assets["rows"][:4]])
    grads = []
    for no_grad in (False, True):
        torch.manual_seed(0)
        model = _peft_model(assets["models"]["qwen2_5_vl"])
        gen = torch.Generator().manual_seed(0)
        for name, p in model.named_parameters():  # LoRA B starts at zero: give it values so A gets gradients
            if "lora_B" in name:
                p.data.normal_(0, 0.02, generator=gen)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
        if no_grad:
            assert run_vision_without_grad(model) == ["base_model.model.model.visual"]
        model.train()
        loss = model(**batch).loss
        loss.backward()
        grads.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}))
    (loss_a, ga), (loss_b, gb) = grads
    assert torch.equal(loss_a, loss_b)
    assert ga.keys() == gb.keys() and len(ga) == 28
    for name in ga:
        assert torch.equal(ga[name], gb[name]), name


def test_vision_without_grad_refuses_a_trainable_tower(assets):
    from mellm.train.speed import run_vision_without_grad

    with pytest.raises(RuntimeError, match="trainable parameters"):
        run_vision_without_grad(_peft_model(assets["models"]["qwen2_5_vl"], vision=True))
