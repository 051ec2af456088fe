"""CASME II (200 fps, 26 subjects, 255 clips).

Annotation: `CASME2-coding-*.xlsx` with Subject, Filename, OnsetFrame, ApexFrame, OffsetFrame,
Action Units (`4+7`, `R12`, `L14`), Estimated Emotion (happiness, disgust, repression, surprise,
fear, sadness, others). Frames: `sub{XX}/{Filename}/img{n}.jpg`, numbered as the annotation counts.
Quirk: some ApexFrame cells are `/`; those apexes are spotted.
"""

from __future__ import annotations

from pathlib import Path

from mellm.data_builders.annotated import Columns, find_clip, load_rows
from mellm.data_builders.records import Loaded
from mellm.data_builders.sheets import find_file, read_rows

NAME = "casme2"
FPS = 200.0
COLUMNS = Columns(
    subject=("Subject",), clip=("Filename",), onset=("OnsetFrame", "Onset Frame"),
    apex=("ApexFrame", "Apex Frame"), offset=("OffsetFrame", "Offset Frame"),
    aus=("Action Units", "AU", "AUs"), emotion=("Estimated Emotion", "Emotion"),
)


def subject_name(cell) -> str:
    text = str(cell).strip()
    return f"sub{int(float(text)):02d}" if text.replace(".", "", 1).isdigit() else text


def load(root: Path) -> Loaded:
    sheet = find_file(root, ["CASME2-coding-*.xlsx", "CASME2-coding*.csv", "CASME2*.xlsx"], "CASME II")
    rows = read_rows(sheet, COLUMNS.required())
    return load_rows(NAME, rows, COLUMNS, lambda s, c: find_clip(root, [(s, c)]), subject_name, FPS)
