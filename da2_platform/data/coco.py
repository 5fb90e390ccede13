"""Loading and validation of COCO person-keypoints JSON.

What makes a whole file meaningless raises `DataError` naming the file and the annotation id: malformed JSON,
missing top-level lists, an unknown category or image, a keypoints array of the wrong length. A single unusable
instance (no box, a zero-area box, a crowd region) is skipped and counted by reason in `CocoKeypoints.skipped`.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from da2_platform.errors import DataError
from da2_platform.files import read_json
from da2_platform.limits import MAX_ANNOTATIONS_BYTES, MAX_COCO_IMAGES
from da2_platform.names import file_inside


@dataclass(frozen=True)
class PersonInstance:
    """One usable person annotation: its box is clipped to the image and has a positive area."""

    ann_id: int
    image_id: int
    bbox: np.ndarray  # [4] x, y, w, h in image px (clipped to the image)
    keypoints: np.ndarray  # [J, 3] x, y, v
    area: float
    num_keypoints: int  # joints with v > 0


@dataclass
class CocoKeypoints:
    """A validated COCO keypoints file: its raw dict, the keypoint category and the usable person instances."""

    path: Path
    dataset: dict[str, Any]
    category_id: int
    keypoint_names: list[str]
    skeleton: list[list[int]]
    images: dict[int, dict[str, Any]]
    instances: list[PersonInstance]
    persons: int  # annotations of the keypoint category, usable or not
    skipped: dict[str, int] = field(default_factory=dict)
    skipped_ann_ids: set[int] = field(default_factory=set)  # skipped for a box problem (dropped from evaluation)
    num_keypoints_mismatch: list[int] = field(default_factory=list)  # ann ids whose num_keypoints is wrong

    @property
    def num_joints(self) -> int:
        return len(self.keypoint_names)

    def image_file(self, images_dir: str | Path, image_id: int) -> Path:
        """The image's path inside `images_dir`; a file_name that leads out of it is a DataError."""
        return file_inside(Path(images_dir), self.images[image_id]["file_name"], f"{self.path}: image id {image_id}")

    def to_pycocotools(self) -> Any:
        """A pycocotools COCO index over the raw dict, built without its stdout chatter."""
        return quiet_coco(self.dataset)

    def evaluation_dataset(self) -> dict[str, Any]:
        """The dict COCOeval scores against: annotations skipped for a box problem are left out (COCOeval cannot
        read them), and a missing `area` / `num_keypoints` is filled from the box / the keypoints."""
        annotations = []
        for ann in self.dataset["annotations"]:
            if ann["category_id"] != self.category_id or ann["id"] in self.skipped_ann_ids:
                continue
            ann = dict(ann)  # COCOeval writes an 'ignore' flag into each ground-truth dict
            ann.setdefault("area", float(ann["bbox"][2]) * float(ann["bbox"][3]))
            ann.setdefault("num_keypoints", int(sum(1 for v in ann["keypoints"][2::3] if v > 0)))
            annotations.append(ann)
        return {**self.dataset, "annotations": annotations}


