"""Why the from-scratch MEFlowNet-lite learned nothing on a CPU, and whether the refine design can.

Cheap checks, one run, on `mellm flow-data` train pairs (centre 128 px crops):

1. Overfitting: each architecture (tiny_cpu's MEFlowNet-lite at 1/8, and refine_cpu's
   MEFlowNet-refine on a DIS init) trained on the same 8 pairs only, 150 steps: expression EPE on
   those very pairs (moving face pixels) against zero flow's. A network that cannot overfit 8
   pairs cannot learn from 2048.
2. Loss scale: mean magnitude of head, expression and facial flow, and the share of each loss
   term at initialisation.
3. Visibility: how much warping the apex by the true flow explains of the onset-apex difference,
   in the image at full resolution and in random-init encoder features at 1/8 (tiny_cpu) and
   1/4 (refine_cpu): the signal a warping network without a cost volume must find.
4. Lighting: the per-frame gain (flicker) against the motion signal, grey levels per pixel.

Usage: .venv/bin/python bench/meflow_diagnose.py --data FLOWDATA   (writes bench/results/meflow_diagnose.{json,md})
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench.machine import describe_machine, machine_line  # noqa: E402
from mellm.meflow.data import affine_field, read_shard, shard_paths  # noqa: E402
from mellm.meflow.model import build_model, warp  # noqa: E402
from mellm.meflow.train import load_config, sequence_loss, to_tensors  # noqa: E402


def _pairs(data: Path, n: int, crop: int) -> dict[str, torch.Tensor]:
    a = read_shard(shard_paths(data, "train")[0])
    size = a["onset"].shape[-1]
    y0 = (size - crop) // 2
    sl = slice(y0, y0 + crop)
    items = []
    for i in range(len(a["onset"])):
        if len(items) == n:
            break
        if np.abs(a["expression"][i]).max() < 0.3:  # keep pairs whose face moves
            continue
        items.append(to_tensors({"onset": a["onset"][i][sl, sl, None].astype(np.float32),
                                 "apex": a["apex"][i][sl, sl, None].astype(np.float32),
                                 "head": affine_field(a["head"][i], size)[sl, sl], "expression": a["expression"][i][sl, sl].astype(np.float32),
                                 "masks": a["masks"][i][sl, sl, None]}))
    return {k: torch.stack([p[k] for p in items]) for k in items[0]}


def _moving_epe(out: dict, b: dict) -> tuple[float, float]:
    moving = b["face"][:, 0] & (b["expression"].norm(dim=1) > 0.1)
    return float((out["expression"] - b["expression"]).norm(dim=1)[moving].mean()), float(b["expression"].norm(dim=1)[moving].mean())


def overfit(config: str, batch: dict, steps: int) -> dict:
    cfg = load_config(config)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
    curve, started = [], time.perf_counter()
    init = None
    if cfg.model.arch == "meflow_refine":  # the DIS init of fixed pairs is fixed: compute it once
        from mellm.meflow.refine import dis_flow

        init = dis_flow(batch["onset"], batch["apex"])
    kw = {"init": init} if init is not None else {}
    for step in range(steps + 1):
        out = model(batch["onset"], batch["apex"], **kw)
        if step % 25 == 0:
            epe, zero = _moving_epe({k: v.detach() for k, v in out[-1].items()}, batch)
            curve.append({"step": step, "expression_epe": round(epe, 4), "zero_epe": round(zero, 4)})
        if step == steps:
            break
        loss, _ = sequence_loss(out, batch, cfg.train)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.clip_grad)
        opt.step()
    return {"config": config, "curve": curve, "seconds": round(time.perf_counter() - started, 1)}


def loss_scale(batch: dict) -> dict:
    cfg = load_config("tiny_cpu")
    torch.manual_seed(0)
    out = build_model(cfg.model)(batch["onset"], batch["apex"])
    t = cfg.train
    last = out[-1]
    eps2 = t.charbonnier_eps**2
    terms = {"facial": torch.sqrt(((last["facial"] - batch["facial"]) ** 2).sum(1) + eps2).mean(),
             "head": t.head_weight * torch.sqrt(((last["head"] - batch["head"]) ** 2).sum(1) + eps2).mean()}
    e = torch.sqrt(((last["expression"] - batch["expression"]) ** 2).sum(1, keepdim=True) + eps2)
    face, roi = batch["face"].float(), (batch["roi"] & batch["face"]).float()
    terms["expression"] = t.expression_weight * ((e * face).sum() / face.sum() + (e * roi).sum() / roi.sum())
    total = sum(terms.values())
    mags = {k: round(float(batch[k].norm(dim=1)[batch["face"][:, 0]].mean()), 4) for k in ("head", "expression", "facial")}
    return {"mean_magnitude_px_on_face": mags, "loss_share_at_init": {k: round(float(v / total), 3) for k, v in terms.items()}}


def visibility(batch: dict) -> dict:
    """1 - |warp(apex, truth) - onset| / |apex - onset| on moving face pixels (how much of the
    frame difference the true flow explains; 0: the motion is invisible at that resolution)."""
    from mellm.meflow.refine import _standardise

    out = {}
    n1, n2 = _standardise(batch["onset"]), _standardise(batch["apex"])
    flow = batch["facial"]
    moving = (batch["face"] & (batch["expression"].norm(dim=1, keepdim=True) > 0.1)).float()

    def explained(f1, f2, fl, m):
        before = ((f2 - f1).abs().mean(1, keepdim=True) * m).sum()
        after = ((warp(f2, fl) - f1).abs().mean(1, keepdim=True) * m).sum()
        return round(float(1 - after / before), 3)

    out["image, full resolution"] = explained(n1, n2, flow, moving)
    torch.manual_seed(0)
    for config, k in (("tiny_cpu", 8), ("refine_cpu", 4)):
        model = build_model(load_config(config).model)
        enc = model.encoder
        with torch.no_grad():
            if config == "tiny_cpu":
                f = enc.features(enc(torch.cat([batch["onset"], batch["apex"]]) / 127.5 - 1))
            else:
                f = enc(torch.cat([n1, n2]))
        f1, f2 = f.chunk(2)
        m = F.avg_pool2d(moving, k)
        out[f"{config} features, 1/{k}"] = explained(f1, f2, F.avg_pool2d(flow, k) / k, (m > 0.5).float())
    return out


def lighting(batch: dict) -> dict:
    on, ap = batch["onset"], batch["apex"]
    warped = warp(ap, batch["facial"])
    face = batch["face"].float()
    gain_part = float((((warped.mean((2, 3), keepdim=True) - on.mean((2, 3), keepdim=True)).abs()) * face).sum() / face.sum())
    motion_part = float(((ap - on).abs() * face).sum() / face.sum())
    return {"brightness_change_from_gain_and_noise_after_exact_warp": round(gain_part, 3),
            "raw_frame_difference_on_face": round(motion_part, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    torch.set_num_threads(2)
    machine = describe_machine()
    batch = _pairs(args.data, 8, 128)
    result = {"machine": machine, "pairs": 8, "crop": 128, "loss_scale": loss_scale(batch), "visibility": visibility(batch),
              "lighting": lighting(batch), "overfit": [overfit(c, batch, args.steps) for c in ("tiny_cpu", "refine_cpu")]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "meflow_diagnose.json").write_text(json.dumps(result, indent=2))
    md = markdown(result)
    (args.out / "meflow_diagnose.md").write_text(md)
    print(md)


def markdown(r: dict) -> str:
    ls, vis = r["loss_scale"], r["visibility"]
    lines = ["# MEFlowNet diagnosis: can it overfit, what does the loss weigh, can it see sub-pixel motion", "",
             f"Machine: {machine_line(r['machine'])}. {r['pairs']} train pairs with moving faces, centre {r['crop']} px crops.", "",
             "## Overfitting the same 8 pairs (expression EPE on moving face pixels, px; zero flow beside it)", "",
             "| config | " + " | ".join(f"step {c['step']}" for c in r["overfit"][0]["curve"]) + " | zero flow | s |",
             "|" + "---|" * (len(r["overfit"][0]["curve"]) + 3)]
    for o in r["overfit"]:
        lines.append(f"| {o['config']} | " + " | ".join(f"{c['expression_epe']:.3f}" for c in o["curve"])
                     + f" | {o['curve'][0]['zero_epe']:.3f} | {o['seconds']} |")
    lines += ["", "## Loss scale (tiny_cpu at initialisation)", "",
              f"Mean flow magnitude on the face (px): {json.dumps(ls['mean_magnitude_px_on_face'])}; share of the loss: "
              f"{json.dumps(ls['loss_share_at_init'])}.", "",
              "## Visibility: share of the onset-apex difference the true flow explains on moving face pixels", "",
              "| where | explained |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in vis.items()]
    li = r["lighting"]
    lines += ["", f"Lighting: after warping by the exact flow, the frames still differ by "
                  f"{li['brightness_change_from_gain_and_noise_after_exact_warp']:.2f} grey levels of mean brightness (gain flicker) "
                  f"against a raw frame difference of {li['raw_frame_difference_on_face']:.2f} on the face."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
