"""Check a TrainConfig against the disk before any model weights are loaded.

Every failure is a ConfigError that names the config key and the file or value at fault: the
dataset directory and its splits, the LOSO fold, the model's architecture (image-text vs text),
the processor's class and patch size against the model's, the tokenizer's special tokens against
the model config, the chat template (it must let collate.py find the answer), optional packages
(bitsandbytes, flash-attn) and the run directory. Only small files are read: config.json,
processor/tokenizer files, and one dataset row.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

from mellm.errors import ConfigError
from mellm.train.data import read_fold, variant_dir


def _read_json(name_or_path: str, filename: str, revision: str | None) -> dict | None:
    """A JSON file of a local model directory, or of a hub repo (HF cache or hub); None if absent."""
    local = Path(name_or_path)
    if local.is_dir():
        path = local / filename
        return json.loads(path.read_text()) if path.is_file() else None
    from transformers.utils import cached_file

    try:
        path = cached_file(name_or_path, filename, revision=revision, _raise_exceptions_for_missing_entries=False,
                           _raise_exceptions_for_connection_errors=False)
    except OSError as e:
        raise ConfigError(f"cannot read {filename} of {name_or_path!r}: {e}") from None
    return json.loads(Path(path).read_text()) if path else None


def check_data(cfg) -> None:
    if cfg.data.dir is None:
        raise ConfigError("data.dir is not set: point it at a MEU-Instruct directory (mellm build-data --out DIR)")
    root = Path(cfg.data.dir)
    if not root.is_dir():
        raise ConfigError(f"data.dir={root} does not exist")
    path = variant_dir(cfg)
    index = path / "dataset_dict.json"
    if not index.is_file():
        what = "text-only (model.text_only=true)" if cfg.model.text_only else "image-text"
        raise ConfigError(f"data.dir={root} has no {what} dataset: {index} is missing")
    splits = json.loads(index.read_text()).get("splits", [])
    if cfg.data.fold is not None:
        read_fold(root, cfg.data.fold)
    else:
        for key in ("train_split", "eval_split"):
            name = getattr(cfg.data, key)
            if name is not None and name not in splits:
                raise ConfigError(f"data.{key}={name!r} is not a split of {path} (splits: {splits})")


def check_model(cfg) -> dict:
    from transformers.models.auto.auto_mappings import PROCESSOR_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
    )

    name, rev = cfg.model.name_or_path, cfg.model.revision
    config = _read_json(name, "config.json", rev)
    if config is None:
        raise ConfigError(f"model.name_or_path={name!r}: no config.json (not a model directory, or not in the "
                          "HF cache and the hub is unreachable)")
    model_type = config.get("model_type")
    if cfg.model.text_only:
        if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
            raise ConfigError(f"model.name_or_path={name!r} is a {model_type!r} model, which "
                              "AutoModelForCausalLM cannot load (model.text_only=true)")
    elif model_type not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        hint = "; set model.text_only=true for a text model" if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES else ""
        raise ConfigError(f"model.name_or_path={name!r} is a {model_type!r} model, not an image-text model{hint}")

    proc_name = cfg.model.processor or name
    key = "model.processor" if cfg.model.processor else "model.name_or_path"
    report = {"model_type": model_type}
    if not cfg.model.text_only:
        proc = _read_json(proc_name, "processor_config.json", rev) or {}
        pre = _read_json(proc_name, "preprocessor_config.json", rev) or {}
        tok_cfg = _read_json(proc_name, "tokenizer_config.json", rev) or {}
        if not proc and not pre:
            raise ConfigError(f"{key}={proc_name!r} has no processor_config.json or preprocessor_config.json")
        found = proc.get("processor_class") or pre.get("processor_class") or tok_cfg.get("processor_class")
        expected = PROCESSOR_MAPPING_NAMES.get(model_type)
        if found and expected and found != expected:
            raise ConfigError(f"model/processor mismatch: {key}={proc_name!r} holds a {found}, but the "
                              f"{model_type!r} model at model.name_or_path={name!r} needs a {expected}")
        image = proc.get("image_processor", pre)
        want = (config.get("vision_config") or {}).get("patch_size")
        if want and image.get("patch_size") and image["patch_size"] != want:
            raise ConfigError(f"model/processor mismatch: {key}={proc_name!r} cuts {image['patch_size']}-px "
                              f"patches, the vision tower of model.name_or_path={name!r} expects {want}-px")
        report["processor_class"] = found
    return report | {"config": config}


def check_tokenizer(cfg, config: dict):
    """Load the processor (or tokenizer) and check its vocabulary and special tokens against the
    model config. Returns it, for the chat-template check."""
    from transformers import AutoProcessor, AutoTokenizer

    proc_name = cfg.model.processor or cfg.model.name_or_path
    key = "model.processor" if cfg.model.processor else "model.name_or_path"
    loader = AutoTokenizer if cfg.model.text_only else AutoProcessor
    try:
        renderer = loader.from_pretrained(proc_name, revision=cfg.model.revision,
                                          trust_remote_code=cfg.model.trust_remote_code)
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"{key}={proc_name!r}: cannot load its {loader.__name__[4:].lower()}: {e}") from None
    tok = renderer if cfg.model.text_only else getattr(renderer, "tokenizer", None)
    if tok is None:
        raise ConfigError(f"{key}={proc_name!r} loads as {type(renderer).__name__}, which has no tokenizer")
    text_cfg = config.get("text_config") or config
    vocab = text_cfg.get("vocab_size") or config.get("vocab_size")
    if vocab and len(tok) > vocab:
        raise ConfigError(f"model/processor mismatch: the tokenizer of {key}={proc_name!r} has {len(tok)} tokens, "
                          f"the model's embedding only {vocab}")
    image_id = config.get("image_token_id")
    image_token = getattr(renderer, "image_token", None)
    if image_id is not None and image_token and tok.convert_tokens_to_ids(image_token) != image_id:
        raise ConfigError(f"model/processor mismatch: {key}={proc_name!r} maps {image_token} to "
                          f"{tok.convert_tokens_to_ids(image_token)}, the model config says {image_id}")
    if not getattr(renderer, "chat_template", None):
        raise ConfigError(f"{key}={proc_name!r} has no chat template; training renders prompts with it")
    return renderer


def check_template(cfg, renderer) -> None:
    """The chat template must render a row's prompt as a prefix of the whole row (collate.py)."""
    import datasets

    from mellm.train.collate import split_prompt_completion

    dd = datasets.load_from_disk(str(variant_dir(cfg)))
    split = next(iter(dd)) if cfg.data.fold is not None else cfg.data.train_split
    if len(dd[split]) == 0:
        raise ConfigError(f"split {split!r} of {variant_dir(cfg)} is empty")
    messages = dd[split].select_columns(["messages"])[0]["messages"]
    split_prompt_completion(renderer, messages)


