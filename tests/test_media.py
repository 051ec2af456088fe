"""Question row -> clip path and frame window (mellm/media.py), on real folder layouts."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mellm.errors import ClipNotFoundError, FrameRangeError
from mellm.media import MediaIndex, clip_window, median_spans
from mellm.megc import parse_row
from mellm.video import Clip, open_clip


def frames(folder: Path, names: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / name)
    return folder


def row(**fields):
    base = {"id": "q1", "question": "What is the coarse expression class?", "answer": ""}
    return parse_row(base | fields)


SAMM_ROW = row(id="samm_006_1_2_1", dataset="samm", image_id="006_1_2", subject="6", filename="006_1_2")


def test_flat_layout_is_found_first(tmp_path):
    frames(tmp_path / "samm" / "006_1_2", ["006_05562.jpg"])
    frames(tmp_path / "SAMM" / "006" / "006_1_2", ["006_05562.jpg"])  # native layout too: flat wins
    found = MediaIndex(tmp_path).resolve(SAMM_ROW)
    assert found == tmp_path / "samm" / "006_1_2"


def test_samm_native_layout_and_case_blind_dataset_folder(tmp_path):
    frames(tmp_path / "SAMM" / "006" / "006_1_2", ["006_05562.jpg"])
    assert MediaIndex(tmp_path).resolve(SAMM_ROW) == tmp_path / "SAMM" / "006" / "006_1_2"


def test_clip_names_are_not_matched_loosely(tmp_path):
    frames(tmp_path / "samm" / "006_12", ["a.jpg"])  # folds to the same letters as 006_1_2
    with pytest.raises(ClipNotFoundError, match=r"no clip for question 'samm_006_1_2_1' \(samm/006_1_2\); tried"):
        MediaIndex(tmp_path).resolve(SAMM_ROW)


def test_smic_native_layout(tmp_path):
    clip = frames(tmp_path / "SMIC" / "HS" / "s1" / "micro" / "negative" / "s1_ne_01", ["image000001.jpg"])
    r = row(id="smic_s01_ne_01_1", dataset="smic", image_id="s01_ne_01", subject="s01", filename="s01_ne_01")
    assert MediaIndex(tmp_path).resolve(r) == clip


def test_casme2_layout_and_annotated_frames(tmp_path):
    clip = frames(tmp_path / "CASME II" / "sub01" / "EP02_01f", [f"img{i}.jpg" for i in range(46, 56)])
    r = row(dataset="casme2", subject="1", filename="EP02_01f", onset_frame=47, apex_frame=50, offset_frame=53)
    path = MediaIndex(tmp_path).resolve(r)
    assert path == clip
    w = clip_window(r, open_clip(path), {})
    # img46.jpg is frame 46, as the annotation counts
    assert (w.onset, w.apex, w.offset, w.note) == (47, 50, 53, None)


def test_casme3_rows_labelled_samm_test_find_a_video_and_skip_samm_folders(tmp_path):
    (tmp_path / "samm_test" / "dzw").mkdir(parents=True)
    (tmp_path / "samm_test" / "dzw" / "a1.mp4").write_bytes(b"not this one")
    (tmp_path / "casme3" / "dzw").mkdir(parents=True)
    video = tmp_path / "casme3" / "dzw" / "a1.mp4"
    video.write_bytes(b"x")
    r = row(id="samm_test_dzw_a1_338_1", dataset="samm_test", image_id="dzw_a1_338", subject="dzw", filename="a1",
            onset_frame=338, offset_frame=346)
    assert r.dataset == "casme3"
    index = MediaIndex(tmp_path)
    assert index.resolve(r) == video
    assert not any("samm_test" in str(p) for p in index.candidates(r))


def test_samm_long_video_by_filename_and_clip_map(tmp_path):
    long = frames(tmp_path / "SAMM_longvideos" / "001_2", ["001_2_0001.jpg"])
    r = row(id="samm_test_1_001_2_8906_1", dataset="samm_test", image_id="1_001_2_8906", subject=1, filename="001_2",
            onset_frame=8906, offset_frame=9005)
    assert MediaIndex(tmp_path).resolve(r) == long
    other = frames(tmp_path / "elsewhere" / "clipA", ["1.jpg"])
    (tmp_path / "map.json").write_text(json.dumps({"1_001_2_8906": "elsewhere/clipA"}))
    assert MediaIndex(tmp_path, tmp_path / "map.json").resolve(r) == other


def test_video_field_wins(tmp_path):
    video = tmp_path / "videos" / "x.mkv"
    video.parent.mkdir()
    video.write_bytes(b"x")
    frames(tmp_path / "samm" / "006_1_2", ["1.jpg"])
    r = row(dataset="samm", image_id="006_1_2", video="videos/x.mkv")
    assert MediaIndex(tmp_path).resolve(r) == video


def test_window_defaults_and_the_bad_offset_in_the_samm_test_file(tmp_path):
    clip = open_clip(frames(tmp_path / "c", [f"{i}.jpg" for i in range(101, 121)]))  # frames 101..120
    w = clip_window(row(onset_frame=None), clip, {})
    assert (w.onset, w.apex, w.offset) == (101, 110, 120)  # first, middle, last
    good = [row(id=f"g{i}", dataset="samm", onset_frame=100, offset_frame=100 + span) for i, span in
            enumerate((4, 6, 10))]
    bad = row(id="bad", dataset="samm", onset_frame=105, offset_frame=104)  # as samm_test_3_003_1_1495
    spans = median_spans(good + [bad])
    assert spans == {"samm": 6}
    w = clip_window(bad, clip, spans)
    assert (w.onset, w.offset, w.apex) == (105, 111, 108)
    assert "offset_frame 104 is not after onset_frame 105" in w.note
    with pytest.raises(FrameRangeError, match=r"onset frame 99 of question 'q1' is not in .*c \(frames 101..120\)"):
        clip_window(row(onset_frame=99), clip, {})


def test_video_window_counts_positions():
    video = Clip(Path("v.mp4"), list(range(1, 13)), None, "video")
    w = clip_window(row(onset_frame=3, offset_frame=9), video, {})
    assert (w.onset, w.apex, w.offset) == (3, 6, 9)


def test_missing_media_root_is_a_clear_error(tmp_path):
    with pytest.raises(ClipNotFoundError, match="media root .* is not a folder"):
        MediaIndex(tmp_path / "nope")
