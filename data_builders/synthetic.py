"""The synthetic clips of `mellm synth` (labels.jsonl beside PNG frames and/or FFV1 videos): full
labels, including AU sides, onset, apex and offset. ME-free control clips (`mellm synth --me-free`)
have nothing to describe: they are recorded as annotation failures (reason no_expression)."""

from __future__ import annotations

from pathlib import Path

from mellm.data_builders.records import ClipFailure, ClipRecord, Loaded
from mellm.data_builders.sheets import AnnotationFileError
from mellm.labels import AULabel
from mellm.synth import load_labels

NAME = "synth"


def load(root: Path) -> Loaded:
    if not (root / "labels.jsonl").is_file():
        raise AnnotationFileError(f"no labels.jsonl in {root} (made by `mellm synth --out {root}`)")
    records, failures = [], []
    for c in load_labels(root):
        if c.me_free:  # a negative control: nothing to describe, so no instruction sample (recorded)
            failures.append(ClipFailure(NAME, f"{c.subject}/{c.clip_id}", "annotation", "no_expression",
                                        f"{c.clip_id}: an ME-free control clip (labels say me_free); no sample made"))
            continue
        source = root / (c.frames_dir or c.video)
        aus = [AULabel(a["au"], a["side"]) for a in c.aus]
        records.append(ClipRecord(NAME, c.subject, c.clip_id, str(source), c.onset_frame, c.apex_frame,
                                  c.offset_frame, aus, c.fine, c.coarse, c.fps))
    return Loaded(records, failures)
