"""Long-video build-data: adapters read the release sheets (one row per event, grouped by video),
spotting is cached and resumable, samples hold every LVQA question type plus the event list."""

import json

import pytest
from fake_datasets import write_xlsx

from mellm.data_builders.build import BuildConfig, build
from mellm.data_builders.long_videos import event_type, load_long
from mellm.errors import LabelError
from mellm.synth_long import LongConfig, generate_long

SMALL = dict(width=320, height=240, face_iod=64.0)


@pytest.fixture(scope="module")
def lv_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("lv")
    generate_long(root, 2, seed=7, config=LongConfig(seconds=6, fps=30, events_per_minute=25, **SMALL))
    return root


def test_samm_long_video_sheet_groups_events_by_video(tmp_path):
    (tmp_path / "006_1.mkv").write_bytes(b"\0")  # the adapter finds videos; spotting reads them
    events = [(120, 131, 140, "Micro - 1/2", "R12"), (900, 1000, 1300, "Macro", "4+7")]
    rows = [[6, f"006_1_{k}", "I1", a, b, c, c - a + 1, t, au] for k, (a, b, c, t, au) in enumerate(events, start=1)]
    rows += [[6, "006_1_9", "I1", 10, 12, 20, 11, "Sideways", "4"],  # unknown type: a failure, the video goes on
             [7, "007_3_1", "I1", 10, 12, 20, 11, "Macro", "12"]]  # no such video
    write_xlsx(tmp_path / "SAMM_LongVideos_V3_Release.xlsx",
               ["Subject", "Filename", "Inducement Code", "Onset", "Apex", "Offset", "Duration", "Type", "Action Units"], rows)
    loaded = load_long("samm_lv", tmp_path)
    (rec,) = loaded.records
    assert rec.video == "006_1" and rec.subject == "006" and rec.fps == 200.0
    assert [(e.onset, e.apex, e.offset, e.type, e.aus) for e in rec.events] == [(120, 131, 140, "micro", [12]),
                                                                                  (900, 1000, 1300, "macro", [4, 7])]
    assert sorted(f.reason for f in loaded.failures) == ["not_found", "unknown_label"]
    assert event_type("Micro - 1/2", 1, 500, 200) == "micro" and event_type(None, 1, 200, 200) == "macro"
    with pytest.raises(LabelError):
        event_type("Sideways", 1, 2, 30)


def test_casme2_long_video_sheet_finds_raw_videos_and_frame_folders(tmp_path):
    """CAS(ME)^2 names a video by subject and a short name; the release has rawvideo/s15/15_0101*.avi
    and rawpic/s15/15_0102*/ frame folders. Subjects are written "15" or "s15"."""
    (tmp_path / "rawvideo" / "s15").mkdir(parents=True)
    (tmp_path / "rawvideo" / "s15" / "15_0101disgustingteeth.avi").write_bytes(b"\0")
    (tmp_path / "rawpic" / "s16" / "16_0102eatingworms").mkdir(parents=True)
    rows = [["s15", "0101", 101, 110, 118, "4", "disgust", "micro-expression"],
            [15, "0101", 500, 540, 600, "4+9", "disgust", "macro-expression"],
            [16, "0102", 20, 30, 35, "12", "happiness", ""],  # no type: by duration (16 frames at 30 fps: micro)
            [16, "0102", 90, 80, 70, "12", "happiness", "macro-expression"]]  # offset before onset: a failure
    write_xlsx(tmp_path / "CAS(ME)^2code_final.xlsx",
               ["subject", "video name", "onset", "apex", "offset", "AUs", "emotion", "type"], rows)
    loaded = load_long("casme2_lv", tmp_path)
    by_video = {r.subject: r for r in loaded.records}
    assert set(by_video) == {"15", "16"} and all(r.fps == 30.0 for r in loaded.records)
    assert by_video["15"].source.endswith("15_0101disgustingteeth.avi")
    assert by_video["16"].source.endswith("16_0102eatingworms")
    assert [(e.onset, e.offset, e.type, e.aus) for e in by_video["15"].events] == [(101, 118, "micro", [4]),
                                                                                  (500, 600, "macro", [4, 9])]
    assert [(e.type, e.fine) for e in by_video["16"].events] == [("micro", "happiness")]
    assert [f.reason for f in loaded.failures] == ["frame_range"]


def test_casme3_long_video_sheet_keeps_micro_and_macro_rows(tmp_path):
    (tmp_path / "spNO.1" / "a" / "color").mkdir(parents=True)
    rows = [["spNO.1", "a", 100, 105, 112, "AU4+AU7", "micro-expression"],
            ["spNO.1", "a", 300, 340, 420, "AU12", "macro-expression"],
            ["spNO.2", "b", 10, 12, 20, "AU1", "micro-expression"]]  # no frames for this video
    write_xlsx(tmp_path / "cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx",
               ["Subject", "Filename", "Onset", "Apex", "Offset", "AU", "Expression type"], rows)
    loaded = load_long("casme3_lv", tmp_path)
    (rec,) = loaded.records
    assert rec.subject == "spNO.1" and rec.source.endswith("a/color")
    assert [(e.onset, e.apex, e.offset, e.type, e.aus) for e in rec.events] == [(100, 105, 112, "micro", [4, 7]),
                                                                              (300, 340, 420, "macro", [12])]
    assert [f.reason for f in loaded.failures] == ["not_found"]


@pytest.mark.slow
def test_build_data_for_long_videos_caches_and_covers_every_lvqa_type(lv_root, tmp_path):
    from mellm.analyze import PerceptionSettings
    from mellm.vqa import classify_question

    out = tmp_path / "out"
    cfg = BuildConfig(datasets=[("synthlv", lv_root)], out=out, perception=PerceptionSettings(flow="dis"), progress=False)
    summary = build(cfg)
    assert summary.built == 2 and summary.cached == 0
    rows = [json.loads(x) for f in (out / "jsonl").glob("*.jsonl") for x in f.read_text().splitlines()]
    types = {classify_question(r["question"]).type.value for r in rows}
    assert types == {"lv_count", "lv_aus", "lv_event_type", "analysis"}
    counts = [r for r in rows if r["question"].startswith("How many expression")]
    truth = {v["video"] for v in map(json.loads, (lv_root / "intervals.jsonl").read_text().splitlines())}
    assert {r["clip_id"] for r in counts} == truth
    assert all("Spotted" in r["evidence_text"] and len(r["images"]) == 3 for r in rows)
    assert (out / "hf").is_dir() and (out / "spots").is_dir()
    again = build(cfg)
    assert again.cached == 2  # resumed from the cache, nothing spotted twice