def quiet_coco(dataset: dict[str, Any]) -> Any:
    """pycocotools.coco.COCO over an in-memory dict (its index builder prints to stdout, which --json needs)."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def load_coco_keypoints(path: str | Path, what: str = "annotations file", strict: bool = False) -> CocoKeypoints:
    """Read and validate a COCO keypoints JSON (see the module docstring for what raises and what is skipped).

    A `num_keypoints` that disagrees with the labelled joints (v > 0) is listed in `num_keypoints_mismatch`, for
    `da2 data inspect` to warn about (COCOeval ignores a person whose num_keypoints is 0, so the AP changes); with
    `strict` it is a DataError."""
    path = Path(path)
    data = read_json(path, what, MAX_ANNOTATIONS_BYTES)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object with 'images', 'annotations' and 'categories'")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{path}: missing the '{key}' list (not a COCO annotations file?)")

    category = _keypoint_category(path, data["categories"])
    category_ids = {c.get("id") for c in data["categories"] if isinstance(c, dict)}
    names = [str(n) for n in category["keypoints"]]
    images = _index_images(path, data["images"])

    instances: list[PersonInstance] = []
    skipped: Counter[str] = Counter()
    box_skipped: set[int] = set()
    persons = 0
    seen_ids: set[int] = set()
    mismatched: list[int] = []
    for index, ann in enumerate(data["annotations"]):
        ann_id = _annotation_id(path, index, ann, seen_ids)
        where = f"{path}: annotation id {ann_id}"
        if ann.get("category_id") not in category_ids:
            raise DataError(f"{where}: unknown category_id {ann.get('category_id')!r} "
                            f"(categories in the file: {sorted(category_ids)})")
        if ann["category_id"] != category["id"]:
            skipped["other_category"] += 1
            continue
        persons += 1
        image_id = ann.get("image_id")
        if image_id not in images:
            raise DataError(f"{where}: image_id {image_id!r} is not in the file's 'images' list")
        keypoints = _keypoints(where, ann.get("keypoints"), names)
        _check_num_keypoints(where, ann.get("num_keypoints"), keypoints, strict, mismatched, ann_id)
        reason, bbox = _clipped_box(ann.get("bbox"), images[image_id])
        if reason is not None:
            skipped[reason] += 1
            box_skipped.add(ann_id)
            continue
        if ann.get("iscrowd", 0):  # crowd regions stay in the evaluation (COCOeval ignores matches in them)
            skipped["crowd"] += 1
            continue
        area = ann.get("area")
        area = float(area) if is_finite_number(area) and area > 0 else float(bbox[2] * bbox[3])
        instances.append(PersonInstance(ann_id=ann_id, image_id=int(image_id), bbox=bbox, keypoints=keypoints,
                                        area=area, num_keypoints=int((keypoints[:, 2] > 0).sum())))
    return CocoKeypoints(path=path, dataset=data, category_id=category["id"], keypoint_names=names,
                         skeleton=_skeleton(path, category.get("skeleton", []), len(names)),
                         images=images, instances=instances, persons=persons, skipped=dict(skipped),
                         skipped_ann_ids=box_skipped, num_keypoints_mismatch=mismatched)


def _keypoint_category(path: Path, categories: list[Any]) -> dict[str, Any]:
    with_keypoints = [c for c in categories if isinstance(c, dict) and isinstance(c.get("keypoints"), list)
                      and c["keypoints"]]
    if not with_keypoints:
        raise DataError(f"{path}: no category has a 'keypoints' list (not a person-keypoints file?)")
    named_person = [c for c in with_keypoints if c.get("name") == "person"]
    category = (named_person or with_keypoints)[0]
    if not isinstance(category.get("id"), int):
        raise DataError(f"{path}: category {category.get('name')!r} has no integer 'id'")
    return category


def _skeleton(path: Path, value: Any, num_joints: int) -> list[list[int]]:
    """COCO's limb list: pairs of 1-based joint numbers."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise DataError(f"{path}: categories: skeleton: expected a list of [joint, joint] pairs, got "
                        f"{type(value).__name__}")
    for index, pair in enumerate(value):
        if not (isinstance(pair, list) and len(pair) == 2
                and all(isinstance(j, int) and not isinstance(j, bool) and 1 <= j <= num_joints for j in pair)):
            raise DataError(f"{path}: categories: skeleton[{index}]: expected a pair of joint numbers from 1 to "
                            f"{num_joints}, got {str(pair)[:80]}")
    return [list(pair) for pair in value]


def _index_images(path: Path, entries: list[Any]) -> dict[int, dict[str, Any]]:
    if len(entries) > MAX_COCO_IMAGES:
        raise DataError(f"{path}: images: {len(entries)} entries, more than the {MAX_COCO_IMAGES} a file may hold "
                        "(docs/security.md)")
    images: dict[int, dict[str, Any]] = {}
    for index, image in enumerate(entries):
        if not isinstance(image, dict):
            raise DataError(f"{path}: images[{index}] is not an object")
        for key in ("id", "file_name"):
            if key not in image:
                raise DataError(f"{path}: images[{index}] has no '{key}'")
        if not isinstance(image["id"], int):
            raise DataError(f"{path}: images[{index}]: 'id' must be an integer, got {image['id']!r}")
        images[image["id"]] = image
    return images


def _annotation_id(path: Path, index: int, ann: Any, seen: set[int]) -> int:
    if not isinstance(ann, dict):
        raise DataError(f"{path}: annotations[{index}] is not an object")
    ann_id = ann.get("id")
    if not isinstance(ann_id, int):
        raise DataError(f"{path}: annotations[{index}] has no integer 'id' (got {ann_id!r})")
    if ann_id in seen:
        raise DataError(f"{path}: annotation id {ann_id} appears twice")
    seen.add(ann_id)
    return ann_id


