"""Face identities (mellm.faces): two shipped photos, identities made from them, a split by photo."""

import numpy as np
import pytest

from mellm.face import DlibFace, _dlib_models
from mellm.faces import HELD_OUT, TUNING, get_identity, identity_face, make_identity
from mellm.synth import identity_base


def _iod(lm: np.ndarray) -> float:
    return float(np.linalg.norm(lm[36:42].mean(0) - lm[42:48].mean(0)))


def test_the_split_is_by_photo_and_names_are_unique():
    assert {i.photo for i in TUNING} == {"astronaut"} and {i.photo for i in HELD_OUT} == {"hopper"}
    assert not any(i.held_out for i in TUNING) and all(i.held_out for i in HELD_OUT)
    names = [i.name for i in TUNING + HELD_OUT]
    assert len(set(names)) == len(names) == 16
    assert get_identity("hopper-3") == HELD_OUT[3] and get_identity("astronaut-40") == make_identity("astronaut", 40)
    with pytest.raises(ValueError, match="unknown face identity 'nobody'"):
        get_identity("nobody")


@pytest.mark.parametrize("identity", TUNING[:3] + HELD_OUT[:3], ids=lambda i: i.name)
def test_every_identity_is_a_face_with_landmarks_on_it(identity):
    img, lm = identity_face(identity)
    assert img.dtype == np.float32 and img.ndim == 3 and 0 <= img.min() and img.max() <= 255
    h, w = img.shape[:2]
    assert lm.shape == (68, 2) and (lm >= 0).all() and (lm[:, 0] < w).all() and (lm[:, 1] < h).all()
    assert 35 < _iod(lm) < 120  # the photos' faces: ~43 px (astronaut), ~83 px (Hopper)
    again, lm_again = identity_face(type(identity)(**identity.__dict__))  # a fresh key: recomputed
    assert np.array_equal(img, again) and np.array_equal(lm, lm_again)


def test_a_made_identity_changes_the_proportions_it_says():
    base = identity_face(make_identity("hopper", 0))[1]
    wide = make_identity("hopper", 0).__class__("wide", "hopper", mouth_width=0.2, nose_length=0.15)
    lm = identity_face(wide)[1]
    iod = _iod(base)
    mouth = lambda p: p[54, 0] - p[48, 0]  # noqa: E731
    nose = lambda p: p[33, 1] - p[27, 1]  # noqa: E731
    assert mouth(lm) - mouth(base) == pytest.approx(0.2 * iod, abs=0.08 * iod)
    assert nose(lm) - nose(base) == pytest.approx(0.15 * iod, abs=0.08 * iod)
    assert _iod(lm) == pytest.approx(iod, abs=0.05 * iod)  # the eyes were not asked to move


@pytest.mark.parametrize("identity,centre", [("astronaut-2", (170.0, 150.0)), ("hopper-0", (470.0, 330.0)),
                                             ("hopper-3", (180.0, 340.0))])
def test_a_small_face_anywhere_is_the_one_face_in_its_frame_and_is_found_there(identity, centre):
    # 52 px between the eyes off-centre in 640x480: most of the frame lies outside the photo. It
    # must hold no copy of the face (a mirrored border made two to four), and the detector's coarse
    # box, found on a half-size copy below its 80 px window, is refined at full size.
    img, truth = identity_base(identity, 640, 480, 52.0, centre)
    grey = np.clip(img, 0, 255).astype(np.uint8).mean(-1).astype(np.uint8)
    detector, _ = _dlib_models()
    assert len(detector(grey, 1)) == 1
    face = DlibFace().detect(np.repeat(grey[..., None], 3, -1))
    assert np.linalg.norm(face.landmarks - truth, axis=1).mean() < 0.1 * 52.0
