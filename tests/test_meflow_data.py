"""Flow data (mellm.meflow.data): exact flow, identity splits, deterministic and resumable shards."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from mellm.errors import MellmError
from mellm.meflow.data import FlowDataConfig, iter_pairs, load_manifest, make_pair, write_flow_data

SMALL = dict(size=96, n_train=6, n_heldout=3, shard_size=4, train_identities=2, heldout_identities=1)


def test_the_flow_is_exact():
    """Sampling the apex at x + facial(x) gives back the onset: the stored flow is the true motion."""
    cfg = FlowDataConfig(size=128, noise_std=(0, 0), blur_sigma=(0, 0), jpeg_fraction=0, flicker=0, head_fraction=1,
                         neutral_fraction=0, texture_std=(4, 4), train_identities=1)
    pair = make_pair(cfg.identities("train")[0], np.random.default_rng(1), cfg)
    from mellm.meflow.data import affine_field

    facial = affine_field(pair["head"], 128) + pair["expression"].astype(np.float32)
    ys, xs = np.mgrid[0:128, 0:128].astype(np.float32)
    back = cv2.remap(pair["apex"].astype(np.float32), xs + facial[..., 0], ys + facial[..., 1], cv2.INTER_CUBIC)
    zero = cv2.remap(pair["apex"].astype(np.float32), xs + 0 * facial[..., 0], ys, cv2.INTER_CUBIC)
    face = (pair["masks"] & 1).astype(bool)
    onset = pair["onset"].astype(np.float32)
    assert np.abs(onset - back)[face].mean() < 0.25 * np.abs(onset - zero)[face].mean()
    assert np.abs(pair["expression"]).max() > 0.05 and pair["meta"]["moving_head"]


def test_shards_are_deterministic_split_by_identity_and_resume(tmp_path):
    cfg = FlowDataConfig(**SMALL)
    a = write_flow_data(tmp_path / "a", cfg, seed=7)
    b = write_flow_data(tmp_path / "b", cfg, seed=7)
    c = write_flow_data(tmp_path / "c", cfg, seed=8)
    assert a["checksums"] == b["checksums"] and len(a["checksums"]) == 3  # 2 train shards, 1 held out
    assert a["checksums"] != c["checksums"]
    assert not set(a["identities"]["train"]) & set(a["identities"]["heldout"])
    pairs = list(iter_pairs(tmp_path / "a", "train"))
    assert len(pairs) == 6 and pairs[0]["onset"].shape == (96, 96) and pairs[0]["facial"].shape == (96, 96, 2)
    metas = [json.loads(line) for line in (tmp_path / "a" / "heldout" / "shard-00000.jsonl").read_text().splitlines()]
    assert {m["identity"] for m in metas} <= set(a["identities"]["heldout"])
    assert "held-out" in (tmp_path / "a" / "README.md").read_text().lower() or "heldout" in (tmp_path / "a" / "README.md").read_text()

    # A rerun keeps the shards it finds; a lost one is made again, identical.
    shard = tmp_path / "a" / "train" / "shard-00001.npz"
    kept = (tmp_path / "a" / "train" / "shard-00000.npz").stat().st_mtime_ns
    shard.unlink()
    again = write_flow_data(tmp_path / "a", cfg, seed=7)
    assert again["checksums"] == a["checksums"] and shard.is_file()
    assert (tmp_path / "a" / "train" / "shard-00000.npz").stat().st_mtime_ns == kept


def test_bad_settings_and_folders_are_clear_errors(tmp_path):
    with pytest.raises(MellmError, match="size 100"):
        FlowDataConfig(size=100)
    write_flow_data(tmp_path / "d", FlowDataConfig(**SMALL), seed=1)
    with pytest.raises(MellmError, match="other settings"):
        write_flow_data(tmp_path / "d", FlowDataConfig(**SMALL), seed=2)
    with pytest.raises(MellmError, match="not a flow-data folder"):
        load_manifest(tmp_path)
