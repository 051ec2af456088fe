"""SMIC (HS: 100 fps, 16 subjects, 164 clips; VIS and NIR: 25 fps).

No apex labels and no AUs: each clip folder holds the micro-expression from onset to offset and
is filed under its coarse class: `[HS/]{subject}/micro/{negative|positive|surprise}/{clip}/`.
Onset is the first frame, offset the last; the apex is spotted by perception.
"""

from __future__ import annotations

from pathlib import Path

from mellm.data_builders.records import ClipFailure, ClipRecord, Loaded
from mellm.labels import COARSE_SYNONYMS

NAME = "smic"
FPS = 100.0


def load(root: Path) -> Loaded:
    out = Loaded(records=[])
    micro_dirs = sorted(p for p in root.glob("**/micro") if p.is_dir())
    if not micro_dirs:
        out.failures.append(ClipFailure(NAME, str(root), "annotation", "not_found",
                                        f"no '<subject>/micro/<class>/<clip>' folders under {root}"))
    for micro in micro_dirs:
        subject = micro.parent.name
        for class_dir in sorted(p for p in micro.iterdir() if p.is_dir()):
            for clip in sorted(p for p in class_dir.iterdir() if p.is_dir()):
                coarse = COARSE_SYNONYMS.get(class_dir.name.lower())
                if coarse is None:  # SMIC labels coarse classes only; "surprise" is one of them
                    out.failures.append(ClipFailure(NAME, f"{subject}/{clip.name}", "annotation", "unknown_label",
                                                    f"{class_dir}: unknown SMIC class {class_dir.name!r}"))
                    continue
                out.records.append(ClipRecord(NAME, subject, clip.name, str(clip), None, None, None, [], None, coarse, FPS,
                                              notes=["SMIC has no apex label; the apex is spotted"]))
    return out
