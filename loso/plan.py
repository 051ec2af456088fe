"""The plan of a LOSO run, and the state of each of its folds, as files under RUNS.

    RUNS/loso.json           the plan: training config (file, overrides, resolved, hash), the data's
                             folds, prediction settings; written once, checked on every rerun
    RUNS/fold_K/fold.json    one fold's state: running | done | failed, timings, subjects, error
    RUNS/fold_K/train/       the fold's training run (mellm train's run directory)
    RUNS/fold_K/predict/     questions.jsonl (the held-out subjects' questions), predictions.jsonl
    RUNS/fold_K/log.txt      the fold command's output (local, parallel and Ray launchers)
    RUNS/pooled/             every finished fold's questions and predictions, concatenated; report.*
    RUNS/summary.json, .md   the pooled numbers a paper reports, per dataset and per fold

A fold is one command everywhere (`mellm loso-fold --out RUNS --fold K`): launchers only decide
where it runs, and a fold reads everything it needs from loso.json.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mellm.errors import ConfigError, MellmError

PLAN = "loso.json"
STATES = ("running", "done", "failed")


@dataclass
class PredictSettings:
    engine: str = "auto"  # auto | vllm | transformers (mellm.eval.predict)
    batch_size: int = 8
    max_new_tokens: int = 512
    max_model_len: int = 4096
    gpu_memory_utilization: float = 0.8
    qtypes: list[str] | None = None  # None: the training config's data.qtypes (every type when unset)


@dataclass
class Plan:
    config_file: str  # as given (a path or a packaged config name)
    overrides: list[str]  # key=value overrides, as given
    config: dict  # the resolved training config, without output_dir and data.fold
    config_hash: str  # sha256 (first 16 hex digits) of `config` and `predict`
    data_dir: str
    folds: list[dict]  # DATA/splits.json's "loso": [{"fold": 0, "test_subjects": [...]}, ...]
    predict: PredictSettings = field(default_factory=PredictSettings)
    keep_checkpoints: bool = False  # False: a finished fold's checkpoint-N/ folders are removed
    created: str = ""

    def fold_ids(self) -> list[int]:
        return [f["fold"] for f in self.folds]

    def test_subjects(self, fold: int) -> list[str]:
        for f in self.folds:
            if f["fold"] == fold:
                return list(f["test_subjects"])
        raise ConfigError(f"fold {fold} is not in the plan (folds {compress(self.fold_ids())})")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Plan:
        return cls(**{**d, "predict": PredictSettings(**d.get("predict", {}))})


def config_hash(config: dict, predict: PredictSettings) -> str:
    blob = json.dumps({"config": config, "predict": asdict(predict)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def make_plan(config_file: str, overrides: list[str], predict: PredictSettings, keep_checkpoints: bool = False) -> Plan:
    """Resolve and validate the training config (as `mellm train` does) and read the data's folds."""
    from mellm.train.config import load_config
    from mellm.train.data import variant_dir

    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key in ("output_dir", "data.fold"):
            raise ConfigError(f"override {item!r}: mellm loso sets {key} itself (use --out and --folds)")
    cfg = load_config(config_file, overrides)
    if cfg.data.dir is None:
        raise ConfigError("the training config has no data.dir: add data.dir=DIR (a mellm build-data output)")
    data_dir = Path(cfg.data.dir).resolve()
    if not variant_dir(cfg).is_dir():
        raise ConfigError(f"data.dir={cfg.data.dir}: {variant_dir(cfg)} does not exist (is it a mellm build-data output?)")
    splits = data_dir / "splits.json"
    try:
        folds = json.loads(splits.read_text())["loso"]
    except FileNotFoundError:
        raise ConfigError(f"data.dir={cfg.data.dir}: {splits} does not exist") from None
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ConfigError(f"{splits} has no readable 'loso' list of folds ({e})") from None
    if not folds:
        raise ConfigError(f"{splits}: the 'loso' list is empty")
    resolved = cfg.model_dump(mode="json")
    resolved.pop("output_dir")
    resolved["data"].pop("fold")
    resolved["data"]["dir"] = str(data_dir)
    if predict.qtypes is None:
        predict.qtypes = cfg.data.qtypes
    return Plan(config_file=str(config_file), overrides=list(overrides), config=resolved,
                config_hash=config_hash(resolved, predict), data_dir=str(data_dir), folds=folds, predict=predict,
                keep_checkpoints=keep_checkpoints, created=_now())


