"""Torch and albumentations twins of every op agree; geometric ops keep joints on the pixels they label.

Parity bound (stated): with p = 1 and the same sign and draws, round(255 * torch output) and the uint8
albumentations output differ by at most MEAN_LEVEL_BOUND uint8 levels on average and MAX_LEVEL_BOUND levels
at any pixel (measured: mean <= 0.05, max 1, from cv2's fixed-point bilinear/blur kernels and final
rounding); keypoints agree within 0.5 px (measured ~1e-5) and visibility flags agree exactly.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from search_spaces import (
    OP_NAMES,
    OPS,
    OpSetting,
    Policy,
    PoseBatch,
    SubPolicy,
    apply_op,
    compile_albumentations,
    compile_torch,
)
from search_spaces.compile_albumentations import single_op_pipeline
from search_spaces.ops import flip_permutation

MEAN_LEVEL_BOUND = 0.25
MAX_LEVEL_BOUND = 2
KEYPOINT_BOUND_PX = 0.5
MAGNITUDES = (0.0, 0.3, 0.7, 1.0)
GEOMETRIC = [name for name in OP_NAMES if OPS[name].geometric]


@pytest.fixture(scope="module")
def synth_crops(synthpose_small):
    """Four SynthPose person crops at 128x96: uint8 image, keypoints, visible, and the flip pairs."""
    from da2_platform.data.topdown import TopDownDataset

    dataset = TopDownDataset(
        synthpose_small.train_annotations, synthpose_small.train_images, input_size=(128, 96)
    )
    crops = []
    for i in range(4):
        item = dataset[i]
        image = (item["image"].permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
        crops.append((image, item["keypoints"].numpy(), item["visible"].numpy()))
    return crops, dataset.flip_pairs


def _torch_batch(image: np.ndarray, keypoints: np.ndarray, visible: np.ndarray) -> PoseBatch:
    return PoseBatch(
        images=torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0,
        keypoints=torch.from_numpy(keypoints)[None].float(),
        visible=torch.from_numpy(visible)[None].float(),
    )


@pytest.mark.parametrize("name", OP_NAMES)
def test_torch_and_albumentations_agree(name, synth_crops):
    crops, flip_pairs = synth_crops
    for m in MAGNITUDES:
        for i, (image, keypoints, visible) in enumerate(crops):
            sign = -1.0 if i % 2 else 1.0
            draws = [0.15 + 0.2 * i, 0.8 - 0.2 * i]
            cpu_image, cpu_kp, cpu_vis = single_op_pipeline(name, m, flip_pairs, sign=sign, draws=draws)(
                image, keypoints, visible
            )
            out = apply_op(
                name,
                _torch_batch(image, keypoints, visible),
                torch.tensor([m]),
                sign=torch.tensor([sign]),
                flip_pairs=flip_pairs,
                draws=torch.tensor([draws]),
            )
            torch_levels = (out.images[0].permute(1, 2, 0).numpy() * 255.0).round()
            levels = np.abs(torch_levels - cpu_image.astype(np.float64))
            where = f"{name} m={m} crop {i}"
            assert cpu_image.dtype == np.uint8 and cpu_image.shape == image.shape, where
            assert levels.mean() <= MEAN_LEVEL_BOUND, f"{where}: mean |diff| {levels.mean():.3f} levels"
            assert levels.max() <= MAX_LEVEL_BOUND, f"{where}: max |diff| {levels.max()} levels"
            assert np.abs(cpu_kp - out.keypoints[0].numpy()).max() <= KEYPOINT_BOUND_PX, where
            np.testing.assert_array_equal(cpu_vis, out.visible[0].numpy(), err_msg=where)


def test_ops_change_the_image_where_they_should(synth_crops):
    """Guards against a twin that silently does nothing: every op at m = 1 changes a SynthPose crop."""
    crops, flip_pairs = synth_crops
    image, keypoints, visible = crops[0]
    for name in OP_NAMES:
        out, _, _ = single_op_pipeline(name, 1.0, flip_pairs, sign=1.0, draws=[0.5, 0.5])(
            image, keypoints, visible
        )
        assert np.abs(out.astype(int) - image.astype(int)).mean() > 0.5, name


# --- keypoint consistency: a blob drawn at each joint is still under the moved joint -----------------------

BLOB_SIZE = (96, 72)
# at least 15 px apart, so that blobs stay apart when Scale shrinks the crop by 0.65
BLOB_JOINTS = np.array(
    [[18.0, 22.0], [53.5, 22.0], [18.0, 72.0], [54.0, 72.5], [36.0, 48.0], [27.5, 34.25]], dtype=np.float32
)
BLOB_FLIP_PAIRS = [(0, 1), (2, 3)]


def _blob_image(points: np.ndarray, size: tuple[int, int], sigma: float = 1.5) -> np.ndarray:
    """Float [H, W]: a Gaussian blob of peak 1 at each point."""
    ys, xs = np.mgrid[0 : size[0], 0 : size[1]].astype(np.float32)
    image = np.zeros(size, dtype=np.float32)
    for x, y in points:
        image = np.maximum(image, np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2)))
    return image


def blob_centroid(image: np.ndarray, point: np.ndarray, radius: int = 4) -> np.ndarray:
    """Intensity-weighted centre of the window around `point` (x, y)."""
    x0, y0 = round(float(point[0])), round(float(point[1]))
    ys, xs = np.mgrid[y0 - radius : y0 + radius + 1, x0 - radius : x0 + radius + 1]
    inside = (xs >= 0) & (xs < image.shape[1]) & (ys >= 0) & (ys < image.shape[0])
    weights = np.where(inside, image[ys.clip(0, image.shape[0] - 1), xs.clip(0, image.shape[1] - 1)], 0.0)
    return np.array([(weights * xs).sum(), (weights * ys).sum()]) / weights.sum()


def assert_blobs_under_joints(
    image: np.ndarray, keypoints: np.ndarray, visible: np.ndarray, where: str, tolerance_px: float = 0.75
) -> None:
    """Every visible joint well inside the crop sits on the centre of a blob (image: float [H, W])."""
    height, width = image.shape
    for j, (point, vis) in enumerate(zip(keypoints, visible)):
        if vis <= 0 or not (4 <= point[0] <= width - 5 and 4 <= point[1] <= height - 5):
            continue
        x, y = round(float(point[0])), round(float(point[1]))
        assert image[y, x] > 0.35, f"{where}: no blob under joint {j} at {point}"
        error = np.abs(blob_centroid(image, point) - point).max()
        assert error <= tolerance_px, f"{where}: blob of joint {j} is {error:.2f} px from it"


@pytest.mark.parametrize("name", GEOMETRIC)
@pytest.mark.parametrize("m", [0.4, 1.0])
@pytest.mark.parametrize("sign", [-1.0, 1.0])
def test_geometric_ops_keep_blobs_under_joints(name, m, sign):
    blob = _blob_image(BLOB_JOINTS, BLOB_SIZE)
    visible = np.ones(len(BLOB_JOINTS), dtype=np.float32)
    rgb = np.repeat((blob * 255).round().astype(np.uint8)[..., None], 3, axis=2)

    cpu_image, cpu_kp, cpu_vis = single_op_pipeline(name, m, BLOB_FLIP_PAIRS, sign=sign)(
        rgb, BLOB_JOINTS, visible
    )
    assert_blobs_under_joints(
        cpu_image[..., 0] / 255.0, cpu_kp, cpu_vis, f"albumentations {name} m={m} s={sign}"
    )

    batch = PoseBatch(
        images=torch.from_numpy(blob)[None, None].expand(1, 3, -1, -1).clone(),
        keypoints=torch.from_numpy(BLOB_JOINTS)[None],
        visible=torch.from_numpy(visible)[None],
    )
    out = apply_op(name, batch, torch.tensor([m]), sign=torch.tensor([sign]), flip_pairs=BLOB_FLIP_PAIRS)
    assert_blobs_under_joints(
        out.images[0, 0].numpy(),
        out.keypoints[0].numpy(),
        out.visible[0].numpy(),
        f"torch {name} m={m} s={sign}",
    )
    assert cpu_vis.sum() >= 1 and out.visible.sum() >= 1  # the check above looked at some joints


@st.composite
def geometric_policies(draw) -> Policy:
    unit = st.floats(min_value=0.0, max_value=1.0)
    op = st.builds(OpSetting, st.sampled_from(GEOMETRIC), unit, unit)
    ops = draw(st.lists(st.lists(op, min_size=1, max_size=3), min_size=1, max_size=2))
    raw = draw(st.lists(st.floats(min_value=0.01, max_value=1.0), min_size=len(ops), max_size=len(ops)))
    return Policy(tuple(SubPolicy(w / math.fsum(raw), tuple(o)) for w, o in zip(raw, ops)))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy=geometric_policies(), seed=st.integers(0, 2**16))
def test_random_geometric_policies_keep_blobs_under_joints(policy, seed):
    """Chains of up to three warps still leave each visible joint on its (interpolated) blob."""
    blob = _blob_image(BLOB_JOINTS, BLOB_SIZE, sigma=2.0)
    visible = np.ones(len(BLOB_JOINTS), dtype=np.float32)
    rgb = np.repeat((blob * 255).round().astype(np.uint8)[..., None], 3, axis=2)
    cpu_image, cpu_kp, cpu_vis = compile_albumentations.compile_policy(policy, BLOB_FLIP_PAIRS, seed=seed)(
        rgb, BLOB_JOINTS, visible
    )
    assert_blobs_under_joints(cpu_image[..., 0] / 255.0, cpu_kp, cpu_vis, "albumentations", tolerance_px=1.0)

    batch = PoseBatch(
        torch.from_numpy(blob)[None, None].expand(1, 3, -1, -1).clone(),
        torch.from_numpy(BLOB_JOINTS)[None],
        torch.from_numpy(visible)[None],
    )
    out = compile_torch.compile_policy(policy, BLOB_FLIP_PAIRS, generator=torch.Generator().manual_seed(seed))(batch)
    assert_blobs_under_joints(
        out.images[0, 0].numpy(), out.keypoints[0].numpy(), out.visible[0].numpy(), "torch", tolerance_px=1.0
    )


@pytest.mark.parametrize("name", GEOMETRIC)
def test_geometric_ops_move_heatmaps_with_joints(name):
    """Heatmap targets warped by the op peak where heatmaps rendered at the moved joints peak."""
    from da2_platform.data.heatmaps import render_heatmaps

    size = BLOB_SIZE
    keypoints = torch.from_numpy(BLOB_JOINTS)[None]
    visible = torch.ones(1, len(BLOB_JOINTS))
    heatmaps, _ = render_heatmaps(keypoints, visible, size)
    batch = PoseBatch(
        images=torch.zeros(1, 3, *size), keypoints=keypoints, visible=visible, heatmaps=heatmaps
    )
    out = apply_op(name, batch, torch.tensor([0.6]), sign=torch.tensor([1.0]), flip_pairs=BLOB_FLIP_PAIRS)
    expected, weights = render_heatmaps(out.keypoints, out.visible, size)
    hm_h, hm_w = heatmaps.shape[2:]
    for j in range(len(BLOB_JOINTS)):
        if weights[0, j] == 0:
            continue
        point = out.keypoints[0, j].numpy() * np.array([hm_w / size[1], hm_h / size[0]])
        if not (2 <= point[0] <= hm_w - 3 and 2 <= point[1] <= hm_h - 3):
            continue
        centre = blob_centroid(out.heatmaps[0, j].numpy(), point, radius=3)
        assert np.abs(centre - blob_centroid(expected[0, j].numpy(), point, radius=3)).max() < 0.3, (
            f"{name} joint {j}"
        )


def test_horizontal_flip_swaps_left_and_right_joints():
    width = BLOB_SIZE[1]
    visible = np.array([1, 1, 1, 0, 1, 1], dtype=np.float32)
    rgb = np.zeros((*BLOB_SIZE, 3), dtype=np.uint8)
    _, cpu_kp, cpu_vis = single_op_pipeline("HorizontalFlip", 0.0, BLOB_FLIP_PAIRS)(rgb, BLOB_JOINTS, visible)
    batch = PoseBatch(
        images=torch.zeros(1, 3, *BLOB_SIZE),
        keypoints=torch.from_numpy(BLOB_JOINTS)[None],
        visible=torch.from_numpy(visible)[None],
    )
    out = apply_op("HorizontalFlip", batch, torch.tensor([0.0]), flip_pairs=BLOB_FLIP_PAIRS)
    perm = flip_permutation(BLOB_FLIP_PAIRS, len(BLOB_JOINTS))
    assert perm == [1, 0, 3, 2, 4, 5]
    expected = BLOB_JOINTS[perm].copy()
    expected[:, 0] = (width - 1) - expected[:, 0]
    for kp, vis in ((cpu_kp, cpu_vis), (out.keypoints[0].numpy(), out.visible[0].numpy())):
        np.testing.assert_allclose(kp, expected, atol=1e-5)
        np.testing.assert_array_equal(vis, visible[perm])  # the unlabelled right joint 3 is now row 2


def test_flip_requires_flip_pairs():
    batch = PoseBatch(
        images=torch.zeros(1, 3, 8, 8), keypoints=torch.zeros(1, 2, 2), visible=torch.ones(1, 2)
    )
    with pytest.raises(ValueError, match="flip_pairs"):
        apply_op("HorizontalFlip", batch, torch.tensor([0.0]))
    with pytest.raises(ValueError, match="outside"):
        apply_op("HorizontalFlip", batch, torch.tensor([0.0]), flip_pairs=[(0, 5)])


@pytest.mark.parametrize("name", ["TranslateX", "Rotate", "Scale"])
def test_joints_pushed_out_of_frame_become_invisible(name):
    """A joint near the border that the op moves out is invisible in both compilers; cutout keeps joints."""
    size = (64, 48)
    keypoints = np.array([[46.0, 32.0], [1.0, 1.0], [24.0, 32.0]], dtype=np.float32)
    visible = np.ones(3, dtype=np.float32)
    image = np.full((*size, 3), 90, dtype=np.uint8)
    _, cpu_kp, cpu_vis = single_op_pipeline(name, 1.0, [], sign=1.0)(image, keypoints, visible)
    batch = _torch_batch(image, keypoints, visible)
    out = apply_op(name, batch, torch.tensor([1.0]), sign=torch.tensor([1.0]), flip_pairs=[])
    for kp, vis in ((cpu_kp, cpu_vis), (out.keypoints[0].numpy(), out.visible[0].numpy())):
        inside = (kp[:, 0] >= 0) & (kp[:, 0] < size[1]) & (kp[:, 1] >= 0) & (kp[:, 1] < size[0])
        np.testing.assert_array_equal(vis, inside.astype(np.float32))
        assert vis[2] == 1.0 and vis.sum() < 3, f"{name}: {kp} {vis}"


def test_cutout_over_a_joint_leaves_it_visible():
    image = np.full((64, 48, 3), 200, dtype=np.uint8)
    keypoints = np.array([[24.0, 32.0]], dtype=np.float32)
    visible = np.ones(1, dtype=np.float32)
    out, kp, vis = single_op_pipeline("Cutout", 1.0, [], draws=[0.5, 0.5])(image, keypoints, visible)
    assert out[32, 24, 0] == 128 and vis[0] == 1.0
    np.testing.assert_array_equal(kp, keypoints)
