"""The optical-flow colour map: HSV direction/magnitude over the grey onset face, with a legend.

This is the picture MELLM v1 and the MEGC entries feed a VLM. The magnitude scale is fixed
(FULL_SCALE_PX gives full brightness), so maps of different clips are comparable.
"""

from __future__ import annotations

import cv2
import numpy as np

FULL_SCALE_PX = 2.0
LEGEND_HEIGHT = 40


def colourise(flow: np.ndarray, full_scale: float = FULL_SCALE_PX) -> tuple[np.ndarray, np.ndarray]:
    """(RGB colour of each flow vector, its strength in [0, 1]). Hue follows the image-coordinate
    direction with up = 90 degrees, so the legend wheel reads like a compass."""
    dx, dy = flow[..., 0], -flow[..., 1]
    mag = np.hypot(dx, dy)
    hue = (np.degrees(np.arctan2(dy, dx)) % 360) / 2  # OpenCV hue is 0..180
    strength = np.clip(mag / full_scale, 0, 1)
    hsv = np.stack([hue, np.full_like(hue, 255), 255 * np.sqrt(strength)], -1).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB), strength


def _legend(width: int, full_scale: float) -> np.ndarray:
    bar = np.full((LEGEND_HEIGHT, width, 3), 255, np.uint8)
    r = LEGEND_HEIGHT // 2 - 3
    ys, xs = np.mgrid[-r:r + 1, -r:r + 1].astype(np.float32)
    wheel, _ = colourise(np.stack([xs, ys], -1) * (full_scale / r), full_scale)
    inside = (xs**2 + ys**2) <= r * r
    cx = 4 + r
    patch = bar[3:3 + 2 * r + 1, cx - r:cx + r + 1]
    patch[inside] = wheel[inside]
    font, colour = cv2.FONT_HERSHEY_SIMPLEX, (40, 40, 40)
    cv2.putText(bar, "hue: direction of motion (wheel)", (2 * r + 12, 15), font, 0.36, colour, 1, cv2.LINE_AA)
    cv2.putText(bar, f"brightness: magnitude, full at {full_scale:g} px", (2 * r + 12, 31), font, 0.36, colour, 1, cv2.LINE_AA)
    return bar


def flow_colour_map(flow: np.ndarray, onset_gray: np.ndarray, full_scale: float = FULL_SCALE_PX, legend: bool = True) -> np.ndarray:
    """RGB image: the flow's colours blended over the grey onset frame (by motion strength)."""
    colour, strength = colourise(flow, full_scale)
    grey = cv2.cvtColor(onset_gray, cv2.COLOR_GRAY2RGB).astype(np.float32) * 0.6
    alpha = np.sqrt(strength)[..., None]
    out = (grey * (1 - alpha) + colour.astype(np.float32) * alpha).astype(np.uint8)
    if legend:
        out = np.vstack([out, _legend(out.shape[1], full_scale)])
    return out


def _magnitude_legend(width: int, full_scale: float) -> np.ndarray:
    bar = np.full((LEGEND_HEIGHT, width, 3), 255, np.uint8)
    x0, x1 = 8, width - 8
    ramp = np.linspace(0, 255, x1 - x0).astype(np.uint8)[None, :]
    strip = cv2.cvtColor(cv2.applyColorMap(ramp, cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB)
    bar[4:16, x0:x1] = strip
    font, colour = cv2.FONT_HERSHEY_SIMPLEX, (40, 40, 40)
    cv2.putText(bar, "0 px", (x0, 31), font, 0.36, colour, 1, cv2.LINE_AA)
    label = f"{full_scale:g} px or more"
    (w, _), _ = cv2.getTextSize(label, font, 0.36, 1)
    cv2.putText(bar, label, (x1 - w, 31), font, 0.36, colour, 1, cv2.LINE_AA)
    cv2.putText(bar, "magnitude", ((width - 60) // 2, 31), font, 0.36, colour, 1, cv2.LINE_AA)
    return bar


def magnitude_overlay(flow: np.ndarray, onset_gray: np.ndarray, full_scale: float = FULL_SCALE_PX,
                      legend: bool = True) -> np.ndarray:
    """RGB image: flow magnitude as a heat map (inferno, 0 .. full_scale px) over the grey onset face,
    opaque where motion is strong; the direction-free companion of `flow_colour_map`, for people."""
    strength = np.clip(np.linalg.norm(flow, axis=-1) / full_scale, 0, 1)
    heat = cv2.cvtColor(cv2.applyColorMap((255 * strength).astype(np.uint8), cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB)
    grey = cv2.cvtColor(onset_gray, cv2.COLOR_GRAY2RGB).astype(np.float32)
    alpha = np.sqrt(strength)[..., None]
    out = (grey * (1 - alpha) + heat.astype(np.float32) * alpha).astype(np.uint8)
    if legend:
        out = np.vstack([out, _magnitude_legend(out.shape[1], full_scale)])
    return out
