"""MEGC ME-VQA question files with answers (e.g. the 2025 training file), joined to their clips.

Each clip (a dataset's image_id) becomes one ClipRecord whose labels are read back from its
answers (coarse, fine, AU list, yes/no, left/right) with the parser evaluation uses, and which
keeps the file's own question/answer pairs as training samples. Clips are found under the media
root as `mellm eval run` finds them (mellm/media.py).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from mellm.answers import parse_answer
from mellm.data_builders.records import ClipFailure, ClipRecord, Loaded
from mellm.data_builders.sheets import AnnotationFileError
from mellm.errors import ClipNotFoundError
from mellm.labels import COARSE_OF_FINE, AULabel
from mellm.media import MediaIndex
from mellm.megc import QARow, load_questions
from mellm.vqa import QType, classify_question

NAME = "megc"
DATASET_FPS = {"casme2": 200.0, "samm": 200.0, "smic": 100.0, "casme3": 30.0, "4dme": 60.0, "dfme": 200.0}


def load(root: Path, questions: Path | None = None) -> Loaded:
    if questions is None:
        found = sorted(root.glob("me_vqa_*.jsonl"))
        if not found:
            raise AnnotationFileError(f"no MEGC question file: pass --questions, or put me_vqa_*.jsonl in {root}")
        questions = found[0]
    qfile = load_questions(questions)
    out = Loaded(records=[])
    for issue in qfile.issues:
        out.failures.append(ClipFailure(NAME, f"{issue.file}:{issue.line}", "annotation", "bad_line", str(issue)))
    if not qfile.has_references:
        raise AnnotationFileError(f"{questions} has no answers (a test file?); instruction data needs answered questions")
    groups: dict[tuple[str, str], list[QARow]] = defaultdict(list)
    for row in qfile.rows:
        if row.answer is not None:
            groups[(row.dataset, row.image_id)].append(row)
    index = MediaIndex(root)
    for (dataset, image_id), rows in groups.items():
        first = rows[0]
        try:
            source = index.resolve(first)
        except ClipNotFoundError as e:
            out.failures.append(ClipFailure(NAME, f"{dataset}/{image_id}", "annotation", "not_found", str(e)))
            continue
        record = _record(dataset, image_id, rows, str(source))
        out.records.append(record)
    return out


def _record(dataset: str, image_id: str, rows: list[QARow], source: str) -> ClipRecord:
    coarse = fine = None
    aus: dict[int, str] = {}
    notes = []
    for row in rows:
        q = classify_question(row.question)
        a = parse_answer(q, row.answer)
        if not a.parsed:
            notes.append(f"answer of {row.id} not read: {a.problem}")
            continue
        if q.type is QType.COARSE:
            coarse = a.coarse
        elif q.type is QType.FINE:
            fine = a.fine
        elif q.type in (QType.AU_LIST, QType.COMBINED):
            for au in a.aus:
                aus.setdefault(au, "both")
            fine = fine or a.fine
            coarse = coarse or a.coarse
        elif q.type is QType.AU_YESNO and a.yes_no:
            aus.setdefault(q.au, "both")
        elif q.type is QType.AU_SIDE and a.side in ("left", "right"):
            aus[q.au] = "L" if a.side == "left" else "R"
    if fine and not coarse:
        coarse = COARSE_OF_FINE.get(fine)
    first = rows[0]
    return ClipRecord(
        dataset=dataset, subject=first.subject, clip_id=image_id, source=source,
        onset=first.onset, apex=first.apex, offset=first.offset,
        aus=[AULabel(au, side) for au, side in sorted(aus.items())], fine=fine, coarse=coarse,
        fps=DATASET_FPS.get(dataset), qa=[(r.question, r.answer) for r in rows], notes=notes,
    )
