"""Benchmark: long-video spotting (mellm.spot) - speed, memory, and F1 against a plain baseline.

1. Speed at 640x480, 200 fps (SAMM-like) H.264, including decoding: frames/s of `spot_video`
   (analysis at 50 fps by frame skipping), beside decoding alone (FrameStream, every frame
   converted to grey) in the same run: decoding is the ceiling.
2. Memory: peak RSS of spotting a 10-minute and a 1-minute 200 fps video, each in a fresh process
   (the frames are a short rendered loop, encoded over and over, so the video costs minutes, not
   hours, to make; 320x240, analysed at 10 fps so the 10 minutes take minutes).
3. F1 at IoU >= 0.5 on held-out synthetic faces (mellm.faces.HELD_OUT), clean and with every
   distractor: ours vs an MDMD-style baseline measured on the same videos - main-direction mean
   optical flow per region group against frame t-k (the same DIS flow, face crop and groups),
   nose-box translation removed as the field's baseline does, no blink, talking or head-turn
   handling, and a fixed threshold T = mean + p * (max - mean) on the score curve (p = 0.5).

Usage: .venv/bin/python bench/spot.py [--quick]
Writes bench/results/spot.json and spot.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import describe_machine, machine_line  # noqa: E402
from mellm.eval.spotting import Interval, spotting_metrics  # noqa: E402
from mellm.face import DlibFace  # noqa: E402
from mellm.nuisances import H264Writer  # noqa: E402
from mellm.regions import nose_mask  # noqa: E402
from mellm.register import canonical_from_face, warp  # noqa: E402
from mellm.spot import SpotSettings, _Geometry, analysis_step, spot_video  # noqa: E402
from mellm.synth_long import LongConfig, _Renderer, generate_long, sample_video  # noqa: E402
from mellm.video import FrameStream  # noqa: E402


def looped_video(path: Path, seconds: float, fps: float, width: int, height: int, loop_s: float = 2.0) -> int:
    """A long video from a short rendered loop (with events), encoded repeatedly."""
    cfg = LongConfig(seconds=loop_s, fps=fps, width=width, height=height, face_iod=90.0 * width / 640,
                     events_per_minute=60, identity="hopper-1")
    video = sample_video(0, cfg, np.random.default_rng(0))
    video.placement = {"iod": cfg.face_iod}
    r = _Renderer(video)
    rng = np.random.default_rng(0)
    loop = [r.frame(n, rng) for n in range(1, video.n_frames + 1)]
    w = H264Writer(path, width, height, fps, 20, preset="ultrafast")
    n = int(seconds * fps)
    for i in range(n):
        w.write(loop[i % len(loop)])
    w.close()
    return n


def speed(tmp: Path, seconds: float) -> dict:
    path = tmp / "speed.mp4"
    n = looped_video(path, seconds, 200.0, 640, 480)
    t = time.perf_counter()
    for _ in FrameStream(path, every=1, fmt="gray"):
        pass
    decode = n / (time.perf_counter() - t)
    t = time.perf_counter()
    spots = spot_video(path)
    ours = n / (time.perf_counter() - t)
    return {"frames": n, "size": "640x480", "fps": 200, "analysis_fps": spots.analysis_fps,
            "decode_only_frames_per_s": round(decode, 1), "spot_frames_per_s": round(ours, 1),
            "flow_s": spots.timings_s["flow"], "total_s": spots.timings_s["total"]}


_RSS = """
import resource, sys
from mellm.spot import SpotSettings, spot_video
s = spot_video(sys.argv[1], SpotSettings(max_analysis_fps=10.0, keep_curve=False))
print(s.n_frames, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def memory(tmp: Path, minutes: tuple[float, float]) -> list[dict]:
    rows = []
    for m in minutes:
        path = tmp / f"mem_{m:g}min.mp4"
        looped_video(path, m * 60, 200.0, 320, 240)
        t = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", _RSS, str(path)], capture_output=True, text=True, check=True,
                             cwd=ROOT).stdout.split()
        rows.append({"minutes": m, "frames": int(out[-2]), "peak_rss_mib": round(int(out[-1]) / 1024, 1),
                     "seconds": round(time.perf_counter() - t, 1)})
    return rows


