"""The part every spreadsheet-annotated dataset shares: one annotation row -> one ClipRecord, or a
ClipFailure that says which row and why. Each dataset module supplies its column names, folder
layout, frame rate and quirks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mellm.data_builders.records import ClipFailure, ClipRecord, Loaded
from mellm.data_builders.sheets import SheetRow, frame_number
from mellm.errors import LabelError
from mellm.labels import emotion_labels, parse_au_codes
from mellm.media import find_child


@dataclass(frozen=True)
class Columns:
    """Accepted names of each column (first is the documented one)."""

    subject: tuple[str, ...]
    clip: tuple[str, ...]
    onset: tuple[str, ...]
    apex: tuple[str, ...]
    offset: tuple[str, ...]
    aus: tuple[str, ...]
    emotion: tuple[str, ...]

    def required(self) -> list[list[str]]:
        return [list(self.subject), list(self.clip), list(self.onset), list(self.aus), list(self.emotion)]


def find_clip(root: Path, candidates: list[tuple[str, ...]]) -> Path | None:
    """The first existing root/part/part/... (case-blind per part), also one level below root
    (datasets often unpack into an extra folder such as CASME2_RAW_selected/)."""
    bases = [root] + sorted(p for p in root.iterdir() if p.is_dir())
    for base in bases:
        for parts in candidates:
            here: Path | None = base
            for part in parts:
                here = find_child(here, part) if here is not None else None
            if here is not None:
                return here
    return None


def load_rows(
    dataset: str,
    rows: list[SheetRow],
    cols: Columns,
    locate: Callable[[str, str], Path | None],
    subject_name: Callable[[object], str] = lambda v: str(v).strip(),
    fps: float | Callable[[SheetRow], float] | None = None,
    keep: Callable[[SheetRow], bool] = lambda row: True,
) -> Loaded:
    """Annotation rows -> records. A row whose labels, frames or folder are unusable becomes a
    ClipFailure naming the file, row and value; the others go on. `fps` may be per row."""
    out = Loaded(records=[])
    for row in rows:
        if not keep(row):
            continue
        subject = subject_name(row.get(*cols.subject, default=""))
        clip_id = str(row.get(*cols.clip, default="")).strip()
        ref = f"{subject}/{clip_id} ({row.where()})"
        try:
            record = _record(dataset, row, cols, subject, clip_id, locate, fps)
        except LabelError as e:
            out.failures.append(ClipFailure(dataset, ref, "annotation", "unknown_label", f"{row.where()}: {e}"))
        except ValueError as e:
            out.failures.append(ClipFailure(dataset, ref, "annotation", "frame_range", str(e)))
        except FileNotFoundError as e:
            out.failures.append(ClipFailure(dataset, ref, "annotation", "not_found", str(e)))
        else:
            out.records.append(record)
    return out


def _record(dataset, row, cols, subject, clip_id, locate, fps) -> ClipRecord:
    if not subject or not clip_id:
        raise ValueError(f"{row.where()}: empty subject or clip name")
    onset = frame_number(row, *cols.onset)
    apex = frame_number(row, *cols.apex, required=False)
    offset = frame_number(row, *cols.offset, required=False)
    notes = []
    if apex is None:
        notes.append(f"{row.where()}: no apex frame ({row.get(*cols.apex)!r}); the apex is spotted")
    if offset == 0:  # some releases write 0 for "unknown offset"
        offset = None
        notes.append(f"{row.where()}: offset frame 0; the clip's last frame is used")
    if apex is not None and apex < onset:
        raise ValueError(f"{row.where()}: apex frame {apex} is before onset frame {onset}")
    if offset is not None and offset < onset:
        raise ValueError(f"{row.where()}: offset frame {offset} is before onset frame {onset}")
    aus = parse_au_codes(row.get(*cols.aus, default=""))
    fine, coarse = emotion_labels(str(row.get(*cols.emotion, default="")))
    source = locate(subject, clip_id)
    if source is None:
        raise FileNotFoundError(f"{row.where()}: no frames found for subject {subject!r}, clip {clip_id!r}")
    rate = fps(row) if callable(fps) else fps
    return ClipRecord(dataset, subject, clip_id, str(source), onset, apex, offset, aus, fine, coarse, rate, notes=notes)
