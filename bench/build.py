"""Benchmark: `mellm build-data` throughput on synthetic clips.

Builds the same synthetic corpus (CASME II-like, 640x480, 40 frames, apex given) with 1 and 2
perception workers, each into a fresh output and cache, then rebuilds with a warm cache. Reports
clips/min end to end (perception, samples, HF datasets, exports) and the perception share. The
baseline of the comparison is the 1-worker build; the cache rerun shows what a resumed or
repeated build costs.

Usage: .venv/bin/python bench/build.py [--clips 24] [--flow tvl1]
Writes bench/results/build.json and build.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import describe_machine, machine_line  # noqa: E402
from mellm.analyze import PerceptionSettings  # noqa: E402
from mellm.data_builders.build import BuildConfig, build  # noqa: E402
from mellm.synth import SynthConfig, generate_corpus  # noqa: E402


def timed_build(corpus: Path, out: Path, workers: int, flow: str, cache: Path) -> dict:
    t = time.perf_counter()
    summary = build(BuildConfig(datasets=[("synth", corpus)], out=out, workers=workers,
                                perception=PerceptionSettings(flow=flow), cache=cache, progress=False))
    seconds = time.perf_counter() - t
    return {"workers": workers, "seconds": round(seconds, 2), "clips": summary.built, "cached": summary.cached,
            "clips_per_min": round(60 * summary.built / seconds, 1), "samples": sum(summary.samples.values())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=24)
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--flow", default="tvl1")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    machine = describe_machine()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate_corpus(tmp / "corpus", n=args.clips, seed=77, config=SynthConfig(n_frames=args.frames))
        rows = [timed_build(tmp / "corpus", tmp / f"out{w}", w, args.flow, tmp / f"cache{w}") for w in (1, 2)]
        rerun = timed_build(tmp / "corpus", tmp / "out2", 2, args.flow, tmp / "cache2")
        rerun["run"] = "rerun, warm cache"
        rows.append(rerun)
    for r in rows[:2]:
        r["run"] = "fresh"
    result = {"machine": machine, "clips": args.clips, "frames": args.frames, "flow": args.flow, "rows": rows,
              "speedup_2_workers": round(rows[1]["clips_per_min"] / rows[0]["clips_per_min"], 2),
              "rerun_vs_fresh": round(rows[2]["clips_per_min"] / rows[1]["clips_per_min"], 1)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "build.json").write_text(json.dumps(result, indent=2))
    md = "\n".join([
        "# Build benchmark (`mellm build-data`)", "",
        f"Machine: {machine_line(machine)}.", "",
        f"{args.clips} synthetic CASME II-like clips (640x480, {args.frames} frames, apex given), flow `{args.flow}`, "
        "end to end: perception, samples, HF datasets (VLM + text), JSONL, LLaMA-Factory and ms-swift exports.", "",
        "| run | workers | seconds | clips/min | from cache | samples |", "|---|---|---|---|---|---|",
        *[f"| {r['run']} | {r['workers']} | {r['seconds']} | {r['clips_per_min']} | {r['cached']} | {r['samples']} |" for r in rows],
        "", f"2 workers vs 1: {result['speedup_2_workers']}x. Warm-cache rerun vs fresh 2-worker build: "
            f"{result['rerun_vs_fresh']}x the clips/min.", "",
    ])
    (args.out / "build.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
