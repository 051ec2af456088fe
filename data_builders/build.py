"""`mellm build-data`: dataset folders -> MEU-Instruct (docs/formats.md).

adapters -> records (+ annotation failures) -> perception per clip (parallel, cached) -> images and
evidence copied into DIR -> subject splits -> samples -> JSONL, HF datasets, exports, card,
build.json, failures.jsonl.
"""

from __future__ import annotations

import datetime
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mellm import __version__
from mellm.analyze import PerceptionSettings
from mellm.data_builders.card import write_card
from mellm.data_builders.export import (
    SPLITS,
    PromptOptions,
    jsonl_row,
    write_hf,
    write_jsonl,
    write_llamafactory,
    write_swift,
)
from mellm.data_builders.instruct import SampleOptions, samples_for_clip
from mellm.data_builders.perceive import perceive_all
from mellm.data_builders.records import ClipFailure, ClipRecord
from mellm.data_builders.registry import load_dataset
from mellm.data_builders.splits import make_splits
from mellm.errors import MellmError


@dataclass
class BuildConfig:
    datasets: list[tuple[str, Path]]  # (name, root)
    out: Path
    workers: int = 1
    perception: PerceptionSettings = field(default_factory=PerceptionSettings)
    prompt: PromptOptions = field(default_factory=PromptOptions)
    samples: SampleOptions = field(default_factory=SampleOptions)
    cache: Path | None = None  # default: DIR/cache
    questions: Path | None = None  # MEGC question file for --dataset megc
    limit: int | None = None  # at most this many clips per dataset (quick trials)
    exports: bool = True
    progress: bool = True

    def __post_init__(self):
        if self.limit is not None and self.limit < 1:
            raise MellmError(f"limit must be at least 1 clip per dataset, got {self.limit}")
        if self.workers < 1:
            raise MellmError(f"workers must be at least 1, got {self.workers}")
        if self.questions is not None and all(name not in ("megc", "megc_lvqa") for name, _ in self.datasets):
            raise MellmError(f"--questions only applies to --dataset megc, not {', '.join(n for n, _ in self.datasets)}")


@dataclass
class BuildSummary:
    built: int
    failed: int
    cached: int
    samples: dict[str, int]
    out: Path
    failures: list[ClipFailure]


def build(cfg: BuildConfig) -> BuildSummary:
    from mellm.data_builders.long_videos import LONG_DATASETS

    long_names = [(n, r) for n, r in cfg.datasets if n in LONG_DATASETS]
    if long_names:
        if len(long_names) != len(cfg.datasets):
            raise MellmError("long-video datasets (" + ", ".join(LONG_DATASETS) + ") build ME-LVQA data on their own; "
                             "build them apart from short-clip datasets")
        from mellm.data_builders.build_long import build_long

        done = build_long(cfg, long_names)
        return BuildSummary(done["built"], len(done["failures"]), done["cached"], done["samples"], cfg.out, done["failures"])
    t0 = time.time()
    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    records, failures = [], []
    for name, root in cfg.datasets:
        loaded = load_dataset(name, root, cfg.questions if name == "megc" else None)
        records += loaded.records if cfg.limit is None else loaded.records[: cfg.limit]
        failures += loaded.failures
    records, duplicates = deduplicate(records)
    failures += duplicates
    if not records:
        raise MellmError(f"no usable clips in {', '.join(str(r) for _, r in cfg.datasets)} "
                         f"({len(failures)} failures; first: {failures[0].message if failures else 'none'})")
    perceived, failed = perceive_all(records, cfg.perception, cfg.cache or out / "cache", cfg.workers, cfg.progress)
    failures += failed
    if not perceived:
        raise MellmError(f"perception failed on every clip; first failure: {failed[0].message}")

    splits = make_splits([p.record for p in perceived], seed=cfg.samples.seed)
    split_of = splits.split_of()
    rows: dict[str, list[dict]] = {s: [] for s in SPLITS}
    clip_agreement = []
    for p in perceived:
        images = _copy_clip_files(p, out, cfg.prompt.image_roles)
        clip_samples = samples_for_clip(p, cfg.samples)
        rows[split_of[p.record.subject_key]] += [jsonl_row(s, images, cfg.prompt) for s in clip_samples]
        if clip_samples:
            clip_agreement.append(clip_samples[0].agreement)
    splits_used = [s for s in SPLITS if rows[s]]
    write_jsonl({s: rows[s] for s in splits_used}, out)
    (out / "splits.json").write_text(json.dumps(splits.to_dict(), indent=1))
    write_hf(out, cfg.prompt, splits_used, text_only=False)
    write_hf(out, cfg.prompt, splits_used, text_only=True)
    if cfg.exports:
        write_llamafactory({s: rows[s] for s in splits_used}, out, cfg.prompt)
        write_swift({s: rows[s] for s in splits_used}, out, cfg.prompt)
    with open(out / "records.jsonl", "w") as f:  # labels beside evidence/<key>.json (read by mellm calibrate)
        for p in perceived:
            f.write(json.dumps({**p.record.to_dict(), "key": p.record.key, "subject_key": p.record.subject_key}) + "\n")
    with open(out / "failures.jsonl", "w") as f:
        for fail in failures:
            f.write(json.dumps(fail.to_dict()) + "\n")
    record = _build_record(cfg, perceived, failures, rows, t0)
    (out / "build.json").write_text(json.dumps(record, indent=1))
    name = "+".join(n for n, _ in cfg.datasets)
    write_card(out / "card.md", name, {s: rows[s] for s in splits_used}, clip_agreement, record)
    return BuildSummary(len(perceived), len(failures), sum(p.cached for p in perceived),
                        {s: len(rows[s]) for s in splits_used}, out, failures)


