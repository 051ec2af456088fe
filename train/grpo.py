"""The GRPO recipe (`method: grpo`): reinforcement fine-tuning with verifiable, AU-grounded rewards.

    preflight (SFT's checks + the rewards' columns, the start adapter, vLLM) -> run directory
    -> MEU-Instruct prompts with the reward columns -> processor -> model (+ the SFT adapter,
    trainable, or a fresh LoRA) -> trl GRPOTrainer with train/rewards.py -> train (resuming)
    -> RUN/adapter (adapter, processor, chat template, serving.json) -> RUN/metrics.json

The prompts are the SFT rows' system and user turns (images and motion text exactly as in SFT
and serving); the reference answer is not shown to the model, only to the rewards. Each reward is
logged on its own (`rewards/<name>/mean` in RUN/metrics.jsonl and TensorBoard) next to the
weighted total (`reward`).

Generation: plain `generate` by default (CPU, small runs); `grpo.use_vllm=true` generates with vLLM
inside the training process (`grpo.vllm_mode=colocate`) or through a `trl vllm-serve` server
(`server`). With images and vLLM colocate, trl hands vLLM prompt ids whose image tokens are
already expanded together with the raw images, which breaks when images differ in size (trl issues
6401 and 6294): `grpo.image_size` resizes every image to one square, and preflight refuses a vLLM
run whose images are of several sizes without it. MEU-Instruct images are canonical face crops of
one size, so the default works.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import time
from pathlib import Path

from mellm.errors import ConfigError
from mellm.train import rundir
from mellm.train.config import TrainConfig
from mellm.train.rewards import COLUMNS, DERIVED, RewardSettings, batch_reward, class_weights, derived_columns

log = logging.getLogger("mellm.train")

# Columns every GRPO row keeps besides the reward columns: the prompt, its images, its type.
_BASE = ("prompt", "qtype")


def reward_columns(cfg: TrainConfig) -> tuple[list[str], list[str]]:
    """(columns the configured rewards need, optional ones they read when present)."""
    need, optional = [], []
    for name in cfg.rewards.weights:
        req, opt = COLUMNS[name]
        need += [c for c in req if c not in need]
        optional += [c for c in opt if c not in optional]
    return need, optional


def _evidence_path(data_dir: Path, row_id: str, qtype: str) -> Path:
    """DATA/evidence/<clip key>.json; a sample id is `<clip key>_<qtype>_<n>` (data_builders)."""
    return Path(data_dir) / "evidence" / (re.sub(rf"_{re.escape(qtype)}_\d+$", "", row_id) + ".json")


# --- preflight --------------------------------------------------------------------------------


def check_grpo(cfg: TrainConfig) -> dict:
    """What GRPO needs beyond SFT's preflight, read from small files only; -> a summary."""
    import datasets

    from mellm.train.data import variant_dir
    from mellm.train.preflight import check_data

    check_data(cfg)
    path = variant_dir(cfg)
    dd = datasets.load_from_disk(str(path))  # memory-mapped: no image is decoded here
    split = next(iter(dd)) if cfg.data.fold is not None else cfg.data.train_split
    have = set(dd[split].column_names)
    need, _ = reward_columns(cfg)
    for name in cfg.rewards.weights:
        # `motion` and `present_aus` are built from DATA/evidence/<clip>.json, checked below.
        missing = [c for c in COLUMNS[name][0] if c not in have and c not in DERIVED]
        if missing:
            raise ConfigError(f"rewards.weights.{name}: the reward needs column(s) {missing}, which {path}/{split} "
                              f"lacks (it has {sorted(have)}); rebuild the data with `mellm build-data` or drop the "
                              "reward from rewards.weights")
    for col in ("id", "qtype", "messages"):
        if col not in have:
            raise ConfigError(f"{path}/{split} has no {col!r} column; is it an MEU-Instruct dataset?")
    if set(DERIVED) & set(need):
        row = dd[split].select_columns(["id", "qtype"])[0]
        ev = _evidence_path(cfg.data.dir, row["id"], row["qtype"])
        if not ev.is_file():
            raise ConfigError(f"rewards.weights.evidence needs the clips' evidence in {ev.parent} ({ev.name} is "
                              "missing); rebuild with `mellm build-data` or drop the evidence reward")
    report = {"reward_columns": need}
    if cfg.model.adapter:
        report["start_adapter"] = check_adapter(cfg)
    if cfg.grpo.use_vllm:
        if importlib.util.find_spec("vllm") is None:
            raise ConfigError("grpo.use_vllm=true needs vLLM (pip install -e '.[serve]'); or set grpo.use_vllm=false")
        if not cfg.model.text_only and cfg.grpo.image_size is None and cfg.grpo.vllm_mode == "colocate":
            sizes = {im.size for row in dd[split].select(range(min(64, len(dd[split]))))["images"] for im in row}
            if len(sizes) > 1:
                raise ConfigError(f"{path}/{split} has images of {len(sizes)} sizes ({sorted(sizes)[:3]}...); vLLM "
                                  "colocate generation needs one size (trl issues 6401, 6294): set grpo.image_size")
    return report


