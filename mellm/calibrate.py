"""Per-AU decision thresholds fitted from labelled data (`mellm calibrate`).

Perception decides an AU is present when the amplitude the AU fit gives it reaches a threshold
(mellm.aus.PRESENT_PX, raised to the clip's noise floor). One threshold for every AU and every
dataset is a guess: cameras, compression and face sizes differ, and so do how strongly each AU
shows. With a dataset whose clips carry AU labels, the threshold of each AU is fitted to maximise
that AU's F1, from a build's own evidence (`mellm build-data --out DIR`: DIR/records.jsonl and
DIR/evidence/<clip>.json), so no perception is rerun.

Leave-one-subject-out: for each subject, thresholds fitted on the other subjects decide that
subject's clips, so the F1 reported "after" never comes from a threshold that saw the subject it
scores. The file written holds thresholds fitted on all subjects; `mellm analyze`, `mellm
build-data` and the gateway take it (`--calibration FILE`), and it is recorded in every Evidence
record's settings and in an adapter's serving.json.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from mellm.aus import PRESENT_PX, SIGNATURES
from mellm.errors import MellmError

FORMAT = "mellm-calibration/1"
MIN_POSITIVES = 3  # an AU labelled on fewer training clips keeps the default threshold
GRID = np.round(np.arange(0.05, 1.5001, 0.01), 3)


def load_build(build: Path) -> list[dict]:
    """Per built clip: {"key", "subject", "labels": set of AUs, "amplitude": {au: px}, "floor": px}."""
    records_file = build / "records.jsonl"
    if not records_file.is_file():
        raise MellmError(f"no records.jsonl in {build}: calibrate reads a `mellm build-data --out` folder "
                         "(rebuild it with this MELLM; perception is cached)")
    from mellm.evidence import Evidence

    clips = []
    for line_no, line in enumerate(records_file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            key, subject, aus = r["key"], r["subject_key"], r["aus"]
        except (ValueError, KeyError) as e:
            raise MellmError(f"{records_file} line {line_no}: not a clip record ({e})") from None
        ev_file = build / "evidence" / f"{key}.json"
        if not ev_file.is_file():
            raise MellmError(f"{records_file} line {line_no}: its evidence {ev_file} is missing")
        ev = Evidence.load(ev_file)
        clips.append({"key": key, "subject": subject, "labels": {int(a["au"]) for a in aus},
                      "amplitude": {a.au: a.amplitude_px for a in ev.au_scores},
                      "floor": float((ev.quality or {}).get("noise_floor_px", 0.0)), "perception": ev.settings.get("key"),
                      "default": float(ev.settings.get("au_threshold_px", PRESENT_PX))})
    if not any(c["labels"] for c in clips):
        raise MellmError(f"{build}: no clip has AU labels; calibration needs a dataset annotated with AUs")
    return clips


def _counts(clips: list[dict], au: int, threshold: float) -> tuple[int, int, int]:
    tp = fp = fn = 0
    for c in clips:
        said = c["amplitude"].get(au, 0.0) >= max(threshold, c["floor"])
        truth = au in c["labels"]
        tp, fp, fn = tp + (said and truth), fp + (said and not truth), fn + (truth and not said)
    return tp, fp, fn


def _f1(tp: int, fp: int, fn: int) -> float:
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0


def fit_threshold(clips: list[dict], au: int, default: float = PRESENT_PX) -> float:
    """The grid threshold with the best F1 for `au` on `clips` (ties: the one nearest the default)."""
    if sum(au in c["labels"] for c in clips) < MIN_POSITIVES:
        return default
    scores = [(_f1(*_counts(clips, au, t)), -abs(t - default), t) for t in GRID]
    return float(max(scores)[2])


def calibrate(clips: list[dict], default: float | None = None) -> dict:
    """Thresholds fitted on every clip, and per-AU F1 before (the threshold the build's perception
    used) / after (LOSO) calibration."""
    default = float(np.median([c.get("default", PRESENT_PX) for c in clips])) if default is None else default
    aus = [au for au in SIGNATURES if any(au in c["labels"] for c in clips)]
    subjects = sorted({c["subject"] for c in clips})
    if len(subjects) < 2:
        raise MellmError("calibration needs clips of at least two subjects (it is scored leave-one-subject-out)")
    before = {au: [0, 0, 0] for au in aus}
    after = {au: [0, 0, 0] for au in aus}
    for s in subjects:
        train = [c for c in clips if c["subject"] != s]
        test = [c for c in clips if c["subject"] == s]
        for au in aus:
            t = fit_threshold(train, au, default)
            for acc, thr in ((before[au], default), (after[au], t)):
                for i, v in enumerate(_counts(test, au, thr)):
                    acc[i] += v
    per_au = {str(au): {"before_f1": round(_f1(*before[au]), 3), "after_f1": round(_f1(*after[au]), 3),
                        "labelled_clips": sum(au in c["labels"] for c in clips)} for au in aus}
    micro = lambda d: _f1(*(sum(v[i] for v in d.values()) for i in range(3)))  # noqa: E731
    return {
        "thresholds": {str(au): fit_threshold(clips, au, default) for au in aus},
        "report": {"per_au": per_au, "micro_f1_before": round(micro(before), 3), "micro_f1_after": round(micro(after), 3),
                   "macro_f1_before": round(float(np.mean([v["before_f1"] for v in per_au.values()])), 3),
                   "macro_f1_after": round(float(np.mean([v["after_f1"] for v in per_au.values()])), 3),
                   "protocol": "leave-one-subject-out", "subjects": len(subjects), "clips": len(clips)},
    }


def write_calibration(build: Path, out: Path) -> dict:
    clips = load_build(build)
    result = calibrate(clips)
    keys = sorted({c["perception"] for c in clips if c["perception"]})
    doc = {"format": FORMAT, "default_px": float(np.median([c["default"] for c in clips])), **result,
           "fitted_on": {"build": str(build), "perception_keys": keys}}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1))
    return doc


def load_calibration(path: str | Path) -> tuple[tuple[tuple[int, float], ...], str]:
    """(per-AU thresholds, a label naming the file and its digest) from a calibration file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        doc = json.loads(raw)
    except (OSError, ValueError) as e:
        raise MellmError(f"cannot read calibration file {path}: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise MellmError(f"{path} is not a MELLM calibration file (format {FORMAT!r}, made by `mellm calibrate`)")
    try:
        pairs = tuple(sorted((int(a), float(t)) for a, t in doc["thresholds"].items()))
    except (KeyError, ValueError, AttributeError) as e:
        raise MellmError(f"{path}: field 'thresholds' must map AU numbers to px ({e})") from None
    bad = [a for a, t in pairs if a not in SIGNATURES or not 0 < t < 10]
    if bad:
        raise MellmError(f"{path}: thresholds for unknown AUs or out of range: {bad}")
    return pairs, f"{path.name}@{hashlib.sha1(raw).hexdigest()[:10]}"


def with_calibration(settings, path: str | Path | None):
    """PerceptionSettings with the thresholds of a calibration file (unchanged when path is None)."""
    if path is None:
        return settings
    pairs, label = load_calibration(path)
    return replace(settings, au_thresholds=pairs, calibration=label)


def markdown(doc: dict) -> str:
    rep = doc["report"]
    lines = [f"AU thresholds fitted on {rep['clips']} clips of {rep['subjects']} subjects; F1 {rep['protocol']}:", "",
             "| AU | labelled clips | threshold px | F1 before | F1 after |", "|---|---|---|---|---|"]
    for au, v in rep["per_au"].items():
        lines.append(f"| AU{au} | {v['labelled_clips']} | {doc['thresholds'][au]:.2f} | {v['before_f1']:.3f} | {v['after_f1']:.3f} |")
    lines.append(f"| micro | | | {rep['micro_f1_before']:.3f} | {rep['micro_f1_after']:.3f} |")
    lines.append(f"| macro | | | {rep['macro_f1_before']:.3f} | {rep['macro_f1_after']:.3f} |")
    return "\n".join(lines) + "\n"
