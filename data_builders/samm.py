"""SAMM (200 fps, 32 subjects, 159 clips).

Annotation: `SAMM_Micro_FACS_Codes_v2.xlsx`, header on row 14 (13 rows of notes above it):
Subject, Filename, Inducement Code, Onset Frame, Apex Frame, Offset Frame, Duration, Micro,
Objective Classes, Notes, Action Units (`R12+R15`, `4+7`, intensity letters), Estimated Emotion
(Anger, Contempt, Disgust, Fear, Happiness, Sadness, Surprise, Other).
Frames: `{subject:03d}/{Filename}/{subject:03d}_{frame:05d}.jpg`, numbered by the file names.
"""

from __future__ import annotations

from pathlib import Path

from mellm.data_builders.annotated import Columns, find_clip, load_rows
from mellm.data_builders.records import Loaded
from mellm.data_builders.sheets import find_file, read_rows

NAME = "samm"
FPS = 200.0
HEADER_ROW = 14
COLUMNS = Columns(
    subject=("Subject",), clip=("Filename",), onset=("Onset Frame", "OnsetFrame"),
    apex=("Apex Frame", "ApexFrame"), offset=("Offset Frame", "OffsetFrame"),
    aus=("Action Units", "AU"), emotion=("Estimated Emotion", "Emotion"),
)


def subject_name(cell) -> str:
    text = str(cell).strip()
    return f"{int(float(text)):03d}" if text.replace(".", "", 1).isdigit() else text


def load(root: Path) -> Loaded:
    sheet = find_file(root, ["SAMM_Micro_FACS_Codes*.xlsx", "SAMM*.xlsx", "SAMM*.csv"], "SAMM")
    # SAMM's header sits on row 14; a csv export may have dropped the notes above it.
    header = HEADER_ROW if sheet.suffix.lower() == ".xlsx" else None
    rows = read_rows(sheet, COLUMNS.required(), header_row=header)
    return load_rows(NAME, rows, COLUMNS, lambda s, c: find_clip(root, [(s, c), (c,)]), subject_name, FPS)