def check_adapter(cfg: TrainConfig) -> dict:
    adapter = Path(cfg.model.adapter)
    conf = adapter / "adapter_config.json"
    if not conf.is_file():
        raise ConfigError(f"model.adapter={adapter} is not a LoRA adapter directory ({conf.name} is missing)")
    acfg = json.loads(conf.read_text())
    base = acfg.get("base_model_name_or_path")
    if base and Path(base).name != Path(cfg.model.name_or_path).name:
        raise ConfigError(f"model.adapter={adapter} was trained on {base!r}, but model.name_or_path="
                          f"{cfg.model.name_or_path!r}: the adapter's weights belong to another base model")
    if acfg.get("r") and acfg["r"] != cfg.lora.r:
        log.warning("model.adapter has LoRA rank %s; lora.r=%s is ignored (the adapter is trained as it is)",
                    acfg["r"], cfg.lora.r)
    return {"path": str(adapter.resolve()), "base_model": base, "r": acfg.get("r")}


# --- data ------------------------------------------------------------------------------------


def grpo_dataset(cfg: TrainConfig):
    """The training prompts with the reward columns; -> (Dataset, fingerprint, reward settings)."""
    from mellm.train.data import fingerprint, select_rows

    dd, train, _ = select_rows(cfg)  # GRPO does not evaluate during the run (evaluation would sample)
    need, optional = reward_columns(cfg)
    subjects = sorted(set(train["subject"]))  # recorded in run.json, as SFT does (LOSO checks it)
    train = train.add_column("prompt", [m[:-1] for m in train["messages"]])
    derived = [c for c in DERIVED if c in need]
    if derived:
        values, cache = {c: [] for c in derived}, {}
        for row_id, qtype in zip(train["id"], train["qtype"]):
            path = _evidence_path(cfg.data.dir, row_id, qtype)
            if path not in cache:
                if not path.is_file():
                    raise ConfigError(f"row {row_id}: its clip's evidence {path} is missing (the evidence reward reads it)")
                cache[path] = derived_columns(json.loads(path.read_text()))
            for c in derived:
                values[c].append(cache[path][c])
        for c in derived:
            train = train.add_column(c, values[c])
    keep = list(_BASE) + [c for c in need + optional if c in train.column_names and c not in _BASE]
    if not cfg.model.text_only:
        keep.append("images")
    train = train.select_columns(keep)
    weights = class_weights(list(train["coarse"]), list(train["fine"])) if (
        cfg.rewards.class_balanced and "coarse" in train.column_names) else None
    settings = RewardSettings(class_weights=weights, strong_px=cfg.rewards.strong_px, max_words=cfg.rewards.max_words,
                              analysis_max_words=cfg.rewards.analysis_max_words, max_repeat=cfg.rewards.max_repeat)
    if cfg.grpo.image_size and not cfg.model.text_only:
        train = train.with_transform(_resize(cfg.grpo.image_size))
    return train, {**fingerprint(cfg, dd, train, None), "train_subjects": subjects}, settings


