"""Fake ME datasets laid out exactly like the real ones (annotation spreadsheets with their
documented columns and quirks, frame folders with their naming), filled with `mellm synth` clips.

Frames are written as JPEG (quality 98) like the real datasets; frame numbers start where the
annotation says, so the numbering rule (file names, not positions) is exercised too.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import openpyxl

from mellm.synth import SynthClip
from mellm.video import list_frame_files


def au_cell(clip: SynthClip) -> str:
    return "+".join(({"L": "L", "R": "R"}.get(a["side"], "")) + str(a["au"]) for a in clip.aus)


def copy_frames(src: Path, dst: Path, name_of, first: int, last: int | None = None) -> None:
    """Frames 1..N of a synth clip -> dst, renumbered from `first` (optionally only up to synth frame `last`)."""
    dst.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(list_frame_files(src), start=1):
        if last is not None and i > last:
            break
        img = cv2.imread(str(f))
        cv2.imwrite(str(dst / name_of(first + i - 1)), img, [cv2.IMWRITE_JPEG_QUALITY, 98])


def write_xlsx(path: Path, header: list[str], rows: list[list], notes_above: int = 0) -> None:
    book = openpyxl.Workbook()
    sheet = book.active
    for i in range(notes_above):
        sheet.append([f"note line {i + 1}: dataset description"])
    sheet.append(header)
    for r in rows:
        sheet.append(r)
    book.save(path)


def casme2(root: Path, synth_root: Path, clips: list[SynthClip]) -> dict:
    """CASME II: sub{XX}/{Filename}/img{n}.jpg from n = 46. Quirks planted: clip 0 has ApexFrame "/",
    clip 1 an unknown emotion, clip 2 corrupt frames, clip 3 a labelled AU its motion does not show
    (L10). Returns what the test should expect."""
    header = ["Subject", "Filename", "OnsetFrame", "ApexFrame", "OffsetFrame", "Action Units", "Estimated Emotion"]
    rows = []
    start = 46
    for k, c in enumerate(clips):
        subject = int(c.subject[1:])
        name = f"EP0{k}_0{k}f"
        folder = root / f"sub{subject:02d}" / name
        copy_frames(synth_root / c.frames_dir, folder, lambda n: f"img{n}.jpg", start)
        shift = start - 1
        apex = "/" if k == 0 else c.apex_frame + shift
        emotion = "happy?" if k == 1 else c.fine
        aus = au_cell(c) + ("+L10" if k == 3 else "")
        rows.append([subject, name, c.onset_frame + shift, apex, c.offset_frame + shift, aus, emotion])
    for f in list_frame_files(root / f"sub{int(clips[2].subject[1:]):02d}" / "EP02_02f"):
        f.write_bytes(b"this is not a jpeg")
    write_xlsx(root / "CASME2-coding-20140508.xlsx", header, rows)
    return {"n": len(clips), "spotted": 1, "unknown_label": 1, "broken": 1}


def samm(root: Path, synth_root: Path, clips: list[SynthClip]) -> dict:
    """SAMM: header on row 14; {subject:03d}/{Filename}/{subject:03d}_{frame:05d}.jpg from 5562."""
    header = ["Subject", "Filename", "Inducement Code", "Onset Frame", "Apex Frame", "Offset Frame", "Duration",
              "Micro", "Objective Classes", "Notes", "Action Units", "Estimated Emotion"]
    emotion = {"anger": "Anger", "contempt": "Contempt", "disgust": "Disgust", "fear": "Fear", "happiness": "Happiness",
               "sadness": "Sadness", "surprise": "Surprise", "repression": "Other"}
    rows, start = [], 5562
    for k, c in enumerate(clips):
        subject = int(c.subject[1:]) + 5
        name = f"{subject:03d}_{k + 1}_{k + 2}"
        copy_frames(synth_root / c.frames_dir, root / f"{subject:03d}" / name, lambda n, s=subject: f"{s:03d}_{n:05d}.jpg", start)
        shift = start - 1
        rows.append([subject, name, 1, c.onset_frame + shift, c.apex_frame + shift, c.offset_frame + shift,
                     c.offset_frame - c.onset_frame + 1, "Micro - 1/2", 1, "", au_cell(c), emotion[c.fine]])
    write_xlsx(root / "SAMM_Micro_FACS_Codes_v2.xlsx", header, rows, notes_above=13)
    return {"n": len(clips)}


def smic(root: Path, synth_root: Path, clips: list[SynthClip]) -> dict:
    """SMIC HS: HS/s{N}/micro/{class}/s{N}_{ne|po|sur}_{k}/image{n:06d}.jpg, onset to offset only."""
    code = {"negative": "ne", "positive": "po", "surprise": "sur"}
    for k, c in enumerate(clips):
        subject = f"s{int(c.subject[1:])}"
        clip_dir = root / "HS" / subject / "micro" / c.coarse / f"{subject}_{code[c.coarse]}_{k + 1:02d}"
        # SMIC clips hold onset..offset: drop the synth frames before the onset
        tmp = root / "_tmp" / c.clip_id
        copy_frames(synth_root / c.frames_dir, tmp, lambda n: f"image{n:06d}.jpg", 1, last=c.offset_frame)
        clip_dir.mkdir(parents=True, exist_ok=True)
        for f in list_frame_files(tmp):
            n = int(f.stem[5:])
            if n >= c.onset_frame:
                f.rename(clip_dir / f"image{n - c.onset_frame + 1:06d}.jpg")
    import shutil

    shutil.rmtree(root / "_tmp")
    return {"n": len(clips)}


def casme3(root: Path, synth_root: Path, clips: list[SynthClip]) -> dict:
    """CAS(ME)^3 part A: {Subject}/{Filename}/color/{n}.jpg; a macro-expression row to be skipped."""
    header = ["Subject", "Filename", "Onset", "Apex", "Offset", "AU", "Objective class", "emotion", "Expression type"]
    rows = []
    for k, c in enumerate(clips):
        subject = f"spNO.{int(c.subject[1:])}"
        name = "abcdefgh"[k]
        copy_frames(synth_root / c.frames_dir, root / subject / name / "color", lambda n: f"{n}.jpg", 1)
        rows.append([subject, name, c.onset_frame, c.apex_frame, c.offset_frame, au_cell(c), 1, c.fine, "Micro-expression"])
    rows.append(["spNO.1", "a", 1, 3, 9, "12", 1, "happy", "Macro-expression"])
    write_xlsx(root / "cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx", header, rows)
    return {"n": len(clips)}
