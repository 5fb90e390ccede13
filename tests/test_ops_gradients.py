"""Gradients of the torch ops: real ones where the magnitude is continuous, the stated constant elsewhere."""

from __future__ import annotations

import pytest
import torch

from search_spaces import OP_NAMES, OPS, PoseBatch, apply_op, compile_torch, op_affine
from search_spaces.ops import STRAIGHT_THROUGH_GRADIENT

CONTINUOUS = [name for name in OP_NAMES if OPS[name].differentiable_magnitude]
STRAIGHT_THROUGH = [name for name in OP_NAMES if not OPS[name].differentiable_magnitude]
FLIP_PAIRS = [(1, 2)]


def _textured_batch(dtype: torch.dtype = torch.float32) -> PoseBatch:
    """Two smooth, colourful 40x32 crops with values away from 0 and 1 (so clamps do not flatten gradients)."""
    g = torch.Generator().manual_seed(0)
    coarse = torch.rand(2, 3, 5, 4, generator=g, dtype=dtype)
    images = 0.2 + 0.6 * torch.nn.functional.interpolate(
        coarse, size=(40, 32), mode="bicubic", align_corners=True
    )
    images = images.clamp(0.05, 0.95)
    keypoints = torch.tensor([[[10.0, 12.0], [20.0, 25.0], [16.0, 30.0]]] * 2, dtype=dtype)
    return PoseBatch(images=images, keypoints=keypoints, visible=torch.ones(2, 3, dtype=dtype))


def _weighted_sum(images: torch.Tensor) -> torch.Tensor:
    """A fixed random linear read-out of the images (a plain sum can cancel, e.g. under a translation)."""
    weights = torch.rand(images.shape, generator=torch.Generator().manual_seed(1), dtype=images.dtype)
    return (images * weights).flatten(1).sum(1)


@pytest.mark.parametrize("name", CONTINUOUS)
def test_continuous_ops_have_real_magnitude_gradients(name):
    batch = _textured_batch(torch.float64)
    magnitude = torch.tensor([0.35, 0.8], dtype=torch.float64, requires_grad=True)
    sign = torch.tensor([1.0, -1.0], dtype=torch.float64)
    draws = torch.tensor([[0.3, 0.6], [0.7, 0.2]], dtype=torch.float64)

    def read_out(m: torch.Tensor) -> torch.Tensor:
        return _weighted_sum(apply_op(name, batch, m, sign=sign, flip_pairs=FLIP_PAIRS, draws=draws).images)

    (grad,) = torch.autograd.grad(read_out(magnitude).sum(), magnitude)
    assert torch.isfinite(grad).all(), f"{name}: {grad}"
    assert (grad.abs() > 1e-3).all(), f"{name}: d out / d m vanishes: {grad}"
    # the autograd value is the true derivative: compare with central differences
    eps = 1e-4
    with torch.no_grad():
        numeric = (read_out(magnitude + eps) - read_out(magnitude - eps)) / (2 * eps)
    torch.testing.assert_close(
        grad, numeric, rtol=0.05, atol=1e-2, msg=f"{name}: autograd vs finite differences"
    )


@pytest.mark.parametrize("name", STRAIGHT_THROUGH)
def test_other_ops_pass_the_stated_straight_through_constant(name):
    batch = _textured_batch()
    magnitude = torch.tensor([0.35, 0.8], requires_grad=True)
    out = apply_op(
        name,
        batch,
        magnitude,
        sign=torch.tensor([1.0, -1.0]),
        flip_pairs=FLIP_PAIRS,
        draws=torch.tensor([[0.3, 0.6], [0.7, 0.2]]),
    )
    weights = torch.rand(out.images.shape, generator=torch.Generator().manual_seed(1))
    (grad,) = torch.autograd.grad((out.images * weights).sum(), magnitude)
    # d out[b, c, y, x] / d m[b] = STRAIGHT_THROUGH_GRADIENT at every pixel
    expected = STRAIGHT_THROUGH_GRADIENT * weights.flatten(1).sum(1)
    torch.testing.assert_close(grad, expected)
    # and the straight-through term does not change the forward value
    plain = apply_op(
        name,
        batch,
        magnitude.detach(),
        sign=torch.tensor([1.0, -1.0]),
        flip_pairs=FLIP_PAIRS,
        draws=torch.tensor([[0.3, 0.6], [0.7, 0.2]]),
    )
    torch.testing.assert_close(out.images.detach(), plain.images)


