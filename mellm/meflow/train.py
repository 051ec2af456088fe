"""Training MEFlowNet-lite on flow data (`mellm train-flow --config FILE [key=value ...]`).

Sequence loss over the iterations (weight gamma^(N-i-1)): Charbonnier EPE of the facial flow (or,
with model.uncertainty, a mixture-of-Laplace NLL, SEA-RAFT style), of the head flow and, weighted
up because it is what perception uses, of the expression flow inside the face and inside the
AU (landmark) regions, plus
0.5 * (1 - cos) between predicted and true expression flow inside the AU (landmark) regions.

One process or many (accelerate launch -m mellm.cli train-flow ...). The run directory, like
`mellm train`'s:

    RUN/config.yaml         the resolved config          RUN/metrics.jsonl   one line per log / eval
    RUN/versions.json       libraries, git commit, device RUN/tensorboard/   the same for TensorBoard
    RUN/checkpoint-N/       meflownet.pt, optimizer.pt, state.json (resume: train.resume=auto)
    RUN/model/meflownet.pt  the final model, what `--flow meflownet --flow-checkpoint RUN` loads
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from mellm.errors import ConfigError
from mellm.meflow.data import AU_BIT, FACE_BIT, affine_field, load_manifest, read_shard, shard_paths
from mellm.meflow.model import MODEL_FILE, MEFlowConfig, MEFlowNet, build_model, n_parameters, save_model


@dataclass
class TrainSettings:
    steps: int = 2000
    batch_size: int = 8
    crop: int = 128  # random square crop of each pair (0: whole pairs); a multiple of 8 and of downsample
    lr: float = 4e-4
    weight_decay: float = 1e-5
    warmup_steps: int = 100
    gamma: float = 0.8
    expression_weight: float = 4.0
    head_weight: float = 1.0
    angular_weight: float = 0.5
    charbonnier_eps: float = 0.01
    clip_grad: float = 1.0
    flip: bool = True
    log_every: int = 20
    eval_every: int = 500
    eval_pairs: int = 64
    save_every: int = 500
    keep_checkpoints: int = 2
    resume: str = "auto"  # auto | never | a checkpoint folder
    mixed_precision: str = "no"  # no | bf16 | fp16 (GPUs)
    num_workers: int = 0
    threads: int = 0  # torch CPU threads (0: torch's default)


@dataclass
class FlowTrainConfig:
    data: str | None = None  # a `mellm flow-data` folder
    output_dir: str = "runs/meflow"
    seed: int = 0
    model: MEFlowConfig = field(default_factory=MEFlowConfig)
    train: TrainSettings = field(default_factory=TrainSettings)

    def to_dict(self) -> dict:
        return asdict(self)


# --- config ------------------------------------------------------------------------------------

_SECTIONS = {"model": MEFlowConfig, "train": TrainSettings}


def _known_keys() -> list[str]:
    top = [f.name for f in dataclasses.fields(FlowTrainConfig) if f.name not in _SECTIONS]
    return top + [f"{s}.{f.name}" for s, cls in _SECTIONS.items() for f in dataclasses.fields(cls)]


def _unknown(key: str, source: str) -> ConfigError:
    hint = difflib.get_close_matches(key, _known_keys(), n=1)
    return ConfigError(f"{source}: unknown config key {key!r}" + (f" (did you mean {hint[0]!r}?)" if hint else ""))


def _build(tree: dict, source: str) -> FlowTrainConfig:
    top = {}
    sections = {}
    for key, value in tree.items():
        if key in _SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {key!r} must be a section (a mapping), got {value!r}")
            names = {f.name: f for f in dataclasses.fields(_SECTIONS[key])}
            for k in value:
                if k not in names:
                    raise _unknown(f"{key}.{k}", source)
            sections[key] = value
        elif key in {f.name for f in dataclasses.fields(FlowTrainConfig)}:
            top[key] = value
        else:
            raise _unknown(key, source)
    try:
        built = {k: _typed(cls, sections.get(k, {}), f"{source}: {k}") for k, cls in _SECTIONS.items()}
        cfg = FlowTrainConfig(**top, **built)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{source}: {e}") from None
    _check(cfg, source)
    return cfg


def _typed(cls, values: dict, where: str):
    out = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        v, default = values[f.name], getattr(cls(), f.name)
        if isinstance(default, bool) and not isinstance(v, bool):
            raise ConfigError(f"{where}.{f.name}: expected true/false, got {v!r}")
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(default, int) and v != int(v)):
                raise ConfigError(f"{where}.{f.name}: expected a {type(default).__name__}, got {v!r}")
            v = type(default)(v)
        out[f.name] = v
    try:
        return cls(**out)
    except ConfigError as e:
        raise ConfigError(f"{where.split(':')[0]}: {e}") from None


def _check(cfg: FlowTrainConfig, source: str) -> None:
    t, k = cfg.train, cfg.model.downsample
    if t.crop and (t.crop % k or t.crop % 8 or t.crop < 32):
        raise ConfigError(f"{source}: train.crop={t.crop} must be 0 or a multiple of 8 and of model.downsample ({k}), >= 32")
    if t.steps < 1 or t.batch_size < 1:
        raise ConfigError(f"{source}: train.steps and train.batch_size must be positive")
    if t.mixed_precision not in ("no", "bf16", "fp16"):
        raise ConfigError(f"{source}: train.mixed_precision={t.mixed_precision!r}: use no, bf16 or fp16")
    if t.resume not in ("auto", "never") and not Path(t.resume).is_dir():
        raise ConfigError(f"{source}: train.resume={t.resume!r} is neither auto, never nor a checkpoint folder")


def _config_path(path: Path) -> Path:
    if path.is_file():
        return path
    from mellm.resources import config_file, packaged_configs

    name = path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml"
    if f"flow/{name}" in packaged_configs():
        return config_file(f"flow/{name}")
    known = ", ".join(p.removeprefix("flow/").removesuffix(".yaml") for p in packaged_configs() if p.startswith("flow/"))
    raise ConfigError(f"config file {path} does not exist (nor is it a packaged flow config: {known})")


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> FlowTrainConfig:
    """YAML `path` (or a packaged configs/flow/ name), then `key=value` overrides; every key checked."""
    tree: dict = {}
    source = "config"
    if path is not None:
        p = _config_path(Path(path))
        try:
            tree = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {e}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {p} must hold a mapping, got {type(tree).__name__}")
        source = str(p)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value (e.g. train.steps=500)")
        key, raw = (s.strip() for s in item.split("=", 1))
        if key not in _known_keys():
            raise _unknown(key, f"override {item!r}")
        node = tree
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = yaml.safe_load(raw) if raw else None
    return _build(tree, source)


# --- data --------------------------------------------------------------------------------------


class ShardStream(torch.utils.data.IterableDataset):
    """Endless, shuffled pairs from a split's shards, cropped and flipped; each process and loader
    worker reads its own shards."""

    def __init__(self, root: str | Path, split: str, crop: int, flip: bool, seed: int, rank: int = 0, world: int = 1):
        self.paths = shard_paths(root, split)
        self.crop, self.flip, self.seed, self.rank, self.world = crop, flip, seed, rank, world

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        part, parts = self.rank * nw + wid, self.world * nw
        mine = [p for i, p in enumerate(self.paths) if i % parts == part % len(self.paths) or parts > len(self.paths)
                and i == part % len(self.paths)]
        for epoch in range(10**9):
            rng = np.random.default_rng([self.seed, epoch, part])
            for path in rng.permutation(mine):
                arrays = read_shard(path)
                for i in rng.permutation(len(arrays["onset"])):
                    yield self._sample(arrays, int(i), rng)

    def _sample(self, a: dict, i: int, rng: np.random.Generator) -> dict:
        size = a["onset"].shape[-1]
        head = affine_field(a["head"][i], size)
        expr = a["expression"][i].astype(np.float32)
        items = {"onset": a["onset"][i][..., None].astype(np.float32), "apex": a["apex"][i][..., None].astype(np.float32),
                 "head": head, "expression": expr, "masks": a["masks"][i][..., None]}
        if self.crop and self.crop < size:
            y, x = rng.integers(0, size - self.crop + 1, 2)
            items = {k: v[y:y + self.crop, x:x + self.crop] for k, v in items.items()}
        if self.flip and rng.random() < 0.5:
            items = {k: v[:, ::-1] * (np.array([-1, 1], np.float32) if v.shape[-1] == 2 else 1) for k, v in items.items()}
        return to_tensors(items)


def to_tensors(items: dict) -> dict[str, torch.Tensor]:
    """HWC numpy arrays -> CHW tensors, plus the facial flow and the masks as booleans."""
    t = {k: torch.from_numpy(np.ascontiguousarray(v)).permute(2, 0, 1) for k, v in items.items()}
    masks = t.pop("masks")
    t["facial"] = t["head"] + t["expression"]
    t["face"] = (masks & FACE_BIT) > 0
    t["roi"] = (masks & AU_BIT) > 0
    return t


def heldout_batch(root: str | Path, n: int) -> dict[str, torch.Tensor]:
    """The first `n` held-out pairs, whole, as one batch."""
    pairs, done = [], 0
    for path in shard_paths(root, "heldout"):
        a = read_shard(path)
        size = a["onset"].shape[-1]
        for i in range(len(a["onset"])):
            if done == n:
                break
            pairs.append(to_tensors({"onset": a["onset"][i][..., None].astype(np.float32),
                                     "apex": a["apex"][i][..., None].astype(np.float32),
                                     "head": affine_field(a["head"][i], size),
                                     "expression": a["expression"][i].astype(np.float32), "masks": a["masks"][i][..., None]}))
            done += 1
    return {k: torch.stack([p[k] for p in pairs]) for k in pairs[0]}


# --- loss --------------------------------------------------------------------------------------


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp(min=1)


def _laplace_mixture_nll(err: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Per-pixel NLL of |err| (B,2,H,W) under a two-Laplace mixture: a fixed sharp one (b = 0.1 px)
    and a broad one whose scale and weight the network predicts (u: logit of the weight, log b)."""
    log_b = torch.stack([torch.full_like(u[:, 1], math.log(0.1)), u[:, 1].clamp(math.log(0.1), 3.0)], 1)
    log_w = torch.stack([F.logsigmoid(u[:, 0]), F.logsigmoid(-u[:, 0])], 1)
    a = err.abs().unsqueeze(1)  # (B,1,2,H,W)
    terms = log_w.unsqueeze(2) - math.log(2) - log_b.unsqueeze(2) - a / log_b.exp().unsqueeze(2)
    return -torch.logsumexp(terms, 1).sum(1)