def _keypoints(where: str, values: Any, names: list[str]) -> np.ndarray:
    num_joints = len(names)
    if not isinstance(values, list) or len(values) != 3 * num_joints:
        got = f"{len(values)} values" if isinstance(values, list) else repr(type(values).__name__)
        raise DataError(f"{where}: 'keypoints' must hold {3 * num_joints} numbers "
                        f"({num_joints} joints x (x, y, v)), got {got}")
    if not all(is_finite_number(v) for v in values):
        raise DataError(f"{where}: 'keypoints' holds a value that is not a finite number")
    for joint, v in enumerate(values[2::3]):
        if v not in (0, 1, 2):
            raise DataError(f"{where}: keypoints: joint {joint} ({names[joint]}) has visibility {v!r}; COCO's are 0 "
                            "(not labelled), 1 (labelled, hidden) and 2 (labelled, visible)")
    return np.asarray(values, dtype=np.float32).reshape(num_joints, 3)


def _check_num_keypoints(where: str, given: Any, keypoints: np.ndarray, strict: bool, mismatched: list[int],
                         ann_id: int) -> None:
    if given is None:  # optional: evaluation fills it from the joints
        return
    labelled = int((keypoints[:, 2] > 0).sum())
    if is_finite_number(given) and int(given) == given == labelled:
        return
    if strict:
        raise DataError(f"{where}: num_keypoints: {given!r}, but {labelled} joints are labelled (v > 0)")
    mismatched.append(ann_id)


def _clipped_box(bbox: Any, image: dict[str, Any]) -> tuple[str | None, np.ndarray]:
    """(skip reason or None, box clipped to the image)."""
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(is_finite_number(v) for v in bbox):
        return "no_box", np.zeros(4, dtype=np.float32)
    x, y, w, h = (float(v) for v in bbox)
    if w <= 0 or h <= 0:
        return "zero_area_box", np.zeros(4, dtype=np.float32)
    width, height = image.get("width"), image.get("height")
    if is_finite_number(width) and is_finite_number(height):
        x0, y0 = max(x, 0.0), max(y, 0.0)
        x1, y1 = min(x + w, float(width)), min(y + h, float(height))
        if x1 <= x0 or y1 <= y0:
            return "box_outside_image", np.zeros(4, dtype=np.float32)
        x, y, w, h = x0, y0, x1 - x0, y1 - y0
    return None, np.array([x, y, w, h], dtype=np.float32)


def is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def unreadable_images(coco: CocoKeypoints, images_dir: str | Path) -> list[tuple[str, str]]:
    """(file name, why) for every image of the file that is missing, that OpenCV cannot decode, or whose decoded
    size is not the `width` x `height` the file gives (boxes are clipped and crops drawn by those)."""
    import cv2

    from da2_platform.files import file_problem

    bad = []
    for image_id in sorted(coco.images):
        path = coco.image_file(images_dir, image_id)
        problem = file_problem(path)
        if problem is not None:
            bad.append((str(path), "missing" if problem == "not found" else problem))
            continue
        pixels = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if pixels is None:
            bad.append((str(path), "not a readable image"))
            continue
        entry = coco.images[image_id]
        width, height = entry.get("width"), entry.get("height")
        if (is_finite_number(width) and is_finite_number(height)
                and (pixels.shape[1], pixels.shape[0]) != (width, height)):
            why = f"decoded {pixels.shape[1]}x{pixels.shape[0]} px (width x height), the file says {width:g}x{height:g}"
            bad.append((str(path), why))
    return bad


def check_images(annotations: str | Path, images_dir: str | Path, strict: bool = False) -> int:
    """Decode every image an annotations file names; a DataError lists the first few that fail."""
    coco = load_coco_keypoints(annotations, strict=strict)
    bad = unreadable_images(coco, images_dir)
    if bad:
        shown = "; ".join(f"{name} ({why})" for name, why in bad[:5])
        more = f"; and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise DataError(f"{annotations}: {len(bad)} of {len(coco.images)} images cannot be used: {shown}{more}")
    return len(coco.images)
