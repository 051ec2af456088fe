"""CAS(ME)^3 part A (30 fps; about 860 micro-expressions, plus macro-expressions).

Annotation: `cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx` with Subject, Filename, Onset, Apex,
Offset, AU, Objective class, emotion, and an expression-type column; only "Micro-expression" rows
are kept. Frames: `{Subject}/{Filename}/color/{n}.jpg` (or without `color/`).
"""

from __future__ import annotations

from pathlib import Path

from mellm.data_builders.annotated import Columns, find_clip, load_rows
from mellm.data_builders.records import Loaded
from mellm.data_builders.sheets import SheetRow, find_file, read_rows

NAME = "casme3"
FPS = 30.0
COLUMNS = Columns(
    subject=("Subject", "sub"), clip=("Filename", "fold"), onset=("Onset", "Onset Frame"),
    apex=("Apex", "Apex Frame"), offset=("Offset", "Offset Frame"),
    aus=("AU", "Action Units", "AUs"), emotion=("emotion", "Estimated Emotion", "Emotion"),
)
TYPE_COLUMNS = ("Expression type", "Type", "Objective class")


def is_micro(row: SheetRow) -> bool:
    kind = row.get(*TYPE_COLUMNS)
    return kind is None or "micro" in str(kind).lower() or str(kind).strip().upper() == "ME"


def load(root: Path) -> Loaded:
    sheet = find_file(root, ["cas(me)3_part_A_ME_label*.xlsx", "cas(me)3*.xlsx", "casme3*.xlsx", "casme3*.csv"],
                      "CAS(ME)^3 part A")
    rows = read_rows(sheet, COLUMNS.required())

    def locate(subject: str, clip: str):
        return find_clip(root, [(subject, clip, "color"), (subject, clip)])

    return load_rows(NAME, rows, COLUMNS, locate, fps=FPS, keep=is_micro)
