"""`mellm build-data` for long videos: ME-LVQA instruction samples.

records (mellm.data_builders.long_videos) -> spotting + per-event evidence per video
(mellm.analyze_long; parallel, cached by the video's content and the settings, resumable) ->
subject splits -> samples -> the same JSONL / HF / export files as the short-clip build.

Per video the samples are the six ME-LVQA questions (three counts, distinct AUs, the type of the
1st and 2nd events) with reference answers from the annotation (or, for an MEGC question file,
its own questions and answers), plus a grounded event-list analysis: the question asks for the
events, the answer lists the annotated ones. Every sample's prompt carries the spotted event list
(mellm.lvqa.event_list_text) as its evidence and shows the strongest spotted event's onset, apex
and flow images. A video the spotter finds nothing in has no images to show: it is recorded as a
failure (no_event_spotted) and the others go on.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import multiprocessing
import os
import shutil
import time
import uuid
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

from mellm.data_builders.export import SPLITS, write_hf, write_jsonl, write_llamafactory, write_swift
from mellm.data_builders.long_videos import LongRecord, load_long
from mellm.data_builders.perceive import _init_worker, content_digest, entry_for
from mellm.data_builders.records import ClipFailure
from mellm.data_builders.splits import make_splits
from mellm.errors import MellmError
from mellm.labels import format_au_list
from mellm.lvqa import COUNT_QUESTIONS, kth_question
from mellm.spot import SpotSettings
from mellm.spots import SPOTS_SCHEMA_VERSION, Spots

EVENTS_QUESTION = "Please analyse the expression events in this video in detail."


@dataclass
class Spotted:
    record: LongRecord
    spots: Spots
    entry: Path
    cached: bool


def spot_key(record: LongRecord, settings: SpotSettings, flow: str) -> str:
    src = Path(record.source)
    digest = content_digest(src) if src.exists() else f"missing:{src}"
    blob = json.dumps([digest, record.fps, settings.to_dict(), flow, SPOTS_SCHEMA_VERSION], sort_keys=True)
    return hashlib.blake2b(blob.encode(), digest_size=12).hexdigest()


def spot_one(record: LongRecord, settings: SpotSettings, flow: str, cache_dir: Path, key: str) -> dict:
    from mellm.analyze_long import analyze_long
    from mellm.errors import ClipError

    try:
        tmp = cache_dir / "tmp" / f"{key}-{uuid.uuid4().hex[:8]}"
        truth = [(e.onset, e.offset, e.type) for e in record.events]
        analyze_long(record.source, tmp, settings, fps=record.fps, truth=truth, flow=flow)
        entry = entry_for(key, cache_dir)
        entry.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(tmp, entry)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
        return {"ok": True}
    except ClipError as e:
        return {"ok": False, "reason": e.reason, "message": str(e)}
    except Exception as e:
        return {"ok": False, "reason": "error", "message": f"{record.source}: {type(e).__name__}: {e}"}


def spot_all(records: list[LongRecord], settings: SpotSettings, flow: str, cache_dir: Path, workers: int,
             progress: bool) -> tuple[list[Spotted], list[ClipFailure]]:
    from tqdm import tqdm

    cache_dir.mkdir(parents=True, exist_ok=True)
    keys, results, todo = {}, {}, []
    for i, r in enumerate(records):
        try:
            keys[i] = spot_key(r, settings, flow)
        except OSError as e:
            results[i] = {"ok": False, "reason": "unreadable", "message": f"cannot read {r.source}: {e}"}
            continue
        if (entry_for(keys[i], cache_dir) / "spots.json").is_file():
            results[i] = {"ok": True, "cached": True}
        else:
            todo.append(i)
    bar = tqdm(total=len(records), initial=len(results), desc="spotting", unit="video", disable=not progress)
    if workers <= 1 or len(todo) <= 1:
        for i in todo:
            results[i] = spot_one(records[i], settings, flow, cache_dir, keys[i])
            bar.update()
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(todo)), initializer=_init_worker,
                                 initargs=(os.getpid(),), mp_context=context) as pool:
            futures = {pool.submit(spot_one, records[i], settings, flow, cache_dir, keys[i]): i for i in todo}
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
            done.append(Spotted(r, Spots.load(entry / "spots.json"), entry, res.get("cached", False)))
        else:
            failed.append(ClipFailure(r.dataset, f"{r.subject}/{r.video}", "spotting", res["reason"], res["message"]))
    return done, failed


def truth_answers(record: LongRecord, ks: tuple[int, ...] = (1, 2)) -> list[tuple[str, str, str]]:
    """(qtype, question, reference answer) of the six LVQA questions and the event-list analysis."""
    ev = record.events
    micro = sum(e.type == "micro" for e in ev)
    aus = sorted({a for e in ev for a in e.aus})
    out = [("lv_count", COUNT_QUESTIONS["all"], str(len(ev))), ("lv_count", COUNT_QUESTIONS["micro"], str(micro)),
           ("lv_count", COUNT_QUESTIONS["macro"], str(len(ev) - micro)),
           ("lv_aus", "What distinct action units appear in this video?", format_au_list(aus) if aus else "none")]
    out += [("lv_event_type", kth_question(k), f"{ev[k - 1].type}-expression") for k in ks if k <= len(ev)]
    parts = []
    for k, e in enumerate(ev, start=1):
        t0, t1 = (e.onset - 1) / record.fps, (e.offset - 1) / record.fps
        apex = f" (apex {e.apex})" if e.apex else ""
        au_text = f", {format_au_list(e.aus)}" if e.aus else ""
        parts.append(f"{k}-th {e.type}-expression: frames {e.onset}-{e.offset}{apex}, {t0:.2f}s-{t1:.2f}s{au_text}")
    n = len(ev)
    listing = f"{n} expression event{'s' if n != 1 else ''} ({micro} micro, {n - micro} macro)"
    out.append(("analysis", EVENTS_QUESTION, listing + (". " + "; ".join(parts) + "." if parts else ".")))
    return out


def _rows_for(s: Spotted, out: Path, roles: tuple[str, ...], evidence_in_prompt: bool) -> list[dict]:
    from mellm.lvqa import event_list_text
    from mellm.vqa import classify_question

    top = max(range(len(s.spots.events)), key=lambda k: s.spots.events[k].peak_z)
    folder = out / "images" / s.record.key
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    for role in roles:
        shutil.copyfile(s.entry / "events" / str(top + 1) / f"{role}.png", folder / f"{role}.png")
        images.append(f"images/{s.record.key}/{role}.png")
    (out / "spots").mkdir(exist_ok=True)
    shutil.copyfile(s.entry / "spots.json", out / "spots" / f"{s.record.key}.json")
    qa = ([(classify_question(q).type.value, q, a, rid) for rid, q, a in s.record.qa if a]
          if s.record.qa else [(t, q, a, None) for t, q, a in truth_answers(s.record)])
    evidence = event_list_text(s.spots) if evidence_in_prompt else None
    rows = []
    for i, (qtype, q, a, rid) in enumerate(qa):
        rows.append({"id": rid or f"{s.record.key}_lv{i}", "dataset": s.record.dataset, "subject": s.record.subject_key,
                     "clip_id": s.record.video, "qtype": qtype, "question": q, "answer": a, "evidence_text": evidence,
                     "images": images, "coarse": None, "fine": None,
                     "aus": sorted({au for e in s.record.events for au in e.aus}),
                     "agreement": {"spotted": len(s.spots.events), "annotated": len(s.record.events)}})
    return rows


def build_long(cfg, names: list[tuple[str, Path]]) -> dict:
    """Long-video part of `mellm build-data` (cfg: data_builders.build.BuildConfig)."""
    t0 = time.time()
    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    records, failures = [], []
    for name, root in names:
        if not Path(root).is_dir():
            raise MellmError(f"dataset root {root} is not a folder")
        loaded = load_long(name, Path(root), cfg.questions)
        records += loaded.records if cfg.limit is None else loaded.records[: cfg.limit]
        failures += loaded.failures
    if not records:
        raise MellmError(f"no usable long videos in {', '.join(str(r) for _, r in names)} "
                         f"({len(failures)} failures; first: {failures[0].message if failures else 'none'})")
    settings = SpotSettings()
    spotted, failed = spot_all(records, settings, cfg.perception.flow, cfg.cache or out / "cache", cfg.workers, cfg.progress)
    failures += failed
    usable = []
    for s in spotted:
        if s.spots.events:
            usable.append(s)
        else:
            failures.append(ClipFailure(s.record.dataset, f"{s.record.subject}/{s.record.video}", "spotting",
                                        "no_event_spotted", f"{s.record.source}: the spotter found no event, so there "
                                        "are no event images to show; no sample made"))
    if not usable:
        raise MellmError(f"no video gave samples; first failure: {failures[0].message if failures else 'none'}")
    splits = make_splits([s.record for s in usable], seed=cfg.samples.seed)
    split_of = splits.split_of()
    rows: dict[str, list[dict]] = {sp: [] for sp in SPLITS}
    for s in usable:
        rows[split_of[s.record.subject_key]] += _rows_for(s, out, cfg.prompt.image_roles, cfg.prompt.evidence_in_prompt)
    used = [sp for sp in SPLITS if rows[sp]]
    write_jsonl({sp: rows[sp] for sp in used}, out)
    (out / "splits.json").write_text(json.dumps(splits.to_dict(), indent=1))
    write_hf(out, cfg.prompt, used, text_only=False)
    write_hf(out, cfg.prompt, used, text_only=True)
    if cfg.exports:
        write_llamafactory({sp: rows[sp] for sp in used}, out, cfg.prompt)
        write_swift({sp: rows[sp] for sp in used}, out, cfg.prompt)
    with open(out / "failures.jsonl", "w") as f:
        for fail in failures:
            f.write(json.dumps(fail.to_dict()) + "\n")
    reasons: dict[str, int] = {}
    for f in failures:
        reasons[f.reason] = reasons.get(f.reason, 0) + 1
    record = {
        "datasets": [f"{n}={r}" for n, r in names], "kind": "long videos (ME-LVQA)",
        "finished": datetime.datetime.now().isoformat(timespec="seconds"), "seconds": round(time.time() - t0, 1),
        "spotting": settings.to_dict(), "evidence_flow": cfg.perception.flow, "prompt": asdict(cfg.prompt),
        "counts": {"built": len(usable), "failed": len(failures), "cached": sum(s.cached for s in spotted),
                   "samples": {sp: len(r) for sp, r in rows.items()}, "failure_reasons": reasons},
        "notes": [f"{s.record.video}: {n}" for s in spotted for n in s.spots.notes],
        "workers": cfg.workers,
    }
    (out / "build.json").write_text(json.dumps(record, indent=1))
    return {"built": len(usable), "failures": failures, "cached": sum(s.cached for s in spotted),
            "samples": {sp: len(rows[sp]) for sp in used}}
