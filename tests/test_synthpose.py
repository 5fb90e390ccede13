"""SynthPose: byte-identical for a seed, valid COCO keypoints, a val split harder than train."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import pytest

from da2_platform.data.synthpose import (
    COCO_KEYPOINT_NAMES,
    COCO_SKELETON,
    TRAIN_STYLE,
    VAL_STYLE,
    SynthPosePaths,
    write_synthpose,
)
from da2_platform.errors import ConfigError


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path):
    first = write_synthpose(tmp_path / "a", train=5, val=3, seed=7)
    second = write_synthpose(tmp_path / "b", train=5, val=3, seed=7)
    other = write_synthpose(tmp_path / "c", train=5, val=3, seed=8)
    digest_a, digest_b = tree_digest(first.root), tree_digest(second.root)
    assert len(digest_a) == 5 + 3 + 3  # images, two annotation files, the manifest
    assert digest_a == digest_b
    assert tree_digest(other.root)["images/train/000000000001.png"] != digest_a["images/train/000000000001.png"]


def test_an_image_does_not_depend_on_how_many_are_written(tmp_path: Path):
    small = write_synthpose(tmp_path / "small", train=2, val=1, seed=3)
    large = write_synthpose(tmp_path / "large", train=4, val=2, seed=3)
    for name in ("000000000001.png", "000000000002.png"):
        assert (small.train_images / name).read_bytes() == (large.train_images / name).read_bytes()
    small_anns = load(small.train_annotations)["annotations"]
    assert small_anns == load(large.train_annotations)["annotations"][:len(small_anns)]


def test_rewriting_is_idempotent_and_shrinking_removes_stale_images(tmp_path: Path):
    paths = write_synthpose(tmp_path, train=4, val=2, seed=1)
    before = tree_digest(tmp_path)
    mtime = paths.train_annotations.stat().st_mtime_ns
    assert write_synthpose(tmp_path, train=4, val=2, seed=1) == paths
    assert tree_digest(tmp_path) == before and paths.train_annotations.stat().st_mtime_ns == mtime
    write_synthpose(tmp_path, train=2, val=2, seed=1)
    assert sorted(p.name for p in paths.train_images.iterdir()) == ["000000000001.png", "000000000002.png"]


def test_coco_structure_boxes_and_visibility(synthpose_small: SynthPosePaths):
    for ann_path, image_dir, count in ((synthpose_small.train_annotations, synthpose_small.train_images, 24),
                                       (synthpose_small.val_annotations, synthpose_small.val_images, 8)):
        data = load(ann_path)
        (category,) = data["categories"]
        assert category["keypoints"] == COCO_KEYPOINT_NAMES and category["skeleton"] == COCO_SKELETON
        assert len(data["images"]) == count
        images = {im["id"]: im for im in data["images"]}
        per_image = {image_id: 0 for image_id in images}
        ids = [a["id"] for a in data["annotations"]]
        assert len(ids) == len(set(ids))
        for ann in data["annotations"]:
            image = images[ann["image_id"]]
            per_image[ann["image_id"]] += 1
            assert ann["category_id"] == 1 and ann["iscrowd"] == 0
            kps = np.array(ann["keypoints"], dtype=float).reshape(17, 3)
            assert set(kps[:, 2]) <= {0, 1, 2}
            assert ann["num_keypoints"] == int((kps[:, 2] > 0).sum())
            assert (kps[kps[:, 2] == 0, :2] == 0).all()  # out of frame: v=0 at (0, 0)
            labelled = kps[kps[:, 2] > 0]
            assert ((labelled[:, 0] >= 0) & (labelled[:, 0] < image["width"])).all()
            assert ((labelled[:, 1] >= 0) & (labelled[:, 1] < image["height"])).all()
            x, y, w, h = ann["bbox"]
            assert w > 0 and h > 0 and x >= 0 and y >= 0
            assert x + w <= image["width"] + 1e-6 and y + h <= image["height"] + 1e-6
            assert 0 < ann["area"] <= w * h
            # the box holds the figure: every labelled joint lies inside it
            assert ((labelled[:, 0] >= x - 1e-6) & (labelled[:, 0] <= x + w + 1e-6)).all()
        assert set(per_image.values()) <= {1, 2, 3}
        for image in data["images"]:
            pixels = cv2.imread(str(image_dir / image["file_name"]))
            assert pixels.shape == (image["height"], image["width"], 3)


def test_left_limbs_are_warm_and_right_limbs_cool(synthpose_small: SynthPosePaths):
    data = load(synthpose_small.train_annotations)
    images = {im["id"]: im["file_name"] for im in data["images"]}
    agree, total = 0, 0
    for ann in data["annotations"]:
        rgb = cv2.cvtColor(cv2.imread(str(synthpose_small.train_images / images[ann["image_id"]])),
                           cv2.COLOR_BGR2RGB).astype(int)
        kps = np.array(ann["keypoints"]).reshape(17, 3)
        for name in ("wrist", "ankle"):
            for side in ("left", "right"):
                x, y, v = kps[COCO_KEYPOINT_NAMES.index(f"{side}_{name}")]
                if v != 2:
                    continue
                red, _, blue = rgb[round(y), round(x)]
                total += 1
                agree += int((red > blue) == (side == "left"))
    assert total > 40 and agree / total > 0.9


def test_val_is_drawn_from_a_wider_distribution(tmp_path: Path):
    paths = write_synthpose(tmp_path, train=40, val=40, seed=0)

    def stats(ann_path: Path) -> tuple[float, float, float]:
        anns = load(ann_path)["annotations"]
        kps = np.array([a["keypoints"] for a in anns]).reshape(len(anns), 17, 3)
        shoulders = (kps[:, 5, :2] + kps[:, 6, :2]) / 2
        hips = (kps[:, 11, :2] + kps[:, 12, :2]) / 2
        both = (kps[:, [5, 6, 11, 12], 2] > 0).all(axis=1)
        torso = shoulders[both] - hips[both]
        tilt = np.degrees(np.abs(np.arctan2(torso[:, 0], -torso[:, 1])))
        heights = np.array([a["bbox"][3] for a in anns])
        return float(np.percentile(tilt, 90)), float((kps[..., 2] == 1).mean()), float(heights.std())

    train_tilt, train_occluded, train_spread = stats(paths.train_annotations)
    val_tilt, val_occluded, val_spread = stats(paths.val_annotations)
    assert train_tilt < TRAIN_STYLE.rotation_deg + TRAIN_STYLE.torso_lean_deg + 5
    assert val_tilt > train_tilt + 15
    assert val_occluded > train_occluded
    assert val_spread > train_spread
    assert VAL_STYLE.blur_prob > TRAIN_STYLE.blur_prob


def test_bad_sizes_are_refused(tmp_path: Path):
    with pytest.raises(ConfigError, match="train=-1"):
        write_synthpose(tmp_path, train=-1)
    with pytest.raises(ConfigError, match="image_size"):
        write_synthpose(tmp_path, train=1, val=1, image_size=(32, 32))


def test_cli_synth_writes_the_same_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from da2_platform.cli.main import main

    rc = main(["data", "synth", "--out", str(tmp_path / "cli"), "--train", "3", "--val", "2", "--seed", "4",
               "--image-size", "128x160", "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["train"] == 3 and summary["image_size"] == [128, 160]
    reference = write_synthpose(tmp_path / "api", train=3, val=2, seed=4, image_size=(128, 160))
    assert tree_digest(Path(summary["root"])) == tree_digest(reference.root)
    assert load(Path(summary["val_annotations"]))["images"][0]["width"] == 160


def test_target_split_is_seeded_apart_and_follows_the_shift(tmp_path: Path):
    wide = write_synthpose(tmp_path / "wide", train=3, val=2, seed=5, target=2)
    again = write_synthpose(tmp_path / "again", train=3, val=2, seed=5, target=2)
    assert tree_digest(wide.root) == tree_digest(again.root)  # same seed, same bytes, target included
    ids = {split: {im["id"] for im in load(path)["images"]}
           for split, path in (("train", wide.train_annotations), ("val", wide.val_annotations),
                               ("target", wide.target_annotations))}
    assert ids["target"] == {2_000_001, 2_000_002}
    assert not (ids["train"] & ids["target"]) and not (ids["val"] & ids["target"]) and not (ids["train"] & ids["val"])
    val_png = (wide.val_images / "000001000001.png").read_bytes()
    assert (wide.target_images / f"{2_000_001:012d}.png").read_bytes() != val_png  # own seeds
    assert load(wide.target_annotations)["info"]["style"] == load(wide.val_annotations)["info"]["style"] \
        == json.loads(json.dumps(asdict(VAL_STYLE)))
    same = write_synthpose(tmp_path / "same", train=3, val=2, seed=5, target=2, shift="none")
    for path in (same.val_annotations, same.target_annotations, same.train_annotations):
        assert load(path)["info"]["style"] == json.loads(json.dumps(asdict(TRAIN_STYLE)))
    # the train split does not depend on the shift; a default set (no target, wide) writes no target files
    assert tree_digest(same.train_images) == tree_digest(wide.train_images)
    plain = write_synthpose(tmp_path / "wide", train=3, val=2, seed=5)
    assert plain.target_annotations is None and not (tmp_path / "wide" / "images" / "target").exists()
    assert not (tmp_path / "wide" / "annotations" / "person_keypoints_target.json").exists()
    with pytest.raises(ConfigError, match="shift"):
        write_synthpose(tmp_path / "bad", train=1, val=1, shift="narrow")
