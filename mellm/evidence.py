"""`Evidence`: everything perception found about one clip, as one JSON-serialisable record.

This is what crosses from perception to every later stage (docs/formats.md).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from mellm.aus import AUEvidence
from mellm.errors import MellmError
from mellm.regions import RegionStat

SCHEMA_VERSION = 2  # bump when the fields change: caches key on it, and old files are refused clearly


@dataclass
class Evidence:
    clip: str
    n_frames: int
    fps: float | None
    onset_frame: int
    apex_frame: int
    offset_frame: int | None
    apex_source: str  # "given" | "spotted"
    flow_method: str
    head_motion: dict
    face_box: list[int]
    crop_scale: float  # canonical-crop pixels per source pixel
    regions: list[RegionStat]
    aus: list[AUEvidence]  # the AUs judged present
    au_scores: list[AUEvidence]  # every AU scored, present or not
    description: str
    timings_ms: dict[str, float]
    settings: dict
    motion_curve: dict | None = None  # {"frames": [...], "magnitude": [...]} when the apex was spotted
    # How the clip's nuisances were met (mellm.robust): noise_px / noise_floor_px, eyes (blink),
    # illumination gain, lossy source and prefilter, excluded regions. None in older records.
    quality: dict | None = None
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict:
        d = asdict(self)
        d["regions"] = [r.to_dict() for r in self.regions]
        d["aus"] = [a.to_dict() for a in self.aus]
        d["au_scores"] = [a.to_dict() for a in self.au_scores]
        d["timings_ms"] = {k: round(v, 2) for k, v in self.timings_ms.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Evidence:
        if d.get("schema_version") != SCHEMA_VERSION:
            raise MellmError(f"evidence schema version {d.get('schema_version')} (this MELLM reads "
                             f"{SCHEMA_VERSION}); run perception again to refresh it")
        d = dict(d)
        d["regions"] = [RegionStat.from_dict(r) for r in d["regions"]]
        d["aus"] = [AUEvidence.from_dict(a) for a in d["aus"]]
        d["au_scores"] = [AUEvidence.from_dict(a) for a in d["au_scores"]]
        return cls(**d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> Evidence:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except MellmError as e:
            raise MellmError(f"{path}: {e}") from None

    def au_summary(self) -> str:
        """"AU4 (both), AU7 (L)" or "none"."""
        return ", ".join(f"AU{a.au} ({a.side})" for a in self.aus) or "none"
