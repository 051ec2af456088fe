"""`Spots`: what the spotter found in one long video, as one typed, JSON-serialisable record.

It crosses from spotting (`mellm spot`) to every later stage: per-event perception, the LVQA
answerer, instruction data and the gateway (docs/formats.md). Frame numbers are 1-based.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mellm.errors import MellmError

SPOTS_SCHEMA_VERSION = 1  # bump when the fields change: caches key on it, old files are refused


@dataclass
class SpottedEvent:
    onset: int
    apex: int
    offset: int
    type: str  # micro (<= 0.5 s) | macro
    confidence: float  # peak z-score of the motion curve over the noise, squashed to [0, 1)
    peak_z: float
    regions: list[str] = field(default_factory=list)  # ROI groups that moved most, strongest first
    aus: list[int] = field(default_factory=list)  # AUs found by the short-clip perception (onset -> apex)
    evidence: str | None = None  # path of events/<k>/evidence.json, relative to the spots file

    def seconds(self, fps: float) -> tuple[float, float]:
        return (self.onset - 1) / fps, (self.offset - 1) / fps


@dataclass
class Spots:
    video: str
    fps: float
    n_frames: int  # frames read
    analysis_fps: float  # after frame skipping
    settings: dict
    events: list[SpottedEvent]
    face_gaps: list[list[int]] = field(default_factory=list)  # [first, last] frames without a face
    notes: list[str] = field(default_factory=list)  # variable frame rate, truncation, ...
    timings_s: dict = field(default_factory=dict)
    curve: dict | None = None  # {"frames": [...], "score": [...], "z": [...]}: the motion curve
    schema_version: int = SPOTS_SCHEMA_VERSION

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Spots:
        if d.get("schema_version") != SPOTS_SCHEMA_VERSION:
            raise MellmError(f"spots schema version {d.get('schema_version')} (this MELLM reads "
                             f"{SPOTS_SCHEMA_VERSION}); run `mellm spot` again to refresh it")
        d = dict(d)
        d["events"] = [SpottedEvent(**e) for e in d["events"]]
        return cls(**d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | Path) -> Spots:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except MellmError as e:
            raise MellmError(f"{path}: {e}") from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise MellmError(f"{path}: not a spots file ({e})") from None

    @property
    def micro(self) -> list[SpottedEvent]:
        return [e for e in self.events if e.type == "micro"]

    @property
    def macro(self) -> list[SpottedEvent]:
        return [e for e in self.events if e.type == "macro"]

    def distinct_aus(self) -> list[int]:
        return sorted({au for e in self.events for au in e.aus})

    def summary(self) -> str:
        """One line per event, the way a public peer writes interval answers:
        "2 expression events. 1-th macro-expression: frames 557-608 (apex 572), 18.53s-20.23s; ..."."""
        parts = []
        for k, e in enumerate(self.events, start=1):
            t0, t1 = e.seconds(self.fps)
            aus = f", AUs {'+'.join(str(a) for a in e.aus)}" if e.aus else ""
            parts.append(f"{k}-th {e.type}-expression: frames {e.onset}-{e.offset} (apex {e.apex}), "
                         f"{t0:.2f}s-{t1:.2f}s{aus}")
        n = len(self.events)
        head = f"{n} expression event{'s' if n != 1 else ''}"
        gaps = f" Face not visible in frames {', '.join(f'{a}-{b}' for a, b in self.face_gaps)}." if self.face_gaps else ""
        return head + (". " + "; ".join(parts) if parts else ".") + gaps
