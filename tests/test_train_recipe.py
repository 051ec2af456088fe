"""End to end on CPU: a tiny Qwen2.5-VL trained with the real recipe (trl SFTTrainer + peft) on a
small MEU-Instruct set. Loss falls; the run directory records what happened; the adapter reloads
and merges without changing greedy output; resume continues exactly; QLoRA, the text-only path,
LOSO folds and vision LoRA run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from mellm.train.config import load_config  # noqa: E402
from mellm.train.recipe import train  # noqa: E402
from mellm.train.rundir import read_metrics  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHORT = ("coarse", "fine", "au_list")  # one-line answers: a few steps visibly lower their loss


@pytest.fixture(scope="module")
def assets(tmp_path_factory, meu_instruct):
    from mellm.train.tiny_models import build_tiny_model

    root = tmp_path_factory.mktemp("recipe")
    return {
        "root": root,
        "data": meu_instruct,
        "vlm": build_tiny_model(root / "qwen2_5_vl", "qwen2_5_vl"),
        "text": build_tiny_model(root / "qwen2", "qwen2"),
    }


def _cfg(assets, name, *overrides):
    base = [f"data.dir={assets['data']}", f"model.name_or_path={assets['vlm']}",
            f"output_dir={assets['root'] / name}", "train.report_to=[]"]
    return load_config(REPO / "configs/train/tiny_cpu.yaml", base + list(overrides))


@pytest.fixture(scope="module")
def trained(assets):
    cfg = _cfg(assets, "main", "train.max_steps=30", "train.logging_steps=1", "train.save_steps=15",
               "train.report_to=[tensorboard]", "data.eval_split=val", "model.max_pixels=3136",
               f"data.qtypes=[{','.join(SHORT)}]")
    return cfg, train(cfg, progress=False)


def _rows(assets, split="test", n=3):
    import datasets

    return datasets.load_from_disk(str(assets["data"] / "hf"))[split].select(range(n))


def _greedy(model, processor, rows, max_new_tokens=6):
    outs = []
    for row in rows:
        prompt = processor.apply_chat_template(row["messages"][:-1], add_generation_prompt=True, tokenize=False)
        enc = processor(text=[prompt], images=row["images"], return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
        outs.append(out[0, enc["input_ids"].shape[1]:].tolist())
    return outs


def test_loss_falls_and_the_run_directory_records_the_run(assets, trained):
    cfg, result = trained
    losses = [m["loss"] for m in read_metrics(result.run_dir) if "loss" in m]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < losses[0] - 1.0, losses  # from ~ln(1024)=6.9 down
    run = result.run_dir
    assert load_config(run / "config.yaml") == cfg  # the resolved config reloads to the same config
    versions = json.loads((run / "versions.json").read_text())
    assert {"torch", "transformers", "trl", "peft"} <= versions["packages"].keys()
    record = json.loads((run / "run.json").read_text())
    import datasets

    rows = datasets.load_from_disk(str(assets["data"] / "hf"))["train"]
    assert record["data"]["train_rows"] == sum(q in SHORT for q in rows["qtype"]) > 0
    assert record["data"]["splits"]["train"]["fingerprint"]
    assert record["lora"] == {**record["lora"], "lora_modules": 14, "on_vision": 0}
    assert record["vision_without_grad"] == ["base_model.model.model.visual"]
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert (run / "checkpoint-15").is_dir() and (run / "checkpoint-30").is_dir()
    final = json.loads((run / "metrics.json").read_text())
    assert final["global_step"] == 30 and math.isfinite(final["eval_loss"])
    serving = json.loads((result.adapter_dir / "serving.json").read_text())
    assert serving["vllm_args"][:3] == ["--enable-lora", "--max-lora-rank", "8"]
    assert serving["mm_processor_kwargs"] == {"min_pixels": 784, "max_pixels": 3136}


def test_adapter_has_language_model_weights_only(trained):
    from safetensors import safe_open

    with safe_open(str(trained[1].adapter_dir / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert len(keys) == 2 * 14 and all(".language_model.layers." in k for k in keys)
    assert not any("visual" in k for k in keys)


def test_adapter_reloads_and_merged_equals_unmerged(assets, trained, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from mellm.train.merge import merge_adapter

    adapter = trained[1].adapter_dir
    processor = AutoProcessor.from_pretrained(adapter)  # the processor saved with the adapter
    assert processor.image_processor.size.longest_edge == 3136  # model.max_pixels, not the base's 12544
    rows = _rows(assets)
    base = AutoModelForImageTextToText.from_pretrained(assets["vlm"]).eval()
    base_out = _greedy(base, processor, rows)
    tuned = PeftModel.from_pretrained(base, str(adapter)).eval()
    tuned_out = _greedy(tuned, processor, rows)
    assert tuned_out != base_out  # the adapter changes the model
    merged_dir = merge_adapter(adapter, tmp_path / "merged", dtype="float32")
    merged = AutoModelForImageTextToText.from_pretrained(merged_dir).eval()
    assert _greedy(merged, AutoProcessor.from_pretrained(merged_dir), rows) == tuned_out
    assert not any("lora" in k for k in merged.state_dict())


def test_export_writes_what_vllm_needs(assets, trained, tmp_path):
    from mellm.train.merge import export_for_vllm

    out = export_for_vllm(trained[1].adapter_dir, tmp_path / "export")
    assert (out / "adapter_model.safetensors").is_file() and (out / "chat_template.jinja").is_file()
    notes = json.loads((out / "serving.json").read_text())
    assert notes["base_model"] == str(assets["vlm"])
    assert "--enable-tower-connector-lora" not in notes["command"]
    assert f"--lora-modules mellm={out}" in notes["command"]
    assert "--mm-processor-kwargs '{\"min_pixels\": 784, \"max_pixels\": 3136}'" in notes["command"]


def test_resume_continues_from_the_checkpoint_step(assets):
    """An interrupted run, restarted with the same command, continues at the checkpoint's step
    and ends with the same adapter as a run that was never interrupted."""
    from safetensors.torch import load_file
    from transformers import TrainerCallback

    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 4:
                control.should_training_stop = True

    common = ("train.max_steps=6", "train.save_steps=2", "train.logging_steps=1", "data.eval_split=null")
    straight = train(_cfg(assets, "straight", *common), progress=False)
    cut = _cfg(assets, "cut", *common)
    first = train(cut, callbacks=[StopAt()], progress=False)
    assert first.metrics["global_step"] == 4 and (first.run_dir / "checkpoint-4").is_dir()
    n_logged = len(read_metrics(first.run_dir))
    second = train(cut, progress=False)
    record = json.loads((second.run_dir / "run.json").read_text())
    assert record["start_step"] == 4 and record["resumed_from"].endswith("checkpoint-4")
    after = [m["step"] for m in read_metrics(second.run_dir)[n_logged:] if "loss" in m]
    assert after == [5, 6]
    a = load_file(str(straight.adapter_dir / "adapter_model.safetensors"))
    b = load_file(str(second.adapter_dir / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)


def test_resume_refuses_a_changed_setup(assets):
    from mellm.errors import ConfigError

    cfg = _cfg(assets, "changed", "train.max_steps=2", "train.save_steps=2", "data.eval_split=null")
    train(cfg, progress=False)
    with pytest.raises(ConfigError, match="different lora settings"):
        train(_cfg(assets, "changed", "train.max_steps=4", "lora.r=4", "data.eval_split=null"), progress=False)


def test_qlora_trains_on_4bit_language_weights(assets):
    import bitsandbytes as bnb

    result = train(_cfg(assets, "qlora", "quant.load_in_4bit=true", "quant.compute_dtype=float32",
                        "train.max_steps=2", "train.logging_steps=1", "data.eval_split=null"), progress=False)
    model = result.trainer.model
    kinds = {type(m).__name__ for n, m in model.named_modules() if n.endswith("language_model.layers.0.mlp.up_proj.base_layer")}
    assert kinds == {"Linear4bit"}
    assert not any(isinstance(m, bnb.nn.Linear4bit) for n, m in model.named_modules() if ".visual." in n)
    losses = [m["loss"] for m in read_metrics(result.run_dir) if "loss" in m]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)


def test_text_only_path_on_a_loso_fold(assets):
    import datasets

    result = train(_cfg(assets, "text", f"model.name_or_path={assets['text']}", "model.text_only=true",
                        "data.fold=1", "train.max_steps=4", "train.logging_steps=1"), progress=False)
    record = json.loads((result.run_dir / "run.json").read_text())
    pooled = datasets.concatenate_datasets(list(datasets.load_from_disk(str(assets["data"] / "hf_text")).values()))
    [fold_1] = [f["test_subjects"] for f in json.loads((assets["data"] / "splits.json").read_text())["loso"] if f["fold"] == 1]
    held_out = sum(s in fold_1 for s in pooled["subject"])
    assert record["data"]["train_rows"] == len(pooled) - held_out and record["data"]["eval_rows"] == held_out
    assert record["vision_without_grad"] == [] and record["lora"]["lora_modules"] == 14
    losses = [m["loss"] for m in read_metrics(result.run_dir) if "loss" in m]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()


def test_vision_lora_is_trained_and_flagged_for_serving(assets):
    from safetensors import safe_open

    result = train(_cfg(assets, "vision", "lora.vision=true", "train.max_steps=2", "data.eval_split=null"),
                   progress=False)
    with safe_open(str(result.adapter_dir / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert any(".visual.blocks." in k for k in keys) and any(".language_model." in k for k in keys)
    assert json.loads((result.run_dir / "run.json").read_text())["vision_without_grad"] == []
    notes = json.loads((result.adapter_dir / "serving.json").read_text())
    assert "--enable-tower-connector-lora" in notes["vllm_args"]


def test_resume_accepts_a_run_saved_before_a_setting_existed(assets):
    """A run started by an older MELLM, whose saved config lacks a newer key, resumes when that key is
    at its default (what ran then) and refuses when this config changes it."""
    import yaml

    from mellm.errors import ConfigError

    cfg = _cfg(assets, "older", "train.max_steps=2", "train.save_steps=2", "data.eval_split=null")
    train(cfg, progress=False)
    saved = Path(cfg.output_dir) / "config.yaml"
    old = yaml.safe_load(saved.read_text())
    del old["grpo"]["epsilon_high"]
    saved.write_text(yaml.safe_dump(old))
    resumed = train(_cfg(assets, "older", "train.max_steps=3", "train.save_steps=3", "data.eval_split=null"), progress=False)
    assert json.loads((resumed.run_dir / "run.json").read_text())["start_step"] == 2
    saved.write_text(yaml.safe_dump(old))
    with pytest.raises(ConfigError, match="different grpo settings"):
        train(_cfg(assets, "older", "train.max_steps=4", "grpo.epsilon_high=0.3", "data.eval_split=null"), progress=False)