def write_or_check(out: Path, plan: Plan) -> Plan:
    """RUNS/loso.json: written on the first run; a rerun must bring the same config, data and
    prediction settings (else its folds would mix two experiments)."""
    path = Path(out) / PLAN
    if path.is_file():
        before = load_plan(out)
        if before.config_hash != plan.config_hash or before.folds != plan.folds:
            what = "the data's folds (splits.json)" if before.config_hash == plan.config_hash else "its config"
            raise ConfigError(f"{out} holds a LOSO run (config hash {before.config_hash}) that differs from this one "
                              f"(config hash {plan.config_hash}) in {what}; use another --out, or the same config")
        return before
    Path(out).mkdir(parents=True, exist_ok=True)
    _write_json(path, plan.to_dict())
    return plan


def load_plan(out: Path) -> Plan:
    path = Path(out) / PLAN
    if not path.is_file():
        raise MellmError(f"{path} does not exist: start the run with `mellm loso --config ... --out {out}`")
    return Plan.from_dict(json.loads(path.read_text()))


def train_overrides(plan: Plan, fold: int, out: Path) -> list[str]:
    """The overrides that make the plan's config this fold's training run."""
    return [*plan.overrides, f"data.dir={plan.data_dir}", f"data.fold={fold}", f"output_dir={fold_dir(out, fold) / 'train'}"]


# --- folds: selection and state -----------------------------------------------------------


def parse_folds(spec: str | None, known: list[int]) -> list[int]:
    """"1,5-9" -> [1, 5, 6, 7, 8, 9]; None or "all": every fold. Unknown folds are an error."""
    if spec is None or spec.strip().lower() in ("", "all"):
        return sorted(known)
    chosen: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise ConfigError(f"--folds {spec!r}: {part!r} is not a fold number or a range like 5-9")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise ConfigError(f"--folds {spec!r}: range {part!r} runs backwards")
        chosen.update(range(lo, hi + 1))
    unknown = sorted(chosen - set(known))
    if unknown:
        raise ConfigError(f"--folds {spec!r}: fold(s) {compress(unknown)} do not exist (the data has folds "
                          f"{compress(sorted(known))})")
    return sorted(chosen)


def compress(folds: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> "0-2,5,7-8" (also SLURM's --array syntax)."""
    parts, run = [], []
    for f in sorted(set(folds)):
        if run and f == run[-1] + 1:
            run.append(f)
            continue
        if run:
            parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [f]
    if run:
        parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(parts)


def fold_dir(out: Path, fold: int) -> Path:
    return Path(out) / f"fold_{fold}"


def read_state(out: Path, fold: int) -> dict | None:
    path = fold_dir(out, fold) / "fold.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:  # cut off by a kill while writing: as if never started
        return None


def write_state(out: Path, fold: int, **fields) -> dict:
    """Merge `fields` into RUNS/fold_K/fold.json (atomically: a kill never leaves half a file)."""
    state = read_state(out, fold) or {"fold": fold}
    state.update(fields, updated=_now())
    if state.get("state") not in STATES:
        raise ValueError(f"fold state {state.get('state')!r}")
    fold_dir(out, fold).mkdir(parents=True, exist_ok=True)
    _write_json(fold_dir(out, fold) / "fold.json", state)
    return state


def is_done(out: Path, fold: int) -> bool:
    state = read_state(out, fold)
    pred = fold_dir(out, fold) / "predict" / "predictions.jsonl"
    return bool(state and state.get("state") == "done" and pred.is_file())


def pending(out: Path, folds: list[int]) -> list[int]:
    """The folds still to run: never started, failed, or cut off while running."""
    return [f for f in folds if not is_done(out, f)]


def mark_dead(out: Path, fold: int, returncode: int) -> None:
    """A fold process that ended without recording an outcome (killed, out of memory) failed."""
    state = read_state(out, fold)
    if state is not None and state.get("state") in ("done", "failed"):
        return
    how = f"killed by signal {-returncode}" if returncode < 0 else f"exited with code {returncode}"
    write_state(out, fold, state="failed", error=f"the fold process {how} before recording an outcome "
                                                 f"(see {fold_dir(out, fold) / 'log.txt'})")


def host() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str) + "\n")
    tmp.replace(path)
