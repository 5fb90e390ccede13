"""COCO keypoint evaluation: equal to pycocotools called directly, GT scores 1.0, rescoring, OKS-NMS,
and the codec round trip of `da2 data inspect`."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from da2_platform.data.roundtrip import codec_roundtrip
from da2_platform.data.synthpose import SynthPosePaths
from da2_platform.evaluation import (
    METRIC_NAMES,
    evaluate_keypoints,
    oks_nms_per_image,
    pose_area,
    rescore_bbox_keypoint,
)


def ground_truth_as_predictions(ann_path: Path) -> list[dict]:
    """Every person with keypoints, labelled joints at their positions with score 1."""
    results = []
    for ann in json.loads(Path(ann_path).read_text())["annotations"]:
        if ann.get("num_keypoints", 0) == 0 or ann.get("iscrowd", 0):
            continue
        kps = np.array(ann["keypoints"], dtype=float).reshape(-1, 3)
        kps[:, 2] = (kps[:, 2] > 0).astype(float)
        results.append({"image_id": ann["image_id"], "category_id": ann["category_id"],
                        "keypoints": kps.reshape(-1).tolist(), "score": 1.0})
    return results


def noisy_predictions(ann_path: Path, seed: int) -> list[dict]:
    """Jittered ground truth with random scores, some poses lost, and spurious ones: a non-trivial AP."""
    rng = np.random.default_rng(seed)
    results = []
    for entry in ground_truth_as_predictions(ann_path):
        if rng.random() < 0.15:
            continue
        kps = np.array(entry["keypoints"]).reshape(-1, 3)
        kps[:, :2] += rng.normal(0, rng.uniform(0.3, 5), (len(kps), 2))
        kps[:, 2] = rng.uniform(0.05, 1.0, len(kps))
        results.append({**entry, "keypoints": np.round(kps, 3).reshape(-1).tolist(),
                        "score": float(rng.uniform(0.1, 1.0))})
        if rng.random() < 0.3:  # a spurious pose in the same image
            kps[:, :2] += rng.uniform(-60, 60, 2)
            results.append({**entry, "keypoints": np.round(kps, 3).reshape(-1).tolist(),
                            "score": float(rng.uniform(0.0, 0.6))})
    return results


def pycocotools_direct(ann_path: Path, results_path: Path) -> list[float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(ann_path))
        evaluator = COCOeval(truth, truth.loadRes(str(results_path)), "keypoints")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return [float(v) for v in evaluator.stats]


def test_ground_truth_scores_ap_one(synthpose_small: SynthPosePaths, coco_sample: Path):
    for ann_path in (synthpose_small.val_annotations, coco_sample / "test_coco.json"):
        metrics = evaluate_keypoints(ann_path, ground_truth_as_predictions(ann_path))
        assert list(metrics) == list(METRIC_NAMES)
        assert metrics["AP"] == 1.0 and metrics["AP50"] == 1.0 and metrics["AP75"] == 1.0
        assert metrics["AR"] == 1.0


def test_equals_pycocotools_on_the_same_files(synthpose_small: SynthPosePaths, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]):
    from da2_platform.cli.main import main

    ann_path = synthpose_small.train_annotations
    results_path = tmp_path / "results.json"
    results_path.write_text(json.dumps(noisy_predictions(ann_path, seed=0)))
    expected = pycocotools_direct(ann_path, results_path)
    assert 0.1 < expected[0] < 0.95  # a metric with something to get wrong
    assert list(evaluate_keypoints(ann_path, results_path).values()) == expected
    rc = main(["evaluate", "--annotations", str(ann_path), "--predictions", str(results_path), "--json"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert [printed[name] for name in METRIC_NAMES] == expected


def test_equals_pycocotools_on_coco_sample(coco_sample: Path, tmp_path: Path):
    ann_path = coco_sample / "test_coco.json"
    results_path = tmp_path / "results.json"
    results_path.write_text(json.dumps(noisy_predictions(ann_path, seed=1)))
    assert list(evaluate_keypoints(ann_path, results_path).values()) == pycocotools_direct(ann_path, results_path)


def test_empty_results_score_zero(synthpose_small: SynthPosePaths):
    assert evaluate_keypoints(synthpose_small.val_annotations, []) == {name: 0.0 for name in METRIC_NAMES}


def test_rescoring_is_box_score_times_confident_joint_mean():
    joint_scores = [0.1, 0.5, 0.9] + [0.0] * 14
    keypoints = [v for s in joint_scores for v in (10.0, 10.0, s)]
    rescored = rescore_bbox_keypoint([
        {"image_id": 1, "keypoints": keypoints, "score": 0.3, "box_score": 0.8},
        {"image_id": 1, "keypoints": keypoints, "score": 0.5},
        {"image_id": 1, "keypoints": [v for _ in range(17) for v in (1.0, 1.0, 0.2)], "score": 0.9},
    ])
    assert rescored[0]["score"] == pytest.approx(0.8 * 0.7)  # mean of 0.5 and 0.9
    assert rescored[1]["score"] == pytest.approx(0.5 * 0.7)  # no box_score: the entry's score is the box score
    assert rescored[2]["score"] == 0.0  # no joint above 0.2


def test_rescoring_changes_the_ranking_and_the_ap(synthpose_small: SynthPosePaths):
    ann_path = synthpose_small.val_annotations
    truth = ground_truth_as_predictions(ann_path)
    results = []
    for entry in truth:
        kps = np.array(entry["keypoints"]).reshape(-1, 3)
        good = kps.copy()
        good[:, 2] = 0.9
        wrong = kps.copy()
        wrong[:, :2] += 40.0
        wrong[:, 2] = 0.1
        results.append({**entry, "keypoints": good.reshape(-1).tolist(), "score": 0.5})
        results.append({**entry, "keypoints": wrong.reshape(-1).tolist(), "score": 0.9})
    plain = evaluate_keypoints(ann_path, results)
    rescored = evaluate_keypoints(ann_path, results, rescore="bbox_keypoint")
    assert plain["AP"] < 0.9  # the confident wrong poses rank first
    assert rescored["AP"] == 1.0  # box 0.9 x joints 0 (none above 0.2) sinks them


def test_oks_nms_removes_duplicates_and_keeps_distinct_poses(synthpose_small: SynthPosePaths):
    ann_path = synthpose_small.val_annotations
    truth = ground_truth_as_predictions(ann_path)
    results, duplicates = [], 0
    for entry in truth:
        kps = np.array(entry["keypoints"]).reshape(-1, 3)
        results.append(entry)
        near = kps.copy()
        near[:, :2] += 0.7
        results.append({**entry, "keypoints": near.reshape(-1).tolist(), "score": 0.6})
        duplicates += 1
    kept = oks_nms_per_image(results, 0.9)
    assert len(kept) == len(results) - duplicates
    assert all(entry["score"] == 1.0 for entry in kept)
    # persons of one image are distinct poses: NMS keeps every one of them
    assert len(oks_nms_per_image(truth, 0.9)) == len(truth)
    assert evaluate_keypoints(ann_path, results, oks_nms=0.9)["AP"] == 1.0


def test_pose_area_prefers_area_then_bbox_then_extent():
    keypoints = [0.0, 0.0, 1.0, 10.0, 20.0, 1.0] + [5.0, 5.0, 1.0] * 15
    assert pose_area({"keypoints": keypoints, "area": 7.0, "bbox": [0, 0, 3, 3]}) == 7.0
    assert pose_area({"keypoints": keypoints, "bbox": [0, 0, 3, 4]}) == 12.0
    assert pose_area({"keypoints": keypoints}) == 200.0


def test_codec_roundtrip_on_synthpose(synthpose_small: SynthPosePaths):
    report = codec_roundtrip(synthpose_small.val_annotations, synthpose_small.val_images, (256, 192))
    assert report.images == 8 and report.persons_with_keypoints == report.persons
    assert report.roundtrip_ap["dark"] >= 0.99 and report.roundtrip_ap["standard"] >= 0.95
    assert report.mean_error_px["dark"] < 0.05 < report.mean_error_px["standard"] < 2.0


def test_codec_roundtrip_on_coco_sample_and_inspect_cli(coco_sample: Path, capsys: pytest.CaptureFixture[str]):
    from da2_platform.cli.main import main

    report = codec_roundtrip(coco_sample / "test_coco.json", coco_sample, (256, 192))
    assert (report.images, report.persons, report.persons_with_keypoints) == (4, 14, 12)
    assert report.skipped == {"no_keypoints": 2}
    assert report.roundtrip_ap["dark"] > 0.95 and report.roundtrip_ap["standard"] > 0.9
    rc = main(["data", "inspect", "--annotations", str(coco_sample / "test_coco.json"), "--images",
               str(coco_sample), "--input-size", "256x192", "--json"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert {k: printed[k] for k in ("images", "persons", "persons_with_keypoints")} == {
        "images": 4, "persons": 14, "persons_with_keypoints": 12}
    assert printed["roundtrip_ap"] == report.roundtrip_ap and printed["skipped"] == {"no_keypoints": 2}
