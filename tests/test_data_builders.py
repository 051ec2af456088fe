"""Dataset adapters and the MEU-Instruct builder on fake CASME II / SAMM / SMIC / CAS(ME)^3 folders."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import fake_datasets
import pytest

from mellm.analyze import PerceptionSettings
from mellm.data_builders.build import BuildConfig, build
from mellm.data_builders.registry import load_dataset
from mellm.resources import megc_file
from mellm.synth import SynthConfig, generate_corpus
from mellm.vqa import QType

FAST = PerceptionSettings(flow="dis")


@pytest.fixture(scope="module")
def datasets_root(tmp_path_factory):
    """12 synthetic clips spread over four fake datasets."""
    synth = tmp_path_factory.mktemp("synth_for_datasets")
    clips = generate_corpus(synth, n=12, seed=9, config=SynthConfig(
        n_frames=16, width=320, height=240, face_iod=60, n_subjects=4))
    root = tmp_path_factory.mktemp("datasets")
    expect = {
        "casme2": fake_datasets.casme2(root / "CASME2", synth, clips[0:4]),
        "samm": fake_datasets.samm(root / "SAMM", synth, clips[4:7]),
        "smic": fake_datasets.smic(root / "SMIC", synth, clips[7:10]),
        "casme3": fake_datasets.casme3(root / "CASME3", synth, clips[10:12]),
    }
    return root, clips, expect


def roots(base: Path) -> list[tuple[str, Path]]:
    return [("casme2", base / "CASME2"), ("samm", base / "SAMM"), ("smic", base / "SMIC"), ("casme3", base / "CASME3")]


def labels(clip) -> list[tuple[int, str]]:
    return sorted((a["au"], a["side"]) for a in clip.aus)


def test_casme2_adapter_reads_labels_and_records_quirks(datasets_root):
    root, clips, _ = datasets_root
    loaded = load_dataset("casme2", root / "CASME2")
    by_clip = {r.clip_id: r for r in loaded.records}
    assert sorted(by_clip) == ["EP00_00f", "EP02_02f", "EP03_03f"]  # EP01_01f: unknown emotion
    [failure] = loaded.failures
    assert failure.reason == "unknown_label" and "happy?" in failure.message and "row 3" in failure.message
    slash = by_clip["EP00_00f"]
    assert slash.apex is None and "spotted" in slash.notes[0]  # the "/" apex is spotted, not lost
    rec, clip = by_clip["EP03_03f"], clips[3]
    assert rec.subject == f"sub{int(clip.subject[1:]):02d}" and rec.fps == 200.0
    assert (rec.onset, rec.apex, rec.offset) == (clip.onset_frame + 45, clip.apex_frame + 45, clip.offset_frame + 45)
    assert sorted((a.au, a.side) for a in rec.aus) == sorted(labels(clip) + [(10, "L")])  # + the planted wrong label
    assert (rec.fine, rec.coarse) == (clip.fine, clip.coarse)


def test_samm_smic_casme3_adapters(datasets_root):
    root, clips, _ = datasets_root
    samm = load_dataset("samm", root / "SAMM")
    assert len(samm.records) == 3 and not samm.failures
    for rec, clip in zip(samm.records, clips[4:7]):
        assert rec.subject == f"{int(clip.subject[1:]) + 5:03d}" and rec.onset == clip.onset_frame + 5561
        assert sorted((a.au, a.side) for a in rec.aus) == labels(clip)
        assert rec.fine == (clip.fine if clip.fine != "repression" else "others")
    smic = load_dataset("smic", root / "SMIC")
    assert sorted(r.coarse for r in smic.records) == sorted(c.coarse for c in clips[7:10])
    assert all(r.fine is None and r.apex is None and r.aus == [] and r.fps == 100.0 for r in smic.records)
    casme3 = load_dataset("casme3", root / "CASME3")
    assert len(casme3.records) == 2  # the macro-expression row is skipped
    assert all(r.source.endswith("color") for r in casme3.records)


def test_missing_annotation_file_is_a_clear_error(tmp_path):
    from mellm.errors import MellmError

    with pytest.raises(MellmError, match="no CASME II annotation file"):
        load_dataset("casme2", tmp_path)
    with pytest.raises(MellmError, match="unknown dataset 'casme4'"):
        load_dataset("casme4", tmp_path)


@pytest.fixture(scope="module")
def built(datasets_root, tmp_path_factory):
    root, _, _ = datasets_root
    out = tmp_path_factory.mktemp("meu")
    summary = build(BuildConfig(datasets=roots(root), out=out, workers=2, perception=FAST, progress=False))
    return out, summary


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_build_records_failures_and_goes_on(built):
    out, summary = built
    assert summary.built == 10  # 12 clips - unknown emotion - corrupt frames
    reasons = sorted((f["stage"], f["reason"]) for f in read_jsonl(out / "failures.jsonl"))
    assert reasons == [("annotation", "unknown_label"), ("perception", "unreadable")]
    record = json.loads((out / "build.json").read_text())
    assert record["counts"]["built"] == 10 and record["counts"]["failed"] == 2
    slash = json.loads(next((out / "evidence").glob("casme2_sub*_EP00_00f.json")).read_text())
    assert slash["apex_source"] == "spotted"
    assert any("no apex frame ('/')" in n for n in record["notes"])


def test_every_question_type_and_images(built):
    from datasets import load_from_disk

    out, _ = built
    rows = [r for split in ("train", "val", "test") if (out / "jsonl" / f"{split}.jsonl").exists()
            for r in read_jsonl(out / "jsonl" / f"{split}.jsonl")]
    types = {r["qtype"] for r in rows}
    assert types == {t.value for t in (QType.COARSE, QType.FINE, QType.AU_LIST, QType.AU_YESNO, QType.AU_SIDE,
                                       QType.COMBINED, QType.ANALYSIS)}
    assert {"yes", "no"} <= {r["answer"] for r in rows if r["qtype"] == "au_yesno"}
    assert all((out / p).is_file() for r in rows for p in r["images"])
    hf = load_from_disk(str(out / "hf"))
    sample = hf["train"][0]
    assert len(sample["images"]) == 3 and sample["images"][2].size[0] == 256
    assert [m["role"] for m in sample["messages"]] == ["system", "user", "assistant"]
    assert sum(p["type"] == "image" for p in sample["messages"][1]["content"]) == 3
    assert sample["messages"][2]["content"][0]["text"] == sample["answer"]
    text = load_from_disk(str(out / "hf_text"))
    assert "images" not in text["train"].column_names
    assert isinstance(text["train"][0]["messages"][1]["content"], str)
    assert "Measured facial motion" in text["train"][0]["messages"][1]["content"]
    swift = read_jsonl(out / "exports" / "swift" / "train.jsonl")
    assert swift[0]["messages"][1]["content"].startswith("<image><image><image>")
    assert all(Path(p).is_file() for p in swift[0]["images"])
    assert "meu_instruct_train" in json.loads((out / "exports" / "llamafactory" / "dataset_info.json").read_text())


def test_folds_and_splits_hold_subjects_apart(built):
    out, _ = built
    splits = json.loads((out / "splits.json").read_text())
    fold_subjects = [s for f in splits["loso"] for s in f["test_subjects"]]
    assert len(fold_subjects) == len(set(fold_subjects))  # each subject tests in exactly one fold
    groups = [set(v) for v in splits["holdout"].values()]
    assert all(not (a & b) for i, a in enumerate(groups) for b in groups[i + 1:])
    assert set().union(*groups) == set(fold_subjects)
    for split, subjects in splits["holdout"].items():
        path = out / "jsonl" / f"{split}.jsonl"
        if path.exists():
            assert {r["subject"] for r in read_jsonl(path)} <= set(subjects)
    assert any(s.startswith("casme2/") for s in fold_subjects) and any(s.startswith("smic/") for s in fold_subjects)


def test_rebuild_reuses_the_cache(built, datasets_root):
    out, first = built
    root, _, _ = datasets_root
    before = (out / "jsonl" / "train.jsonl").read_text()
    again = build(BuildConfig(datasets=roots(root), out=out, workers=1, perception=FAST, progress=False))
    assert again.cached == again.built == first.built
    assert (out / "jsonl" / "train.jsonl").read_text() == before


def test_interrupted_build_resumes(datasets_root, tmp_path):
    """Kill a build part-way (SIGKILL: no clean-up at all), rerun it: finished clips come from the
    cache, the rest are computed, and the dataset is complete."""
    root, _, _ = datasets_root
    out = tmp_path / "meu"
    cmd = [sys.executable, "-m", "mellm.cli", "build-data", "--dataset", "samm", "--root", str(root / "SAMM"),
           "--dataset", "casme3", "--root", str(root / "CASME3"), "--dataset", "smic", "--root", str(root / "SMIC"),
           "--out", str(out), "--flow", "tvl1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if len(list((out / "cache").glob("??/*/evidence.json"))) >= 2:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    done_before = len(list((out / "cache").glob("??/*/evidence.json")))
    assert 2 <= done_before < 8, "the build finished before it could be interrupted"
    assert not (out / "build.json").exists()
    rerun = subprocess.run(cmd, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert f"built 8 clips, 0 failed, {done_before} from cache" in rerun.stdout
    assert json.loads((out / "build.json").read_text())["counts"]["built"] == 8


def test_megc_file_joined_to_clips(datasets_root, tmp_path):
    """The real MEGC training file: clips found under the media root get labels read back from
    their answers and keep the file's own questions; missing clips are listed, not dropped."""
    root, _, _ = datasets_root
    train = megc_file("me_vqa_samm_casme2_smic.jsonl")
    media = tmp_path / "media"
    src = next((root / "SAMM").glob("*/*"))  # any fake SAMM clip stands in for the real 006_1_2
    (media / "samm").mkdir(parents=True, exist_ok=True)
    os.symlink(src, media / "samm" / "006_1_2")
    loaded = load_dataset("megc", media, questions=train)
    [rec] = loaded.records
    assert rec.dataset == "samm" and rec.clip_id == "006_1_2"
    assert (rec.coarse, rec.fine) == ("negative", "anger")
    assert sorted(a.au for a in rec.aus) == [4, 7]  # brow lowerer, lid tightener
    assert len(rec.qa) == 6 and rec.qa[0] == ("What is the coarse expression class?", "negative")
    assert len(loaded.failures) > 100 and all(f.reason == "not_found" for f in loaded.failures)


