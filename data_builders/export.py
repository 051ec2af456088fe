"""Write MEU-Instruct samples: JSONL, the HF datasets (VLM and text-only), LLaMA-Factory and
ms-swift exports. Formats: docs/formats.md."""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mellm.data_builders.instruct import Sample
from mellm.prompts import IMAGE_ROLES, SYSTEM_PROMPT, build_messages, user_text

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class PromptOptions:
    image_roles: tuple[str, ...] = IMAGE_ROLES
    evidence_in_prompt: bool = True  # the flow-guided variant: the motion description in the user turn


def jsonl_row(s: Sample, images: list[str], opts: PromptOptions) -> dict:
    rec = s.clip.record
    return {
        "id": s.id, "dataset": rec.dataset, "subject": rec.subject_key, "clip_id": rec.clip_id,
        "qtype": s.qtype.value, "question": s.question, "answer": s.answer,
        "evidence_text": s.clip.evidence.description if opts.evidence_in_prompt else None,
        "images": images, "coarse": rec.coarse, "fine": rec.fine, "aus": [a.au for a in rec.aus],
        "au_sides": [a.side for a in rec.aus], "agreement": s.agreement,
    }


def write_jsonl(rows_by_split: dict[str, list[dict]], out: Path) -> None:
    folder = out / "jsonl"
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in rows_by_split.items():
        with open(folder / f"{split}.jsonl", "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")


def _features(text_only: bool):
    from datasets import Features, Image, List, Value

    content = Value("string") if text_only else List({"type": Value("string"), "text": Value("string")})
    feats = {
        "id": Value("string"), "dataset": Value("string"), "subject": Value("string"), "clip_id": Value("string"),
        "qtype": Value("string"), "question": Value("string"), "answer": Value("string"),
        "messages": List({"role": Value("string"), "content": content}),
        "coarse": Value("string"), "fine": Value("string"), "aus": List(Value("int32")),
        "au_sides": List(Value("string")), "agreement": Value("string"),
    }
    if not text_only:
        feats["images"] = List(Image())
    return Features(feats)


def _hf_rows(jsonl: Path, root: Path, opts: PromptOptions, text_only: bool):
    with open(jsonl) as f:
        for line in f:
            r = json.loads(line)
            row = {k: r[k] for k in ("id", "dataset", "subject", "clip_id", "qtype", "question", "answer",
                                     "coarse", "fine", "aus")}
            row["au_sides"] = r.get("au_sides") or ["both"] * len(r["aus"])
            row["agreement"] = json.dumps(r["agreement"])
            roles = () if text_only else opts.image_roles
            row["messages"] = build_messages(r["question"], roles, r["evidence_text"], answer=r["answer"], text_only=text_only)
            if not text_only:
                # Embedded bytes: the saved dataset does not depend on where the image files are.
                row["images"] = [{"bytes": (root / p).read_bytes(), "path": None} for p in r["images"]]
            yield row


def write_hf(out: Path, opts: PromptOptions, splits: list[str], text_only: bool) -> Path:
    """DIR/hf (or DIR/hf_text) from DIR/jsonl. Streams rows, so memory stays flat."""
    from datasets import Dataset, DatasetDict, disable_progress_bars

    disable_progress_bars()
    target = out / ("hf_text" if text_only else "hf")
    with tempfile.TemporaryDirectory(dir=out) as cache:  # a fresh cache: no stale generator results
        parts = {}
        for split in splits:
            parts[split] = Dataset.from_generator(
                _hf_rows, features=_features(text_only), cache_dir=cache,
                gen_kwargs={"jsonl": out / "jsonl" / f"{split}.jsonl", "root": out, "opts": opts, "text_only": text_only})
        if target.exists():
            shutil.rmtree(target)
        DatasetDict(parts).save_to_disk(str(target))
    return target


def _user_turn(row: dict, opts: PromptOptions) -> str:
    """The user turn as LLaMA-Factory and ms-swift take it: one <image> tag per image, then the
    same text mellm.prompts builds."""
    return "<image>" * len(opts.image_roles) + user_text(row["question"], opts.image_roles, row["evidence_text"])


def _image_paths(row: dict, out: Path) -> list[str]:
    return [str((out / p).resolve()) for p in row["images"]]


def write_llamafactory(rows_by_split: dict[str, list[dict]], out: Path, opts: PromptOptions) -> None:
    """sharegpt format with `images`, and its dataset_info.json. Image paths are absolute."""
    folder = out / "exports" / "llamafactory"
    folder.mkdir(parents=True, exist_ok=True)
    info = {}
    for split, rows in rows_by_split.items():
        items = [{
            "system": SYSTEM_PROMPT,
            "messages": [{"role": "user", "content": _user_turn(r, opts)}, {"role": "assistant", "content": r["answer"]}],
            "images": _image_paths(r, out),
        } for r in rows]
        (folder / f"{split}.json").write_text(json.dumps(items, indent=1))
        info[f"meu_instruct_{split}"] = {
            "file_name": f"{split}.json", "formatting": "sharegpt",
            "columns": {"messages": "messages", "images": "images", "system": "system"},
            "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
        }
    (folder / "dataset_info.json").write_text(json.dumps(info, indent=1))


def write_swift(rows_by_split: dict[str, list[dict]], out: Path, opts: PromptOptions) -> None:
    """ms-swift's standard messages format, one JSON object a line. Image paths are absolute."""
    folder = out / "exports" / "swift"
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in rows_by_split.items():
        with open(folder / f"{split}.jsonl", "w") as f:
            for r in rows:
                item = {
                    "messages": [{"role": "system", "content": SYSTEM_PROMPT},
                                 {"role": "user", "content": _user_turn(r, opts)},
                                 {"role": "assistant", "content": r["answer"]}],
                    "images": _image_paths(r, out),
                }
                f.write(json.dumps(item) + "\n")
