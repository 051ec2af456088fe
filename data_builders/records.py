"""Typed records that dataset adapters yield: one `ClipRecord` per usable clip, one `ClipFailure`
per clip that could not be used (with the reason, so nothing is silently lost)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from mellm.labels import AULabel


@dataclass
class ClipRecord:
    dataset: str  # casme2, samm, smic, casme3, dfme, 4dme, megc, synth
    subject: str  # as the dataset names the subject
    clip_id: str
    source: str  # a frame folder or a video file
    onset: int | None  # frame numbers as the annotation counts; None: first frame
    apex: int | None  # None: spotted by perception
    offset: int | None  # None: last frame
    aus: list[AULabel]  # labelled AUs with the subject's sides; [] when the dataset has none
    fine: str | None  # canonical fine emotion (mellm.labels), None when the dataset gives only coarse
    coarse: str | None  # negative | positive | surprise, None for "others"
    fps: float | None = None
    qa: list[tuple[str, str]] = field(default_factory=list)  # the dataset's own questions (MEGC files)
    notes: list[str] = field(default_factory=list)  # how an annotation quirk was handled

    @property
    def subject_key(self) -> str:
        """Unique across datasets; LOSO folds and splits use it."""
        return f"{self.dataset}/{self.subject}"

    @property
    def key(self) -> str:
        """File-name-safe unique id of the clip."""
        return re.sub(r"[^A-Za-z0-9._-]+", "-", f"{self.dataset}_{self.subject}_{self.clip_id}")

    def to_dict(self) -> dict:
        return {
            "dataset": self.dataset, "subject": self.subject, "clip_id": self.clip_id, "source": self.source,
            "onset": self.onset, "apex": self.apex, "offset": self.offset,
            "aus": [a.to_dict() for a in self.aus], "fine": self.fine, "coarse": self.coarse, "fps": self.fps,
            "qa": [list(p) for p in self.qa], "notes": self.notes,
        }

    @classmethod
    def from_dict(cls, d: dict) -> ClipRecord:
        return cls(**{**d, "aus": [AULabel.from_dict(a) for a in d["aus"]], "qa": [tuple(p) for p in d.get("qa", [])]})


@dataclass
class ClipFailure:
    dataset: str
    clip: str  # what identifies the clip: "subject/clip" or "file row N"
    stage: str  # "annotation" (the adapter) | "perception"
    reason: str  # short tag: unknown_label, not_found, unreadable, no_face, frame_range, ...
    message: str

    def to_dict(self) -> dict:
        return {"dataset": self.dataset, "clip": self.clip, "stage": self.stage, "reason": self.reason, "message": self.message}


@dataclass
class Loaded:
    """What an adapter found under a dataset root."""

    records: list[ClipRecord]
    failures: list[ClipFailure] = field(default_factory=list)
