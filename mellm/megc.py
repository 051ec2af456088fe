"""MEGC ME-VQA / ME-LVQA question files: typed rows, reading, and which dataset a row is from.

Shared by data building (questions joined to clips) and evaluation (questions to score).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from mellm.jsonl import InputFileError, LineIssue, int_field, iter_jsonl, text_field


@dataclass(slots=True)
class QARow:
    """One line of an MEGC ME-VQA / ME-LVQA question file. `answer` is None when the file leaves
    it empty (test files). Frame numbers are 1-based; `video` is an optional media path."""

    id: str
    question: str
    answer: str | None
    dataset: str  # canonical: see canonical_dataset
    dataset_field: str  # as written in the file
    subject: str
    filename: str
    image_id: str
    video: str | None
    onset: int | None
    apex: int | None
    offset: int | None
    line: int


@dataclass
class QuestionFile:
    rows: list[QARow]
    issues: list[LineIssue] = field(default_factory=list)
    duplicate_ids: list[str] = field(default_factory=list)

    @property
    def has_references(self) -> bool:
        return any(r.answer is not None for r in self.rows)


# Folded dataset names (lower case, letters and digits only, "test"/"train" suffix dropped).
_DATASET_ALIASES = {
    "casme2": "casme2", "casmeii": "casme2",
    "casme3": "casme3", "casme3a": "casme3", "casme3parta": "casme3",
    "samm": "samm", "sammlv": "samm", "sammlongvideos": "samm", "sammlongvideo": "samm",
    "smic": "smic", "smichs": "smic", "smice": "smic",
    "4dme": "4dme", "dfme": "dfme", "casme2lv": "casme2", "synthlv": "synthlv", "synth": "synth",
}


@lru_cache(maxsize=4096)
def canonical_dataset(dataset: str | None, subject: str | None = None) -> str:
    """The dataset a row comes from: casme2, samm, smic, casme3, 4dme, dfme, or the folded name.

    The MEGC 2025 CAS(ME)^3 test file labels its rows "samm_test"; SAMM subjects are numbers and
    CAS(ME)^3 subjects are letters ("dzw"), so a "samm_test" row with a non-numeric subject is
    CAS(ME)^3.
    """
    if not dataset:
        return "unknown"
    raw = dataset.strip().lower()
    folded = re.sub(r"[^a-z0-9]", "", raw.replace("^", ""))
    folded = re.sub(r"(test|train|val)$", "", folded) or folded
    name = _DATASET_ALIASES.get(folded, folded)
    if name == "samm" and raw == "samm_test" and subject is not None and not str(subject).strip().isdigit():
        return "casme3"
    return name


_ID_PREFIX = re.compile(r"^(.+?)_(?:test|train|val)_")


def dataset_from_id(row_id: str) -> str:
    """"samm_test_1_001_2_1" -> "samm", "casme3_test_dzw_a1_1" -> "casme3"; "" when the id has no
    known dataset prefix."""
    m = _ID_PREFIX.match(row_id.strip().lower())
    head = m.group(1) if m else row_id.strip().lower().split("_", 1)[0]
    name = canonical_dataset(head)
    return name if name in _DATASET_ALIASES.values() else ""


def load_questions(path: Path) -> QuestionFile:
    """Read an MEGC question file. Lines without an id or question, or with unusable fields, are
    reported as issues; a repeated id keeps its first line and is reported."""
    issues: list[LineIssue] = []
    rows: list[QARow] = []
    seen: set[str] = set()
    duplicates: list[str] = []
    for number, obj in iter_jsonl(path, issues):
        try:
            row = parse_row(obj, number)
        except ValueError as e:
            issues.append(LineIssue(str(path), number, str(e)))
            continue
        if row.id in seen:
            duplicates.append(row.id)
            issues.append(LineIssue(str(path), number, f"id {row.id!r} repeated; the first line is kept"))
            continue
        seen.add(row.id)
        rows.append(row)
    if not rows:
        detail = f" ({issues[0]})" if issues else ""
        raise InputFileError(f"{path}: no usable question line{detail}")
    return QuestionFile(rows=rows, issues=issues, duplicate_ids=duplicates)


def parse_row(obj: dict, number: int = 0) -> QARow:
    """One question-file object -> QARow; ValueError naming the field when it is unusable."""
    # MEGC 2026 files (ME-VQA v2, ME-LVQA) name a row by "video_id" ("samm_test_SAMM-1_1") and
    # carry no "dataset": the id's prefix says it.
    id_ = text_field(obj, "id", required=False)
    if id_ is None:
        id_ = text_field(obj, "video_id", required=False)
    if id_ is None:
        raise ValueError("missing field 'id' (or 'video_id')")
    question = text_field(obj, "question", required=True)
    if not id_.strip():
        raise ValueError("empty field 'id'")
    if not question.strip():
        raise ValueError("empty field 'question'")
    answer = text_field(obj, "answer", required=False)
    dataset_field = text_field(obj, "dataset", required=False) or ""
    subject = text_field(obj, "subject", required=False) or ""
    filename = text_field(obj, "filename", required=False) or ""
    return QARow(
        id=id_,
        question=question,
        answer=answer if answer is not None and answer.strip() else None,
        dataset=canonical_dataset(dataset_field, subject) if dataset_field else (dataset_from_id(id_) or "unknown"),
        dataset_field=dataset_field,
        subject=subject,
        filename=filename,
        image_id=text_field(obj, "image_id", required=False) or filename or (text_field(obj, "video", required=False) or ""),
        video=text_field(obj, "video", required=False),
        onset=int_field(obj, "onset_frame"),
        apex=int_field(obj, "apex_frame"),
        offset=int_field(obj, "offset_frame"),
        line=number,
    )