def check_trainer_names(cfg) -> None:
    """train.scheduler and train.optim name what transformers' Trainer knows, checked here rather than
    by TrainingArguments after the model has loaded."""
    from transformers.trainer_utils import SchedulerType
    from transformers.training_args import OptimizerNames

    for key, value, known in (("scheduler", cfg.train.scheduler, [s.value for s in SchedulerType]),
                              ("optim", cfg.train.optim, [o.value for o in OptimizerNames])):
        if value not in known:
            import difflib

            hint = difflib.get_close_matches(value, known, n=1)
            raise ConfigError(f"train.{key}={value!r} is not one transformers knows"
                              + (f" (did you mean {hint[0]!r}?)" if hint else f"; known: {', '.join(known)}"))


def check_runtime(cfg) -> None:
    check_trainer_names(cfg)
    if cfg.quant.load_in_4bit and importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("quant.load_in_4bit=true needs bitsandbytes (pip install bitsandbytes)")
    if cfg.model.attn_implementation.startswith("flash") and importlib.util.find_spec("flash_attn") is None:
        raise ConfigError(f"model.attn_implementation={cfg.model.attn_implementation} needs the flash-attn package")
    if cfg.lora.target_regex:
        try:
            re.compile(cfg.lora.target_regex)
        except re.error as e:
            raise ConfigError(f"lora.target_regex is not a valid regex: {e}") from None
    out = Path(cfg.output_dir)
    has_ckpt = out.is_dir() and any(out.glob("checkpoint-*"))
    if cfg.train.resume == "never" and has_ckpt:
        raise ConfigError(f"output_dir={out} already holds checkpoints and train.resume=never; "
                          "use train.resume=auto to continue, or another output_dir")
    if cfg.train.resume not in ("auto", "never") and not Path(cfg.train.resume).is_dir():
        raise ConfigError(f"train.resume={cfg.train.resume!r} is not a checkpoint directory")


def preflight(cfg) -> dict:
    """Run every check; -> a summary for the run record. Raises ConfigError on the first problem."""
    check_data(cfg)
    check_runtime(cfg)
    report = check_model(cfg)
    config = report.pop("config")
    renderer = check_tokenizer(cfg, config)
    check_template(cfg, renderer)
    return report