def sequence_loss(steps: list[dict], batch: dict, t: TrainSettings) -> tuple[torch.Tensor, dict]:
    n = len(steps)
    total = 0.0
    eps2 = t.charbonnier_eps**2
    moving = batch["roi"] & (batch["expression"].norm(dim=1, keepdim=True) > 0.05)
    for i, s in enumerate(steps):
        w = t.gamma ** (n - i - 1)
        facial_err = s["facial"] - batch["facial"]
        if "uncertainty" in s:
            facial = _laplace_mixture_nll(facial_err, s["uncertainty"]).mean()
        else:
            facial = torch.sqrt((facial_err**2).sum(1) + eps2).mean()
        if "head" not in s:  # a facial-flow-only model (raft_small)
            total = total + w * facial
            continue
        head = torch.sqrt(((s["head"] - batch["head"]) ** 2).sum(1) + eps2).mean()
        expr_epe = torch.sqrt(((s["expression"] - batch["expression"]) ** 2).sum(1, keepdim=True) + eps2)
        # Over the face, and again inside the AU regions: most face pixels do not move, and a
        # face-wide mean alone lets the network learn "no expression" first and slowly.
        expr = _masked_mean(expr_epe, batch["face"]) + _masked_mean(expr_epe, batch["roi"] & batch["face"])
        cos = F.cosine_similarity(s["expression"], batch["expression"], dim=1, eps=1e-6).unsqueeze(1)
        angular = _masked_mean(0.5 * (1 - cos), moving)
        total = total + w * (facial + t.head_weight * head + t.expression_weight * expr + t.angular_weight * angular)
    last = {k: v.detach() for k, v in steps[-1].items()}
    if "expression" not in last:
        return total, {"loss": float(total.detach()), "facial_epe": float((last["facial"] - batch["facial"]).norm(dim=1).mean())}
    epe = (last["expression"] - batch["expression"]).norm(dim=1, keepdim=True)
    return total, {"loss": float(total.detach()), "expression_epe": float(_masked_mean(epe, batch["face"])),
                   "head_epe": float((last["head"] - batch["head"]).norm(dim=1).mean())}


