"""MEU-Instruct on disk (docs/formats.md) -> the train and eval datasets of one run.

Holdout mode trains on `data.train_split` and evaluates on `data.eval_split`. LOSO mode
(`data.fold=K`) pools every split, trains on the rows whose subject is not among fold K's
`test_subjects` in DIR/splits.json, and evaluates (loss only, never used to pick a checkpoint) on
the rows whose subject is.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from mellm.errors import ConfigError

VLM_DIR, TEXT_DIR = "hf", "hf_text"


def variant_dir(cfg) -> Path:
    return Path(cfg.data.dir) / (TEXT_DIR if cfg.model.text_only else VLM_DIR)


def read_fold(data_dir: Path, fold: int) -> list[str]:
    """The test subjects of LOSO fold `fold` in DATA_DIR/splits.json."""
    path = Path(data_dir) / "splits.json"
    if not path.is_file():
        raise ConfigError(f"data.fold={fold} needs {path}, which does not exist")
    try:
        folds = json.loads(path.read_text())["loso"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ConfigError(f"{path} has no readable 'loso' list of folds ({e})") from None
    for entry in folds:
        if entry.get("fold") == fold:
            return list(entry["test_subjects"])
    raise ConfigError(f"data.fold={fold} is not in {path} (folds: {sorted(f.get('fold') for f in folds)})")


def select_rows(cfg):
    """The rows of a run, every column kept: -> (DatasetDict on disk, train Dataset, eval Dataset or None)."""
    import datasets

    path = variant_dir(cfg)
    dd = datasets.load_from_disk(str(path))
    if cfg.data.fold is not None:
        held_out = set(read_fold(cfg.data.dir, cfg.data.fold))
        pooled = datasets.concatenate_datasets([dd[s] for s in dd])
        train = pooled.filter(lambda s: s not in held_out, input_columns=["subject"])
        evals = pooled.filter(lambda s: s in held_out, input_columns=["subject"]) if cfg.data.eval_split else None
    else:
        train = dd[cfg.data.train_split]
        evals = dd[cfg.data.eval_split] if cfg.data.eval_split else None
    if cfg.data.qtypes:
        keep = set(cfg.data.qtypes)
        train = train.filter(lambda q: q in keep, input_columns=["qtype"])
        evals = evals.filter(lambda q: q in keep, input_columns=["qtype"]) if evals is not None else None
    if cfg.data.max_train_samples:
        train = train.select(range(min(cfg.data.max_train_samples, len(train))))
    if evals is not None and cfg.data.max_eval_samples:
        evals = evals.select(range(min(cfg.data.max_eval_samples, len(evals))))
    if len(train) == 0:
        raise ConfigError(f"no training rows in {path} after the data.* selection (fold={cfg.data.fold}, "
                          f"qtypes={cfg.data.qtypes})")
    if evals is not None and len(evals) == 0:
        evals = None
    return dd, train, evals


def load_train_eval(cfg):
    """-> (train Dataset, eval Dataset or None, fingerprint dict). Only the columns training
    reads are kept (`messages`, and `images` for the image-text variant)."""
    dd, train, evals = select_rows(cfg)
    # Recorded in RUN/run.json: which subjects a run learnt from (LOSO checks its held-out ones are not).
    subjects = sorted(set(train["subject"]))
    columns = ["messages"] if cfg.model.text_only else ["messages", "images"]
    if cfg.train.group_by_length and not cfg.model.text_only:  # the text path measures tokenized rows
        columns.append("length")
        # add_column, not map: map would rewrite every row, images included, to a new cache file.
        train = train.add_column("length", [approx_length(m) for m in train["messages"]])
        if evals is not None:  # the trainer orders evaluation batches by length too
            evals = evals.add_column("length", [approx_length(m) for m in evals["messages"]])
    train = train.select_columns(columns)
    evals = evals.select_columns(columns) if evals is not None else None
    return train, evals, {**fingerprint(cfg, dd, train, evals), "train_subjects": subjects}


IMAGE_COST = 100  # characters an image is counted as; only the order of lengths matters


def approx_length(messages: list[dict]) -> int:
    """A sample's length for length-grouped batching, from its text (characters) and images,
    without tokenizing or decoding anything."""
    total = 0
    for m in messages:
        content = m["content"]
        if isinstance(content, str):
            total += len(content)
            continue
        for part in content:
            total += IMAGE_COST if part["type"] == "image" else len(part.get("text") or "")
    return total


def fingerprint(cfg, dd, train, evals) -> dict:
    """What identifies the data of a run: the saved splits' fingerprints (datasets writes them into
    each split's state.json, so they change when the data is rebuilt), the LOSO folds file, and
    the rows selected."""
    splits_file = Path(cfg.data.dir) / "splits.json"
    return {
        "path": str(variant_dir(cfg).resolve()),
        "splits": {name: {"rows": len(ds), "fingerprint": ds._fingerprint} for name, ds in dd.items()},
        "splits_json_sha256": hashlib.sha256(splits_file.read_bytes()).hexdigest() if splits_file.is_file() else None,
        "fold": cfg.data.fold,
        "qtypes": cfg.data.qtypes,
        "train_rows": len(train),
        "eval_rows": len(evals) if evals is not None else 0,
    }
