"""Clip reading: frame numbering as the annotation files count."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mellm.errors import FrameRangeError
from mellm.video import frame_numbers, open_clip


def test_frame_numbers_follow_file_names_when_they_number_the_frames():
    assert frame_numbers([Path("img1.jpg"), Path("img2.jpg"), Path("img10.jpg")]) == [1, 2, 10]
    assert frame_numbers([Path("006_05562.jpg"), Path("006_05563.jpg")]) == [5562, 5563]
    assert frame_numbers([Path("a.jpg"), Path("b.jpg")]) == [1, 2]  # no numbers: positions
    assert frame_numbers([Path("x_5.jpg"), Path("x_5b.jpg")]) == [1, 2]  # repeated number: positions


def test_casme2_folder_starting_at_img46(tmp_path):
    for i in (46, 47, 48, 9, 10):  # natural order, not lexical: img9 before img10 is irrelevant here
        Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(tmp_path / f"img{i}.png")
    clip = open_clip(tmp_path)
    assert clip.frame_numbers == [9, 10, 46, 47, 48]
    assert clip.read(46)[0, 0, 0] == 46
    assert clip.numbers_between(10, 47) == [10, 46, 47]
    with pytest.raises(FrameRangeError, match=r"frame 11 is out of range .* \(frames 9..48\)"):
        clip.read(11)


def test_inter_coded_is_known_from_the_codec_not_from_key_frame_flags(tmp_path):
    """FFV1 flags its context resets as key frames but codes every frame on its own; H.264 codes
    frames from others (spotting discounts its key frames and refresh bursts)."""
    from mellm.synth_long import LongConfig, generate_long
    from mellm.video import FrameStream

    for codec, inter in (("ffv1", False), ("h264", True)):
        (v,) = generate_long(tmp_path / codec, 1, seed=2, config=LongConfig(seconds=3, fps=30, width=160, height=120,
                                                                           face_iod=40, codec=codec))
        stream = FrameStream(tmp_path / codec / v.path)
        assert stream.inter_coded is False  # not known before decoding
        assert sum(1 for _ in stream) == 90
        assert (stream.codec, stream.inter_coded) == (codec, inter)
