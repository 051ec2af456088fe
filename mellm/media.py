"""Find a question row's clip under a media root, and pick its onset / apex / offset frames.

Where a clip is looked for (first match wins; folder names match case- and punctuation-blind, so
`SAMM`, `samm` and `CASME II` / `casme2` all work):

1. the row's `video` field, relative to the media root (or absolute);
2. an explicit map (`--clip-map FILE`: JSON object {image_id or id: path relative to the root});
3. `<root>/<dataset>/<image_id>`                        the flat layout (recommended);
4. `<root>/<dataset>/<subject>/<filename>`              subject as written, or zero-padded
                                                        (`006`), or `subNN` (CASME II), `sNN`/`sN`;
5. `<root>/<dataset>/<filename>`                        e.g. SAMM long videos: `samm/001_2`;
6. SMIC's own layout: `<root>/smic/[HS/]<subject>/micro/<negative|positive|surprise>/<filename>`,
   the emotion read from the filename code (`s01_ne_01` -> negative).
<dataset> is the row's canonical dataset (casme2, samm, smic, casme3, ...; the CAS(ME)^3 test
file's "samm_test" rows count as casme3), its `dataset` field as written, or a known folder name
(`SAMM_longvideos`, `CASME2`, `CAS(ME)^3`, `SMIC`); the media root itself is tried last as the
dataset folder. Each candidate is a folder of frames or a video file (the path itself, or with a
video extension added).

Frames are numbered as mellm.video numbers them: in a frame folder whose file names carry frame
numbers (SAMM's `006_05562.jpg`, `img46.jpg`) by the number in the name, otherwise by 1-based
position, as the annotation files count. onset = the row's onset_frame, else the first frame; offset = the row's
offset_frame, else the last frame; an offset not after the onset (the SAMM test file has one) is
replaced by onset + the median span of the file's other clips of that dataset. apex = the row's
apex_frame, else the middle of onset..offset.
"""

from __future__ import annotations

import json
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

from mellm.errors import ClipNotFoundError, FrameRangeError, MellmError
from mellm.megc import QARow, canonical_dataset
from mellm.video import VIDEO_SUFFIXES, Clip

_DATASET_DIRS = {
    "casme2": ("casme2", "casmeii", "casme2raw", "casme2rawpic", "casme2cropped"),
    "samm": ("samm", "sammlongvideos", "sammlv", "sammlongvideosv3release"),
    "smic": ("smic", "smichs", "smicallcropped", "smice"),
    "casme3": ("casme3", "casme3parta", "casme3c"),
}
_SMIC_EMOTION = {"ne": "negative", "po": "positive", "sur": "surprise", "su": "surprise"}


