"""Benchmark: learned micro-expression flow (MEFlowNet-lite) against classical flow and raft_small.

One run, on held-out identities (Grace Hopper identities, never trained on):

1. Flow accuracy on `mellm flow-data` held-out pairs (256 px canonical face crops, exact truth):
   end-point error (EPE, px) of the *expression* flow (head motion removed) over the face, inside
   the AU regions, by true expression magnitude (< 0.05 static, 0.05-0.5, 0.5-1, > 1 px), with and
   without head motion. Classical flows (TV-L1, DIS, Farneback, as perception tunes them) and the
   raft_small architecture (trained on the same data, facial flow only) get perception's affine
   head-motion removal; MEFlowNet-lite subtracts its own head flow. Time per pair (flow plus head
   removal, torch and OpenCV on 2 threads) and parameters.
2. Downstream: AU micro-F1 of `mellm analyze` (apex given) with each backend on synthetic clips of
   held-out identities (planted AUs >= 0.5 px count).

The refinement model (refine_cpu) is also run with its learned part switched off (its DIS
initialisation and an untrained head fit), so the learned part's own contribution shows.

Usage: .venv/bin/python bench/flow.py --data FLOWDATA [--ours RUN] [--raft RUN] [--pairs 128] [--clips 24]
(FLOWDATA: `mellm flow-data --out FLOWDATA --n-train 2048 --n-heldout 256`, seed 0, as trained.)
Writes bench/results/flow.json and flow.md.
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

import torch  # noqa: E402

from bench.machine import describe_machine, machine_line  # noqa: E402
from mellm.analyze import PerceptionSettings, analyze_clip  # noqa: E402
from mellm.faces import HELD_OUT  # noqa: E402
from mellm.flow import expression_flow, get_flow  # noqa: E402
from mellm.meflow.backend import load_checkpoint  # noqa: E402
from mellm.meflow.data import AU_BIT, FACE_BIT, iter_pairs, load_manifest, shard_paths  # noqa: E402
from mellm.meflow.model import n_parameters, save_model  # noqa: E402
from mellm.regions import nose_mask, stable_mask  # noqa: E402
from mellm.synth import SynthConfig, au_recovery, generate_corpus  # noqa: E402

BINS = {"static <0.05": (0.0, 0.05), "0.05-0.5": (0.05, 0.5), "0.5-1": (0.5, 1.0), ">1": (1.0, 1e9)}
SUBPIXEL = (0.05, 1.0)  # the headline: sub-pixel expression motion, head motion present


def _metas(data: Path) -> list[dict]:
    out = []
    for path in shard_paths(data, "heldout"):
        out += [json.loads(line) for line in path.with_suffix(".jsonl").read_text().splitlines()]
    return out


def _accumulate(acc: dict, key: str, err: np.ndarray, mask: np.ndarray) -> None:
    s, n = acc.get(key, (0.0, 0))
    acc[key] = (s + float(err[mask].sum()), n + int(mask.sum()))


def flow_accuracy(data: Path, methods: dict, n_pairs: int) -> dict:
    metas = _metas(data)
    size = load_manifest(data)["settings"]["size"]
    iod = 0.375 * size
    rows = {name: {"acc": {}, "ms": []} for name in methods}
    zero: dict = {}
    for i, (pair, meta) in enumerate(zip(iter_pairs(data, "heldout"), metas)):
        if i == n_pairs:
            break
        lm = np.asarray(meta["landmarks"], np.float32)
        stable, nose = stable_mask(lm, size, iod), nose_mask(lm, size, iod)
        face = (pair["masks"] & FACE_BIT) > 0
        roi = (pair["masks"] & AU_BIT) > 0
        truth = pair["expression"]
        mag = np.linalg.norm(truth, axis=-1)
        head_tag = "head" if meta["moving_head"] else "still"
        masks = {"face": face, "AU regions": roi & face}
        for b, (lo, hi) in BINS.items():
            masks[f"{b} px"] = face & (mag >= lo) & (mag < hi)
            masks[f"{b} px, {head_tag}"] = masks[f"{b} px"]
        masks[f"sub-pixel, {head_tag}"] = face & (mag >= SUBPIXEL[0]) & (mag < SUBPIXEL[1])
        masks[f"face, {head_tag}"] = face
        for key, m in masks.items():
            _accumulate(zero, key, mag, m)
        for name, backend in methods.items():
            t = time.perf_counter()
            flow, _ = expression_flow(backend, pair["onset"], pair["apex"], stable, nose, "affine")
            rows[name]["ms"].append(1000 * (time.perf_counter() - t))
            err = np.linalg.norm(flow - truth, axis=-1)
            for key, m in masks.items():
                _accumulate(rows[name]["acc"], key, err, m)
    out = {}
    for name, r in list(rows.items()) + [("zero flow", {"acc": zero, "ms": [0.0]})]:
        out[name] = {"epe": {k: round(s / n, 4) if n else None for k, (s, n) in sorted(r["acc"].items())},
                     "ms_median": round(statistics.median(r["ms"][1:] or r["ms"]), 1)}
    return out


def downstream(methods: dict, n_clips: int, frames: int) -> dict:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cfg = SynthConfig(n_frames=frames, identities=tuple(i.name for i in HELD_OUT))
        clips = generate_corpus(root, n=n_clips, seed=4242, config=cfg)
        for name, settings in methods.items():
            tp = fp = fn = 0
            for c in clips:
                ev = analyze_clip(root / c.frames_dir, onset=c.onset_frame, apex=c.apex_frame, settings=settings).evidence
                a, b, d = au_recovery(c, {x.au for x in ev.aus})
                tp, fp, fn = tp + a, fp + b, fn + d
            out[name] = {"au_micro_f1": round(2 * tp / max(1, 2 * tp + fp + fn), 3), "tp": tp, "fp": fp, "fn": fn}
    return out


INIT_ROW = "ours' init alone (DIS + head fit, learned part off)"


def init_only_checkpoint(ours: Path, folder: Path) -> Path:
    """The refinement model with its output layer zeroed: exactly its DIS initialisation and a head
    fitted with uniform confidences (tests/test_meflow.py checks that), through the same backend."""
    import copy

    model = copy.deepcopy(load_checkpoint(ours))
    torch.nn.init.zeros_(model.out.weight)
    torch.nn.init.zeros_(model.out.bias)
    save_model(model, folder, {"note": f"{ours} with its learned part switched off"})
    return folder


def rewrite(out: Path) -> None:
    """Regenerate flow.md from flow.json (after a change to the table layout)."""
    (out / "flow.md").write_text(markdown(json.loads((out / "flow.json").read_text())))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="a `mellm flow-data` folder (its heldout split is used)")
    ap.add_argument("--ours", type=Path, default=ROOT / "bench" / "results" / "meflow_refine_cpu",
                    help="MEFlowNet run directory or checkpoint (default: the committed refine_cpu checkpoint)")
    ap.add_argument("--raft", type=Path, help="raft_small run directory or checkpoint (trained on the same data)")
    ap.add_argument("--pairs", type=int, default=128)
    ap.add_argument("--clips", type=int, default=24)
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    torch.set_num_threads(2)
    cv2.setNumThreads(2)
    machine = describe_machine()
    learned = {"meflownet (ours)": args.ours}
    init_dir = Path(tempfile.mkdtemp(prefix="meflow-init-"))
    if hasattr(load_checkpoint(args.ours), "initial"):
        learned[INIT_ROW] = init_only_checkpoint(args.ours, init_dir)
    if args.raft:
        learned["raft_small (same data)"] = args.raft
    methods = {name: get_flow("meflownet", str(path)) for name, path in learned.items()}
    methods.update({"tvl1": get_flow("tvl1"), "dis": get_flow("dis"), "farneback": get_flow("farneback")})
    models = {}
    for name, path in learned.items():
        m = load_checkpoint(path)
        models[name] = {"parameters": n_parameters(m), "config": m.cfg.to_dict(), "trained": getattr(m, "info", {})}
    accuracy = flow_accuracy(args.data, methods, args.pairs)
    settings = {name: PerceptionSettings(flow="meflownet", flow_checkpoint=str(path)) for name, path in learned.items()}
    settings.update({k: PerceptionSettings(flow=k) for k in ("tvl1", "dis", "farneback")})
    down = downstream(settings, args.clips, args.frames) if args.clips else {}
    manifest = load_manifest(args.data)
    result = {"machine": machine, "gpu": None, "pairs": min(args.pairs, manifest["counts"]["heldout"]),
              "heldout_identities": manifest["identities"]["heldout"], "data_settings": manifest["settings"],
              "models": models, "accuracy": accuracy, "downstream": down, "clips": args.clips}
    ours, tv = accuracy["meflownet (ours)"]["epe"], accuracy["tvl1"]["epe"]
    key = "sub-pixel, head"
    if ours.get(key) and tv.get(key):
        ms = accuracy["meflownet (ours)"]["ms_median"]
        params = models["meflownet (ours)"]["parameters"]
        reduction = round(1 - ours[key] / tv[key], 3)
        result["headline"] = {"key": key, "ours": ours[key], "tvl1": tv[key], "reduction": reduction,
                              "dis": accuracy["dis"]["epe"].get(key), "init_only": accuracy.get(INIT_ROW, {}).get("epe", {}).get(key),
                              "ms_per_pair": ms, "parameters": params, "met": reduction >= 0.3 and ms <= 100 and params <= 8e6}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "flow.json").write_text(json.dumps(result, indent=2))
    md = markdown(result)
    (args.out / "flow.md").write_text(md)
    print(md)


def markdown(r: dict) -> str:
    cols = ["face", "AU regions", "static <0.05 px", "0.05-0.5 px", "0.5-1 px", ">1 px", "sub-pixel, head",
            "sub-pixel, still", "face, head", "face, still"]
    lines = ["# Flow benchmark: MEFlowNet-lite vs classical flow and raft_small", "",
             f"Machine: {machine_line(r['machine'])}. GPU figures: none (no GPU in this run).", "",
             f"{r['pairs']} held-out onset-apex pairs (256 px face crops; identities {', '.join(r['heldout_identities'][:3])}, ...,"
             " never trained on). Expression-flow EPE in px (head motion removed); columns by true expression magnitude"
             " and by head motion present (head) or not (still). Time: flow + head removal per pair, 2 threads.", "",
             "| method | " + " | ".join(cols) + " | ms/pair | parameters |", "|" + "---|" * (len(cols) + 3)]
    for name, row in r["accuracy"].items():
        e = row["epe"]
        params = r["models"].get(name, {}).get("parameters", "")
        lines.append(f"| {name} | " + " | ".join("" if e.get(c) is None else f"{e[c]:.3f}" for c in cols)
                     + f" | {row['ms_median']:.0f} | {params} |")
    if "headline" in r:
        h = r["headline"]
        change = f"{100 * abs(h['reduction']):.0f} % {'lower' if h['reduction'] >= 0 else 'higher'}"
        met = h.get("met", h["reduction"] >= 0.3)
        extra = ""
        if h.get("init_only") is not None:
            extra = f" Its initialisation alone (learned part off) {h['init_only']:.3f} px, DIS with perception's head removal {h['dis']:.3f} px."
        lines += ["", f"Headline ({h['key']}, 0.05-1 px): ours {h['ours']:.3f} px vs TV-L1 {h['tvl1']:.3f} px: {change}, "
                      f"at {h.get('ms_per_pair', float('nan')):.0f} ms/pair and {h.get('parameters', 0):,} parameters "
                      f"(goal: >= 30 % lower, <= 100 ms/pair, <= 8 M parameters: {'met' if met else 'not met'}). "
                      f"Zero flow there: {r['accuracy']['zero flow']['epe'].get(h['key'], float('nan')):.3f} px.{extra}"]
    if r["downstream"]:
        lines += ["", f"Downstream: AU micro-F1 of `mellm analyze` (apex given) on {r['clips']} synthetic clips of held-out "
                      "identities (planted AUs >= 0.5 px).", "", "| method | AU micro-F1 | TP | FP | FN |", "|---|---|---|---|---|"]
        lines += [f"| {k} | {v['au_micro_f1']:.3f} | {v['tp']} | {v['fp']} | {v['fn']} |" for k, v in r["downstream"].items()]
    lines += ["", "Training (CPU, this machine, shared):"]
    for name, m in r["models"].items():
        t = m["trained"]
        lines.append(f"- {name}: {m['parameters']} parameters, {t.get('steps', '?')} steps, {t.get('seconds', '?')} s; "
                     f"config {json.dumps(m['config'])}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
