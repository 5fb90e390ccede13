"""Geometric ops: one 2x3 affine per image (crop pixels, source -> destination) moves image, joints and heatmaps.

`affine_matrix` is the single definition of every geometric op; the torch path warps with kornia
`warp_affine`, the CPU twin (`warp_image_numpy`, `warp_keypoints_numpy`) with cv2.warpAffine, both from the
same matrix, bilinear, zero fill, pixel-index coordinates (pixel centres at integers, align_corners=True).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
import torch
from kornia.geometry.transform import warp_affine
from torch import Tensor

from search_spaces.batch import PoseBatch


def affine_matrix(name: str, amount: Tensor, size: tuple[int, int]) -> Tensor:
    """[B, 2, 3] affine of op `name` with signed per-image `amount` [B], about the crop centre.

    ShearX: x += a (y - cy); ShearY: y += a (x - cx); TranslateX/Y: shift by a * W / a * H; Rotate: a degrees,
    counter-clockwise on screen; Scale: zoom by 1 + a; HorizontalFlip: x -> W - 1 - x (amount ignored).
    """
    height, width = size
    one, zero = torch.ones_like(amount), torch.zeros_like(amount)
    shift_x, shift_y = zero, zero
    if name == "ShearX":
        linear = ((one, amount), (zero, one))
    elif name == "ShearY":
        linear = ((one, zero), (amount, one))
    elif name == "TranslateX":
        linear, shift_x = ((one, zero), (zero, one)), amount * width
    elif name == "TranslateY":
        linear, shift_y = ((one, zero), (zero, one)), amount * height
    elif name == "Rotate":
        theta = amount * (math.pi / 180.0)
        cos, sin = torch.cos(theta), torch.sin(theta)
        # image y points down, so a counter-clockwise turn on screen is [[cos, sin], [-sin, cos]]
        linear = ((cos, sin), (-sin, cos))
    elif name == "Scale":
        factor = 1.0 + amount
        linear = ((factor, zero), (zero, factor))
    elif name == "HorizontalFlip":
        linear = ((-one, zero), (zero, one))
    else:
        raise ValueError(f"{name} is not a geometric op")
    rows = [torch.stack(row, dim=-1) for row in linear]
    lin = torch.stack(rows, dim=-2)  # [B, 2, 2]
    centre = torch.tensor([(width - 1) * 0.5, (height - 1) * 0.5], dtype=amount.dtype, device=amount.device)
    offset = centre - lin @ centre + torch.stack([shift_x, shift_y], dim=-1)
    return torch.cat([lin, offset.unsqueeze(-1)], dim=-1)


def transform_points(points: Tensor, matrix: Tensor) -> Tensor:
    """Points [B, J, 2] through affines [B, 2, 3]."""
    return points @ matrix[:, :, :2].transpose(1, 2) + matrix[:, :, 2].unsqueeze(1)


def in_frame(points: Tensor | np.ndarray, size: tuple[int, int]) -> Tensor | np.ndarray:
    """[..., J] bool: the joint lies in the frame, 0 <= x < W and 0 <= y < H (as the dataset and albumentations);
    a tensor for a tensor (the torch ops), an array for an array (the albumentations twins)."""
    height, width = size
    x, y = points[..., 0], points[..., 1]
    return (x >= 0) & (x < width) & (y >= 0) & (y < height)


def heatmap_matrix(matrix: Tensor, crop_size: tuple[int, int], heatmap_size: tuple[int, int]) -> Tensor:
    """The crop affine expressed in heatmap pixels, where x_heatmap = x_crop * w / W (S A S^-1)."""
    sx = heatmap_size[1] / crop_size[1]
    sy = heatmap_size[0] / crop_size[0]
    scale = torch.tensor([sx, sy], dtype=matrix.dtype, device=matrix.device)
    lin = matrix[:, :, :2] * scale.view(1, 2, 1) / scale.view(1, 1, 2)
    offset = matrix[:, :, 2] * scale.view(1, 2)
    return torch.cat([lin, offset.unsqueeze(-1)], dim=-1)


def warp_pose_batch(batch: PoseBatch, matrix: Tensor) -> PoseBatch:
    """Warp images (and heatmaps) by `matrix` [B, 2, 3], move the joints, hide joints that left the frame."""
    images = warp_affine(
        batch.images,
        matrix.to(batch.images.dtype),
        batch.size,
        mode="bilinear",
        padding_mode="zeros",
        align_corners=True,
    )
    return _move_targets(batch.replace(images=images), matrix, permutation=None)


def flip_pose_batch(batch: PoseBatch, permutation: Sequence[int]) -> PoseBatch:
    """Horizontal flip: the image is mirrored exactly (torch.flip), joints and heatmaps follow the flip affine,
    then left and right joints trade places by `permutation`."""
    amount = torch.zeros(len(batch), dtype=batch.keypoints.dtype, device=batch.keypoints.device)
    matrix = affine_matrix("HorizontalFlip", amount, batch.size)
    return _move_targets(batch.replace(images=torch.flip(batch.images, dims=[-1])), matrix, permutation)


def _move_targets(batch: PoseBatch, matrix: Tensor, permutation: Sequence[int] | None) -> PoseBatch:
    """Keypoints and heatmaps through `matrix`, joints reordered by `permutation`, out-of-frame joints hidden."""
    size = batch.size
    keypoints = transform_points(batch.keypoints, matrix.to(batch.keypoints.dtype))
    visible = batch.visible
    heatmaps = batch.heatmaps
    if heatmaps is not None:
        hm_size = (int(heatmaps.shape[2]), int(heatmaps.shape[3]))
        hm_matrix = heatmap_matrix(matrix, size, hm_size).to(heatmaps.dtype)
        heatmaps = warp_affine(
            heatmaps, hm_matrix, hm_size, mode="bilinear", padding_mode="zeros", align_corners=True
        )
    if permutation is not None:
        index = torch.as_tensor(list(permutation), dtype=torch.long, device=keypoints.device)
        keypoints, visible = keypoints[:, index], visible[:, index]
        heatmaps = None if heatmaps is None else heatmaps[:, index]
    visible = visible * in_frame(keypoints, size).to(visible.dtype)
    return PoseBatch(images=batch.images, keypoints=keypoints, visible=visible, heatmaps=heatmaps)


def affine_matrix_numpy(name: str, amount: float, size: tuple[int, int]) -> np.ndarray:
    """The same affine as `affine_matrix`, for one image, as float64 numpy (the CPU twin's matrix)."""
    matrix = affine_matrix(name, torch.tensor([amount], dtype=torch.float64), size)
    return matrix[0].numpy()


def warp_image_numpy(image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """cv2 twin of the kornia warp: bilinear, zero fill, same output size."""
    height, width = image.shape[:2]
    return cv2.warpAffine(
        image,
        matrix,
        (width, height),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )


def warp_keypoints_numpy(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Points [N, 2] through a 2x3 affine, keeping the input dtype."""
    out = points[:, :2].astype(np.float64) @ matrix[:, :2].T + matrix[:, 2]
    return out.astype(points.dtype)
