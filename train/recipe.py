"""The SFT recipe: MEU-Instruct + a (vision-)language model + LoRA/QLoRA -> an adapter vLLM serves.

    preflight (no weights loaded) -> run directory -> data -> processor -> model (4-bit for QLoRA)
    -> SFTTrainer with our collator and LoRA config -> train (resuming if a checkpoint exists)
    -> RUN/adapter (adapter, processor, chat template, serving.json) -> RUN/metrics.json

Multi-GPU and multi-node runs use the same function under `accelerate launch` (DDP, DeepSpeed
ZeRO-2/3, FSDP; see configs/accelerate/); Trainer picks the launcher's settings up itself.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

from mellm.train import rundir
from mellm.train.config import TrainConfig

log = logging.getLogger("mellm.train")

_DTYPES = {"bfloat16": "bfloat16", "float16": "float16", "float32": "float32"}


def _state():
    """accelerate's process state. Without an accelerator it must be told `cpu=True`, else a
    multi-process CPU launch (torchrun, gloo) would not be recognised as distributed."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.accelerator.is_available())


@dataclass
class TrainResult:
    run_dir: Path
    adapter_dir: Path
    metrics: dict
    trainer: object = None  # the SFTTrainer, for library users who want the model or state


def load_processor(cfg: TrainConfig):
    """AutoProcessor (image-text) with the config's image resolution limits, or AutoTokenizer."""
    from transformers import AutoProcessor, AutoTokenizer

    name = cfg.model.processor or cfg.model.name_or_path
    kw = dict(revision=cfg.model.revision, trust_remote_code=cfg.model.trust_remote_code)
    if cfg.model.text_only:
        return AutoTokenizer.from_pretrained(name, **kw)
    processor = AutoProcessor.from_pretrained(name, **kw)
    image = processor.image_processor
    size = getattr(image, "size", None)
    # Qwen-VL processors resize every image into a pixel budget [shortest_edge, longest_edge]; the
    # saved processor carries the limits to serving (RUN/adapter, `mellm export`).
    if dataclasses.is_dataclass(size) and hasattr(size, "longest_edge") and hasattr(image, "merge_size"):
        limits = {"shortest_edge": cfg.model.min_pixels, "longest_edge": cfg.model.max_pixels}
        image.size = dataclasses.replace(size, **{k: v for k, v in limits.items() if v})
    elif cfg.model.min_pixels or cfg.model.max_pixels:
        log.warning("model.min_pixels/max_pixels do not apply to %s; images keep its own sizing",
                    type(image).__name__)
    return processor


def load_model(cfg: TrainConfig):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, BitsAndBytesConfig

    kw = dict(revision=cfg.model.revision, trust_remote_code=cfg.model.trust_remote_code,
              attn_implementation=cfg.model.attn_implementation,
              dtype="auto" if cfg.model.dtype == "auto" else getattr(torch, _DTYPES[cfg.model.dtype]))
    if cfg.quant.load_in_4bit:
        kw["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=cfg.quant.quant_type,
            bnb_4bit_use_double_quant=cfg.quant.double_quant,
            bnb_4bit_compute_dtype=getattr(torch, cfg.quant.compute_dtype),
            # transformers matches these from the start of a module's name: "visual" must also
            # match "model.visual.blocks.0...", hence the optional prefix.
            llm_int8_skip_modules=[rf"(?:.*\.)?{re.escape(m)}" for m in cfg.quant.skip_modules],
        )
        # 4-bit weights are placed at load time: one full copy per process, on its own device.
        kw["device_map"] = {"": _state().local_process_index if torch.cuda.is_available() else "cpu"}
    cls = AutoModelForCausalLM if cfg.model.text_only else AutoModelForImageTextToText
    return cls.from_pretrained(cfg.model.name_or_path, **kw)


def sft_args(cfg: TrainConfig, run_dir: Path, has_eval: bool, progress: bool):
    import torch
    from trl import SFTConfig

    t = cfg.train
    eval_strategy = "no" if not has_eval else ("steps" if t.eval_steps else "epoch")
    return SFTConfig(
        output_dir=str(run_dir), seed=cfg.seed, data_seed=cfg.seed,
        num_train_epochs=t.epochs, max_steps=t.max_steps,
        per_device_train_batch_size=t.batch_size, per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum, learning_rate=t.lr, lr_scheduler_type=t.scheduler,
        # transformers 5 folded warmup_ratio into warmup_steps: a value below 1 is read as that share of
        # the total steps (TrainingArguments.get_warmup_steps), which is what our warmup_ratio means.
        # The config keeps it in [0, 1) so it is never read as a step count.
        warmup_steps=t.warmup_ratio, weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm, optim=t.optim,
        bf16=t.mixed_precision == "bf16", fp16=t.mixed_precision == "fp16",
        gradient_checkpointing=t.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if t.gradient_checkpointing else None,
        logging_steps=t.logging_steps, logging_first_step=True,
        save_strategy="steps", save_steps=t.save_steps, save_total_limit=t.save_total_limit,
        eval_strategy=eval_strategy, eval_steps=t.eval_steps,
        # TensorBoard gets its own callback writing to RUN/tensorboard (see train()).
        report_to=[r for r in t.report_to if r != "tensorboard"] or "none",
        dataloader_num_workers=t.num_workers, dataloader_persistent_workers=t.num_workers > 0,
        dataloader_pin_memory=torch.cuda.is_available(), use_cpu=not torch.accelerator.is_available(),
        # The vision side is frozen (or carries LoRA and then always gets gradients): DDP need
        # not search the graph for unused parameters on every step.
        ddp_find_unused_parameters=False,
        disable_tqdm=not progress,
        # Our collator (image-text) or our tokenization (text) already set labels to -100
        # outside the answer; trl must not add its own masking on top.
        assistant_only_loss=False, completion_only_loss=False,
        max_length=t.max_length, packing=t.packing, padding_free=t.padding_free,
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        # train.data already keeps only the columns training reads; the sampler needs `length`.
        remove_unused_columns=False,
    )


