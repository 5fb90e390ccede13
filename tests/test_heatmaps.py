"""Heatmap codec and crop geometry: encode/decode accuracy, exact inverse mapping, flip-test helpers."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from da2_platform.data.geometry import apply_affine, box_to_center_scale, crop_affine
from da2_platform.data.heatmaps import (
    decode_heatmaps,
    default_sigma,
    flip_heatmaps_back,
    flip_pairs_from_names,
    heatmap_size_for,
    heatmap_to_image_coords,
    render_heatmaps,
)
from da2_platform.data.synthpose import COCO_KEYPOINT_NAMES
from search_spaces.ops import flip_permutation

COCO_FLIP_PAIRS = [(1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)]


def test_sizes_and_sigma_follow_the_input():
    assert heatmap_size_for((256, 192)) == (64, 48)
    assert heatmap_size_for((384, 288)) == (96, 72)
    assert default_sigma((64, 48)) == pytest.approx(2.0)
    assert default_sigma((96, 72)) == pytest.approx(3.0)
    assert default_sigma((16, 12)) == pytest.approx(1.0)  # the floor: 0.5 px would be a one-pixel target


def test_render_peaks_at_the_joint_and_weights_drop_off_map_joints():
    keypoints = torch.tensor([[[40.0, 60.0], [100.0, 200.0], [-200.0, 10.0], [20.0, 20.0]]])
    visible = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    heatmaps, weights = render_heatmaps(keypoints, visible, (256, 192))
    assert heatmaps.shape == (1, 4, 64, 48) and heatmaps.dtype == torch.float32
    assert weights.tolist() == [[1.0, 1.0, 0.0, 0.0]]  # third is 50 heatmap px off the map, fourth invisible
    assert heatmaps[0, 0, 15, 10].item() == pytest.approx(1.0)  # (40, 60) / 4
    assert heatmaps[0, 0].argmax().item() == 15 * 48 + 10
    assert heatmaps[0, 1, 50, 25].item() == pytest.approx(1.0)
    assert heatmaps[0, 2].abs().sum().item() == 0.0 and heatmaps[0, 3].abs().sum().item() == 0.0
    # sigma 2: one pixel away the value is exp(-1/8)
    assert heatmaps[0, 0, 15, 11].item() == pytest.approx(np.exp(-1 / 8), rel=1e-5)


interior = st.floats(min_value=6.0, max_value=41.0, allow_nan=False)  # heatmap px, away from the borders


@settings(max_examples=60, deadline=None)
@given(x=interior, y=st.floats(min_value=6.0, max_value=57.0), method=st.sampled_from(["standard", "dark"]))
def test_decode_recovers_sub_pixel_joints(x: float, y: float, method: str):
    crop = torch.tensor([[[x * 4, y * 4]]], dtype=torch.float32)
    heatmaps, _ = render_heatmaps(crop, torch.ones(1, 1), (256, 192))
    coords, scores = decode_heatmaps(heatmaps, method=method)
    error = np.abs(coords[0, 0] - np.array([x, y]))
    # the quarter offset is within 1/4 px of the truth on each axis; DARK is nearly exact on Gaussian targets
    assert error.max() <= (0.26 if method == "standard" else 0.01)
    assert 0.9 < scores[0, 0] <= 1.0


def test_decode_takes_numpy_and_survives_empty_maps():
    coords, scores = decode_heatmaps(np.zeros((2, 3, 16, 12), dtype=np.float32), method="dark")
    assert coords.shape == (2, 3, 2) and scores.shape == (2, 3)
    assert np.isfinite(coords).all() and (scores == 0).all()
    with pytest.raises(ValueError, match="decode method"):
        decode_heatmaps(np.zeros((1, 1, 8, 8)), method="soft-argmax")


boxes = st.tuples(st.floats(0, 500), st.floats(0, 400), st.floats(8, 300), st.floats(8, 300))


@settings(max_examples=60, deadline=None)
@given(box=boxes, fractions=st.lists(st.tuples(st.floats(-0.2, 1.2), st.floats(-0.2, 1.2)), min_size=1,
                                     max_size=17),
       size=st.sampled_from([(256, 192), (384, 288), (64, 48)]))
def test_heatmap_to_image_inverts_the_crop_affine(box, fractions, size):
    center, scale = box_to_center_scale(np.array(box), aspect_ratio=size[1] / size[0])
    points = np.array([[box[0] + fx * box[2], box[1] + fy * box[3]] for fx, fy in fractions])
    crop = apply_affine(points, crop_affine(center, scale, size))
    h, w = heatmap_size_for(size)
    in_heatmap = crop * np.array([w / size[1], h / size[0]])
    back = heatmap_to_image_coords(in_heatmap[None], center[None], scale[None], (h, w))[0]
    np.testing.assert_allclose(back, points, atol=2e-3)


def test_center_scale_pads_and_fixes_the_aspect_ratio():
    center, scale = box_to_center_scale([10, 20, 100, 50], aspect_ratio=0.75)
    np.testing.assert_allclose(center, [60, 45])
    np.testing.assert_allclose(scale, [125.0, 125.0 / 0.75])  # wide box: height grows to keep W/H = 0.75
    _, tall = box_to_center_scale([0, 0, 30, 200], aspect_ratio=0.75)
    np.testing.assert_allclose(tall, [200 * 0.75 * 1.25, 250.0])


@pytest.mark.parametrize("rotation", [0.0, 30.0, -75.0])
def test_warped_pixels_land_where_the_affine_sends_points(rotation: float):
    image = np.zeros((200, 300, 3), dtype=np.uint8)
    dots = np.array([[120.0, 80.0], [180.0, 130.0], [150.0, 60.0]])
    for (x, y), colour in zip(dots, [(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        cv2.circle(image, (int(x), int(y)), 2, colour, -1)
    center, scale = box_to_center_scale([100, 40, 100, 110], aspect_ratio=0.75)
    matrix = crop_affine(center, scale, (256, 192), rotation_deg=rotation)
    crop = cv2.warpAffine(image, matrix, (192, 256), flags=cv2.INTER_LINEAR)
    for (x, y), channel in zip(apply_affine(dots, matrix), range(3)):
        assert crop[round(y), round(x), channel] > 200
    np.testing.assert_allclose(apply_affine(apply_affine(dots, matrix), cv2.invertAffineTransform(matrix)), dots,
                               atol=1e-9)


def test_flip_pairs_come_from_the_names():
    assert flip_pairs_from_names(COCO_KEYPOINT_NAMES) == COCO_FLIP_PAIRS
    assert flip_pairs_from_names(["head", "l_hand", "r_hand"]) == [(1, 2)]


def test_flip_back_of_mirrored_prediction_matches_the_original():
    rng = np.random.default_rng(0)
    keypoints = torch.tensor(rng.uniform([30, 30], [160, 220], (2, 17, 2)), dtype=torch.float32)
    visible = torch.ones(2, 17)
    original, _ = render_heatmaps(keypoints, visible, (256, 192))
    order = flip_permutation(COCO_FLIP_PAIRS, 17)  # the crop mirrored (x -> W-1-x), left and right swapped
    mirrored_points, mirrored_visible = keypoints.clone()[:, order], visible[:, order]
    mirrored_points[..., 0] = 191 - mirrored_points[..., 0]
    mirrored, _ = render_heatmaps(mirrored_points, mirrored_visible, (256, 192))  # what a model sees mirrored

    restored = flip_heatmaps_back(mirrored, COCO_FLIP_PAIRS, shift=True)
    coords, _ = decode_heatmaps(restored, "dark")
    truth = keypoints.numpy() / 4
    assert np.abs(coords[..., 1] - truth[..., 1]).max() < 0.01  # the flip never moves y
    assert np.abs(coords[..., 0] - truth[..., 0]).max() <= 0.26  # shift leaves 1/4 px of the 3/4 px offset
    unshifted, _ = decode_heatmaps(flip_heatmaps_back(mirrored, COCO_FLIP_PAIRS, shift=False), "dark")
    np.testing.assert_allclose(unshifted[..., 0], truth[..., 0] - 0.75, atol=0.01)
    # mirroring twice without the shift is the identity, channels included
    twice = flip_heatmaps_back(flip_heatmaps_back(original, COCO_FLIP_PAIRS, shift=False), COCO_FLIP_PAIRS,
                               shift=False)
    assert torch.equal(twice, original)
