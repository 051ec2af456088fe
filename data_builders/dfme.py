"""DFME (7,526 clips, 671 subjects, 200-500 fps).

Annotation: the release's spreadsheet (`DFME*.xlsx` or `.csv`) with a subject, a clip name, onset,
apex and offset frames, AUs and an emotion; the names below are the accepted spellings. A per-clip
frame-rate column (`fps`) is used when present. Frames: `{clip}/` or `{subject}/{clip}/`.
"""

from __future__ import annotations

from pathlib import Path

from mellm.data_builders.annotated import Columns, find_clip, load_rows
from mellm.data_builders.records import Loaded
from mellm.data_builders.sheets import SheetRow, find_file, read_rows

NAME = "dfme"
FPS = 200.0
COLUMNS = Columns(
    subject=("Subject", "subject_id", "sub"), clip=("Filename", "video_name", "clip", "Video"),
    onset=("Onset", "Onset Frame", "OnsetFrame"), apex=("Apex", "Apex Frame", "ApexFrame"),
    offset=("Offset", "Offset Frame", "OffsetFrame"), aus=("AU", "Action Units", "AUs"),
    emotion=("Emotion", "emotion", "Estimated Emotion", "label"),
)


def load(root: Path) -> Loaded:
    sheet = find_file(root, ["DFME*.xlsx", "DFME*.csv", "dfme*.xlsx", "dfme*.csv"], "DFME")
    rows = read_rows(sheet, COLUMNS.required())
    return load_rows(NAME, rows, COLUMNS, lambda s, c: find_clip(root, [(c,), (s, c)]), fps=clip_fps)


def clip_fps(row: SheetRow) -> float:
    return float(row.get("fps", "FPS", "frame rate", default=FPS))
