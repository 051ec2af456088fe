"""Typed records for predictions files (`{"id", "answer"}` lines, the MEGC submission format)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mellm.jsonl import InputFileError, LineIssue, iter_jsonl, text_field


@dataclass
class PredictionFile:
    answers: dict[str, str]  # id -> answer text; a repeated id keeps its last answer
    issues: list[LineIssue] = field(default_factory=list)
    duplicate_ids: list[str] = field(default_factory=list)


def load_predictions(path: Path, *, missing_ok: bool = False) -> PredictionFile:
    """Read a predictions file ({"id", "answer"} lines). A null answer reads as "" (reported)."""
    path = Path(path)
    if missing_ok and not path.exists():
        return PredictionFile(answers={})
    issues: list[LineIssue] = []
    answers: dict[str, str] = {}
    duplicates: list[str] = []
    for number, obj in iter_jsonl(path, issues):
        try:
            id_ = text_field(obj, "id", required=True)
            if "answer" not in obj:
                raise ValueError("missing field 'answer'")
            answer = text_field(obj, "answer", required=False)
        except ValueError as e:
            issues.append(LineIssue(str(path), number, str(e)))
            continue
        if answer is None:
            issues.append(LineIssue(str(path), number, f"answer of {id_!r} is null; scored as an empty answer"))
            answer = ""
        if id_ in answers:
            duplicates.append(id_)
            issues.append(LineIssue(str(path), number, f"id {id_!r} repeated; this later answer is used"))
        answers[id_] = answer
    return PredictionFile(answers=answers, issues=issues, duplicate_ids=duplicates)


def require_file(path: Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{what} {path}: no such file")
    return path