def _resize(size: int):
    def transform(batch: dict) -> dict:
        batch["images"] = [[im.convert("RGB").resize((size, size)) for im in ims] for ims in batch["images"]]
        return batch

    return transform


# --- trainer -----------------------------------------------------------------------------------


VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>", "<|image|>", "<image>")


def vision_token_ids(processor) -> list[int]:
    """Ids of the tokenizer's vision markers. A sampled one breaks the next forward pass: trl only
    suppresses the image pad token, but a stray <|vision_start|> also shifts Qwen's M-RoPE index
    (measured: a shape mismatch in get_rope_index, with the tiny model's near-uniform sampling)."""
    tok = getattr(processor, "tokenizer", processor)
    vocab = tok.get_vocab()
    return sorted({vocab[t] for t in VISION_TOKENS if t in vocab})


def grpo_args(cfg: TrainConfig, run_dir: Path, progress: bool, processor=None):
    import torch
    from trl import GRPOConfig

    t, g = cfg.train, cfg.grpo
    banned = vision_token_ids(processor) if processor is not None and not cfg.model.text_only else []
    vllm = {}
    generation = {"suppress_tokens": banned} if banned else None
    if g.use_vllm:
        generation = {"logit_bias": {i: -100.0 for i in banned}} if banned else None  # vLLM SamplingParams
        vllm = dict(use_vllm=True, vllm_mode=g.vllm_mode, vllm_gpu_memory_utilization=g.vllm_gpu_memory_utilization,
                    vllm_tensor_parallel_size=g.vllm_tensor_parallel_size, vllm_server_base_url=g.vllm_server_base_url,
                    vllm_server_host=g.vllm_server_host, vllm_server_port=g.vllm_server_port)
    return GRPOConfig(
        output_dir=str(run_dir), seed=cfg.seed, data_seed=cfg.seed,
        num_train_epochs=t.epochs, max_steps=t.max_steps,
        per_device_train_batch_size=t.batch_size, gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.lr, lr_scheduler_type=t.scheduler, warmup_steps=t.warmup_ratio,  # see recipe.sft_args
        weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm, optim=t.optim,
        bf16=t.mixed_precision == "bf16", fp16=t.mixed_precision == "fp16",
        gradient_checkpointing=t.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if t.gradient_checkpointing else None,
        logging_steps=t.logging_steps, logging_first_step=True,
        save_strategy="steps", save_steps=t.save_steps, save_total_limit=t.save_total_limit, eval_strategy="no",
        report_to=[r for r in t.report_to if r != "tensorboard"] or "none",
        dataloader_num_workers=t.num_workers, dataloader_pin_memory=torch.cuda.is_available(),
        use_cpu=not torch.accelerator.is_available(), disable_tqdm=not progress,
        ddp_find_unused_parameters=False,
        remove_unused_columns=False,  # the reward columns must reach the rewards
        num_generations=g.num_generations, max_completion_length=g.max_completion_length,
        temperature=g.temperature, top_p=g.top_p, beta=g.beta, epsilon=g.epsilon,
        epsilon_high=g.epsilon_high, num_iterations=g.num_iterations,
        loss_type=g.loss_type, scale_rewards=g.scale_rewards,
        reward_weights=list(cfg.rewards.weights.values()),
        log_completions=g.log_completions, generation_kwargs=generation, **vllm,
    )