@torch.no_grad()
def evaluate(model, batch: dict, chunk: int = 8) -> dict:
    """EPE on whole held-out pairs, inside the face where the expression moves more than 0.1 px,
    against zero flow's there: of the expression flow, or of the facial flow for a model without a head."""
    model.eval()
    errs, zero, init = [], [], []
    for i in range(0, len(batch["onset"]), chunk):
        b = {k: v[i:i + chunk] for k, v in batch.items()}
        out = model(b["onset"], b["apex"], all_steps=False)[-1]
        key = "expression" if "expression" in out else "facial"
        moving = b["face"][:, 0] & (b["expression"].norm(dim=1) > 0.1)
        errs.append((out[key] - b[key]).norm(dim=1)[moving])
        zero.append(b[key].norm(dim=1)[moving])
        if hasattr(model, "initial"):  # a refinement model: its initialisation alone, for comparison
            init.append((model.initial(b["onset"], b["apex"])[key] - b[key]).norm(dim=1)[moving])
    model.train()
    result = {f"eval_{key}_epe": float(torch.cat(errs).mean()), "eval_zero_epe": float(torch.cat(zero).mean())}
    if init:
        result["eval_init_epe"] = float(torch.cat(init).mean())
    return result


# --- the run -------------------------------------------------------------------------------------


