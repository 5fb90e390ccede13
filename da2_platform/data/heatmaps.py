"""Heatmap codec: Gaussian targets from crop keypoints, the paper's decoder and DARK, flip-test helpers.

Heatmap pixel = crop pixel x (w / W): with a stride-4 network, heatmap pixel j sits on crop pixel 4j, the
alignment of a ResNet's C2 features. Targets are unbiased Gaussians (amplitude 1 at the sub-pixel joint), so
DARK recovers joints to a small fraction of a heatmap pixel.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from search_spaces.ops import flip_permutation

DECODE_METHODS = ("standard", "dark")
HEATMAP_STRIDE = 4
BLUR_KERNEL = 11  # the post-processing blur of the paper and of DARK (cv2's rule gives sigma 2 for 11 taps)


def heatmap_size_for(input_size: tuple[int, int]) -> tuple[int, int]:
    """Network input (H, W) -> heatmap (H/4, W/4)."""
    return int(input_size[0]) // HEATMAP_STRIDE, int(input_size[1]) // HEATMAP_STRIDE


MIN_SIGMA = 1.0  # heatmap px: a narrower Gaussian is mostly one pixel, a sparse target that small models learn slowly


def default_sigma(heatmap_size: tuple[int, int]) -> float:
    """2.0 at 64x48 and proportional to the heatmap width (3.0 at 96x72), never under MIN_SIGMA (the 16x12 heatmaps
    of a 64x48 input get 1.0, not 0.5: from scratch on SynthPose with ResNet-18, 300 steps reached val AP 0.029 with
    1.0 against 0.009 with 0.5; benchmarks/results/calibrate_cpu.json)."""
    return max(MIN_SIGMA, 2.0 * float(heatmap_size[1]) / 48.0)


def render_heatmaps(keypoints: Tensor, visible: Tensor, input_size: tuple[int, int],
                    heatmap_size: tuple[int, int] | None = None,
                    sigma: float | None = None) -> tuple[Tensor, Tensor]:
    """Keypoints [B, J, 2] in crop px and visibility [B, J] -> heatmaps [B, J, h, w] and weights [B, J].

    A weight is 0 where the joint is not visible or its Gaussian lies wholly (beyond 3 sigma) off the heatmap;
    such joints get an all-zero map. Runs on the keypoints' device.
    """
    squeeze = keypoints.dim() == 2
    if squeeze:
        keypoints, visible = keypoints[None], visible[None]
    h, w = heatmap_size or heatmap_size_for(input_size)
    sigma = float(sigma if sigma is not None else default_sigma((h, w)))
    device = keypoints.device
    points = torch.nan_to_num(keypoints.float(), nan=-1e6)
    mu_x = points[..., 0] * (w / float(input_size[1]))
    mu_y = points[..., 1] * (h / float(input_size[0]))
    xs = torch.arange(w, device=device, dtype=torch.float32)
    ys = torch.arange(h, device=device, dtype=torch.float32)
    gauss_x = torch.exp(-((xs - mu_x[..., None]) ** 2) / (2 * sigma**2))
    gauss_y = torch.exp(-((ys - mu_y[..., None]) ** 2) / (2 * sigma**2))
    heatmaps = gauss_y[..., :, None] * gauss_x[..., None, :]
    reach = 3 * sigma
    on_map = (mu_x + reach >= 0) & (mu_x - reach <= w - 1) & (mu_y + reach >= 0) & (mu_y - reach <= h - 1)
    weights = ((visible.to(device) > 0) & on_map).float()
    heatmaps = heatmaps * weights[..., None, None]
    if squeeze:
        return heatmaps[0], weights[0]
    return heatmaps, weights


def blur_heatmaps(heatmaps: Tensor, kernel_size: int = BLUR_KERNEL) -> Tensor:
    """Gaussian blur of each map (zero padding), rescaled so every map keeps its original maximum."""
    sigma = 0.3 * ((kernel_size - 1) * 0.5 - 1) + 0.8
    h, w = heatmaps.shape[-2:]
    maps = heatmaps.float()
    # separable blur as two band matrices: exact zero padding and far faster than a 1-channel conv2d on CPU
    rows = _band_matrix(h, kernel_size, sigma).to(maps.device)
    cols = _band_matrix(w, kernel_size, sigma).to(maps.device)
    blurred = rows @ maps @ cols.T
    old_max = maps.amax(dim=(-2, -1), keepdim=True)
    new_max = blurred.amax(dim=(-2, -1), keepdim=True)
    return blurred * torch.where(new_max > 0, old_max / new_max.clamp_min(1e-12), torch.zeros_like(new_max))


def _band_matrix(size: int, kernel_size: int, sigma: float) -> Tensor:
    """[size, size] matrix M with M[i, j] = g(i - j) for |i - j| <= kernel_size // 2 (normalised 1-D Gaussian)."""
    taps = torch.arange(kernel_size, dtype=torch.float32) - (kernel_size - 1) / 2
    kernel = torch.exp(-(taps**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    offset = torch.arange(size)[:, None] - torch.arange(size)[None, :]
    inside = offset.abs() <= kernel_size // 2
    return torch.where(inside, kernel[(offset + kernel_size // 2).clamp(0, kernel_size - 1)], torch.zeros(()))


def decode_heatmaps(heatmaps: Tensor | np.ndarray, method: str = "standard",
                    blur_kernel: int = BLUR_KERNEL) -> tuple[np.ndarray, np.ndarray]:
    """Heatmaps [B, J, h, w] -> coords [B, J, 2] in heatmap px and scores [B, J] (each map's maximum).

    "standard" (the paper): blur, argmax, then a quarter pixel toward the higher neighbour on each axis.
    "dark": argmax, then one Newton step on the log of the blurred map (Zhang et al., DARK, CVPR 2020).
    """
    if method not in DECODE_METHODS:
        raise ValueError(f"decode method must be one of {DECODE_METHODS}, got {method!r}")
    maps = torch.as_tensor(heatmaps).detach().float().cpu()
    if maps.dim() != 4:
        raise ValueError(f"heatmaps must be [B, J, h, w], got shape {tuple(maps.shape)}")
    b, j, h, w = maps.shape
    scores = maps.flatten(2).amax(-1).numpy()
    blurred = blur_heatmaps(maps, blur_kernel).reshape(b * j, h, w).numpy()
    peak_source = blurred if method == "standard" else maps.reshape(b * j, h, w).numpy()
    flat_index = peak_source.reshape(b * j, -1).argmax(-1)
    px, py = flat_index % w, flat_index // w
    coords = np.stack([px, py], axis=-1).astype(np.float32)
    if method == "standard":
        coords += _quarter_offsets(blurred, px, py)
    else:
        coords += _dark_offsets(blurred, px, py)
    return coords.reshape(b, j, 2), scores.astype(np.float32)


def _quarter_offsets(maps: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    n, h, w = maps.shape
    rows = np.arange(n)
    offsets = np.zeros((n, 2), dtype=np.float32)
    inner_x = (px >= 1) & (px <= w - 2)
    inner_y = (py >= 1) & (py <= h - 2)
    right, left = np.clip(px + 1, 0, w - 1), np.clip(px - 1, 0, w - 1)
    down, up = np.clip(py + 1, 0, h - 1), np.clip(py - 1, 0, h - 1)
    offsets[:, 0] = np.where(inner_x, 0.25 * np.sign(maps[rows, py, right] - maps[rows, py, left]), 0.0)
    offsets[:, 1] = np.where(inner_y, 0.25 * np.sign(maps[rows, down, px] - maps[rows, up, px]), 0.0)
    return offsets


def _dark_offsets(maps: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    n, h, w = maps.shape
    rows = np.arange(n)
    log_maps = np.log(np.maximum(maps, 1e-10))
    inner = (px >= 1) & (px <= w - 2) & (py >= 1) & (py <= h - 2)
    x, y = np.clip(px, 1, w - 2), np.clip(py, 1, h - 2)

    def at(dy: int, dx: int) -> np.ndarray:
        return log_maps[rows, y + dy, x + dx].astype(np.float64)

    centre = at(0, 0)
    dx = 0.5 * (at(0, 1) - at(0, -1))
    dy = 0.5 * (at(1, 0) - at(-1, 0))
    dxx = at(0, 1) - 2 * centre + at(0, -1)
    dyy = at(1, 0) - 2 * centre + at(-1, 0)
    dxy = 0.25 * (at(1, 1) - at(-1, 1) - at(1, -1) + at(-1, -1))
    det = dxx * dyy - dxy**2
    # a Newton step is only meaningful at a maximum: negative-definite Hessian
    usable = inner & (dxx < 0) & (det > 1e-12)
    safe_det = np.where(usable, det, 1.0)
    off_x = -(dyy * dx - dxy * dy) / safe_det
    off_y = -(dxx * dy - dxy * dx) / safe_det
    offsets = np.stack([off_x, off_y], axis=-1)
    offsets = np.where(usable[:, None], np.clip(offsets, -1.0, 1.0), 0.0)
    return offsets.astype(np.float32)


def heatmap_to_image_coords(coords: np.ndarray, center: np.ndarray, scale: np.ndarray,
                            heatmap_size: tuple[int, int]) -> np.ndarray:
    """Coords [B, J, 2] in heatmap px -> image px: the inverse of `geometry.crop_affine` (no rotation)
    composed with the crop -> heatmap scaling."""
    coords = np.asarray(coords, dtype=np.float64)
    center = np.asarray(center, dtype=np.float64).reshape(-1, 1, 2)
    scale = np.asarray(scale, dtype=np.float64).reshape(-1, 1, 2)
    h, w = heatmap_size
    px_per_cell = scale / np.array([w, h], dtype=np.float64)
    return (coords * px_per_cell + center - scale * 0.5).astype(np.float32)


# ---- flip test -------------------------------------------------------------------------------------------

def flip_pairs_from_names(names: Sequence[str]) -> list[tuple[int, int]]:
    """(left, right) index pairs from keypoint names: "left_x" <-> "right_x" (also "l_x"/"r_x")."""
    index = {name: i for i, name in enumerate(names)}
    pairs = []
    for i, name in enumerate(names):
        for left, right in (("left", "right"), ("l_", "r_")):
            if name.startswith(left):
                partner = index.get(right + name[len(left):])
                if partner is not None:
                    pairs.append((i, partner))
                break
    return pairs


def flip_heatmaps_back(heatmaps: Tensor, flip_pairs: Sequence[tuple[int, int]], shift: bool = True) -> Tensor:
    """Heatmaps [B, J, h, w] predicted on a mirrored crop -> heatmaps of the original crop: mirror the width,
    swap left/right channels and, with `shift`, move one pixel right (a mirrored crop pixel x lands on W-1-x,
    which after mirroring back leaves the peak 0.75 heatmap px to the left)."""
    flipped = heatmaps.flip(-1)[:, flip_permutation(flip_pairs, heatmaps.shape[1])]
    if shift:
        flipped = torch.cat([flipped[..., :1], flipped[..., :-1]], dim=-1)
    return flipped

