"""The pose augmentation op library: every op once, with its magnitude range and its two implementations.

An op is named by its registry row (`OPS`): whether it is geometric, whether its magnitude is differentiable,
and how the normalised magnitude m in [0, 1] maps to a physical amount (`OpSpec.amount`). Signed ops draw a
random sign per image (RandAugment style), so m sets the size of a change and not its direction.

The implementations live beside each other by kind:
- `search_spaces.geometric`: one 2x3 affine per image (crop px) for images, keypoints and heatmaps, warped with
  kornia on the torch side and cv2 on the CPU side, from the same matrix;
- `search_spaces.photometric`: a batched torch function (kornia where kornia has the op) and a uint8 numpy/cv2
  twin for each photometric op.
`apply_op` below is the batched torch entry point; `search_spaces.compile_albumentations` wraps the CPU twins
as albumentations transforms.

This module imports no torch at import time, so that validating a policy file stays fast.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from search_spaces.batch import PoseBatch

SEARCH_SPACE_NAME = "pose-v1"

# d out[b, c, y, x] / d m[b] through the straight-through estimator of ops whose magnitude has no gradient
# (paper eq. 8: dO/dm = const): the forward value is unchanged, every pixel passes this constant back.
STRAIGHT_THROUGH_GRADIENT = 1.0


@dataclass(frozen=True)
class OpSpec:
    """One augmentation op of the pose search space.

    m in [0, 1] maps to amount = low + m * (high - low) in `unit`; for signed ops the amount is then multiplied
    by a random sign per image. Ops without a magnitude (flip, equalize, autocontrast) have low = high = 0.
    """

    name: str
    geometric: bool
    differentiable_magnitude: bool
    low: float
    high: float
    signed: bool
    unit: str

    def amount(self, m: float) -> float:
        return self.low + m * (self.high - self.low)

    @property
    def has_magnitude(self) -> bool:
        return self.low != self.high


OPS: dict[str, OpSpec] = {
    spec.name: spec
    for spec in (
        OpSpec("ShearX", True, True, 0.0, 0.3, True, "shear: x += a (y - cy)"),
        OpSpec("ShearY", True, True, 0.0, 0.3, True, "shear: y += a (x - cx)"),
        OpSpec("TranslateX", True, True, 0.0, 0.2, True, "shift of a x crop width"),
        OpSpec("TranslateY", True, True, 0.0, 0.2, True, "shift of a x crop height"),
        OpSpec("Rotate", True, True, 0.0, 45.0, True, "deg"),
        OpSpec("Scale", True, True, 0.0, 0.35, True, "zoom factor 1 + a"),
        OpSpec("HorizontalFlip", True, False, 0.0, 0.0, False, "no magnitude"),
        OpSpec("Brightness", False, True, 0.0, 0.3, True, "added to [0, 1] intensities"),
        OpSpec("Contrast", False, True, 0.0, 0.9, True, "contrast factor 1 + a"),
        OpSpec("Color", False, True, 0.0, 0.9, True, "saturation factor 1 + a"),
        OpSpec("Sharpness", False, True, 0.0, 0.9, True, "sharpness factor 1 + a"),
        OpSpec("Solarize", False, False, 0.0, 1.0, False, "inverts intensities above 1 - a"),
        OpSpec("Posterize", False, False, 0.0, 4.0, False, "bits dropped of 8 (rounded)"),
        OpSpec("Equalize", False, False, 0.0, 0.0, False, "no magnitude"),
        OpSpec("AutoContrast", False, False, 0.0, 0.0, False, "no magnitude"),
        OpSpec("Cutout", False, False, 0.0, 0.5, False, "square of side a x min(H, W)"),
        OpSpec("GaussianBlur", False, True, 0.1, 2.0, False, "sigma px"),
        OpSpec("MotionBlur", False, True, 1.0, 11.0, False, "streak length px"),
    )
}
OP_NAMES: list[str] = list(OPS)
# ops that only the base augmentation applies by default (`train.base_augment`): a search that could drop the flip
# would be judged on the flip test rather than on its policy
BASE_ONLY_OPS: tuple[str, ...] = ("HorizontalFlip",)


def searched_op_names(include_flip: bool = False) -> tuple[str, ...]:
    """The ops every search method chooses from: all of them, less HorizontalFlip unless `include_flip`."""
    return tuple(name for name in OP_NAMES if include_flip or name not in BASE_ONLY_OPS)


def op_spec(name: str) -> OpSpec:
    """The registry row of `name`; a ValueError lists the valid names."""
    try:
        return OPS[name]
    except KeyError:
        raise ValueError(f"unknown op {name!r}; valid ops: {', '.join(OP_NAMES)}") from None


def flip_permutation(flip_pairs: Sequence[Sequence[int]], num_joints: int) -> list[int]:
    """Joint order after a horizontal flip: left and right joints of each pair trade places."""
    perm = list(range(num_joints))
    for pair in flip_pairs:
        left, right = int(pair[0]), int(pair[1])
        if not (0 <= left < num_joints and 0 <= right < num_joints):
            raise ValueError(f"flip pair {tuple(pair)} is outside the {num_joints} joints")
        perm[left], perm[right] = right, left
    return perm


def signed_amount(name: str, magnitude: Tensor, sign: Tensor | None) -> Tensor:
    """Per-image physical amount of op `name` from magnitudes m [B] (and signs [B] for signed ops)."""
    spec = op_spec(name)
    amount = spec.low + magnitude * (spec.high - spec.low)
    if spec.signed:
        if sign is None:
            raise ValueError(f"{name} is a signed op: pass sign [B] of +1/-1")
        amount = amount * sign
    return amount


def op_affine(name: str, magnitude: Tensor, sign: Tensor | None, size: tuple[int, int]) -> Tensor:
    """The 2x3 crop-pixel affine [B, 2, 3] (source -> destination) of geometric op `name`; DA2 reuses it to
    compose several geometric ops into one warp. Differentiable in the magnitude."""
    from search_spaces import geometric

    if not op_spec(name).geometric:
        raise ValueError(
            f"{name} is not a geometric op; geometric ops: {', '.join(n for n in OPS if OPS[n].geometric)}"
        )
    return geometric.affine_matrix(name, signed_amount(name, magnitude, sign), size)


def random_signs(
    batch_size: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
) -> Tensor:
    """Per-image signs +1 / -1 with equal chance."""
    import torch

    coin = _uniform((batch_size,), generator, device)
    return torch.where(coin < 0.5, -1.0, 1.0).to(coin.dtype)


def random_draws(
    batch_size: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
) -> Tensor:
    """Per-image uniform numbers [B, 2] that ops with a random placement read (cutout centre, blur angle)."""
    return _uniform((batch_size, 2), generator, device)


def apply_op(
    name: str,
    batch: PoseBatch,
    magnitude: Tensor | float,
    sign: Tensor | None = None,
    flip_pairs: Sequence[Sequence[int]] | None = None,
    *,
    draws: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> PoseBatch:
    """Apply op `name` to every image of `batch` with per-image magnitudes m [B] in [0, 1].

    Differentiable in the images and, for ops with `differentiable_magnitude`, in the magnitude. For the other
    ops the magnitude gets a straight-through gradient: d out[b, c, y, x] / d m[b] = STRAIGHT_THROUGH_GRADIENT
    (= 1.0) at every pixel, and the forward value is the op's exact output. Ops whose image path is a table
    look-up (posterize, equalize) pass the image gradient straight through as the identity.

    Geometric ops build ONE 2x3 affine per image (crop px), warp the image with it (kornia warp_affine, zero
    fill), move the keypoints by it, warp heatmaps by the same affine rescaled to heatmap resolution, and set
    visible = 0 for joints that leave the frame (0 <= x < W, 0 <= y < H). HorizontalFlip also swaps left and right
    joints (rows of keypoints/visible, heatmap channels) by `flip_pairs`, which it requires ([] for none).

    `sign` [B] of +1/-1 (signed ops) and `draws` [B, 2] uniform in [0, 1) (cutout centre, motion-blur angle)
    are drawn from `generator` when not given.
    """
    import torch

    from search_spaces import geometric, photometric

    spec = op_spec(name)
    images = batch.images
    size = len(batch)
    m = torch.as_tensor(magnitude, dtype=images.dtype, device=images.device)
    m = m.expand(size) if m.dim() == 0 else m
    if tuple(m.shape) != (size,):
        raise ValueError(f"magnitude must be a scalar or [B={size}], got {tuple(m.shape)}")
    if spec.signed and sign is None:
        sign = random_signs(size, generator, images.device)
    if sign is not None:
        sign = torch.as_tensor(sign, dtype=images.dtype, device=images.device)
    if draws is None:
        draws = random_draws(size, generator, images.device)
    draws = torch.as_tensor(draws, dtype=images.dtype, device=images.device)
    amount = signed_amount(name, m, sign if spec.signed else None)

    if spec.name == "HorizontalFlip":
        if flip_pairs is None:
            raise ValueError(
                "HorizontalFlip needs the dataset's flip_pairs to swap left and right joints ([] for none)"
            )
        out = geometric.flip_pose_batch(batch, flip_permutation(flip_pairs, batch.keypoints.shape[1]))
    elif spec.geometric:
        out = geometric.warp_pose_batch(batch, geometric.affine_matrix(name, amount, batch.size))
    else:
        out = batch.replace(images=photometric.TORCH_OPS[name](images, amount, draws))

    if not spec.differentiable_magnitude and m.requires_grad:  # the term is zero in value: skip it otherwise
        straight_through = STRAIGHT_THROUGH_GRADIENT * (m - m.detach())
        out = out.replace(images=out.images + straight_through.view(-1, 1, 1, 1))
    return out


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device) -> Tensor:
    import torch

    draw_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=draw_device).to(device)
