"""Spotting metrics, as the MEGC spotting challenges count them.

A spotted interval is a true positive when its IoU with a ground-truth interval is >= 0.5; each
truth interval can be matched once and each spotted interval once (greedy, highest IoU first, so
the result does not depend on the order of either list). Precision, recall and F1 are computed
over all intervals pooled across videos (as the challenge pools them), overall and per type
(micro / macro): a per-type figure counts spotted intervals of that type against truth intervals
of that type, as the challenge's per-type F1 does.

Intervals are inclusive frame ranges [onset, offset] (1-based, as the annotation files count).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mellm.jsonl import InputFileError, LineIssue, iter_jsonl

IOU_THRESHOLD = 0.5
TYPES = ("micro", "macro")


@dataclass(frozen=True)
class Interval:
    video: str
    onset: int
    offset: int
    type: str = "micro"  # micro | macro
    confidence: float = 1.0

    def __post_init__(self):
        if self.offset < self.onset:
            raise ValueError(f"interval of {self.video!r}: offset {self.offset} is before onset {self.onset}")

    @property
    def length(self) -> int:
        return self.offset - self.onset + 1


def iou(a: Interval, b: Interval) -> float:
    """Intersection over union of two inclusive frame ranges."""
    inter = min(a.offset, b.offset) - max(a.onset, b.onset) + 1
    if inter <= 0:
        return 0.0
    return inter / (a.length + b.length - inter)


def match(truth: Sequence[Interval], spotted: Sequence[Interval], threshold: float = IOU_THRESHOLD) -> list[tuple[int, int, float]]:
    """One-to-one matches (truth index, spotted index, IoU) with IoU >= threshold, same video only."""
    pairs = []
    for i, t in enumerate(truth):
        for j, s in enumerate(spotted):
            if s.video == t.video:
                v = iou(t, s)
                if v >= threshold:
                    pairs.append((v, i, j))
    pairs.sort(key=lambda p: (-p[0], p[1], p[2]))
    used_t, used_s, out = set(), set(), []
    for v, i, j in pairs:
        if i not in used_t and j not in used_s:
            used_t.add(i)
            used_s.add(j)
            out.append((i, j, v))
    return sorted(out)


@dataclass
class PRF:
    tp: int
    fp: int
    fn: int

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        """2TP / (2TP + FP + FN); 1.0 when there is nothing to find and nothing was spotted."""
        d = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / d if d else 1.0

    def to_dict(self) -> dict:
        return {**asdict(self), "precision": round(self.precision, 4), "recall": round(self.recall, 4),
                "f1": round(self.f1, 4)}


@dataclass
class SpottingMetrics:
    overall: PRF
    per_type: dict[str, PRF]
    n_videos: int
    threshold: float = IOU_THRESHOLD
    per_video: dict[str, PRF] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"threshold": self.threshold, "n_videos": self.n_videos, "overall": self.overall.to_dict(),
                "per_type": {k: v.to_dict() for k, v in self.per_type.items()},
                "per_video": {k: v.to_dict() for k, v in self.per_video.items()}}


def _prf(truth: Sequence[Interval], spotted: Sequence[Interval], threshold: float) -> PRF:
    tp = len(match(truth, spotted, threshold))
    return PRF(tp, len(spotted) - tp, len(truth) - tp)


def spotting_metrics(truth: Iterable[Interval], spotted: Iterable[Interval], threshold: float = IOU_THRESHOLD) -> SpottingMetrics:
    truth, spotted = list(truth), list(spotted)
    per_type = {k: _prf([t for t in truth if t.type == k], [s for s in spotted if s.type == k], threshold) for k in TYPES}
    by_video_t, by_video_s = defaultdict(list), defaultdict(list)
    for t in truth:
        by_video_t[t.video].append(t)
    for s in spotted:
        by_video_s[s.video].append(s)
    videos = sorted(set(by_video_t) | set(by_video_s))
    per_video = {v: _prf(by_video_t[v], by_video_s[v], threshold) for v in videos}
    return SpottingMetrics(overall=_prf(truth, spotted, threshold), per_type=per_type, n_videos=len(videos),
                           threshold=threshold, per_video=per_video)


def false_positives_per_minute(spotted: Sequence[Interval], minutes: float) -> float:
    return len(spotted) / minutes if minutes > 0 else 0.0


def load_intervals(path: str | Path) -> list[Interval]:
    """Intervals from a JSONL file ({"video", "onset", "offset", "type"[, "confidence"]} lines, as
    `mellm synth --long` writes intervals.jsonl). A line missing a field is an error naming it."""
    path = Path(path)
    issues: list[LineIssue] = []
    out = []
    for number, obj in iter_jsonl(path, issues):
        try:
            out.append(Interval(str(obj["video"]), int(obj["onset"]), int(obj["offset"]),
                                str(obj.get("type", "micro")), float(obj.get("confidence", 1.0))))
        except KeyError as e:
            raise InputFileError(f"{path}:{number}: missing field {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            raise InputFileError(f"{path}:{number}: {e}") from None
    if issues:
        raise InputFileError(str(issues[0]))
    return out


def save_intervals(path: str | Path, intervals: Iterable[Interval]) -> None:
    with open(path, "w") as f:
        for i in intervals:
            f.write(json.dumps(asdict(i)) + "\n")
