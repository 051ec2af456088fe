"""`mellm demo`: the whole pipeline on built-in data, on a CPU, in minutes.

synthetic ME clips -> MEU-Instruct -> a tiny VLM built offline, LoRA-tuned -> served by vLLM with
the ME gateway in front -> `mellm eval run` through the gateway on clips of held-out subjects ->
the ME-VQA report. Every stage is the same library code the commands run; every artefact stays
under OUT so it can be opened afterwards.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

TINY_CONFIG = "train/tiny_cpu.yaml"  # packaged (mellm.resources)
# Short-answer questions: what a 650k-parameter model can learn in a few CPU minutes. The data
# holds every type; training and evaluation keep these.
DEMO_QTYPES = ("coarse", "fine", "au_list")


@dataclass
class DemoConfig:
    out: Path = Path("demo_out")
    clips: int = 120
    subjects: int = 10  # the held-out test split gets 2 of them (subjects are never split)
    frames: int = 20
    steps: int = 600
    workers: int = 2
    seed: int = 0


def _stage(console: Console, n: int, title: str) -> float:
    console.rule(f"[bold]{n}/6  {title}")
    return time.perf_counter()


def _done(console: Console, t: float, *paths: Path) -> None:
    console.print(f"[green]done in {time.perf_counter() - t:.0f} s[/green]: " + ", ".join(str(p) for p in paths))


def heldout_questions(meu: Path, synth_root: Path, out: Path) -> Path:
    """The held-out subjects' samples as an MEGC question file (references included), naming each
    clip's frame folder and its labelled onset / apex / offset frames."""
    from mellm.synth import load_labels

    clips = {c.clip_id: c for c in load_labels(synth_root)}
    lines = []
    for line in (meu / "jsonl" / "test.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["qtype"] not in DEMO_QTYPES:
            continue
        c = clips[r["clip_id"]]
        lines.append(json.dumps({
            "id": r["id"], "dataset": "synth", "image_id": c.clip_id, "subject": c.subject, "filename": c.clip_id,
            "video": c.frames_dir, "onset_frame": c.onset_frame, "apex_frame": c.apex_frame,
            "offset_frame": c.offset_frame, "question": r["question"], "answer": r["answer"],
        }))
    out.write_text("\n".join(lines) + "\n")
    return out


def run_demo(cfg: DemoConfig, console: Console | None = None) -> dict:
    from mellm.data_builders.build import BuildConfig, build
    from mellm.eval.run import RunConfig, run_eval
    from mellm.resources import config_file
    from mellm.serve.background import free_port, serve_in_thread
    from mellm.serve.gateway import GatewayConfig, as_trained, create_app
    from mellm.serve.vllm_server import ServerConfig, VLLMServer
    from mellm.synth import SynthConfig, generate_corpus
    from mellm.train.config import load_config
    from mellm.train.recipe import train
    from mellm.train.tiny_models import build_tiny_model

    console = console or Console()
    out = cfg.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()

    t = _stage(console, 1, f"synthetic micro-expression clips ({cfg.clips}, known AUs and timing)")
    synth = out / "synth"
    if not (synth / "labels.jsonl").is_file():
        generate_corpus(synth, n=cfg.clips, seed=cfg.seed, progress=True, config=SynthConfig(
            n_frames=cfg.frames, width=320, height=240, face_iod=60, n_subjects=cfg.subjects))
    _done(console, t, synth / "labels.jsonl", synth / "frames")

    t = _stage(console, 2, "MEU-Instruct: perception on every clip, instruction samples, splits by subject")
    meu = out / "meu"
    summary = build(BuildConfig(datasets=[("synth", synth)], out=meu, workers=cfg.workers))
    console.print(f"{summary.built} clips, samples: {summary.samples}, {summary.cached} clips from the cache")
    _done(console, t, meu / "hf", meu / "card.md")

    t = _stage(console, 3, "LoRA fine-tuning of a tiny Qwen2.5-VL built offline (random weights)")
    model_dir = out / "tiny_qwen2_5_vl"
    if not (model_dir / "config.json").is_file():
        build_tiny_model(model_dir, seed=cfg.seed)
    run = out / "run"
    tcfg = load_config(config_file(TINY_CONFIG), [f"output_dir={run}", f"model.name_or_path={model_dir}", f"data.dir={meu}",
                                     f"train.max_steps={cfg.steps}", "train.batch_size=8", "lora.r=16",
                                     "train.save_steps=100", "data.eval_split=null", f"seed={cfg.seed}",
                                     f"data.qtypes=[{','.join(DEMO_QTYPES)}]"])
    result = train(tcfg)
    console.print(f"loss {result.metrics.get('train_loss', float('nan')):.3f} over {result.metrics['global_step']} steps")
    _done(console, t, result.adapter_dir, run / "metrics.json")

    t = _stage(console, 4, "serving: vLLM with the adapter, the ME gateway in front")
    server_cfg = ServerConfig(model=str(model_dir), adapters={"mellm": result.adapter_dir}, name="tiny",
                              port=free_port(), max_model_len=2048)
    questions = heldout_questions(meu, synth, out / "test_questions.jsonl")
    with VLLMServer(server_cfg, log=out / "vllm.log") as server:
        gw = GatewayConfig(upstream=server.cfg.url, model="mellm", media_root=synth, max_tokens=160,
                           max_concurrency=2, max_queue=64, **as_trained(result.adapter_dir, None, None))
        with serve_in_thread(create_app(gw)) as gateway_url:
            _done(console, t, server.cfg.url + "/v1", gateway_url, out / "vllm.log")

            t = _stage(console, 5, "mellm eval run through the gateway, on held-out subjects' clips")
            run_summary = run_eval(RunConfig(questions=questions, media_root=synth, endpoint=gateway_url,
                                             model="mellm", out=out / "eval", gateway="path", concurrency=2,
                                             max_tokens=160, timeout_s=600))
            _done(console, t, run_summary.predictions, out / "eval" / "report.md")

    t = _stage(console, 6, "the ME-VQA report")
    report = run_summary.report
    console.print((out / "eval" / "report.md").read_text())
    coarse = _coarse_accuracy(questions, run_summary.predictions)
    console.print(f"[bold]held-out coarse-class accuracy: {coarse['accuracy']:.3f} on {coarse['n']} clips "
                  f"(chance {coarse['chance']:.3f}, majority class {coarse['majority']:.3f})[/bold]")
    console.print(f"whole demo: {time.perf_counter() - t_all:.0f} s; everything is under {out}")
    return {"coarse": coarse, "report": report, "out": out}


def _coarse_accuracy(questions: Path, predictions: Path) -> dict:
    """Accuracy on the coarse-class questions, read as `mellm eval` reads answers."""
    from collections import Counter

    from mellm.answers import parse_answer
    from mellm.eval.records import load_predictions
    from mellm.megc import load_questions
    from mellm.vqa import QType, classify_question

    answers = load_predictions(predictions).answers
    coarse = [r for r in load_questions(questions).rows if classify_question(r.question).type is QType.COARSE]
    right = sum(parse_answer(r.question, answers.get(r.id, "")).coarse == r.answer for r in coarse)
    counts = Counter(r.answer for r in coarse)
    n = max(1, len(coarse))
    return {"n": len(coarse), "accuracy": right / n, "chance": 1 / 3, "majority": max(counts.values(), default=0) / n}
