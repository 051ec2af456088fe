"""Long-video datasets (ME-LVQA, spotting): typed records and their adapters.

One `LongRecord` per long video, with its annotated events (onset, apex, offset, type, AUs) and,
for MEGC question files, its own questions. Sheets have one row per event; rows are grouped by
video. Column names are matched case- and punctuation-blind (mellm.data_builders.sheets) and a
sheet that lacks a column is a clear error naming it (no real release file is available here).

- SAMM long videos (200 fps): `SAMM_LongVideos_V3_Release.xlsx`: Subject, Filename (the event,
  `006_1_2`; its video is `006_1`), Inducement Code, Onset, Apex, Offset, Duration, Type
  ("Micro - 1/2" or "Macro"), Action Units. Frames: `{video}/` or `{subject}/{video}/`.
- CAS(ME)^2 (30 fps): `CAS(ME)^2code_final.xlsx`: subject, video name, onset, apex, offset, AUs,
  emotion, type (macro/micro). Video: `rawvideo/s{subject}/{subject}_{name}*.avi` or frames
  `rawpic/s{subject}/{subject}_{name}*/`.
- CAS(ME)^3 part A long videos (30 fps): Subject, Filename, Onset, Apex, Offset, AU, expression
  type (micro and macro rows both kept). Frames: `{Subject}/{Filename}/color/` or without color/.
- `synthlv`: `mellm synth --long` output (labels.jsonl, videos/).
- `megc_lvqa`: an MEGC 2026 ME-LVQA question file (`--questions`), its rows joined to videos
  under the root by their `video` field (`<root>/<dataset>/<video>`, `<root>/<video>`, a file or
  a frame folder); its answers are the references.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mellm.data_builders.annotated import find_clip
from mellm.data_builders.records import ClipFailure
from mellm.data_builders.sheets import AnnotationFileError, SheetRow, find_file, fold, frame_number, read_rows
from mellm.errors import LabelError
from mellm.labels import emotion_labels, parse_au_codes
from mellm.media import find_child
from mellm.video import VIDEO_SUFFIXES

MICRO_MAX_S = 0.5


@dataclass
class LongEvent:
    onset: int
    apex: int | None
    offset: int
    type: str  # micro | macro
    aus: list[int] = field(default_factory=list)
    fine: str | None = None


@dataclass
class LongRecord:
    dataset: str
    subject: str
    video: str
    source: str  # a video file or a frame folder
    fps: float
    events: list[LongEvent]  # annotated; [] when only questions are known (test files)
    qa: list[tuple[str, str, str]] = field(default_factory=list)  # (row id, question, answer)
    notes: list[str] = field(default_factory=list)
    coarse: str | None = None  # splits treat records alike; long videos have no single class
    fine: str | None = None

    @property
    def subject_key(self) -> str:
        return f"{self.dataset}/{self.subject}"

    @property
    def key(self) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "-", f"{self.dataset}_{self.subject}_{self.video}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class LongLoaded:
    records: list[LongRecord]
    failures: list[ClipFailure] = field(default_factory=list)


def event_type(text: object, onset: int, offset: int, fps: float) -> str:
    """"Micro - 1/2", "micro-expression", "ME" -> micro; "Macro", "MaE" -> macro; empty: by duration."""
    t = fold(text) if text is not None else ""
    if t.startswith("micro") or t in ("me", "micro1", "micro2"):
        return "micro"
    if t.startswith("macro") or t in ("mae", "mac"):
        return "macro"
    if t:
        raise LabelError(f"unknown expression type {text!r} (micro or macro)")
    return "micro" if (offset - onset) / fps <= MICRO_MAX_S else "macro"


def _group(dataset, rows: list[SheetRow], subject_of, video_of, locate, fps, cols) -> LongLoaded:
    """Sheet rows (one per event) -> one record per video; a bad row is a failure, the video keeps its other events."""
    out = LongLoaded([])
    events: dict[tuple[str, str], list[LongEvent]] = defaultdict(list)
    for row in rows:
        subject, video = subject_of(row), video_of(row)
        try:
            if not subject or not video:
                raise ValueError(f"{row.where()}: empty subject or video name")
            onset = frame_number(row, *cols["onset"])
            offset = frame_number(row, *cols["offset"], required=False)
            apex = frame_number(row, *cols["apex"], required=False)
            if offset is None or offset == 0:
                offset = apex if apex else onset
            if offset < onset:
                raise ValueError(f"{row.where()}: offset frame {offset} is before onset frame {onset}")
            aus = sorted({a.au for a in parse_au_codes(row.get(*cols["aus"], default=""))})
            fine = emotion_labels(str(row.get(*cols["emotion"], default="")))[0] if cols.get("emotion") and row.get(*cols["emotion"]) else None
            kind = event_type(row.get(*cols["type"]), onset, offset, fps)
        except LabelError as e:
            out.failures.append(ClipFailure(dataset, f"{subject}/{video} ({row.where()})", "annotation", "unknown_label",
                                            f"{row.where()}: {e}"))
            continue
        except ValueError as e:
            out.failures.append(ClipFailure(dataset, f"{subject}/{video} ({row.where()})", "annotation", "frame_range", str(e)))
            continue
        events[(subject, video)].append(LongEvent(onset, apex, offset, kind, aus, fine))
    for (subject, video), evs in sorted(events.items()):
        source = locate(subject, video)
        if source is None:
            out.failures.append(ClipFailure(dataset, f"{subject}/{video}", "annotation", "not_found",
                                            f"no video file or frame folder found for subject {subject!r}, video {video!r}"))
            continue
        out.records.append(LongRecord(dataset, subject, video, str(source), fps, sorted(evs, key=lambda e: e.onset)))
    return out


def _find_video(root: Path, candidates: list[tuple[str, ...]], prefix: str | None = None) -> Path | None:
    """A frame folder or video file at one of the candidate paths; the last part may be a file stem
    (any VIDEO_SUFFIXES) or, with `prefix`, any child whose name starts with it."""
    hit = find_clip(root, candidates)
    if hit is not None:
        return hit
    for parts in candidates:
        parent = find_clip(root, [parts[:-1]]) if len(parts) > 1 else root
        if parent is None or not parent.is_dir():
            continue
        for suffix in VIDEO_SUFFIXES:
            f = find_child(parent, parts[-1] + suffix)
            if f is not None:
                return f
        if prefix:
            for child in sorted(parent.iterdir()):
                if child.name.lower().startswith(prefix.lower()):
                    return child
    return None


SAMM_COLS = {"onset": ("Onset", "Onset Frame"), "apex": ("Apex", "Apex Frame"), "offset": ("Offset", "Offset Frame"),
             "aus": ("Action Units", "AUs", "AU"), "type": ("Type",), "emotion": ("Estimated Emotion", "Emotion")}


def samm_lv(root: Path) -> LongLoaded:
    sheet = find_file(root, ["SAMM_LongVideos*.xlsx", "SAMM_LongVideos*.csv", "SAMM*Long*.xlsx"], "SAMM long videos")
    rows = read_rows(sheet, [["Subject"], ["Filename"], list(SAMM_COLS["onset"]), list(SAMM_COLS["offset"]), ["Type"]])

    def subject(row):
        text = str(row.get("Subject", default="")).strip()
        return f"{int(float(text)):03d}" if text.replace(".", "", 1).isdigit() else text

    def video(row):  # "006_1_2" is the 2nd event of video "006_1"
        name = str(row.get("Filename", default="")).strip()
        parts = name.split("_")
        return "_".join(parts[:2]) if len(parts) >= 3 else name

    return _group("samm_lv", rows, subject, video, lambda s, v: _find_video(root, [(v,), (s, v)]), 200.0, SAMM_COLS)


CASME2_COLS = {"onset": ("onset", "Onset Frame"), "apex": ("apex", "Apex Frame"), "offset": ("offset", "Offset Frame"),
               "aus": ("AUs", "AU", "Action Units"), "type": ("type", "Expression type"), "emotion": ("emotion", "Estimated Emotion")}


def casme2_lv(root: Path) -> LongLoaded:
    sheet = find_file(root, ["CAS(ME)^2code*.xlsx", "CAS(ME)*2*code*.xlsx", "casme2*code*.xlsx", "CAS(ME)^2code*.csv"],
                      "CAS(ME)^2")
    rows = read_rows(sheet, [["subject"], ["video name", "video", "filename"], list(CASME2_COLS["onset"]),
                             list(CASME2_COLS["offset"])])

    def subject(row):
        text = str(row.get("subject", default="")).strip().lstrip("sS")
        return f"{int(float(text)):02d}" if text.replace(".", "", 1).isdigit() else text

    def video(row):
        return str(row.get("video name", "video", "filename", default="")).strip()

    def locate(s, v):
        prefix = f"{s}_{v}"
        cands = [("rawvideo", f"s{s}", prefix), ("rawpic", f"s{s}", prefix), (f"s{s}", prefix), (f"s{s}", v), (prefix,), (v,)]
        return _find_video(root, cands, prefix=prefix)

    return _group("casme2_lv", rows, subject, video, locate, 30.0, CASME2_COLS)


CASME3_COLS = {"onset": ("Onset", "Onset Frame"), "apex": ("Apex", "Apex Frame"), "offset": ("Offset", "Offset Frame"),
               "aus": ("AU", "Action Units", "AUs"), "type": ("Expression type", "Type", "Objective class"),
               "emotion": ("emotion", "Estimated Emotion")}


def casme3_lv(root: Path) -> LongLoaded:
    sheet = find_file(root, ["cas(me)3_part_A*long*.xlsx", "cas(me)3_part_A*.xlsx", "casme3*.xlsx", "casme3*.csv"],
                      "CAS(ME)^3 long videos")
    rows = read_rows(sheet, [["Subject", "sub"], ["Filename", "fold"], list(CASME3_COLS["onset"]), list(CASME3_COLS["offset"])])
    return _group("casme3_lv", rows, lambda r: str(r.get("Subject", "sub", default="")).strip(),
                  lambda r: str(r.get("Filename", "fold", default="")).strip(),
                  lambda s, v: _find_video(root, [(s, v, "color"), (s, v), (v,)]), 30.0, CASME3_COLS)


def synth_lv(root: Path) -> LongLoaded:
    from mellm.synth_long import load_long_labels

    records = []
    for v in load_long_labels(root):
        events = [LongEvent(e.onset, e.apex, e.offset, e.type, sorted({a["au"] for a in e.aus}), e.fine) for e in v.events]
        records.append(LongRecord("synthlv", v.subject, v.video_id, str(root / v.path), v.fps, events))
    return LongLoaded(records)


def megc_lvqa(root: Path, questions: Path | None) -> LongLoaded:
    """Questions joined to videos; a question whose video is not under the root is a failure."""
    from mellm.megc import load_questions
    from mellm.video import FrameStream

    if questions is None:
        raise AnnotationFileError("--dataset megc_lvqa needs --questions (an ME-LVQA file)")
    qfile = load_questions(Path(questions))
    by_video: dict[tuple[str, str], list] = defaultdict(list)
    out = LongLoaded([], [ClipFailure("megc_lvqa", f"line {i.line}", "annotation", "bad_line", str(i)) for i in qfile.issues])
    for row in qfile.rows:
        by_video[(row.dataset, row.video or row.image_id)].append(row)
    for (dataset, video), rows in sorted(by_video.items()):
        source = _find_video(root, [(dataset, video), (video,)]) if video else None
        if source is None:
            out.failures.append(ClipFailure("megc_lvqa", f"{dataset}/{video}", "annotation", "not_found",
                                            f"{questions}: {len(rows)} question(s) about video {video!r}, which is not under {root}"))
            continue
        fps = FrameStream(source, fps=200.0 if dataset == "samm" else 30.0).fps
        subject = video.split("_")[0]
        out.records.append(LongRecord(f"megc_{dataset}", subject, video, str(source), float(fps), [],
                                      qa=[(r.id, r.question, r.answer or "") for r in rows]))
    return out


LONG_ADAPTERS = {"samm_lv": samm_lv, "casme2_lv": casme2_lv, "casme3_lv": casme3_lv, "synthlv": synth_lv}
LONG_DATASETS = sorted([*LONG_ADAPTERS, "megc_lvqa"])


def load_long(name: str, root: Path, questions: Path | None = None) -> LongLoaded:
    if name == "megc_lvqa":
        return megc_lvqa(root, questions)
    return LONG_ADAPTERS[name](root)