@pytest.mark.parametrize("name", OP_NAMES)
def test_every_op_is_differentiable_in_the_image(name):
    batch = _textured_batch()
    images = batch.images.clone().requires_grad_(True)
    out = apply_op(
        name,
        batch.replace(images=images),
        torch.tensor([0.5, 0.5]),
        sign=torch.tensor([1.0, 1.0]),
        flip_pairs=FLIP_PAIRS,
        draws=torch.tensor([[0.3, 0.6], [0.7, 0.2]]),
    )
    (grad,) = torch.autograd.grad(_weighted_sum(out.images).sum(), images)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    assert out.images.shape == batch.images.shape and out.images.dtype == batch.images.dtype


@pytest.mark.parametrize("name", [n for n in OP_NAMES if OPS[n].geometric and n != "HorizontalFlip"])
def test_keypoints_follow_the_magnitude_differentiably(name):
    batch = _textured_batch()
    magnitude = torch.tensor([0.5, 0.5], requires_grad=True)
    out = apply_op(name, batch, magnitude, sign=torch.tensor([1.0, -1.0]))
    (grad,) = torch.autograd.grad(out.keypoints.sum() + out.keypoints[..., 1].sum(), magnitude)
    assert torch.isfinite(grad).all() and (grad.abs() > 0).all(), f"{name}: {grad}"


def test_op_affine_matches_the_warp():
    """op_affine is the matrix apply_op uses: the keypoints move by exactly that affine."""
    batch = _textured_batch()
    magnitude, sign = torch.tensor([0.3, 0.9]), torch.tensor([-1.0, 1.0])
    for name in ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Scale"):
        matrix = op_affine(name, magnitude, sign, batch.size)
        assert matrix.shape == (2, 2, 3)
        moved = batch.keypoints @ matrix[:, :, :2].transpose(1, 2) + matrix[:, :, 2].unsqueeze(1)
        out = apply_op(name, batch, magnitude, sign=sign)
        torch.testing.assert_close(out.keypoints, moved)
    with pytest.raises(ValueError, match="not a geometric op"):
        op_affine("Brightness", magnitude, sign, batch.size)


def test_zero_magnitude_is_the_identity_for_continuous_geometric_ops():
    batch = _textured_batch()
    for name in ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Scale"):
        out = apply_op(name, batch, torch.zeros(2), sign=torch.ones(2))
        torch.testing.assert_close(out.images, batch.images, atol=1e-5, rtol=0)
        torch.testing.assert_close(out.keypoints, batch.keypoints)


def test_unknown_op_lists_the_valid_ones():
    with pytest.raises(ValueError, match="valid ops: ShearX, ShearY"):
        apply_op("Shear", _textured_batch(), 0.5)


def test_policy_module_and_batch_put_keep_the_image_gradient():
    """The torch compilation writes op outputs back into its own copy of the batch; autograd still flows."""
    from search_spaces import fixed_policy

    images = torch.rand(6, 3, 32, 24, requires_grad=True)
    batch = PoseBatch(images=images, keypoints=torch.full((6, 2, 2), 10.0), visible=torch.ones(6, 2))
    out = compile_torch.compile_policy(fixed_policy("randaugment"), [], generator=torch.Generator().manual_seed(0))(batch)
    _weighted_sum(out.images).sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
    part = batch.select(torch.tensor([1, 3]))
    merged = batch.put(torch.tensor([1, 3]), part.replace(images=part.images * 2))
    torch.testing.assert_close(merged.images[[1, 3]], 2 * images[[1, 3]])
    assert merged.images is not batch.images and torch.equal(merged.images[0], images[0])
