"""Benchmark: training throughput (tokens/s) and peak memory of our recipe's training step vs a
plain trl SFTTrainer, same model, same data, same hyperparameters, same run.

Ours   = train.recipe.build_trainer: our collator, LoRA on the language model, the frozen vision
         tower run without autograd (train/speed.py), length-grouped batches (train.group_by_length).
Plain  = trl.SFTTrainer as its documentation sets it up: its own vision collator with
         `assistant_only_loss=True` (the tiny template has generation markers), the same LoRA
         config, the same training maths (batch, schedule, precision, gradient checkpointing,
         max length); every other setting at trl's default (data loading in the training
         process unless --plain-workers).
Data: MEU-Instruct built by `mellm build-data` from synthetic clips, every question type. Both
collators produce identical samples (tests/test_train_collate.py); tokens are counted without
padding, so batching that wastes less on padding shows as more tokens/s.

Each measurement runs in its own process (peak RSS is per process), ours and plain alternate
`--repeats` times, and medians are reported. Tokens are the non-padding tokens of a batch,
image tokens included (trl's `num_tokens`). Peak memory: the process's peak RSS on CPU,
torch.cuda.max_memory_allocated on a GPU.

  .venv/bin/python bench/train_throughput.py                       # tiny Qwen2.5-VL on CPU
  python bench/train_throughput.py --arch qwen2_5_vl_7b --batch-size 4 --steps 20   # on a GPU:
      real Qwen2.5-VL-7B architecture, random bf16 weights, 256x256 images

Writes bench/results/train_throughput_{cpu|gpu}.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import describe_machine, machine_line  # noqa: E402

ARCHS = ("tiny", "qwen2_5_vl_3b", "qwen2_5_vl_7b")
VARIANTS = ("ours", "plain", "ours_nogc")
NAMES = {"ours": "ours (train.recipe)", "plain": "plain trl SFTTrainer",
         "ours_nogc": "ours, gradient checkpointing off"}


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _config(args, assets: dict, gradient_checkpointing: bool):
    from mellm.train.config import load_config

    base = "tiny_cpu.yaml" if args.arch == "tiny" else "qwen2_5_vl_7b_lora.yaml"
    overrides = [
        f"data.dir={assets['data']}", f"model.name_or_path={assets['model']}", "data.eval_split=null",
        f"output_dir={assets['out']}", "train.report_to=[]", f"train.batch_size={args.batch_size}",
        "train.grad_accum=1", f"train.max_steps={args.warmup + args.steps}", "train.logging_steps=1000",
        f"model.max_pixels={args.max_pixels}",
        f"train.gradient_checkpointing={str(gradient_checkpointing).lower()}",
    ]
    if args.workers is not None:
        overrides.append(f"train.num_workers={args.workers}")
    if args.arch != "tiny":
        overrides.append(f"model.processor={assets['processor']}")
    return load_config(ROOT / "configs/train" / base, overrides)


def _model(args, cfg, assets):
    import torch

    from mellm.train.recipe import load_model

    if args.arch == "tiny":
        return load_model(cfg)
    from transformers import AutoConfig, AutoModelForImageTextToText

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(assets["model"])
    with torch.device("cuda"):
        return AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16,
                                                       attn_implementation=cfg.model.attn_implementation)


def worker(args) -> dict:
    """One measurement in this process: build the trainer (ours or plain), run warmup + steps."""
    import torch
    from transformers import TrainerCallback
    from transformers.trainer_utils import SaveStrategy

    from mellm.train.data import load_train_eval
    from mellm.train.recipe import build_trainer, load_processor

    assets = json.loads(args.assets)
    cfg = _config(args, assets, args.gradient_checkpointing and args.worker != "ours_nogc")
    train_ds, _, _ = load_train_eval(cfg)
    processor = load_processor(cfg)
    model = _model(args, cfg, assets)
    run_dir = Path(assets["out"]) / f"{args.worker}_{os.getpid()}"
    if args.worker.startswith("ours"):
        trainer, _ = build_trainer(cfg, model, processor, train_ds, None, run_dir, progress=False)
    else:
        from trl import SFTConfig, SFTTrainer

        from mellm.train.lora import peft_config

        # What the trl documentation's script sets: the training maths identical to ours (batch,
        # schedule, precision, gradient checkpointing, sequence length, answer-only loss, LoRA);
        # every other knob at trl's default (e.g. data loading in the training process).
        t = cfg.train
        plain = SFTConfig(
            output_dir=str(run_dir), seed=cfg.seed, max_steps=t.max_steps, per_device_train_batch_size=t.batch_size,
            gradient_accumulation_steps=t.grad_accum, learning_rate=t.lr, lr_scheduler_type=t.scheduler,
            warmup_steps=t.warmup_ratio, weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm,
            bf16=t.mixed_precision == "bf16", fp16=t.mixed_precision == "fp16",
            gradient_checkpointing=t.gradient_checkpointing, max_length=t.max_length,
            assistant_only_loss=True, logging_steps=t.logging_steps, report_to="none", disable_tqdm=True,
            dataloader_num_workers=args.plain_workers,
        )
        trainer = SFTTrainer(model=model, args=plain, train_dataset=train_ds, processing_class=processor,
                             peft_config=peft_config(cfg))
    trainer.args.save_strategy = SaveStrategy.NO

    marks = []

    class Clock(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            marks.append((time.perf_counter(), trainer._total_train_tokens))

    trainer.add_callback(Clock())
    rss_before = _rss_mb()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    (t0, tok0), (t1, tok1) = marks[args.warmup - 1], marks[-1]
    steps = [b[0] - a[0] for a, b in zip(marks[args.warmup - 1:], marks[args.warmup:])]
    result = {
        "variant": args.worker, "tokens_per_s": (tok1 - tok0) / (t1 - t0), "tokens": tok1 - tok0,
        "workers": trainer.args.dataloader_num_workers,
        "median_step_s": statistics.median(steps), "steps": len(steps),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_before_train_mb": rss_before,
    }
    if torch.cuda.is_available():
        result["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def prepare(args, tmp: Path) -> dict:
    from mellm.data_builders.build import BuildConfig, build
    from mellm.synth import SynthConfig, generate_corpus
    from mellm.train.tiny_models import (
        CHAT_TEMPLATE,
        _special_ids,
        build_tiny_model,
        real_size_config,
        tiny_processor,
        train_tokenizer,
    )

    # The real data path: synthetic clips -> `mellm build-data` (every question type, so sample
    # lengths range from one-word answers to reasoning chains, as in MEU-Instruct).
    generate_corpus(tmp / "clips", n=args.clips, seed=0,
                    config=SynthConfig(n_frames=14, width=320, height=240, face_iod=60, n_subjects=6))
    build(BuildConfig(datasets=[("synth", tmp / "clips")], out=tmp / "meu", workers=2, progress=False, exports=False))
    assets = {"out": str(tmp / "runs"), "data": str(tmp / "meu")}
    if args.arch == "tiny":
        assets["model"] = str(build_tiny_model(tmp / "tiny", "qwen2_5_vl"))
    else:
        # The real architecture's config (random weights are made on the GPU by each worker) with
        # the tiny tokenizer; special-token ids follow that tokenizer.
        tok = train_tokenizer()
        tok.chat_template = CHAT_TEMPLATE
        (tmp / "arch").mkdir()
        real_size_config(args.arch, _special_ids(tok)).save_pretrained(tmp / "arch")
        tiny_processor("qwen2_5_vl", tok, 56 * 56, args.max_pixels).save_pretrained(tmp / "arch")
        assets["model"] = assets["processor"] = str(tmp / "arch")
    return assets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=ARCHS, default="tiny")
    ap.add_argument("--steps", type=int, default=20, help="measured optimizer steps per run")
    ap.add_argument("--warmup", type=int, default=3, help="steps before the clock starts")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3, help="runs of each variant, alternating")
    ap.add_argument("--clips", type=int, default=60)
    ap.add_argument("--workers", type=int, default=None,
                    help="our dataloader workers (train.num_workers); default: the config's (0 tiny, 4 GPU)")
    ap.add_argument("--plain-workers", type=int, default=0, help="the plain run's dataloader workers (trl: 0)")
    ap.add_argument("--max-pixels", type=int, default=None, help="default: 12544 tiny, 65536 real")
    ap.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing", action="store_false")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results")
    ap.add_argument("--ours-without-checkpointing", action="store_true",
                    help="also measure ours with gradient checkpointing off (plain keeps trl's default, on)")
    ap.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    ap.add_argument("--assets", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.max_pixels is None:
        args.max_pixels = 112 * 112 if args.arch == "tiny" else 256 * 256
    if args.worker:
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return

    machine = describe_machine()
    with tempfile.TemporaryDirectory() as tmp:
        assets = prepare(args, Path(tmp))
        runs = []
        variants = ["ours", "plain"] + (["ours_nogc"] if args.ours_without_checkpointing else [])
        for i in range(args.repeats):
            for variant in variants if i % 2 == 0 else variants[::-1]:  # alternate the order
                cmd = [sys.executable, __file__, "--worker", variant, "--assets", json.dumps(assets),
                       "--arch", args.arch, "--steps", str(args.steps), "--warmup", str(args.warmup),
                       "--batch-size", str(args.batch_size), "--plain-workers", str(args.plain_workers),
                       "--max-pixels", str(args.max_pixels)]
                if args.workers is not None:
                    cmd += ["--workers", str(args.workers)]
                if not args.gradient_checkpointing:
                    cmd.append("--no-gradient-checkpointing")
                proc = subprocess.run(cmd, capture_output=True, text=True)
                line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
                if line is None:
                    sys.exit(f"{variant} run failed:\n{proc.stderr[-4000:]}")
                runs.append(json.loads(line[7:]))
                r = runs[-1]
                print(f"[{i + 1}/{args.repeats}] {variant:9s} {r['tokens_per_s']:8.0f} tokens/s  "
                      f"step {r['median_step_s'] * 1000:6.0f} ms  peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
    machine["load_avg_1m_end"] = os.getloadavg()[0]
    write_report(args, machine, runs)


def write_report(args, machine: dict, runs: list[dict]) -> None:
    gpu = args.arch != "tiny"
    mem_key = "peak_cuda_mb" if gpu else "peak_rss_mb"
    summary = {}
    for v in VARIANTS:
        mine = [r for r in runs if r["variant"] == v]
        if mine:
            summary[v] = {"tokens_per_s": statistics.median(r["tokens_per_s"] for r in mine),
                          "best_tokens_per_s": max(r["tokens_per_s"] for r in mine),
                          "median_step_s": statistics.median(r["median_step_s"] for r in mine),
                          "peak_memory_mb": statistics.median(r[mem_key] for r in mine),
                          "train_increment_mb": statistics.median(r["peak_rss_mb"] - r["rss_before_train_mb"]
                                                                  for r in mine)}
    plain = summary["plain"]
    for s in summary.values():
        s["speedup_vs_plain"] = s["tokens_per_s"] / plain["tokens_per_s"]
        s["memory_vs_plain"] = s["peak_memory_mb"] / plain["peak_memory_mb"]
    settings = {"arch": args.arch, "batch_size": args.batch_size, "steps": args.steps, "warmup": args.warmup,
                "repeats": args.repeats, "max_pixels": args.max_pixels, "images_per_sample": 3,
                "gradient_checkpointing": args.gradient_checkpointing,
                "dataloader_workers": {"ours": next(r["workers"] for r in runs if r["variant"] == "ours"),
                                       "plain": args.plain_workers},
                "lora": "language model only, r 8 (tiny) / 16 (real)"}
    report = {"machine": machine, "settings": settings, "summary": summary,
              "speedup_tokens_per_s": summary["ours"]["speedup_vs_plain"],
              "memory_ratio": summary["ours"]["memory_vs_plain"],
              "goal": "ours >= 1.5x plain tokens/s at no more memory", "runs": runs}
    tag = "gpu" if gpu else "cpu"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"train_throughput_{tag}.json").write_text(json.dumps(report, indent=2) + "\n")
    mem_name = "peak GPU memory allocated (MB)" if gpu else "peak RSS (MB)"
    lines = [
        "# Training throughput: our recipe vs plain trl SFTTrainer", "",
        f"Machine: {machine_line(machine)}; load average at end {machine['load_avg_1m_end']:.2f}.", "",
        f"Model: {args.arch} Qwen2.5-VL ({'real architecture, random bf16 weights' if gpu else 'tiny, random fp32'}), "
        f"LoRA on the language model, batch {args.batch_size}, 3 images per sample (max {args.max_pixels} px each), "
        f"gradient checkpointing {'on' if args.gradient_checkpointing else 'off'} unless stated, "
        f"dataloader workers ours {settings['dataloader_workers']['ours']} / plain {args.plain_workers}; "
        f"{args.steps} measured steps after {args.warmup} warm-up steps, {args.repeats} alternating runs per variant "
        f"(medians). Data: MEU-Instruct from `mellm build-data` on {args.clips} synthetic clips, every question type. "
        "Tokens: non-padding tokens, image tokens included.", "",
        f"| variant | tokens/s | vs plain | best run tokens/s | median step (ms) | {mem_name} | vs plain | "
        "RSS growth in training (MB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v, s in summary.items():
        lines.append(f"| {NAMES[v]} | {s['tokens_per_s']:.0f} | {s['speedup_vs_plain']:.2f}x | {s['best_tokens_per_s']:.0f} | "
                     f"{s['median_step_s'] * 1000:.0f} | {s['peak_memory_mb']:.0f} | {s['memory_vs_plain']:.3f} | "
                     f"{s['train_increment_mb']:.0f} |")
    lines += ["", "Goal: ours >= 1.5x plain tokens/s at no more memory. Like for like (both with gradient "
              "checkpointing, trl's default), the gain comes from length-grouped batches (less padding), running the "
              "frozen vision tower without autograd, and the lighter collator.", ""]
    if "ours_nogc" in summary:
        mem = summary["ours_nogc"]["memory_vs_plain"]
        lines += ["The last row turns gradient checkpointing off for ours only (plain keeps trl's default): faster, "
                  f"at {mem:.3f}x the plain run's peak memory on this tiny model. On real-size models checkpointing is "
                  "what keeps activations small, so that row does not carry over to them.", ""]
    lines += ["Per run (tokens/s): " + ", ".join(f"{r['variant']} {r['tokens_per_s']:.0f}" for r in runs) + ".", ""]
    if not gpu:
        lines += ["CPU timings on 2 cores vary from run to run (see the per-run numbers and the load averages); "
                  "the medians are what the table reports.", ""]
    (args.out / f"train_throughput_{tag}.md").write_text("\n".join(lines))
    print("\n".join(lines))

if __name__ == "__main__":
    main()
