"""GRPO benchmark: does reinforcement fine-tuning with the AU-grounded rewards improve an SFT adapter?

One run, one set of held-out clips (the val and test splits' subjects, never trained on):
1. MEU-Instruct from `mellm build-data` on synthetic clips; a tiny Qwen2.5-VL built offline.
2. SFT (`mellm train`'s recipe) for a short budget: an adapter that has learnt part of the task.
3. GRPO (`method: grpo`, configs/train/tiny_cpu_grpo.yaml) from that adapter, with the rewards of
   train/rewards.py. During the run a callback asks the held-out coarse question (greedy) every
   few steps, so the held-out accuracy curve sits beside the mean-reward curve.
4. SFT-only and SFT+GRPO adapters, both reloaded from disk as a server loads them, answer the
   same held-out questions: coarse accuracy (UF1, UAR), AU F1 on the AU-list question, and the
   share of claimed AUs the clip's evidence supports (mellm.aus.claim_support: perception found
   the AU, on the claimed side; the definition the evidence reward and the gateway use).
   The baseline "SFT continued for as many extra steps" is reported too, so that GRPO is not
   credited for extra training alone.

The defaults are the setting in which GRPO has something to learn on this tiny model:
- its final norm's gain is 10 (--head-gain): at transformers' default the next-token
  distributions are nearly flat, so every sampled answer is noise and GRPO has nothing to compare;
- SFT is short and on coarse questions only (70 steps: the adapter answers in the template but has
  learnt the classes only partly). With coarse, fine and AU-list questions mixed, the 2-layer model
  confuses the answer types and never says "positive" even on its training prompts, and GRPO on
  top of it moved held-out accuracy by a question or two (train_grpo_cpu_gain10_coarse.md);
- GRPO: 8 prompts x 8 answers per step at temperature 1.0, lr 2e-4 with clip-higher
  (--epsilon-high 0.28). At lr 1e-3 the policy collapsed within 20 steps (every group's answers
  identical, one class for every clip); at 5e-5 it hardly moved.

  .venv/bin/python bench/train_grpo.py [--clips 144] [--sft-steps 70] [--sft-qtypes coarse]
       [--grpo-steps 80] [--grpo-lr 2e-4] [--grpo-qtypes coarse] [--seed 0] [--work DIR]

Writes bench/results/train_grpo_cpu.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import describe_machine, machine_line  # noqa: E402


def greedy(model, processor, rows, max_new_tokens: int) -> list[str]:
    import torch

    out = []
    for row in rows:
        prompt = processor.apply_chat_template(row["messages"][:-1], add_generation_prompt=True, tokenize=False)
        enc = processor(text=[prompt], images=row["images"], return_tensors="pt")
        with torch.no_grad():
            ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
        out.append(processor.tokenizer.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True))
    return out


def coarse_scores(model, processor, rows) -> dict:
    from mellm.answers import parse_answer
    from mellm.eval.metrics import class_metrics

    texts = greedy(model, processor, rows, 8)
    pred = [parse_answer(r["question"], t).coarse for r, t in zip(rows, texts)]
    gold = [r["coarse"] for r in rows]
    m = class_metrics(gold, pred)
    return {"accuracy": sum(p == g for p, g in zip(pred, gold)) / len(gold), "uf1": m.uf1, "uar": m.uar,
            "n": len(gold), "unreadable": sum(p is None for p in pred)}


def au_scores(model, processor, rows, data_dir: Path) -> dict:
    """AU F1 of the AU-list answers and the share of claimed AUs the evidence supports (the one
    definition, mellm.aus.claim_support, that the evidence reward and the gateway use too)."""
    from mellm.answers import claimed_aus, parse_answer
    from mellm.aus import present_aus, supported_share
    from mellm.eval.metrics import multilabel_f1, set_f1
    from mellm.train.grpo import _evidence_path

    texts = greedy(model, processor, rows, 24)
    pred = [parse_answer(r["question"], t).aus for r, t in zip(rows, texts)]
    gold = [set(r["aus"]) for r in rows]
    supported = claimed = 0
    for r, t in zip(rows, texts):
        found = present_aus(json.loads(_evidence_path(data_dir, r["id"], r["qtype"]).read_text()))
        s, c = supported_share(claimed_aus(r["question"], t), found)
        supported, claimed = supported + s, claimed + c
    return {"micro_f1": multilabel_f1(gold, pred).micro_f1,
            "mean_set_f1": sum(set_f1(g, p) for g, p in zip(gold, pred)) / len(gold),
            "claimed": claimed, "supported": supported,
            "supported_share": supported / claimed if claimed else None, "n": len(rows), "answers": texts}


def reference_support(rows, data_dir: Path) -> dict:
    """The same share for the reference answers: how far perception backs the labels (a ceiling)."""
    from mellm.answers import claimed_aus
    from mellm.aus import present_aus, supported_share
    from mellm.train.grpo import _evidence_path

    supported = claimed = 0
    for r in rows:
        found = present_aus(json.loads(_evidence_path(data_dir, r["id"], r["qtype"]).read_text()))
        s, c = supported_share(claimed_aus(r["question"], r["answer"]), found)
        supported, claimed = supported + s, claimed + c
    return {"claimed": claimed, "supported": supported, "supported_share": supported / claimed if claimed else None}


def load(model_dir: Path, adapter: Path):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(model_dir), str(adapter)).eval()
    return model, AutoProcessor.from_pretrained(adapter)


def held_out_callback(rows, processor, every: int, curve: list):
    from transformers import TrainerCallback

    class HeldOut(TrainerCallback):
        def _measure(self, step, model):
            was_training = model.training
            model.eval()
            curve.append({"step": step, **coarse_scores(model, processor, rows)})
            if was_training:
                model.train()
            print(f"held-out coarse accuracy at step {step}: {curve[-1]['accuracy']:.3f}", flush=True)

        def on_train_begin(self, args, state, control, model=None, **kw):
            self._measure(state.global_step, model)

        def on_step_end(self, args, state, control, model=None, **kw):
            if state.global_step % every == 0:
                self._measure(state.global_step, model)

    return HeldOut()


def run_once(train, cfg):
    """Train, or reuse the adapter a previous run with the same config left in --work."""
    from types import SimpleNamespace

    import yaml

    saved = Path(cfg.output_dir) / "config.yaml"
    if (Path(cfg.output_dir) / "adapter").is_dir() and saved.is_file() and \
            yaml.safe_load(saved.read_text()) == cfg.model_dump(mode="json"):
        return SimpleNamespace(adapter_dir=Path(cfg.output_dir) / "adapter", run_dir=Path(cfg.output_dir))
    return train(cfg, progress=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=144)
    ap.add_argument("--subjects", type=int, default=12)
    ap.add_argument("--sft-steps", type=int, default=70)
    ap.add_argument("--grpo-steps", type=int, default=80)
    ap.add_argument("--grpo-lr", type=float, default=2e-4)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--generations", type=int, default=8)
    ap.add_argument("--prompts", type=int, default=8, help="prompts per GRPO step")
    ap.add_argument("--grpo-qtypes", default="coarse",
                    help="question types GRPO samples answers to (the emotion reward pays on coarse and fine)")
    ap.add_argument("--epsilon-high", type=float, default=0.28,
                    help="upper clip of the policy ratio (DAPO clip-higher): keeps the sampled answers from collapsing into one")
    ap.add_argument("--sft-qtypes", default="coarse", help="question types SFT trains on")
    ap.add_argument("--sft-share", type=float, default=1.0,
                    help="share of the training clips SFT trains on (GRPO trains on all of them)")
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--class-balanced", action="store_true", help="the emotion reward weighs each class by its rarity")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--head-gain", type=float, default=10.0,
                    help="the tiny model's final-norm weight: at 1 its next-token distributions are nearly flat and "
                         "every sampled answer is noise (train/tiny_models.py)")
    ap.add_argument("--control", action=argparse.BooleanOptionalAction, default=True,
                    help="also continue the SFT run for as many steps as GRPO took (the control)")
    ap.add_argument("--work", type=Path, default=None, help="keep the run here instead of a temporary folder")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results")
    ap.add_argument("--from-json", type=Path, default=None, help="only rewrite the .md of a results .json")
    args = ap.parse_args()
    if args.from_json:
        report = json.loads(args.from_json.read_text())
        if args.work and (args.work / "sft" / "metrics.json").is_file():
            report["seconds"]["sft"] = json.loads((args.work / "sft" / "metrics.json").read_text())["wall_s"]
        write_report(report, args.from_json.parent)
        return

    import datasets

    from mellm.data_builders.build import BuildConfig, build
    from mellm.synth import SynthConfig, generate_corpus
    from mellm.train.config import load_config
    from mellm.train.recipe import train
    from mellm.train.rundir import read_metrics
    from mellm.train.tiny_models import build_tiny_model

    machine = describe_machine()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        data = work / "meu"
        if not (data / "build.json").is_file():
            generate_corpus(work / "clips", n=args.clips, seed=args.seed, progress=True, config=SynthConfig(
                n_frames=14, width=320, height=240, face_iod=60, n_subjects=args.subjects))
            build(BuildConfig(datasets=[("synth", work / "clips")], out=data, workers=2, exports=False))
        model_dir = build_tiny_model(work / "tiny", "qwen2_5_vl", seed=args.seed, head_gain=args.head_gain)
        common = [f"data.dir={data}", f"model.name_or_path={model_dir}", "train.report_to=[]", f"seed={args.seed}",
                  "lora.r=16", "lora.alpha=32"]
        sft_common = common + ["train.batch_size=8", "train.lr=2e-3", "train.warmup_ratio=0.0",
                               "data.eval_split=null", f"data.qtypes=[{args.sft_qtypes}]", "train.logging_steps=10",
                               "train.gradient_checkpointing=false"]  # tiny model: memory is no issue
        dd = datasets.load_from_disk(str(data / "hf"))
        train_clips = list(dict.fromkeys(dd["train"]["clip_id"]))  # in row order: rows come clip by clip
        sft_clips = train_clips
        if args.sft_share < 1.0:
            # SFT sees the first share of the training clips; GRPO then also meets clips whose written
            # answers were never trained on, where only the labels (through the rewards) teach.
            qtypes = args.sft_qtypes.split(",")
            rows = [c for c, q in zip(dd["train"]["clip_id"], dd["train"]["qtype"]) if q in qtypes]
            with_rows = list(dict.fromkeys(rows))
            sft_clips = with_rows[:max(1, round(args.sft_share * len(with_rows)))]
            kept = set(sft_clips)
            n_rows = sum(c in kept for c in rows)
            assert all(c in kept for c in rows[:n_rows])  # data.max_train_samples takes the first rows
            sft_common.append(f"data.max_train_samples={n_rows}")
        t0 = time.time()
        sft = run_once(train, load_config("tiny_cpu", sft_common + [
            f"output_dir={work / 'sft'}", f"train.max_steps={args.sft_steps}", f"train.save_steps={args.sft_steps}"]))
        sft_s = time.time() - t0
        # A reused SFT adapter (--work) reports the time its run took.
        sft_s = json.loads((Path(sft.run_dir) / "metrics.json").read_text()).get("wall_s", sft_s)

        # Held out: the val and test subjects (SFT and GRPO here train on the train split only).
        test = datasets.concatenate_datasets([dd[s] for s in ("val", "test") if s in dd])
        coarse_rows = [r for r in test if r["qtype"] == "coarse"]
        au_rows = [r for r in test if r["qtype"] == "au_list"]

        model, processor = load(model_dir, sft.adapter_dir)
        sft_only = {"coarse": coarse_scores(model, processor, coarse_rows),
                    "aus": au_scores(model, processor, au_rows, data)}

        curve: list = []
        batch = args.prompts * args.generations
        grpo_cfg = load_config("tiny_cpu_grpo", common + [
            f"output_dir={work / 'grpo'}", f"model.adapter={sft.adapter_dir}", f"train.max_steps={args.grpo_steps}",
            f"train.save_steps={args.grpo_steps}", f"train.batch_size={batch}", f"train.lr={args.grpo_lr}",
            f"grpo.num_generations={args.generations}", f"grpo.temperature={args.temperature}",
            f"data.qtypes=[{args.grpo_qtypes}]", "train.logging_steps=1",
            f"grpo.epsilon_high={args.epsilon_high}",
            f"rewards.class_balanced={'true' if args.class_balanced else 'false'}"])
        t0 = time.time()
        grpo = train(grpo_cfg, callbacks=[held_out_callback(coarse_rows, processor, args.eval_every, curve)],
                     progress=False)
        grpo_s = time.time() - t0
        model, processor = load(model_dir, grpo.adapter_dir)
        sft_grpo = {"coarse": coarse_scores(model, processor, coarse_rows),
                    "aus": au_scores(model, processor, au_rows, data)}
        logs = [m for m in read_metrics(grpo.run_dir) if "reward" in m]
        rewards = [(m["step"], m["reward"]) for m in logs]
        per_reward = {k.split("/")[1]: [m.get(k) for m in logs] for k in logs[0] if k.startswith("rewards/") and
                      k.endswith("/mean")}

        holdout = json.loads((data / "splits.json").read_text())["holdout"]
        held_out_subjects = holdout["val"] + holdout["test"]
        k = max(1, len(rewards) // 5)
        first, last = (sum(r for _, r in rewards[:k]) / k, sum(r for _, r in rewards[-k:]) / k)
        machine["load_avg_1m_end"] = os.getloadavg()[0]
        report = {"machine": machine, "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                  "train_clips": len(train_clips), "sft_clips": len(sft_clips),
                  "held_out_subjects": held_out_subjects, "held_out": {"coarse": len(coarse_rows), "au_list": len(au_rows)},
                  "rewards": grpo_cfg.rewards.model_dump(),
                  "reference_answers_support": reference_support(au_rows, data),
                  "sft_only": sft_only, "sft_grpo": sft_grpo, "sft_continued": None,
                  "reward_first_fifth": first, "reward_last_fifth": last, "reward_curve": rewards,
                  "per_reward_mean": per_reward, "held_out_coarse_curve": curve,
                  "seconds": {"sft": round(sft_s, 1), "grpo": round(grpo_s, 1)}}
        write_report(report, args.out)
        if args.control:
            # The control: the SFT run continued from its last checkpoint for as many steps as GRPO
            # took, so that GRPO is not credited for training longer.
            more_dir = work / "sft_more"
            ckpt = work / "sft" / f"checkpoint-{args.sft_steps}"
            if not (more_dir / ckpt.name).is_dir():
                shutil.copytree(ckpt, more_dir / ckpt.name)
            t0 = time.time()
            more = run_once(train, load_config("tiny_cpu", sft_common + [
                f"output_dir={more_dir}", f"train.max_steps={args.sft_steps + args.grpo_steps}",
                f"train.save_steps={args.sft_steps + args.grpo_steps}"]))
            report["seconds"]["sft_continued"] = round(time.time() - t0, 1)
            model, processor = load(model_dir, more.adapter_dir)
            report["sft_continued"] = {"coarse": coarse_scores(model, processor, coarse_rows),
                                       "aus": au_scores(model, processor, au_rows, data)}
            report["machine"]["load_avg_1m_end"] = os.getloadavg()[0]
            write_report(report, args.out)


def _share(a: dict) -> str:
    return f"{a['supported_share']:.3f} ({a['supported']}/{a['claimed']})" if a["claimed"] else "- (0 claimed)"


def write_report(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_grpo_cpu.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    a, machine = report["settings"], report["machine"]
    s = report["seconds"]
    rewards, curve = report["reward_curve"], report["held_out_coarse_curve"]

    def row(name, r):
        c, a = r["coarse"], r["aus"]
        share = _share(a)
        return (f"| {name} | {c['accuracy']:.3f} | {c['uf1']:.3f} | {c['uar']:.3f} | {a['micro_f1']:.3f} | "
                f"{a['mean_set_f1']:.3f} | {share} |")

    share = a.get("sft_share", 1.0)
    sft_share = (f" of the first {report['sft_clips']} of the {report['train_clips']} training clips; GRPO trains "
                 "on all of them" if share < 1.0 else "")
    control = (row(f"SFT continued {a['grpo_steps']} more steps (control)", report["sft_continued"])
               if report["sft_continued"] else "| SFT continued (control) | not run | | | | | |")
    lines = [
        "# GRPO with AU-grounded rewards on top of SFT: tiny Qwen2.5-VL on CPU", "",
        f"Machine: {machine_line(machine)}.", "",
        f"MEU-Instruct from `mellm build-data` on {a['clips']} synthetic clips of {a['subjects']} subjects; "
        f"tiny model's final-norm gain {a.get('head_gain', 1.0)}. "
        f"SFT: {a['sft_steps']} steps of batch 8 ({a.get('sft_qtypes', 'coarse,fine,au_list').replace(',', ', ')} questions"
        f"{sft_share}), {s['sft']:.0f} s. GRPO from that adapter (`configs/train/tiny_cpu_grpo.yaml`): {a['grpo_steps']} steps of {a['prompts']} prompts x "
        f"{a['generations']} sampled answers (temperature {a['temperature']}, lr {a['grpo_lr']}; "
        f"{a.get('grpo_qtypes', 'coarse,au_list').replace(',', ' and ')} questions{'; class-balanced emotion reward' if a.get('class_balanced') else ''}; "
        f"reward weights {report['rewards']['weights']}), {s['grpo']:.0f} s. Held out: the val and test "
        f"splits' subjects {report['held_out_subjects']} ({report['held_out']['coarse']} coarse questions, "
        f"{report['held_out']['au_list']} AU-list questions), never trained on; every adapter is reloaded from disk "
        "and answers greedily.", "",
        "| adapter | coarse accuracy | UF1 | UAR | AU micro F1 | AU mean set F1 | claimed AUs the evidence supports |",
        "|---|---|---|---|---|---|---|",
        row("SFT only", report["sft_only"]), row("SFT + GRPO", report["sft_grpo"]), control, "",
        "Claimed AUs the evidence supports: `mellm.aus.claim_support` (perception judged the AU present, "
        "score >= 0.5, on the claimed side where one is stated), the definition the evidence reward and the "
        "gateway's `claims[].supported` use."
        + (" The reference answers of the same questions: {}.".format(_share(report["reference_answers_support"]))
           if report.get("reference_answers_support") else "")
        + ("" if any("au_list" in a.get(k, "au_list").split(",") for k in ("sft_qtypes", "grpo_qtypes")) else
           " In this run neither SFT nor GRPO trained on AU-list questions, so the AU columns only show that "
           "the adapters do not list AUs they were never taught to."), "",
        f"Mean total reward over the GRPO run: first fifth of the steps {report['reward_first_fifth']:.3f}, "
        f"last fifth {report['reward_last_fifth']:.3f}."
        + (f" Held-out coarse accuracy: {curve[0]['accuracy']:.3f} at the start, {curve[-1]['accuracy']:.3f} at the "
           f"end (best {max(c['accuracy'] for c in curve):.3f})." if curve else ""), "",
        "Held-out coarse accuracy during GRPO (step: accuracy): "
        + ", ".join(f"{c['step']}: {c['accuracy']:.3f}" for c in curve) + ".", "",
        "Mean total reward per step: " + ", ".join(f"{st}: {r:.2f}" for st, r in rewards) + ".", "",
        "Per-reward means per step: " + "; ".join(
            f"{name}: " + ", ".join("-" if v is None else f"{v:.2f}" for v in vals)
            for name, vals in report["per_reward_mean"].items()) + ".", "",
    ]
    (out / "train_grpo_cpu.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
