"""COCO keypoint evaluation: pycocotools' COCOeval, with the pose rescoring and OKS-NMS of top-down pipelines.

Rescoring (`rescore="bbox_keypoint"`): a pose's score becomes its box score times the mean of its joint scores
above 0.2 (0 when none is). OKS-NMS: per image, in descending score order, a pose is dropped when its OKS with
a pose already kept exceeds the threshold; the OKS scale is the mean of the two areas, taken from `area`, else
from `bbox`, else from the joints' extent.
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from da2_platform.data.coco import CocoKeypoints, is_finite_number, load_coco_keypoints, quiet_coco
from da2_platform.errors import DataError
from da2_platform.files import read_json
from da2_platform.limits import MAX_PREDICTIONS_BYTES

METRIC_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
RESCORE_MODES = ("bbox_keypoint",)
KEYPOINT_SCORE_THRESHOLD = 0.2
# COCO's per-joint OKS constants (the ones pycocotools scores with)
COCO_OKS_SIGMAS = np.array([0.26, 0.25, 0.25, 0.35, 0.35, 0.79, 0.79, 0.72, 0.72, 0.62, 0.62,
                            1.07, 1.07, 0.87, 0.87, 0.89, 0.89]) / 10.0


def evaluate_keypoints(annotations: str | Path | CocoKeypoints, results: list[dict] | str | Path,
                       rescore: str | None = None, oks_nms: float | None = None) -> dict[str, float]:
    """COCO keypoint AP/AR of `results` (a COCO results list or its JSON file) against `annotations`.

    Returns exactly the keys of METRIC_NAMES. Empty results give 0.0 everywhere. Entries are validated first;
    a bad one raises DataError naming the file and the entry's index.
    """
    truth = annotations if isinstance(annotations, CocoKeypoints) else load_coco_keypoints(annotations)
    if truth.num_joints != len(COCO_OKS_SIGMAS):
        raise DataError(f"{truth.path}: COCO keypoint evaluation needs the 17 COCO joints (pycocotools' OKS "
                        f"constants), the file's category has {truth.num_joints}")
    if isinstance(results, (str, Path)):
        source = str(results)
        entries = read_json(results, "predictions file", MAX_PREDICTIONS_BYTES)
    else:
        source, entries = "predictions", results
    predictions = validate_results(entries, truth, source)
    if rescore is not None:
        if rescore not in RESCORE_MODES:
            raise ValueError(f"rescore must be one of {RESCORE_MODES} or None, got {rescore!r}")
        predictions = rescore_bbox_keypoint(predictions)
    if oks_nms is not None:
        predictions = oks_nms_per_image(predictions, float(oks_nms))
    if not predictions:
        return {name: 0.0 for name in METRIC_NAMES}
    return _cocoeval(truth, predictions)


def validate_results(entries: Any, truth: CocoKeypoints, source: str) -> list[dict]:
    """Deep copies of the entries, after checking each names a known image and the keypoint category and
    holds 3 x J finite keypoint numbers and a finite score."""
    if not isinstance(entries, list):
        raise DataError(f"{source}: expected a JSON list of COCO keypoint results, got {type(entries).__name__}")
    expected = 3 * truth.num_joints
    checked = []
    for index, entry in enumerate(entries):
        where = f"{source}: entry {index}"
        if not isinstance(entry, dict):
            raise DataError(f"{where} is not an object")
        if entry.get("image_id") not in truth.images:
            raise DataError(f"{where}: image_id {entry.get('image_id')!r} is not in {truth.path}")
        if entry.get("category_id") != truth.category_id:
            raise DataError(f"{where}: category_id {entry.get('category_id')!r} is not the keypoint category "
                            f"({truth.category_id}) of {truth.path}")
        keypoints = entry.get("keypoints")
        if not isinstance(keypoints, list) or len(keypoints) != expected:
            got = f"{len(keypoints)} values" if isinstance(keypoints, list) else "none"
            raise DataError(f"{where}: 'keypoints' must hold {expected} numbers (x, y, score per joint), got {got}")
        if not all(is_finite_number(v) for v in keypoints):
            raise DataError(f"{where}: 'keypoints' holds a value that is not a finite number")
        if not is_finite_number(entry.get("score")):
            raise DataError(f"{where}: 'score' must be a finite number, got {entry.get('score')!r}")
        bbox = entry.get("bbox")
        if bbox is not None and (not isinstance(bbox, list) or len(bbox) != 4 or not all(map(is_finite_number, bbox))):
            raise DataError(f"{where}: 'bbox' must be [x, y, w, h], got {bbox!r}")
        for key in ("area", "box_score"):
            if key in entry and not is_finite_number(entry[key]):
                raise DataError(f"{where}: '{key}' must be a finite number, got {entry[key]!r}")
        checked.append(copy.deepcopy(entry))
    return checked


def rescore_bbox_keypoint(predictions: list[dict], threshold: float = KEYPOINT_SCORE_THRESHOLD) -> list[dict]:
    """score = box score (`box_score`, else the entry's `score`) x mean of the joint scores above `threshold`."""
    rescored = []
    for entry in predictions:
        joint_scores = np.asarray(entry["keypoints"][2::3], dtype=np.float64)
        confident = joint_scores[joint_scores > threshold]
        keypoint_score = float(confident.mean()) if confident.size else 0.0
        box_score = float(entry.get("box_score", entry["score"]))
        rescored.append({**entry, "score": box_score * keypoint_score})
    return rescored


def pose_area(entry: dict) -> float:
    """The OKS scale of a predicted pose: `area`, else the `bbox` area, else the joints' extent."""
    if "area" in entry:
        return float(entry["area"])
    if entry.get("bbox") is not None:
        return float(entry["bbox"][2]) * float(entry["bbox"][3])
    xs, ys = np.asarray(entry["keypoints"][0::3]), np.asarray(entry["keypoints"][1::3])
    return float((xs.max() - xs.min()) * (ys.max() - ys.min()))


def oks_between(pose: np.ndarray, others: np.ndarray, area: float, other_areas: np.ndarray,
                sigmas: np.ndarray = COCO_OKS_SIGMAS) -> np.ndarray:
    """OKS of one pose [J, 2+] against others [N, J, 2+], over all joints, scale = mean of the two areas."""
    variances = (2 * sigmas) ** 2
    squared = ((others[..., :2] - pose[None, :, :2]) ** 2).sum(-1)
    scale = (area + other_areas[:, None]) / 2 + np.spacing(1)
    return np.exp(-squared / variances[None] / scale / 2).mean(-1)


def oks_nms(keypoints: np.ndarray, scores: np.ndarray, areas: np.ndarray, threshold: float,
            sigmas: np.ndarray = COCO_OKS_SIGMAS) -> list[int]:
    """Indices of the poses kept, best first: greedily keep the best remaining pose and drop those whose OKS
    with it exceeds `threshold`."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    keep: list[int] = []
    while order.size:
        best, rest = int(order[0]), order[1:]
        keep.append(best)
        if rest.size:
            overlap = oks_between(keypoints[best], keypoints[rest], float(areas[best]), areas[rest], sigmas)
            rest = rest[overlap <= threshold]
        order = rest
    return keep


def oks_nms_per_image(predictions: list[dict], threshold: float) -> list[dict]:
    """OKS-NMS within each image; the kept entries in their original order."""
    by_image: dict[Any, list[int]] = defaultdict(list)
    for index, entry in enumerate(predictions):
        by_image[entry["image_id"]].append(index)
    kept: set[int] = set()
    for indices in by_image.values():
        poses = np.array([np.asarray(predictions[i]["keypoints"], dtype=np.float64).reshape(-1, 3)
                          for i in indices])
        scores = np.array([float(predictions[i]["score"]) for i in indices])
        areas = np.array([pose_area(predictions[i]) for i in indices])
        sigmas = COCO_OKS_SIGMAS if poses.shape[1] == len(COCO_OKS_SIGMAS) else np.full(poses.shape[1], 0.08)
        kept.update(indices[k] for k in oks_nms(poses, scores, areas, threshold, sigmas))
    return [entry for index, entry in enumerate(predictions) if index in kept]


def _cocoeval(truth: CocoKeypoints, predictions: list[dict]) -> dict[str, float]:
    from pycocotools.cocoeval import COCOeval

    coco_truth = quiet_coco(truth.evaluation_dataset())
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and summary table
        coco_results = coco_truth.loadRes(predictions)
        evaluator = COCOeval(coco_truth, coco_results, "keypoints")
        evaluator.params.catIds = [truth.category_id]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(value) for name, value in zip(METRIC_NAMES, evaluator.stats)}

