"""Benchmark: perception's robustness to recording nuisances, condition by condition, today's
settings (PerceptionSettings.legacy()) against the new defaults, on identities never tuned on.

Conditions (mellm/robustness.py): clean, JPEG q85, H.264 (CRF 18), blinks, head rotation/scale
(with sway), lighting flicker, small faces (50-65 px between the eyes, anywhere), amplitude bins
0.2-0.4 / 0.4-0.7 / 0.7-1.0 px, and all nuisances combined. Each condition's corpus has ME clips
and ME-free clips (nuisances only) of the HELD_OUT identities (mellm.faces, Grace Hopper's photo);
the thresholds and defaults were chosen on TUNING identities with other seeds (--split tuning).

Per condition and settings: AU micro-F1 / precision / recall over planted AUs >= 0.4 px (>= 0.2
in the 0.2-0.4 bin) with the apex given and spotted, apex within +-2 frames, the share of
ME-free clips with any AU reported, and the median perception time per clip. With --ablate, the
combined condition is also run with the new settings minus one defence at a time.

Usage: .venv/bin/python bench/perception_robustness.py [--clips 12] [--me-free 3] [--combined 36]
       [--split held-out|tuning] [--seed 2027] [--ablate] [--workers 2] [--work DIR]
Writes bench/results/perception_robustness.json and .md (with --split tuning: *_tuning.*).
The committed runs used --clips 8 --me-free 2 (and --ablate for the default held-out seed); the JSON records it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import describe_machine, machine_line  # noqa: E402
from mellm.analyze import PerceptionSettings, analyze_clip  # noqa: E402
from mellm.faces import HELD_OUT, TUNING  # noqa: E402
from mellm.robustness import CONDITIONS, GOAL_MIN_PX, MIN_PX, clip_source, condition_config, score  # noqa: E402
from mellm.synth import generate_corpus, load_labels  # noqa: E402

SETTINGS = {"today": PerceptionSettings.legacy(), "new": PerceptionSettings()}
# One defence off at a time; the AU-side ones are measured with the apex given, the spotting ones
# with it spotted (the other mode would repeat the new settings' figures).
ABLATIONS = {
    "new - pre_align": ({"pre_align": "none"}, "given"), "new - illumination": ({"illumination": "none"}, "given"),
    "new - blinks": ({"blinks": "none"}, "given"), "new + prefilter": ({"prefilter": "auto"}, "given"),
    "new - noise_floor": ({"noise_floor": 0.0}, "given"),
    "new - noise_floor, threshold 0.25": ({"noise_floor": 0.0, "au_threshold_px": 0.25}, "given"),
    "new - spot eyes/edges excluded": ({"spot_eyes": True}, "spotted"), "new - spot pooling": ({"spot_pool": 0.0}, "spotted"),
    "new - illumination, apex spotted": ({"illumination": "none"}, "spotted"), "new - spot crop 192 px (128)": ({"spot_size": 128}, "spotted"),
    "new - spot head tracking": ({"spot_track": False}, "spotted"),
}


def corpus(work: Path, name: str, ids: tuple[str, ...], n: int, n_free: int, seed: int, frames: int):
    """ME clips and ME-free clips of one condition, generated once into `work`."""
    out = []
    for part, count, free in (("me", n, 0.0), ("free", n_free, 1.0)):
        root = work / f"{name.replace('/', '_').replace(' ', '_')}-{part}"
        if count and not (root / "labels.jsonl").exists():
            generate_corpus(root, n=count, seed=seed + (7 if free else 0),
                            config=replace(condition_config(name, ids, frames), me_free_fraction=free))
        if count:
            out += [(root, c) for c in load_labels(root)]
    return out


def _analyze(job):
    root, clip, settings, spotted = job
    import cv2

    cv2.setNumThreads(1)
    kwargs = {"offset": clip.offset_frame} if spotted else {"apex": clip.apex_frame}
    ev = analyze_clip(root / clip_source(clip), onset=clip.onset_frame, settings=settings, **kwargs).evidence
    return ev


def run(pool, clips, settings: PerceptionSettings, min_px: float, modes=("given", "spotted")) -> dict:
    row = {}
    for mode in modes:
        evs = list(pool.map(_analyze, [(r, c, settings, mode == "spotted") for r, c in clips]))
        pairs = [(c, e) for (_, c), e in zip(clips, evs)]
        row[mode] = {**score(pairs, min_px), "ms_per_clip": round(statistics.median(e.timings_ms["total"] for e in evs), 1)}
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=12, help="ME clips per condition")
    ap.add_argument("--me-free", type=int, default=3, help="ME-free clips per condition")
    ap.add_argument("--combined", type=int, default=36, help="ME clips in the combined condition (and a third as many ME-free)")
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--split", choices=["held-out", "tuning"], default="held-out")
    # 2027: the held-out clips of seed 2026 were looked at when the prefilter was switched off (a tie on
    # tuning clips that seed 2026 broke), so they no longer give a blind figure; 2027's were never seen.
    ap.add_argument("--seed", type=int, default=2027)
    ap.add_argument("--conditions", default=",".join(CONDITIONS))
    ap.add_argument("--ablate", action="store_true")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--work", type=Path, default=None, help="keep the corpora here (reused by a rerun)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    ids = tuple(i.name for i in (HELD_OUT if args.split == "held-out" else TUNING))
    machine = describe_machine()
    rows = []
    result = {"machine": machine, "split": args.split, "identities": list(ids), "seed": args.seed,
              "clips": args.clips, "me_free": args.me_free, "combined": args.combined, "frames": args.frames,
              "settings": {k: v.to_dict() for k, v in SETTINGS.items()}, "rows": rows}
    # spawn: workers forked after the main process has generated a corpus (and started OpenCV's and
    # dlib's threads) can hang on a lock held at fork time; the build's pools spawn for the same reason.
    with (tempfile.TemporaryDirectory() as tmp,
          ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool):
        work = args.work or Path(tmp)
        for name in args.conditions.split(","):
            big = name == "combined"
            clips = corpus(work, name, ids, args.combined if big else args.clips,
                           (args.combined // 3) if big else args.me_free, args.seed, args.frames)
            min_px = MIN_PX.get(name, GOAL_MIN_PX)
            variants = {k: (v, ("given", "spotted")) for k, v in SETTINGS.items()}
            if big and args.ablate:
                variants |= {k: (replace(SETTINGS["new"], **v), (mode,)) for k, (v, mode) in ABLATIONS.items()}
            for label, (settings, modes) in variants.items():
                row = {"condition": name, "settings": label, "min_px": min_px, "clips": len(clips),
                       **run(pool, clips, settings, min_px, modes)}
                rows.append(row)
                print(name, label, {m: {k: row[m][k] for k in ("f1", "precision", "apex_pm2", "false_au_rate", "ms_per_clip")}
                                    for m in modes}, flush=True)
                write(result, args.out, args.split)  # after every row: a long run interrupted keeps what it measured
    print(markdown(result))


def write(result: dict, out: Path, split: str) -> None:
    suffix = "" if split == "held-out" else "_tuning"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"perception_robustness{suffix}.json").write_text(json.dumps(result, indent=2))
    (out / f"perception_robustness{suffix}.md").write_text(markdown(result))


def markdown(r: dict) -> str:
    lines = [
        "# Perception robustness benchmark", "",
        f"Machine: {machine_line(r['machine'])}.", "",
        f"Identities: {r['split']} ({', '.join(r['identities'])}), seed {r['seed']}. Per condition {r['clips']} ME clips "
        f"+ {r['me_free']} ME-free clips ({r['combined']} + {r['combined'] // 3} for combined; `clips` column: the "
        f"corpus actually used), {r['frames']} frames at "
        "200 fps, 640x480. `today` = PerceptionSettings.legacy(), `new` = the defaults. AU scores count planted AUs "
        ">= min px (weaker ones count neither way); apex +-2 over ME clips whose strongest AU reaches min px; "
        "false-AU = share of ME-free clips with any AU reported; ms = median perception time per clip.", "",
        "| condition | settings | clips | min px | F1 | precision | recall | false-AU | ms | F1 (spotted) | P (spotted) | apex +-2 | false-AU (spotted) | ms (spotted) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        g, s = row.get("given"), row.get("spotted")
        cells = [f"{g['f1']:.3f}", f"{g['precision']:.3f}", f"{g['recall']:.3f}", str(g["false_au_rate"]),
                 f"{g['ms_per_clip']:.0f}"] if g else [""] * 5
        cells += [f"{s['f1']:.3f}", f"{s['precision']:.3f}", f"{s['apex_pm2']:.3f}", str(s["false_au_rate"]),
                  f"{s['ms_per_clip']:.0f}"] if s else [""] * 5
        lines.append(f"| {row['condition']} | {row['settings']} | {row.get('clips', '')} | {row['min_px']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
