"""Run perception on every clip: in parallel, cached, resumable.

A clip's cache entry is keyed by its content (a hash of every frame file's bytes, or the video's),
its annotated frames and the perception settings, so a rerun reuses what it can and a changed
setting or clip recomputes only what changed. Entries are written to a temporary folder and
renamed into place, so an interrupted build leaves only complete entries: the next run resumes.
A clip that fails (unreadable, no face, bad frame range) becomes a ClipFailure; the others go on.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import uuid
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from mellm.analyze import PerceptionSettings
from mellm.data_builders.records import ClipFailure, ClipRecord
from mellm.evidence import Evidence
from mellm.procs import die_with_parent


@dataclass
class Perceived:
    record: ClipRecord
    evidence: Evidence
    entry: Path  # cache folder holding evidence.json and <role>.png
    cached: bool  # reused from an earlier run

    def image(self, role: str) -> Path:
        return self.entry / f"{role}.png"


def content_digest(source: Path) -> str:
    """Hash of a clip's bytes: every frame file (name and content) of a folder, or the video."""
    h = hashlib.blake2b(digest_size=16)
    files = sorted(p for p in source.iterdir() if p.is_file()) if source.is_dir() else [source]
    for f in files:
        h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


def cache_key(record: ClipRecord, settings: PerceptionSettings) -> str:
    src = Path(record.source)
    digest = content_digest(src) if src.exists() else f"missing:{src}"
    blob = json.dumps([digest, record.onset, record.apex, record.offset, record.fps, settings.key()])
    return hashlib.blake2b(blob.encode(), digest_size=12).hexdigest()


def _init_worker(parent_pid: int | None = None) -> None:
    import cv2

    if parent_pid is not None:  # a pool process: SIGKILL the build and its workers go with it
        die_with_parent(signal.SIGKILL, parent_pid)
    cv2.setNumThreads(1)  # one clip per core; OpenCV's own threads would oversubscribe


def entry_for(key: str, cache_dir: Path) -> Path:
    return cache_dir / key[:2] / key


def perceive_one(record: ClipRecord, settings: PerceptionSettings, cache_dir: Path, key: str) -> dict:
    """Analyse one clip and write its cache entry. Returns a picklable result for the parent."""
    from mellm.analyze import analyze_clip, save_analysis
    from mellm.errors import ClipError

    try:
        entry = entry_for(key, cache_dir)
        result = analyze_clip(record.source, onset=record.onset, apex=record.apex, offset=record.offset,
                              fps=record.fps, settings=settings)
        tmp = cache_dir / "tmp" / f"{key}-{uuid.uuid4().hex[:8]}"
        save_analysis(result, tmp)
        entry.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(tmp, entry)  # atomic: an interrupted run never leaves half an entry
        except OSError:  # another worker or run finished the same entry first
            shutil.rmtree(tmp, ignore_errors=True)
        return {"ok": True}
    except ClipError as e:
        return {"ok": False, "reason": e.reason, "message": str(e)}
    except Exception as e:
        return {"ok": False, "reason": "error", "message": f"{record.source}: {type(e).__name__}: {e}"}


def perceive_all(records: list[ClipRecord], settings: PerceptionSettings, cache_dir: Path, workers: int = 1,
                 progress: bool = True) -> tuple[list[Perceived], list[ClipFailure]]:
    """Cache hits are found here, by hashing; only the misses go to the worker processes."""
    from tqdm import tqdm

    cache_dir.mkdir(parents=True, exist_ok=True)
    keys: dict[int, str] = {}
    results: dict[int, dict] = {}
    todo = []
    for i, r in enumerate(records):
        try:  # hashing reads every frame: an unreadable clip fails here, alone
            keys[i] = cache_key(r, settings)
        except OSError as e:
            results[i] = {"ok": False, "reason": "unreadable", "message": f"cannot read {r.source}: {e}"}
            continue
        if (entry_for(keys[i], cache_dir) / "evidence.json").is_file():
            results[i] = {"ok": True, "cached": True}
        else:
            todo.append(i)
    bar = tqdm(total=len(records), initial=len(results), desc="perception", unit="clip", disable=not progress)
    if workers <= 1 or len(todo) <= 1:
        _init_worker()
        for i in todo:
            results[i] = perceive_one(records[i], settings, cache_dir, keys[i])
            bar.update()
    else:
        # spawn, not fork: a forked child inherits OpenCV's thread pool locks mid-use and can hang.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(todo)), initializer=_init_worker,
                                 initargs=(os.getpid(),), mp_context=context) as pool:
            futures = {pool.submit(perceive_one, records[i], settings, cache_dir, keys[i]): i for i in todo}
            for fut in as_completed(futures):
                results[futures[fut]] = fut.result()
                bar.update()
    bar.close()
    shutil.rmtree(cache_dir / "tmp", ignore_errors=True)
    done, failed = [], []
    for i, r in enumerate(records):
        res = results[i]
        if res["ok"]:
            entry = entry_for(keys[i], cache_dir)
            done.append(Perceived(r, Evidence.load(entry / "evidence.json"), entry, res.get("cached", False)))
        else:
            failed.append(ClipFailure(r.dataset, f"{r.subject}/{r.clip_id}", "perception", res["reason"], res["message"]))
    return done, failed
