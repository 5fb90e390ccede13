"""Top-down crop geometry: box -> centre/scale, and the one 2x3 affine that maps image pixels to crop pixels.

Coordinates everywhere are pixel-index coordinates (the centre of pixel (i, j) is at x=j, y=i), the convention
of cv2.warpAffine and of COCO keypoints. The crop, the keypoint transform and the heatmap back-projection all
use `crop_affine`, so they agree exactly.
"""

from __future__ import annotations

import math

import numpy as np

BOX_PADDING = 1.25  # the usual top-down margin around a person box


def box_to_center_scale(bbox_xywh: np.ndarray | list[float], aspect_ratio: float,
                        padding: float = BOX_PADDING) -> tuple[np.ndarray, np.ndarray]:
    """COCO box [x, y, w, h] -> centre (x, y) and scale (w, h) in image px, widened to `aspect_ratio` (= W / H
    of the network input) and padded by `padding`."""
    x, y, w, h = (float(v) for v in bbox_xywh)
    center = np.array([x + w * 0.5, y + h * 0.5], dtype=np.float32)
    if w > aspect_ratio * h:
        h = w / aspect_ratio
    else:
        w = h * aspect_ratio
    scale = np.array([w * padding, h * padding], dtype=np.float32)
    return center, scale


def crop_affine(center: np.ndarray, scale: np.ndarray, output_size: tuple[int, int],
                rotation_deg: float = 0.0) -> np.ndarray:
    """The 2x3 matrix taking image px to crop px: the region of size `scale` (w, h) around `center`, rotated
    by `rotation_deg` (counter-clockwise as seen on screen), fills the `output_size` (H, W) crop.

    crop = T(W/2, H/2) . S(W/w, H/h) . R(rotation) . T(-center)
    """
    out_h, out_w = output_size
    sx = out_w / float(scale[0])
    sy = out_h / float(scale[1])
    theta = math.radians(rotation_deg)
    cos, sin = math.cos(theta), math.sin(theta)
    # image y points down, so a counter-clockwise turn on screen is [[cos, sin], [-sin, cos]]
    linear = np.array([[sx * cos, sx * sin], [-sy * sin, sy * cos]], dtype=np.float64)
    offset = np.array([out_w * 0.5, out_h * 0.5]) - linear @ np.asarray(center, dtype=np.float64)
    return np.concatenate([linear, offset[:, None]], axis=1)


def apply_affine(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Points [..., 2] (x, y) through a 2x3 affine matrix; keeps the input's float dtype."""
    points = np.asarray(points)
    out = points.astype(np.float64) @ matrix[:, :2].T + matrix[:, 2]
    return out.astype(points.dtype if np.issubdtype(points.dtype, np.floating) else np.float64)