def _last_checkpoint(run: Path) -> Path | None:
    ckpts = [p for p in run.glob("checkpoint-*") if p.name.split("-")[-1].isdigit() and (p / "state.json").is_file()]
    return max(ckpts, key=lambda p: int(p.name.split("-")[-1])) if ckpts else None


def _data_fingerprint(root: str | Path) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(load_manifest(root)["checksums"], sort_keys=True).encode()).hexdigest()[:16]


def train(cfg: FlowTrainConfig, progress: bool = True) -> Path:
    """Train; -> the run directory. Checks the data and the resume point before any long work."""
    from accelerate import Accelerator
    from tqdm import tqdm

    if cfg.data is None:
        raise ConfigError("no flow data: set data=DIR (a `mellm flow-data` folder)")
    fingerprint = _data_fingerprint(cfg.data)
    t = cfg.train
    if t.threads:
        torch.set_num_threads(t.threads)
    run = Path(cfg.output_dir)
    resume = _last_checkpoint(run) if t.resume == "auto" else (Path(t.resume) if t.resume != "never" else None)
    saved = run / "config.yaml"
    if resume is not None and saved.is_file():
        before = yaml.safe_load(saved.read_text())
        if before.get("model") != asdict(cfg.model) or before.get("data_fingerprint") != fingerprint:
            raise ConfigError(f"output_dir={run} was started with another model config or other data ({saved}); "
                              "use another output_dir or train.resume=never")
    acc = Accelerator(mixed_precision=t.mixed_precision, log_with=None)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model)
    opt = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    warm = max(1, t.warmup_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * (
        0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / t.steps)))))
    stream = ShardStream(cfg.data, "train", t.crop, t.flip, cfg.seed, acc.process_index, acc.num_processes)
    loader = torch.utils.data.DataLoader(stream, batch_size=t.batch_size, num_workers=t.num_workers)
    eval_batch = heldout_batch(cfg.data, t.eval_pairs) if t.eval_every else None
    model, opt, sched = acc.prepare(model, opt, sched)
    step = 0
    if resume is not None:
        state = json.loads((resume / "state.json").read_text())
        acc.unwrap_model(model).load_state_dict(torch.load(resume / MODEL_FILE, map_location="cpu")["state_dict"])
        opt.load_state_dict(torch.load(resume / "optimizer.pt", map_location="cpu"))
        sched.load_state_dict(state["scheduler"])
        step = state["step"]
    main = acc.is_main_process
    writer = None
    if main:
        run.mkdir(parents=True, exist_ok=True)
        saved.write_text(yaml.safe_dump({**cfg.to_dict(), "data_fingerprint": fingerprint}, sort_keys=False))
        (run / "versions.json").write_text(json.dumps(_versions(), indent=1) + "\n")
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(run / "tensorboard"), purge_step=step or None)
        except ImportError:  # tensorboard is in the train extra; metrics.jsonl has the same numbers
            writer = None
    n_params = n_parameters(acc.unwrap_model(model))
    log = open(run / "metrics.jsonl", "a") if main else None

    def emit(record: dict) -> None:
        if not main:
            return
        log.write(json.dumps({"step": step, **record}) + "\n")
        log.flush()
        if writer is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)):
                    writer.add_scalar(k, v, step)

    emit({"event": "start", "parameters": n_params, "resumed_from": str(resume) if resume else None,
          "processes": acc.num_processes, "device": str(acc.device)})
    bar = tqdm(total=t.steps, initial=step, desc="train-flow", unit="step", disable=not (progress and main))
    started, seen = time.perf_counter(), 0
    model.train()
    batches = iter(loader)
    while step < t.steps:
        batch = {k: v.to(acc.device) for k, v in next(batches).items()}
        with acc.autocast():
            steps_out = model(batch["onset"], batch["apex"])
            loss, metrics = sequence_loss(steps_out, batch, t)
        opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        if t.clip_grad:
            acc.clip_grad_norm_(model.parameters(), t.clip_grad)
        opt.step()
        sched.step()
        step += 1
        seen += len(batch["onset"]) * acc.num_processes
        bar.update(1)
        if step % t.log_every == 0 or step == 1:
            emit({**metrics, "lr": sched.get_last_lr()[0], "pairs_per_s": seen / (time.perf_counter() - started)})
            bar.set_postfix(loss=f"{metrics['loss']:.3f}", epe=f"{metrics.get('expression_epe', metrics.get('facial_epe', 0)):.3f}")
        if eval_batch is not None and (step % t.eval_every == 0 or step == t.steps) and main:
            emit(evaluate(acc.unwrap_model(model), {k: v.to(acc.device) for k, v in eval_batch.items()}))
        if (step % t.save_every == 0 or step == t.steps) and main:
            _save_checkpoint(run, step, acc.unwrap_model(model), opt, sched, cfg, t.keep_checkpoints)
        acc.wait_for_everyone()
    bar.close()
    if main:
        final = acc.unwrap_model(model)
        summary = {"steps": step, "parameters": n_params, "data": str(cfg.data), "data_fingerprint": fingerprint,
                   "seconds": round(time.perf_counter() - started, 1)}
        if eval_batch is not None:
            summary.update(evaluate(final, {k: v.to(acc.device) for k, v in eval_batch.items()}))
        save_model(final, run / "model", summary)
        (run / "metrics.json").write_text(json.dumps(summary, indent=1) + "\n")
        emit({"event": "end", **{k: v for k, v in summary.items() if isinstance(v, (int, float))}})
        log.close()
        if writer is not None:
            writer.close()
    return run


def _save_checkpoint(run: Path, step: int, model: MEFlowNet, opt, sched, cfg: FlowTrainConfig, keep: int) -> None:
    folder = run / f"checkpoint-{step}"
    save_model(model, folder, {"steps": step})
    torch.save(opt.state_dict(), folder / "optimizer.pt")
    (folder / "state.json").write_text(json.dumps({"step": step, "scheduler": sched.state_dict()}))  # written last
    old = sorted((p for p in run.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
                 key=lambda p: int(p.name.split("-")[-1]))
    for p in old[:-keep] if keep > 0 else []:
        shutil.rmtree(p, ignore_errors=True)


def _versions() -> dict:
    import platform
    import subprocess
    import sys
    from importlib import metadata

    found = {}
    for name in ("mellm", "torch", "accelerate", "numpy", "opencv-contrib-python-headless"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    try:
        commit = subprocess.run(["git", "-C", str(Path(__file__).resolve().parent), "rev-parse", "HEAD"],
                                capture_output=True, text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"python": sys.version.split()[0], "platform": platform.platform(), "packages": found, "git_commit": commit,
            "accelerator": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            "device_count": torch.cuda.device_count()}
