"""4DME (2D frames of the 4D micro-expression database).

Annotation: a spreadsheet with sub_ID, fold_name, Emotion, Onset, Apex, Offset and AUs, where
`(k)` marks a static AU (kept as `static` on the label). Emotions may be fine or coarse classes.
Frames: `{sub_ID}/{fold_name}/`.
"""

from __future__ import annotations

from pathlib import Path

from mellm.data_builders.annotated import Columns, find_clip, load_rows
from mellm.data_builders.records import Loaded
from mellm.data_builders.sheets import find_file, read_rows

NAME = "4dme"
FPS = 60.0
COLUMNS = Columns(
    subject=("sub_ID", "Subject"), clip=("fold_name", "Filename"), onset=("Onset",), apex=("Apex",),
    offset=("Offset",), aus=("AUs", "AU", "Action Units"), emotion=("Emotion", "Estimated Emotion"),
)


def load(root: Path) -> Loaded:
    sheet = find_file(root, ["4DME*.xlsx", "4DME*.csv", "4dme*.xlsx", "4dme*.csv"], "4DME")
    rows = read_rows(sheet, COLUMNS.required())
    return load_rows(NAME, rows, COLUMNS, lambda s, c: find_clip(root, [(s, c)]), fps=FPS)