def mdmd_baseline(path: Path, p: float = 0.5, k_seconds: float = 0.16, max_fps: float = 50.0) -> list[tuple[int, int, str]]:
    """Main-direction mean flow per region group, nose translation removed, fixed threshold."""
    s = SpotSettings()
    probe = FrameStream(path)
    step = analysis_step(probe.fps, s)
    afps = probe.fps / step
    k = max(1, int(round(k_seconds * afps)))
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    dis.setFinestScale(s.flow_finest_scale)
    detector = DlibFace()
    geo, nose, ring, frames, score = None, None, [], [], []
    for i, (n, gray) in enumerate(FrameStream(path, every=step), start=1):
        if geo is None or i % max(1, int(round(s.redetect_s * afps))) == 0:
            try:
                face = detector.detect(gray, full_retry=False)
                geo = _Geometry(face, s.crop_size)
                canon = canonical_from_face(face, s.crop_size)
                nose = np.flatnonzero(nose_mask(canon.landmarks, s.crop_size, canon.iod).ravel())
            except Exception:
                pass
        ring = (ring + [gray])[-(k + 1):]
        frames.append(n)
        if geo is None or len(ring) <= k:
            score.append(0.0)
            continue
        a, b = (warp(x, geo.matrix, s.crop_size) for x in (ring[0], ring[-1]))
        flow = dis.calc(a, b, None).reshape(-1, 2)
        flow = flow - flow[nose].mean(0)
        mags = []
        for idx in geo.groups:
            v = flow[idx]
            ang = (np.degrees(np.arctan2(v[:, 1], v[:, 0])) % 360 // 45).astype(int)
            main = np.bincount(ang, minlength=8).argmax()
            sel = v[ang == main]
            mags.append(float(np.linalg.norm(sel, axis=1).mean()) if len(sel) else 0.0)
        score.append(float(np.mean(mags)))
    sc = np.asarray(score)
    thr = sc.mean() + p * (sc.max() - sc.mean())
    out = []
    above = sc >= thr
    i = 0
    while i < len(sc):
        if above[i]:
            j = i
            while j + 1 < len(sc) and above[j + 1]:
                j += 1
            onset, offset = frames[max(0, i - k // 2)], frames[max(0, j - k // 2)] + step - 1
            out.append((onset, max(offset, onset + 1), "micro" if (offset - onset) / probe.fps <= 0.5 else "macro"))
            i = j + 1
        else:
            i += 1
    return out


def f1_rows(tmp: Path, quick: bool) -> list[dict]:
    rows = []
    seconds = 20 if quick else 40
    sets = [("clean, 30 fps", dict(fps=30, identity="hopper-1")),
            ("clean, 200 fps", dict(fps=200, identity="hopper-7", seconds=8 if quick else 15, events_per_minute=20)),
            ("all distractors, H.264, 30 fps", dict(fps=30, identity="hopper-2", distractors=True, codec="h264",
                                                     talking_per_minute=3, lighting_per_minute=3))]
    for name, kw in sets:
        cfg = LongConfig(**{"seconds": seconds, "width": 320, "height": 240, "face_iod": 64.0, "events_per_minute": 10, **kw})
        root = tmp / name.replace(" ", "_").replace(",", "")
        videos = generate_long(root, 2, seed=500 + len(rows), config=cfg)
        truth, ours, base = [], [], []
        for v in videos:
            truth += [Interval(v.video_id, e.onset, e.offset, e.type) for e in v.events]
            ours += [Interval(v.video_id, e.onset, e.offset, e.type) for e in spot_video(root / v.path).events]
            base += [Interval(v.video_id, a, b, t) for a, b, t in mdmd_baseline(root / v.path)]
        for method, found in (("ours", ours), ("MDMD-style baseline", base)):
            m = spotting_metrics(truth, found)
            rows.append({"set": name, "method": method, "truth": len(truth), "spotted": len(found),
                         "precision": round(m.overall.precision, 3), "recall": round(m.overall.recall, 3),
                         "f1": round(m.overall.f1, 3), "f1_micro": round(m.per_type["micro"].f1, 3),
                         "f1_macro": round(m.per_type["macro"].f1, 3)})
    return rows


def markdown(r: dict) -> str:
    s = r["speed"]
    lines = ["# Spotting benchmark", "", f"Machine: {machine_line(r['machine'])}.", "",
             "## Speed (640x480, 200 fps H.264, including decoding)", "",
             "| frames | analysis fps | decoding alone, frames/s | spotting, frames/s | flow s | total s |", "|---|---|---|---|---|---|",
             f"| {s['frames']} | {s['analysis_fps']:g} | {s['decode_only_frames_per_s']} | {s['spot_frames_per_s']} | "
             f"{s['flow_s']} | {s['total_s']} |", "",
             "## Peak memory (200 fps, 320x240, analysed at 10 fps; a fresh process each)", "",
             "| minutes | frames | peak RSS MiB | seconds |", "|---|---|---|---|"]
    lines += [f"| {m['minutes']:g} | {m['frames']} | {m['peak_rss_mib']} | {m['seconds']} |" for m in r["memory"]]
    lines += ["", "## F1 at IoU >= 0.5, held-out faces (2 videos per set, 320x240)", "",
              "| set | method | truth | spotted | precision | recall | F1 | F1 micro | F1 macro |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {x['set']} | {x['method']} | {x['truth']} | {x['spotted']} | {x['precision']} | {x['recall']} | {x['f1']} | "
              f"{x['f1_micro']} | {x['f1_macro']} |" for x in r["f1"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller videos (a smoke run)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    machine = describe_machine()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        result = {"machine": machine, "quick": args.quick,
                  "speed": speed(tmp, 5 if args.quick else 20),
                  "memory": memory(tmp, (0.2, 1.0) if args.quick else (1.0, 10.0)),
                  "f1": f1_rows(tmp, args.quick)}
    args.out.mkdir(parents=True, exist_ok=True)
    name = "spot_quick" if args.quick else "spot"
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=2))
    md = markdown(result)
    (args.out / f"{name}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
