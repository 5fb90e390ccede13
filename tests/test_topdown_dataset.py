"""TopDownDataset: crops keep every joint on its image feature (draw, crop, check pixels), and the item contract."""

from __future__ import annotations

import colorsys
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from da2_platform.data.synthpose import COCO_KEYPOINT_NAMES, COCO_SKELETON, SynthPosePaths
from da2_platform.data.topdown import TopDownDataset
from da2_platform.errors import DataError

COLOURS = [tuple(int(255 * c) for c in colorsys.hsv_to_rgb(j / 17, 1.0, 1.0)) for j in range(17)]
FAR_AWAY = (300.0, 230.0)  # a labelled joint of the small person that its crop cannot hold


def joint_grid() -> np.ndarray:
    """17 sub-pixel joint positions spread over the big person's box [100, 40, 120, 180]."""
    return np.array([[112.3 + (j % 4) * 27.7, 52.6 + (j // 4) * 33.1] for j in range(17)])


@pytest.fixture()
def drawn_set(tmp_path: Path) -> tuple[Path, Path]:
    """One 240x320 image with a coloured disc on every labelled joint, and three person annotations."""
    image = np.full((240, 320, 3), 90, dtype=np.uint8)
    joints = joint_grid()
    for (x, y), colour in zip(joints, COLOURS):
        cv2.circle(image, (round(x * 16), round(y * 16)), 3 * 16, colour, -1, cv2.LINE_AA, 4)
    cv2.circle(image, (30, 40), 3, (255, 255, 255), -1)
    cv2.imwrite(str(tmp_path / "scene.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    big = [float(v) for (x, y) in joints for v in (round(x, 2), round(y, 2), 2)]
    small = [0.0] * 51
    small[0:3] = [30.0, 40.0, 2]  # nose inside its box
    small[3 * 16:3 * 17] = [*FAR_AWAY, 1]  # right ankle: labelled, far outside the crop
    annotations = [
        {"id": 1, "image_id": 5, "category_id": 1, "bbox": [100, 40, 120, 180], "area": 15000.0, "iscrowd": 0,
         "num_keypoints": 17, "keypoints": big},
        {"id": 2, "image_id": 5, "category_id": 1, "bbox": [10, 10, 40, 60], "area": 1800.0, "iscrowd": 0,
         "num_keypoints": 2, "keypoints": small},
        {"id": 3, "image_id": 5, "category_id": 1, "bbox": [250, 150, 30, 60], "area": 1000.0, "iscrowd": 0,
         "num_keypoints": 0, "keypoints": [0] * 51},
    ]
    coco = {"images": [{"id": 5, "file_name": "scene.png", "width": 320, "height": 240}],
            "annotations": annotations,
            "categories": [{"id": 1, "name": "person", "keypoints": COCO_KEYPOINT_NAMES,
                            "skeleton": COCO_SKELETON}]}
    ann_path = tmp_path / "people.json"
    ann_path.write_text(json.dumps(coco))
    return ann_path, tmp_path


def crop_rgb(item: dict) -> np.ndarray:
    return (item["image"].permute(1, 2, 0).numpy() * 255).round().astype(int)


def disc_centroid(pixels: np.ndarray, colour: tuple[int, int, int], x: float, y: float) -> tuple[float, float]:
    """Centroid of the pixels near (x, y) weighted by how close their colour is to the disc's."""
    x0, y0 = round(x) - 8, round(y) - 8
    window = pixels[y0:y0 + 17, x0:x0 + 17].astype(float)
    background = np.array([90.0, 90.0, 90.0])
    weight = np.clip(1 - np.linalg.norm(window - np.array(colour), axis=-1)
                     / np.linalg.norm(np.array(colour) - background), 0, 1)
    ys, xs = np.mgrid[0:17, 0:17]
    return float((weight * xs).sum() / weight.sum() + x0), float((weight * ys).sum() / weight.sum() + y0)


@pytest.mark.parametrize("input_size", [(256, 192), (384, 288), (128, 96)])
def test_crops_keep_joints_on_their_pixels(drawn_set, input_size):
    ann_path, image_dir = drawn_set
    dataset = TopDownDataset(ann_path, image_dir, input_size=input_size)
    assert dataset.ann_ids == [1, 2] and dataset.skipped == {"no_keypoints": 1}
    item = dataset[0]
    pixels = crop_rgb(item)
    assert item["visible"].tolist() == [1.0] * 17
    for (x, y), colour in zip(item["keypoints"].numpy(), COLOURS):
        assert np.abs(pixels[round(y), round(x)] - np.array(colour)).max() <= 40
        # sub-pixel: the disc's centroid in the crop sits on the keypoint (catches half-pixel slips)
        cx, cy = disc_centroid(pixels, colour, x, y)
        assert abs(cx - x) < 0.2 and abs(cy - y) < 0.2
    np.testing.assert_allclose(item["center"].numpy(), [160.0, 130.0])
    width, height = item["scale"].numpy()
    assert width / height == pytest.approx(input_size[1] / input_size[0], rel=1e-5)
    assert height == pytest.approx(180 * 1.25)


def test_joints_outside_the_crop_are_not_visible(drawn_set):
    ann_path, image_dir = drawn_set
    item = TopDownDataset(ann_path, image_dir)[1]
    visible = item["visible"].numpy()
    assert visible[0] == 1.0 and visible[16] == 0.0 and visible.sum() == 1.0
    x, y = item["keypoints"][0].numpy()
    assert crop_rgb(item)[round(y), round(x)].min() > 200  # the small person's white nose


def test_item_contract_and_batching(drawn_set):
    ann_path, image_dir = drawn_set
    dataset = TopDownDataset(ann_path, image_dir, input_size=(256, 192), require_keypoints=False)
    assert len(dataset) == 3 and dataset.num_joints == 17 and dataset.keypoint_names == COCO_KEYPOINT_NAMES
    assert dataset.flip_pairs[0] == (1, 2) and dataset.coco.getImgIds() == [5]
    batch = next(iter(DataLoader(dataset, batch_size=3)))
    assert batch["image"].shape == (3, 3, 256, 192) and batch["image"].dtype == torch.float32
    assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    assert batch["keypoints"].shape == (3, 17, 2) and batch["visible"].shape == (3, 17)
    assert batch["center"].shape == (3, 2) and batch["scale"].shape == (3, 2)
    assert batch["image_id"].dtype == torch.int64 and batch["ann_id"].tolist() == [1, 2, 3]
    assert batch["area"].tolist() == [15000.0, 1800.0, 1000.0] and batch["box_score"].tolist() == [1.0] * 3


def test_transform_sees_the_crop_and_its_keypoints(drawn_set):
    ann_path, image_dir = drawn_set

    def mirror(image: np.ndarray, keypoints: np.ndarray, visible: np.ndarray):
        mirrored = keypoints.copy()
        mirrored[:, 0] = image.shape[1] - 1 - mirrored[:, 0]
        shifted = mirrored + np.array([0.0, 500.0]) * (np.arange(17) == 3)[:, None]  # joint 3 pushed out
        return np.ascontiguousarray(image[:, ::-1]), shifted.astype(np.float32), visible

    item = TopDownDataset(ann_path, image_dir, transform=mirror)[0]
    pixels = crop_rgb(item)
    for j, ((x, y), colour) in enumerate(zip(item["keypoints"].numpy(), COLOURS)):
        if j != 3:
            assert np.abs(pixels[round(y), round(x)] - np.array(colour)).max() <= 40
    assert item["visible"][3] == 0.0 and item["visible"].sum() == 16.0


def test_ann_ids_select_in_order_and_detector_boxes_replace_ground_truth(drawn_set):
    ann_path, image_dir = drawn_set
    assert TopDownDataset(ann_path, image_dir, ann_ids=[2, 3, 1]).ann_ids == [2, 1]
    with pytest.raises(DataError, match="annotation id 99"):
        TopDownDataset(ann_path, image_dir, ann_ids=[1, 99])
    boxes = [{"image_id": 5, "category_id": 1, "bbox": [100, 40, 120, 180], "score": 0.7},
             {"image_id": 5, "category_id": 1, "bbox": [10, 10, 0, 60], "score": 0.9}]
    detections = TopDownDataset(ann_path, image_dir, boxes=boxes)
    assert detections.ann_ids == [0] and detections.skipped["detections_zero_area_box"] == 1
    item = detections[0]
    assert item["box_score"].item() == pytest.approx(0.7) and item["visible"].sum() == 0
    np.testing.assert_allclose(item["image"].numpy(), TopDownDataset(ann_path, image_dir)[0]["image"].numpy())


def test_synthpose_crops_keep_left_warm_and_right_cool(synthpose_small: SynthPosePaths):
    dataset = TopDownDataset(synthpose_small.train_annotations, synthpose_small.train_images, (256, 192))
    names = {name: COCO_KEYPOINT_NAMES.index(name) for name in COCO_KEYPOINT_NAMES}
    agree = total = 0
    for index in range(min(len(dataset), 30)):
        item = dataset[index]
        kps = np.array(dataset.instance(index).keypoints)
        pixels = crop_rgb(item)
        for name in ("left_wrist", "right_wrist", "left_ankle", "right_ankle", "left_elbow", "right_knee"):
            j = names[name]
            if kps[j, 2] != 2 or item["visible"][j] == 0:
                continue
            x, y = item["keypoints"][j].numpy()
            red, _, blue = pixels[round(y), round(x)]
            total += 1
            agree += int((red > blue) == name.startswith("left"))
    assert total > 40 and agree / total > 0.9


def test_coco_sample_items(coco_sample: Path):
    with_keypoints = TopDownDataset(coco_sample / "test_coco.json", coco_sample, input_size=(256, 192))
    everyone = TopDownDataset(coco_sample / "test_coco.json", coco_sample, input_size=(256, 192),
                              require_keypoints=False)
    assert len(with_keypoints) == 12 and len(everyone) == 14
    assert with_keypoints.skipped == {"no_keypoints": 2}
    for index in range(len(with_keypoints)):
        item = with_keypoints[index]
        labelled = int((with_keypoints.instance(index).keypoints[:, 2] > 0).sum())
        assert item["image"].shape == (3, 256, 192)
        assert 0 < item["visible"].sum() <= labelled