def build_grpo_trainer(cfg: TrainConfig, model, processor, train_ds, settings: RewardSettings, run_dir: Path,
                       callbacks: list | None = None, progress: bool = True):
    """GRPOTrainer around an already loaded model (a PeftModel when starting from an adapter);
    -> (trainer, setup summary)."""
    from trl import GRPOTrainer

    from mellm.train.lora import check_lora_placement, peft_config
    from mellm.train.recipe import _state
    from mellm.train.speed import run_vision_without_grad

    callbacks = list(callbacks or []) + [rundir.metrics_callback(run_dir)]
    if "tensorboard" in cfg.train.report_to and _state().is_main_process:
        from transformers.integrations import TensorBoardCallback

        tensorboard = TensorBoardCallback()
        tensorboard.logging_dir = str(run_dir / "tensorboard")
        callbacks.append(tensorboard)
    funcs = [batch_reward(name, settings) for name in cfg.rewards.weights]
    trainer = GRPOTrainer(model=model, reward_funcs=funcs, args=grpo_args(cfg, run_dir, progress, processor),
                          train_dataset=train_ds, processing_class=processor,
                          peft_config=None if cfg.model.adapter else peft_config(cfg), callbacks=callbacks)
    placement = check_lora_placement(trainer.model, vision_allowed=cfg.lora.vision)
    no_grad = [] if (placement["on_vision"] or cfg.model.text_only) else run_vision_without_grad(trainer.model)
    return trainer, {"lora": placement, "vision_without_grad": no_grad,
                     "rewards": dict(cfg.rewards.weights), "class_weights": settings.class_weights}


def load_policy(cfg: TrainConfig):
    """The model GRPO trains: the base model, with the start adapter (trainable) when there is one."""
    from mellm.train.recipe import load_model

    model = load_model(cfg)
    if cfg.model.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, cfg.model.adapter, is_trainable=True)
    return model


def train_grpo(cfg: TrainConfig, callbacks: list | None = None, progress: bool = True):
    """Run the GRPO recipe end to end; -> recipe.TrainResult."""
    from mellm.train.preflight import preflight
    from mellm.train.recipe import TrainResult, _state, load_processor

    grpo_report = check_grpo(cfg)  # the rewards' columns first: a dataset they cannot score fails at once
    report = preflight(cfg) | {"grpo": grpo_report}
    state = _state()
    run_dir, resume = rundir.prepare(cfg, is_main=state.is_main_process)
    if resume:
        log.info("resuming from %s", resume)
    train_ds, fp, settings = grpo_dataset(cfg)
    processor = load_processor(cfg)
    tok = getattr(processor, "tokenizer", processor)
    # trl pads prompts for generation on the side the tokenizer says; only left padding keeps each
    # prompt's image tokens where the M-RoPE index expects them (right padding crashes Qwen-VL
    # in get_rope_index, or silently shifts the context: trl issue 5785). trl sets this only for a
    # processor it loads itself.
    saved_sides = tok.padding_side, tok.truncation_side
    tok.padding_side = tok.truncation_side = "left"
    model = load_policy(cfg)
    trainer, setup = build_grpo_trainer(cfg, model, processor, train_ds, settings, run_dir, callbacks, progress)
    if state.is_main_process:
        rundir.write_json(run_dir / "run.json", {
            "method": "grpo", "preflight": report, "data": fp, **setup,
            "resumed_from": str(resume) if resume else None,
            "start_step": int(resume.name.split("-")[-1]) if resume else 0,
        })
    t0 = time.time()
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    metrics = {**result.metrics, "global_step": trainer.state.global_step, "wall_s": round(time.time() - t0, 2),
               "resumed_from": str(resume) if resume else None}
    adapter_dir = run_dir / "adapter"
    tok.padding_side, tok.truncation_side = saved_sides  # the adapter's processor is the one SFT saves
    trainer.save_model(str(adapter_dir))
    if state.is_main_process:
        from mellm.train.merge import write_serving_notes

        notes = write_serving_notes(adapter_dir, cfg)
        notes["method"] = "grpo"
        notes["started_from"] = str(Path(cfg.model.adapter).resolve()) if cfg.model.adapter else None
        (adapter_dir / "serving.json").write_text(json.dumps(notes, indent=2) + "\n")
        rundir.write_json(run_dir / "metrics.json", metrics)
    return TrainResult(run_dir=run_dir, adapter_dir=adapter_dir, metrics=metrics, trainer=trainer)