def _fold(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def find_child(folder: Path, name: str, loose: bool = False) -> Path | None:
    """folder/name, else an entry whose name differs only in case; loose (dataset folders only):
    also in punctuation ("CASME II" = "casme2"). Clip names are never matched loosely: "006_1_2"
    and "006_12" must stay different clips."""
    exact = folder / name
    if exact.exists():
        return exact
    try:
        entries = list(folder.iterdir())
    except OSError:
        return None
    key = _fold(name) if loose else name.lower()
    for p in entries:
        if (_fold(p.name) if loose else p.name.lower()) == key:
            return p
    return None


def _subject_variants(subject: str) -> list[str]:
    s = subject.strip()
    out = [s]
    digits = re.fullmatch(r"(?:sub|s)?0*(\d+)", s.lower())
    if digits:
        n = int(digits.group(1))
        out += [str(n), f"{n:02d}", f"{n:03d}", f"sub{n:02d}", f"s{n:02d}", f"s{n}"]
    return list(dict.fromkeys(out))


@dataclass(frozen=True)
class ClipWindow:
    """A clip and the frames to show, as frame numbers of the clip (mellm.video numbering)."""

    path: Path
    onset: int
    apex: int
    offset: int
    n_frames: int
    note: str | None = None  # how a missing or bad annotation was filled in


class MediaIndex:
    """Resolves question rows to clip paths under `root` (see the module docstring)."""

    def __init__(self, root: Path, clip_map: Path | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise ClipNotFoundError(f"media root {self.root} is not a folder")
        self.clip_map: dict[str, str] = {}
        if clip_map is not None:
            try:
                data = json.loads(Path(clip_map).read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise MellmError(f"clip map {clip_map}: {e}") from None
            except RecursionError:
                raise MellmError(f"clip map {clip_map}: JSON nested too deeply") from None
            if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
                raise MellmError(f"clip map {clip_map}: expected a JSON object of id -> path strings")
            self.clip_map = data

    def _dataset_dirs(self, row: QARow) -> list[Path]:
        # The field as written only when it means the same dataset: the CAS(ME)^3 test rows'
        # "samm_test" must not send them into a SAMM folder.
        as_written = row.dataset_field if canonical_dataset(row.dataset_field) == row.dataset else None
        names = [row.dataset, as_written, *_DATASET_DIRS.get(row.dataset, ())]
        dirs = [d for n in dict.fromkeys(n for n in names if n)
                if (d := find_child(self.root, n, loose=True)) and d.is_dir()]
        return list(dict.fromkeys(dirs)) + [self.root]

    def candidates(self, row: QARow) -> list[Path]:
        """Every path tried for `row`, in order (without the video-extension variants)."""
        out = []
        if row.video:
            out.append(Path(row.video) if Path(row.video).is_absolute() else self.root / row.video)
        for key in (row.image_id, row.id):
            if key in self.clip_map:
                out.append(self.root / self.clip_map[key])
        for d in self._dataset_dirs(row):
            if row.image_id:
                out.append(d / row.image_id)
            for s in _subject_variants(row.subject) if row.subject else []:
                if row.filename:
                    out.append(d / s / row.filename)
            if row.filename:
                out.append(d / row.filename)
            if row.dataset == "smic" and row.filename:
                out += self._smic(d, row)
        return list(dict.fromkeys(out))

    def _smic(self, d: Path, row: QARow) -> list[Path]:
        m = re.fullmatch(r"(s)0*(\d+)_(ne|po|sur|su)_(\d+)", row.filename.lower())
        if not m:
            return []
        emotion = _SMIC_EMOTION[m.group(3)]
        names = [row.filename, f"s{int(m.group(2))}_{m.group(3)}_{m.group(4)}"]
        return [d / hs / s / "micro" / emotion / n
                for hs in ("", "HS") for s in _subject_variants(row.subject or m.group(1) + m.group(2)) for n in names]

    def resolve(self, row: QARow) -> Path:
        tried = self.candidates(row)
        for path in tried:
            found = _existing(path)
            if found is not None:
                return found
        shown = ", ".join(str(p) for p in tried[:4]) + (f" and {len(tried) - 4} more" if len(tried) > 4 else "")
        raise ClipNotFoundError(f"no clip for question {row.id!r} ({row.dataset}/{row.image_id}); tried {shown}")


def _existing(path: Path) -> Path | None:
    """The path as a frame folder or video file, trying video extensions when it has none."""
    parent = path.parent
    if not parent.is_dir():
        return None
    hit = find_child(parent, path.name)
    if hit is not None and (hit.is_dir() or hit.suffix.lower() in VIDEO_SUFFIXES):
        return hit
    for suffix in VIDEO_SUFFIXES:
        hit = parent / (path.name + suffix)
        if hit.is_file():
            return hit
    return None


def median_spans(rows: list[QARow]) -> dict[str, int]:
    """Median offset - onset per dataset, over rows with a usable pair: the stand-in span for a
    row whose offset is missing or not after its onset."""
    spans: dict[str, list[int]] = {}
    for r in rows:
        if r.onset is not None and r.offset is not None and r.offset > r.onset:
            spans.setdefault(r.dataset, []).append(r.offset - r.onset)
    return {ds: int(statistics.median(v)) for ds, v in spans.items()}


def clip_window(row: QARow, clip: Clip, spans: dict[str, int]) -> ClipWindow:
    """The row's onset / apex / offset as frame numbers of `clip` (mellm.video numbering: the
    annotation's), with what the row leaves out filled in."""

    def checked(n: int | None, what: str) -> int | None:
        if n is None:
            return None
        if n not in clip.frame_numbers:
            raise FrameRangeError(f"{what} {n} of question {row.id!r} is not in {clip.path} "
                                  f"(frames {clip.first_frame}..{clip.last_frame})")
        return n

    note = None
    onset = checked(row.onset, "onset frame") or clip.first_frame
    if row.offset is not None and (row.onset is None or row.offset > row.onset):
        offset = checked(row.offset, "offset frame")
    elif row.offset is not None:
        after = clip.numbers_between(onset, clip.last_frame)
        span = spans.get(row.dataset)
        offset = after[min(span, len(after) - 1)] if span else clip.last_frame
        note = f"offset_frame {row.offset} is not after onset_frame {row.onset}; used offset {offset}"
    else:
        offset = clip.last_frame
    inside = clip.numbers_between(onset, offset)
    apex = checked(row.apex, "apex frame") or inside[(len(inside) - 1) // 2]
    return ClipWindow(path=clip.path, onset=onset, apex=apex, offset=offset, n_frames=clip.n_frames, note=note)
