"""Optical flow backends, head-motion removal and optical strain.

A backend is any callable `(prev_gray, next_gray) -> flow` with flow an (H, W, 2) float32 array
of (dx, dy) pixel displacements from prev to next. Dual TV-L1 is the field's default; DIS and
Farneback are fast. A learned model joins by `register_flow_backend("name", factory)`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import cv2
import numpy as np


class FlowBackend(Protocol):
    name: str

    def __call__(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray: ...


@dataclass
class TVL1:
    """Dual TV-L1 (OpenCV contrib), tuned for sub-2-px motion on a 256 px face: three pyramid
    levels, one warp and capped iterations. OpenCV's defaults (5 levels, 5 warps, 30x10
    iterations) spend their time on large displacements MEs never have; on synthetic MEs they
    were 7x slower and less accurate (bench/results/perception.md)."""

    name: str = "tvl1"
    nscales: int = 3
    warps: int = 1
    inner_iterations: int = 15
    outer_iterations: int = 5
    epsilon: float = 0.01
    tau: float = 0.25
    lambda_: float = 0.15
    theta: float = 0.3
    scale_step: float = 0.5
    median_filtering: int = 5
    _impl: object = field(default=None, repr=False, compare=False)

    def __call__(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        if self._impl is None:
            self._impl = cv2.optflow.DualTVL1OpticalFlow_create(
                tau=self.tau, lambda_=self.lambda_, theta=self.theta, nscales=self.nscales,
                warps=self.warps, epsilon=self.epsilon, innnerIterations=self.inner_iterations,
                outerIterations=self.outer_iterations, scaleStep=self.scale_step,
                medianFiltering=self.median_filtering,
            )
        return self._impl.calc(prev, nxt, None)

    def __getstate__(self):  # OpenCV objects don't pickle; rebuild in the worker process
        return {**self.__dict__, "_impl": None}


@dataclass
class DIS:
    """Dense Inverse Search. finest_scale 0 refines down to full resolution: 5x slower than
    OpenCV's MEDIUM preset but twice as accurate on sub-pixel motion."""

    name: str = "dis"
    finest_scale: int = 0
    _impl: object = field(default=None, repr=False, compare=False)

    def __call__(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        if self._impl is None:
            self._impl = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
            self._impl.setFinestScale(self.finest_scale)
        return self._impl.calc(prev, nxt, None)

    def __getstate__(self):
        return {**self.__dict__, "_impl": None}


@dataclass
class Farneback:
    name: str = "farneback"
    levels: int = 3
    winsize: int = 15
    iterations: int = 3

    def __call__(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        return cv2.calcOpticalFlowFarneback(prev, nxt, None, 0.5, self.levels, self.winsize, self.iterations, 5, 1.1, 0)


def _meflownet(checkpoint: str | None = None) -> FlowBackend:
    from mellm.meflow.backend import MEFlowBackend  # torch, only when asked for

    return MEFlowBackend(checkpoint)


FLOW_BACKENDS: dict[str, Callable[..., FlowBackend]] = {"tvl1": TVL1, "dis": DIS, "farneback": Farneback,
                                                        "meflownet": _meflownet}
CHECKPOINT_BACKENDS = {"meflownet"}  # learned backends: their factory takes checkpoint=PATH


def register_flow_backend(name: str, factory: Callable[..., FlowBackend], takes_checkpoint: bool = False) -> None:
    FLOW_BACKENDS[name] = factory
    if takes_checkpoint:
        CHECKPOINT_BACKENDS.add(name)


def get_flow(name: str, checkpoint: str | None = None) -> FlowBackend:
    if name not in FLOW_BACKENDS:
        raise ValueError(f"unknown flow method {name!r}; known: {', '.join(sorted(FLOW_BACKENDS))}")
    if name in CHECKPOINT_BACKENDS:
        return FLOW_BACKENDS[name](checkpoint=checkpoint)
    return FLOW_BACKENDS[name]()


# --- head (global) motion ------------------------------------------------------------------

HEAD_MOTION_METHODS = ("affine", "median", "nose", "none")


@dataclass
class HeadMotion:
    method: str
    params: list[float]  # translation (dx, dy) for "nose"/"median"; 6 affine terms for "affine"
    mean_px: float  # mean magnitude of the removed field inside the face

    def to_dict(self) -> dict:
        return {"method": self.method, "params": [round(p, 4) for p in self.params], "mean_px": round(self.mean_px, 4)}


def remove_head_motion(flow: np.ndarray, stable: np.ndarray, nose: np.ndarray, method: str = "affine") -> tuple[np.ndarray, HeadMotion]:
    """Subtract global (head) motion from `flow`.

    stable: mask of face pixels that expressions move little (see regions.stable_mask).
    nose: mask of the nose-tip box.

    "affine" (default): an affine field fitted to the stable pixels by iteratively reweighted least
    squares (Tukey weights), so what expression motion leaks into them counts as outliers; it also
    removes the small rotations and scalings of a moving head, which translation-only methods leave
    behind as spurious, opposite motion on the two sides of the face.
    "median": the median flow of the stable pixels (translation only).
    "nose": the mean flow of the nose box (the field's usual practice; translation only).
    "none": nothing.
    """
    if method == "none":
        return flow, HeadMotion("none", [], 0.0)
    if method in ("nose", "median"):
        t = flow[nose].mean(0) if method == "nose" else np.median(flow[stable], 0)
        field_ = np.broadcast_to(t.astype(np.float32), flow.shape)
        params = [float(t[0]), float(t[1])]
    elif method == "affine":
        field_, params = _robust_affine(flow, stable)
    else:
        raise ValueError(f"unknown head-motion method {method!r}; known: affine, median, nose, none")
    mean_px = float(np.linalg.norm(field_[stable], axis=-1).mean())
    return (flow - field_).astype(np.float32), HeadMotion(method, params, mean_px)


def expression_flow(backend: FlowBackend, prev: np.ndarray, nxt: np.ndarray, stable: np.ndarray, nose: np.ndarray,
                    method: str = "affine") -> tuple[np.ndarray, HeadMotion]:
    """Flow from prev to next with head motion taken out: by the backend's own head flow when it
    has one (`decompose`, e.g. meflownet), else by remove_head_motion(method). "none" keeps it all."""
    decompose = getattr(backend, "decompose", None)
    if decompose is not None and method != "none":
        facial, head = decompose(prev, nxt)
        if head is not None:
            t = head[stable].mean(0)
            mean_px = float(np.linalg.norm(head[stable], axis=-1).mean())
            return (facial - head).astype(np.float32), HeadMotion(f"{backend.name}-head", [float(t[0]), float(t[1])], mean_px)
        return remove_head_motion(facial, stable, nose, method)
    return remove_head_motion(backend(prev, nxt), stable, nose, method)


def _robust_affine(flow: np.ndarray, mask: np.ndarray, iterations: int = 4, step: int = 2) -> tuple[np.ndarray, list[float]]:
    h, w = flow.shape[:2]
    ys, xs = np.nonzero(mask[::step, ::step])
    ys, xs = ys * step, xs * step
    # Centred, scaled coordinates keep the normal equations well conditioned.
    cx, cy, s = w / 2, h / 2, max(w, h) / 2
    design = np.stack([np.ones_like(xs, dtype=np.float64), (xs - cx) / s, (ys - cy) / s], 1)
    targets = flow[ys, xs].astype(np.float64)
    weights = np.ones(len(xs))
    coef = np.zeros((3, 2))
    for _ in range(iterations):
        sw = np.sqrt(weights)[:, None]
        coef, *_ = np.linalg.lstsq(design * sw, targets * sw, rcond=None)
        resid = np.linalg.norm(targets - design @ coef, axis=1)
        scale = 4.685 * max(1.4826 * np.median(resid), 0.05)
        weights = np.clip(1 - (resid / scale) ** 2, 0, None) ** 2
    gx, gy = np.meshgrid((np.arange(w) - cx) / s, (np.arange(h) - cy) / s)
    field_ = coef[0] + gx[..., None] * coef[1] + gy[..., None] * coef[2]
    return field_.astype(np.float32), [float(v) for v in coef.ravel()]


def optical_strain(flow: np.ndarray) -> np.ndarray:
    """Magnitude of the infinitesimal strain tensor of the flow, per pixel."""
    du_dy, du_dx = np.gradient(flow[..., 0])
    dv_dy, dv_dx = np.gradient(flow[..., 1])
    shear = 0.5 * (du_dy + dv_dx)
    return np.sqrt(du_dx**2 + dv_dy**2 + 2 * shear**2).astype(np.float32)