def deduplicate(records: list[ClipRecord]) -> tuple[list[ClipRecord], list[ClipFailure]]:
    """One record per clip. Annotation sheets repeat rows: an identical repeat is kept once (with a
    note); rows that name the same clip with different labels or timing are all refused, since
    nothing says which one is right, and each sample id must stand for one set of labels."""
    groups: dict[str, list[ClipRecord]] = {}
    for r in records:
        groups.setdefault(r.key, []).append(r)
    kept, failures = [], []
    for key, rows in groups.items():
        first = rows[0]
        if len(rows) == 1:
            kept.append(first)
            continue
        seen = {json.dumps({k: v for k, v in r.to_dict().items() if k != "notes"}, sort_keys=True) for r in rows}
        if len(seen) == 1:
            first.notes.append(f"{first.subject}/{first.clip_id}: {len(rows)} identical annotation rows, kept once")
            kept.append(first)
            continue
        differ = sorted({k for r in rows[1:] for k, v in r.to_dict().items()
                         if k != "notes" and v != first.to_dict()[k]})
        names = sorted({f"{r.subject}/{r.clip_id}" for r in rows})
        failures.append(ClipFailure(first.dataset, names[0], "annotation", "conflicting_annotation",
                                    f"{len(rows)} annotation rows for clip {' = '.join(names)} disagree on "
                                    f"{', '.join(differ)}; none is used"))
    return kept, failures


def _copy_clip_files(p, out: Path, roles: tuple[str, ...]) -> list[str]:
    """Images and evidence of a clip into DIR/images/<clip>/ and DIR/evidence/; paths relative to DIR."""
    folder = out / "images" / p.record.key
    folder.mkdir(parents=True, exist_ok=True)
    rel = []
    for role in roles:
        shutil.copyfile(p.image(role), folder / f"{role}.png")
        rel.append(f"images/{p.record.key}/{role}.png")
    (out / "evidence").mkdir(exist_ok=True)
    shutil.copyfile(p.entry / "evidence.json", out / "evidence" / f"{p.record.key}.json")
    return rel


def _versions() -> dict:
    import cv2
    import datasets

    return {"mellm": __version__, "opencv": cv2.__version__, "datasets": datasets.__version__}


def _build_record(cfg: BuildConfig, perceived, failures, rows, t0) -> dict:
    reasons: dict[str, int] = {}
    for f in failures:
        reasons[f.reason] = reasons.get(f.reason, 0) + 1
    return {
        "datasets": [f"{n}={r}" for n, r in cfg.datasets],
        "finished": datetime.datetime.now().isoformat(timespec="seconds"),
        "seconds": round(time.time() - t0, 1),
        "versions": _versions(),
        "perception": {**cfg.perception.to_dict(), "key": cfg.perception.key()},
        "prompt": asdict(cfg.prompt),
        "samples": {**asdict(cfg.samples), "types": [t.value for t in cfg.samples.types]},
        "counts": {"built": len(perceived), "failed": len(failures), "cached": sum(p.cached for p in perceived),
                   "samples": {s: len(r) for s, r in rows.items()}, "failure_reasons": reasons},
        "notes": [n for p in perceived for n in p.record.notes],
        "workers": cfg.workers,
    }