def build_trainer(cfg: TrainConfig, model, processor, train_ds, eval_ds, run_dir: Path,
                  callbacks: list | None = None, progress: bool = True):
    """Our SFTTrainer around an already loaded model: the collator (or tokenized text rows), the
    LoRA config, the run-directory callbacks and the speed-ups of train/speed.py.
    -> (trainer, {"lora": placement summary, "vision_without_grad": wrapped modules})."""
    from trl import SFTTrainer

    from mellm.train.collate import VisionCollator, tokenize_text_example
    from mellm.train.lora import check_lora_placement, peft_config
    from mellm.train.speed import run_vision_without_grad

    state = _state()
    if cfg.model.text_only:
        def tokenize(row):
            return tokenize_text_example(processor, row["messages"], cfg.train.max_length)

        with state.main_process_first():  # rank 0 fills the datasets cache, the others read it
            train_ds = train_ds.map(tokenize, remove_columns=train_ds.column_names, desc="tokenizing train")
            if eval_ds is not None:
                eval_ds = eval_ds.map(tokenize, remove_columns=eval_ds.column_names, desc="tokenizing eval")
        collator = None  # trl's language-modelling collator pads (or packs) input_ids + labels
    else:
        collator = VisionCollator(processor, cfg.train.max_length)

    callbacks = list(callbacks or []) + [rundir.metrics_callback(run_dir)]
    if "tensorboard" in cfg.train.report_to and state.is_main_process:
        from transformers.integrations import TensorBoardCallback

        tensorboard = TensorBoardCallback()
        tensorboard.logging_dir = str(run_dir / "tensorboard")  # instead of RUN/runs/<date_host>
        callbacks.append(tensorboard)
    trainer = SFTTrainer(model=model, args=sft_args(cfg, run_dir, eval_ds is not None, progress),
                         data_collator=collator, train_dataset=train_ds, eval_dataset=eval_ds,
                         processing_class=processor, peft_config=peft_config(cfg), callbacks=callbacks)
    placement = check_lora_placement(trainer.model, vision_allowed=cfg.lora.vision)
    no_grad = [] if (cfg.lora.vision or cfg.model.text_only) else run_vision_without_grad(trainer.model)
    return trainer, {"lora": placement, "vision_without_grad": no_grad}


def train(cfg: TrainConfig, callbacks: list | None = None, progress: bool = True) -> TrainResult:
    """Run the recipe end to end; -> where the adapter and metrics went. `method: grpo` runs the
    GRPO recipe (train/grpo.py) instead."""
    if cfg.method == "grpo":
        from mellm.train.grpo import train_grpo

        return train_grpo(cfg, callbacks, progress)
    from mellm.train.data import load_train_eval
    from mellm.train.preflight import preflight

    report = preflight(cfg)  # every check that needs no model weights, before any are loaded
    state = _state()
    run_dir, resume = rundir.prepare(cfg, is_main=state.is_main_process)
    if resume:
        log.info("resuming from %s", resume)
    train_ds, eval_ds, fingerprint = load_train_eval(cfg)
    processor = load_processor(cfg)
    model = load_model(cfg)
    trainer, setup = build_trainer(cfg, model, processor, train_ds, eval_ds, run_dir, callbacks, progress)
    if state.is_main_process:
        rundir.write_json(run_dir / "run.json", {
            "preflight": report, "data": fingerprint, **setup,
            "resumed_from": str(resume) if resume else None,
            "start_step": int(resume.name.split("-")[-1]) if resume else 0,
        })

    t0 = time.time()
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    metrics = {**result.metrics, "global_step": trainer.state.global_step, "wall_s": round(time.time() - t0, 2),
               "resumed_from": str(resume) if resume else None}
    if eval_ds is not None:
        metrics.update(trainer.evaluate())
    adapter_dir = run_dir / "adapter"
    trainer.save_model(str(adapter_dir))  # adapter weights + config, processor, chat template
    if state.is_main_process:
        from mellm.train.merge import write_serving_notes

        write_serving_notes(adapter_dir, cfg)
        rundir.write_json(run_dir / "metrics.json", metrics)
    return TrainResult(run_dir=run_dir, adapter_dir=adapter_dir, metrics=metrics, trainer=trainer)
