"""Photometric ops, each as a batched torch function and its uint8 numpy/cv2 twin, side by side.

Torch functions take images [B, 3, H, W] float in [0, 1], the signed per-image amount [B] (see `OPS` for the
unit of each op) and per-image draws [B, 2] uniform in [0, 1); twins take one uint8 HWC RGB image, the amount
as a float and the draws as two floats, and return uint8. Both compute in float32 from the same formula, so
they differ by the final rounding to uint8 (and cv2's fixed-point blur kernels).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import cv2
import kornia
import numpy as np
import torch
from torch import Tensor

GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma, as kornia.color.rgb_to_grayscale
CUTOUT_FILL_LEVEL = 128  # mid-grey occluder (uint8 level)
GAUSSIAN_KERNEL_SIZE = (
    13  # covers +-3 sigma at the largest sigma (2.0 px); fixed so sigma stays differentiable
)
MOTION_KERNEL_SIZE = 11  # the longest streak (11 px) fits along the kernel's axes

TorchOp = Callable[[Tensor, Tensor, Tensor], Tensor]
NumpyOp = Callable[[np.ndarray, float, np.ndarray], np.ndarray]


def _per_image(values: Tensor) -> Tensor:
    return values.view(-1, 1, 1, 1)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def _levels() -> np.ndarray:
    """The 256 uint8 levels as float32 intensities in [0, 1], for look-up tables."""
    return np.arange(256, dtype=np.float32) / np.float32(255.0)


def _apply_lut(image: np.ndarray, table: np.ndarray) -> np.ndarray:
    return cv2.LUT(image, _to_uint8(table))


# Brightness: additive, x + a (kornia adjust_brightness)
def brightness(images: Tensor, amount: Tensor, draws: Tensor) -> Tensor:
    return kornia.enhance.adjust_brightness(images, amount)


def brightness_numpy(image: np.ndarray, amount: float, draws: np.ndarray) -> np.ndarray:
    return _apply_lut(image, np.clip(_levels() + np.float32(amount), 0.0, 1.0))


# Contrast: blend with the image's mean grey level by factor 1 + a (kornia adjust_contrast_with_mean_subtraction)
def contrast(images: Tensor, amount: Tensor, draws: Tensor) -> Tensor:
    return kornia.enhance.adjust_contrast_with_mean_subtraction(images, 1.0 + amount)


def contrast_numpy(image: np.ndarray, amount: float, draws: np.ndarray) -> np.ndarray:
    factor = np.float32(1.0 + amount)
    mean = np.float32(_gray(image).mean())
    return _apply_lut(image, np.clip(_levels() * factor + mean * (np.float32(1.0) - factor), 0.0, 1.0))


def _gray(image: np.ndarray) -> np.ndarray:
    weights = np.asarray(GRAY_WEIGHTS, dtype=np.float32) / np.float32(255.0)
    return image.astype(np.float32) @ weights


# Color: blend with the per-pixel grey image by factor 1 + a (kornia adjust_saturation_with_gray_subtraction)
def color(images: Tensor, amount: Tensor, draws: Tensor) -> Tensor:
    return kornia.enhance.adjust_saturation_with_gray_subtraction(images, 1.0 + amount)


def color_numpy(image: np.ndarray, amount: float, draws: np.ndarray) -> np.ndarray:
    factor = np.float32(1.0 + amount)
    rgb = image.astype(np.float32) / np.float32(255.0)
    blended = rgb * factor + _gray(image)[..., None] * (np.float32(1.0) - factor)
    return _to_uint8(np.clip(blended, 0.0, 1.0))


# Sharpness: PIL's enhance, blend with a 3x3 smoothed copy by factor 1 + a (kornia sharpness)
def sharpness(images: Tensor, amount: Tensor, draws: Tensor) -> Tensor:
    return kornia.enhance.sharpness(images, 1.0 + amount)


_SMOOTH_KERNEL = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=np.float32) / np.float32(13.0)


def sharpness_numpy(image: np.ndarray, amount: float, draws: np.ndarray) -> np.ndarray:
    rgb = image.astype(np.float32) / np.float32(255.0)
    smooth = np.clip(cv2.filter2D(rgb, -1, _SMOOTH_KERNEL, borderType=cv2.BORDER_REFLECT_101), 0.0, 1.0)
    degenerate = rgb.copy()  # the one-pixel border keeps the original, as PIL and kornia do
    degenerate[1:-1, 1:-1] = smooth[1:-1, 1:-1]
    return _to_uint8(np.clip(degenerate + (rgb - degenerate) * np.float32(1.0 + amount), 0.0, 1.0))


# Solarize: invert intensities above 1 - a (a = 0: unchanged, a = 1: everything above 0 inverted)
def solarize(images: Tensor, amount: Tensor, draws: Tensor) -> Tensor:
    threshold = _per_image(1.0 - amount)
    return torch.where(images > threshold, 1.0 - images, images)


def solarize_numpy(image: np.ndarray, amount: float, draws: np.ndarray) -> np.ndarray:
    levels = _levels()
    threshold = np.float32(1.0) - np.float32(amount)
    return _apply_lut(image, np.where(levels > threshold, np.float32(1.0) - levels, levels))


# Posterize: keep the top 8 - round(a) bits of each uint8 level; image gradient straight through
def posterize(images: Tensor, amount: Tensor, draws: Tensor) -> Tensor:
    step = _per_image(torch.pow(2.0, torch.round(amount)))
    levels = torch.round(images * 255.0)
    hard = torch.floor(levels / step) * step / 255.0
    return images + (hard - images).detach()


def posterize_numpy(image: np.ndarray, amount: float, draws: np.ndarray) -> np.ndarray:
    dropped = round(amount)
    mask = np.uint8((0xFF << dropped) & 0xFF)
    return image & mask


# Equalize: PIL's per-channel histogram equalisation (kornia equalize); image gradient straight through
def equalize(images: Tensor, amount: Tensor, draws: Tensor) -> Tensor:
    hard = kornia.enhance.equalize(images.clamp(0.0, 1.0))
    return images + (hard - images).detach()


def equalize_numpy(image: np.ndarray, amount: float, draws: np.ndarray) -> np.ndarray:
    out = np.empty_like(image)
    for channel in range(image.shape[2]):
        plane = np.ascontiguousarray(image[:, :, channel])
        histogram = np.bincount(plane.ravel(), minlength=256)
        last_count = histogram[np.flatnonzero(histogram)[-1]]
        step = (histogram.sum() - last_count) // 255
        if step == 0:
            out[:, :, channel] = plane
            continue
        table = (np.cumsum(histogram) + step // 2) // step
        table = np.clip(np.concatenate([[0], table[:-1]]), 0, 255).astype(np.uint8)
        out[:, :, channel] = cv2.LUT(plane, table)
    return out


# AutoContrast: stretch each channel to the full [0, 1] range
def auto_contrast(images: Tensor, amount: Tensor, draws: Tensor) -> Tensor:
    low = images.amin(dim=(2, 3), keepdim=True)
    high = images.amax(dim=(2, 3), keepdim=True)
    spread = high - low
    stretched = (images - low) / torch.where(spread > 0, spread, torch.ones_like(spread))
    return torch.where(spread > 0, stretched, images)


def auto_contrast_numpy(image: np.ndarray, amount: float, draws: np.ndarray) -> np.ndarray:
    out = np.empty_like(image)
    levels = _levels()
    for channel in range(image.shape[2]):
        plane = np.ascontiguousarray(image[:, :, channel])
        low, high = levels[int(plane.min())], levels[int(plane.max())]
        if high > low:
            out[:, :, channel] = _apply_lut(plane, np.clip((levels - low) / (high - low), 0.0, 1.0))
        else:
            out[:, :, channel] = plane
    return out


# Cutout: a mid-grey square of side a * min(H, W) centred at (draws[0] * W, draws[1] * H), clipped to the crop
def cutout_box(amount: Tensor, draws: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
    """Per-image square (x0, y0, side) in whole pixels; shared by both implementations."""
    height, width = size
    side = torch.round(amount * min(height, width))
    x0 = torch.floor(draws[:, 0] * width) - torch.floor(side / 2)
    y0 = torch.floor(draws[:, 1] * height) - torch.floor(side / 2)
    return x0, y0, side


def cutout(images: Tensor, amount: Tensor, draws: Tensor) -> Tensor:
    height, width = images.shape[2:]
    x0, y0, side = cutout_box(amount, draws, (height, width))
    xs = torch.arange(width, device=images.device, dtype=images.dtype).view(1, 1, width)
    ys = torch.arange(height, device=images.device, dtype=images.dtype).view(1, height, 1)
    x0, y0, side = x0.view(-1, 1, 1), y0.view(-1, 1, 1), side.view(-1, 1, 1)
    inside = (xs >= x0) & (xs < x0 + side) & (ys >= y0) & (ys < y0 + side)
    fill = torch.full_like(images, CUTOUT_FILL_LEVEL / 255.0)
    return torch.where(inside.unsqueeze(1), fill, images)


def cutout_numpy(image: np.ndarray, amount: float, draws: np.ndarray) -> np.ndarray:
    x0, y0, side = (
        float(v[0])
        for v in cutout_box(
            torch.tensor([amount], dtype=torch.float32),
            torch.as_tensor(draws, dtype=torch.float32).view(1, 2),
            image.shape[:2],
        )
    )
    out = image.copy()
    height, width = image.shape[:2]
    xa, xb = int(max(x0, 0)), int(min(x0 + side, width))
    ya, yb = int(max(y0, 0)), int(min(y0 + side, height))
    if xb > xa and yb > ya:
        out[ya:yb, xa:xb] = CUTOUT_FILL_LEVEL
    return out


# GaussianBlur: sigma = a px, fixed 13x13 kernel, reflect-101 border (kornia gaussian_blur2d)
def gaussian_blur(images: Tensor, amount: Tensor, draws: Tensor) -> Tensor:
    sigma = amount.view(-1, 1).expand(-1, 2).contiguous()
    size = GAUSSIAN_KERNEL_SIZE
    return kornia.filters.gaussian_blur2d(images, (size, size), sigma, border_type="reflect")


def gaussian_blur_numpy(image: np.ndarray, amount: float, draws: np.ndarray) -> np.ndarray:
    size = GAUSSIAN_KERNEL_SIZE
    return cv2.GaussianBlur(
        image, (size, size), sigmaX=float(amount), sigmaY=float(amount), borderType=cv2.BORDER_REFLECT_101
    )


# MotionBlur: a straight streak of length a px at angle draws[0] * 180 deg (kornia filter2d)
def motion_kernel(length: Tensor, angle_deg: Tensor, size: int = MOTION_KERNEL_SIZE) -> Tensor:
    """[B, size, size] normalised line kernels with anti-aliased ends, differentiable in the length.

    A tap at offset (u, v) gets weight clamp(L/2 + 1/2 - |t|, 0, 1) * clamp(1 - |d|, 0, 1), with t and d its
    distances along and across the streak direction.
    """
    half = size // 2
    offsets = torch.arange(-half, half + 1, dtype=length.dtype, device=length.device)
    v, u = torch.meshgrid(offsets, offsets, indexing="ij")
    theta = (angle_deg * (math.pi / 180.0)).view(-1, 1, 1)
    along = u * torch.cos(theta) - v * torch.sin(theta)  # y points down: counter-clockwise on screen
    across = u * torch.sin(theta) + v * torch.cos(theta)
    weight = (length.view(-1, 1, 1) * 0.5 + 0.5 - along.abs()).clamp(0.0, 1.0) * (1.0 - across.abs()).clamp(
        0.0, 1.0
    )
    return weight / weight.sum(dim=(1, 2), keepdim=True)


def motion_blur(images: Tensor, amount: Tensor, draws: Tensor) -> Tensor:
    kernel = motion_kernel(amount, draws[:, 0] * 180.0)
    return kornia.filters.filter2d(images, kernel, border_type="reflect")


def motion_blur_numpy(image: np.ndarray, amount: float, draws: np.ndarray) -> np.ndarray:
    kernel = motion_kernel(
        torch.tensor([amount], dtype=torch.float32),
        torch.tensor([float(draws[0]) * 180.0], dtype=torch.float32),
    )[0].numpy()
    return cv2.filter2D(image, -1, kernel, borderType=cv2.BORDER_REFLECT_101)


TORCH_OPS: dict[str, TorchOp] = {
    "Brightness": brightness,
    "Contrast": contrast,
    "Color": color,
    "Sharpness": sharpness,
    "Solarize": solarize,
    "Posterize": posterize,
    "Equalize": equalize,
    "AutoContrast": auto_contrast,
    "Cutout": cutout,
    "GaussianBlur": gaussian_blur,
    "MotionBlur": motion_blur,
}
NUMPY_OPS: dict[str, NumpyOp] = {
    "Brightness": brightness_numpy,
    "Contrast": contrast_numpy,
    "Color": color_numpy,
    "Sharpness": sharpness_numpy,
    "Solarize": solarize_numpy,
    "Posterize": posterize_numpy,
    "Equalize": equalize_numpy,
    "AutoContrast": auto_contrast_numpy,
    "Cutout": cutout_numpy,
    "GaussianBlur": gaussian_blur_numpy,
    "MotionBlur": motion_blur_numpy,
}
