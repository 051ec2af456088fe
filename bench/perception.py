"""Benchmark: perception speed (per stage) and accuracy on CASME II-like synthetic clips.

Clips: 640x480, 60 frames at 200 fps, lossless PNG frames, half with head drift. For each flow
backend, with the apex given and with the apex spotted, we report per-stage milliseconds,
clips/s, AU micro-F1 (planted AUs >= 0.5 px), apex hits (+-2 frames) and flow end-point error
against the generator's exact field. Measured in the same run, the naive baseline: OpenCV's
default Dual TV-L1 on the full, uncropped frames (its flow mapped into the face crop for EPE,
after the same head-motion removal). Also OpenCV's default TV-L1 on our crop, to show what the
tuned parameters buy.

Usage: .venv/bin/python bench/perception.py [--clips 6] [--frames 60]
Writes bench/results/perception.json and perception.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import describe_machine, machine_line  # noqa: E402
from mellm.analyze import PerceptionSettings, analyze_clip  # noqa: E402
from mellm.flow import register_flow_backend, remove_head_motion  # noqa: E402
from mellm.regions import nose_mask, stable_mask  # noqa: E402
from mellm.synth import SynthConfig, au_recovery, flow_error, generate_corpus  # noqa: E402
from mellm.video import open_clip  # noqa: E402


class OpenCVDefaultTVL1:
    name = "tvl1-opencv-default"

    def __init__(self):
        self.impl = cv2.optflow.DualTVL1OpticalFlow_create()

    def __call__(self, a, b):
        return self.impl.calc(a, b, None)


def run_config(root: Path, clips, flow: str, spotted: bool) -> dict:
    settings = PerceptionSettings(flow=flow)
    stages: dict[str, list[float]] = {}
    tp = fp = fn = hits = 0
    epes, zeros = [], []
    for c in clips:
        kwargs = {"offset": c.offset_frame} if spotted else {"apex": c.apex_frame}
        result = analyze_clip(root / c.frames_dir, onset=c.onset_frame, settings=settings, **kwargs)
        ev = result.evidence
        for k, v in ev.timings_ms.items():
            stages.setdefault(k, []).append(v)
        a, b, d = au_recovery(c, {x.au for x in ev.aus})
        tp, fp, fn = tp + a, fp + b, fn + d
        hits += abs(ev.apex_frame - c.apex_frame) <= 2
        e, z = flow_error(c, result.flow, result.to_crop, result.landmarks)
        epes.append(e)
        zeros.append(z)
    med = {k: round(statistics.median(v), 1) for k, v in stages.items()}
    return {
        "flow": flow, "apex": "spotted" if spotted else "given", "ms_median": med,
        "clips_per_s": round(1000 / statistics.mean(stages["total"]), 2),
        "au_micro_f1": round(2 * tp / max(1, 2 * tp + fp + fn), 3), "apex_hits": f"{hits}/{len(clips)}",
        "epe_px": round(statistics.mean(epes), 3), "zero_flow_epe_px": round(statistics.mean(zeros), 3),
    }


def run_baseline(root: Path, clips) -> dict:
    """Naive: decode onset and apex, OpenCV-default TV-L1 on the whole grey frame."""
    flow_fn = OpenCVDefaultTVL1()
    times, epes = [], []
    for c in clips:
        t = time.perf_counter()
        clip = open_clip(root / c.frames_dir)
        onset, apex = (cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in clip.read_many([c.onset_frame, c.apex_frame]))
        full = flow_fn(onset, apex)
        times.append(1000 * (time.perf_counter() - t))
        # Accuracy, not timed: map the full-frame flow into our crop, remove head motion the same way.
        ref = analyze_clip(root / c.frames_dir, onset=c.onset_frame, apex=c.apex_frame, settings=PerceptionSettings(flow="dis"))
        inv = cv2.invertAffineTransform(ref.to_crop)
        ys, xs = np.mgrid[0:256, 0:256].astype(np.float32)
        sx = (inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]).astype(np.float32)
        sy = (inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]).astype(np.float32)
        in_crop = cv2.remap(full, sx, sy, cv2.INTER_LINEAR) @ ref.to_crop[:, :2].T
        lm = ref.landmarks
        in_crop, _ = remove_head_motion(in_crop.astype(np.float32), stable_mask(lm, 256, 96), nose_mask(lm, 256, 96))
        epes.append(flow_error(c, in_crop, ref.to_crop, lm)[0])
    return {"flow": "tvl1 (OpenCV defaults) on the full 640x480 frame", "apex": "given",
            "ms_median": {"total": round(statistics.median(times), 1)},
            "clips_per_s": round(1000 / statistics.mean(times), 2), "epe_px": round(statistics.mean(epes), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=6)
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    machine = describe_machine()
    register_flow_backend("tvl1-opencv-default", OpenCVDefaultTVL1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        clips = generate_corpus(root, n=args.clips, seed=2024, config=SynthConfig(n_frames=args.frames))
        analyze_clip(root / clips[0].frames_dir, onset=1, apex=2)  # load the face models once
        rows = [run_config(root, clips, flow, spotted) for spotted in (False, True) for flow in ("tvl1", "dis", "farneback")]
        rows.append(run_config(root, clips, "tvl1-opencv-default", False))
        rows.append(run_baseline(root, clips))
    result = {"machine": machine, "clips": args.clips, "frames": args.frames, "size": "640x480", "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "perception.json").write_text(json.dumps(result, indent=2))
    md = markdown(result)
    (args.out / "perception.md").write_text(md)
    print(md)


def markdown(r: dict) -> str:
    stages = ["decode", "face", "spot", "register", "flow", "regions", "aus", "describe", "total"]
    lines = [
        "# Perception benchmark", "",
        f"Machine: {machine_line(r['machine'])}.", "",
        f"{r['clips']} synthetic CASME II-like clips ({r['size']}, {r['frames']} frames, 200 fps, lossless PNG, "
        "half with head drift). Median milliseconds per stage; accuracy against the generator's truth.", "",
        "| flow | apex | " + " | ".join(stages) + " | clips/s | AU micro-F1 | apex +-2 | EPE px (zero flow) |",
        "|" + "---|" * (len(stages) + 6),
    ]
    for row in r["rows"]:
        ms = row["ms_median"]
        cells = [f"{ms[s]:.0f}" if s in ms else "" for s in stages]
        epe_cell = f"{row['epe_px']:.3f}" + (f" ({row['zero_flow_epe_px']:.3f})" if "zero_flow_epe_px" in row else "")
        lines.append(f"| {row['flow']} | {row['apex']} | " + " | ".join(cells)
                     + f" | {row['clips_per_s']} | {row.get('au_micro_f1', '')} | {row.get('apex_hits', '')} | {epe_cell} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