def test_every_reference_answer_reads_back_as_its_labels(built):
    """The builder's answers and the shared answer parser (eval, gateway) agree: each answer states
    exactly the clip's labels, including analysis answers that report disagreeing evidence."""
    from mellm.answers import parse_answer

    out, _ = built
    rows = [r for split in ("train", "val", "test") if (out / "jsonl" / f"{split}.jsonl").exists()
            for r in read_jsonl(out / "jsonl" / f"{split}.jsonl")]
    disagreeing = 0
    for r in rows:
        p = parse_answer(r["question"], r["answer"])
        assert p.parsed, (r["id"], r["answer"], p.problem)
        if r["qtype"] in ("coarse", "combined", "analysis"):
            assert p.coarse == r["coarse"], r["id"]
        if r["qtype"] in ("fine", "combined", "analysis") and r["fine"] not in (None, "others"):
            assert p.fine == r["fine"], (r["id"], r["answer"])
        if r["qtype"] in ("au_list", "combined", "analysis") and r["aus"]:
            assert sorted(p.aus) == sorted(r["aus"]), (r["id"], r["answer"])
        if r["qtype"] == "au_yesno":
            assert p.yes_no == (r["answer"] == "yes")
        if r["qtype"] == "analysis" and r["clip_id"] == "EP03_03f":  # labelled L10, which its motion lacks
            assert r["agreement"]["not_observed"] == [10] and not r["agreement"]["agree"]
            assert "does not clearly show AU10" in r["answer"]
            disagreeing += 1
    assert disagreeing == 1
