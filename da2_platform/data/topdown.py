"""TopDownDataset: person crops from any COCO keypoints JSON + image folder, for training and evaluation.

Each item is one person: its box (ground truth or a detector's) becomes a centre and a scale with 1.25 padding
at the input's aspect ratio, the image is warped to the input size, and the keypoints follow the same affine.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from da2_platform.data.coco import CocoKeypoints, PersonInstance, load_coco_keypoints
from da2_platform.data.geometry import apply_affine, box_to_center_scale, crop_affine
from da2_platform.data.heatmaps import flip_pairs_from_names
from da2_platform.errors import DataError
from da2_platform.files import file_problem

CropTransform = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class CropGeometry:
    """Where one person's crop sits in its image, and its keypoints in crop px (no pixels read)."""

    image_id: int
    ann_id: int
    center: np.ndarray  # [2]
    scale: np.ndarray  # [2] padded box (w, h) in image px
    affine: np.ndarray  # [2, 3] image px -> crop px
    keypoints: np.ndarray  # [J, 2] crop px
    visible: np.ndarray  # [J] 1.0 where labelled and inside the crop
    area: float
    box_score: float


class TopDownDataset(Dataset):
    """One item per person: {"image", "keypoints", "visible", "center", "scale", "image_id", "ann_id",
    "area", "box_score"} (see `__getitem__`).

    `skipped` counts the file's unusable persons by reason (no_box, zero_area_box, box_outside_image, crowd),
    plus, with `require_keypoints`, the selected persons without a labelled joint (no_keypoints)."""

    def __init__(self, annotations: str | Path, images: str | Path, input_size: tuple[int, int] = (256, 192),
                 transform: CropTransform | None = None, ann_ids: Sequence[int] | None = None,
                 boxes: list[dict] | None = None, require_keypoints: bool = True) -> None:
        if ann_ids is not None and boxes is not None:
            raise ValueError("pass either ann_ids (ground-truth persons) or boxes (detections), not both")
        self.annotations_path = Path(annotations)
        self.images_dir = Path(images)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.transform = transform
        self.source: CocoKeypoints = load_coco_keypoints(self.annotations_path)
        self.keypoint_names = self.source.keypoint_names
        self.num_joints = self.source.num_joints
        self.flip_pairs = flip_pairs_from_names(self.keypoint_names)
        self.coco = self.source.to_pycocotools()
        self.skipped: dict[str, int] = dict(self.source.skipped)
        self._box_scores: dict[int, float] = {}  # detector score by ann_id (ground-truth boxes score 1.0)

        if boxes is not None:
            self._instances = self._detections(boxes)
        else:
            self._instances = self._ground_truth(ann_ids, require_keypoints)
        self.ann_ids: list[int] = [inst.ann_id for inst in self._instances]
        self._check_images_exist()

    # ---- selection -------------------------------------------------------------------------------------

    def _ground_truth(self, ann_ids: Sequence[int] | None, require_keypoints: bool) -> list[PersonInstance]:
        instances = self.source.instances
        if ann_ids is not None:
            by_id = {inst.ann_id: inst for inst in instances}
            known = {a["id"] for a in self.source.dataset["annotations"]}
            unknown = [int(a) for a in ann_ids if int(a) not in known]
            if unknown:
                raise DataError(f"{self.annotations_path}: annotation id {unknown[0]} was requested but is not "
                                f"in the file ({len(unknown)} unknown ids)")
            instances = [by_id[int(a)] for a in ann_ids if int(a) in by_id]
        if require_keypoints:
            without = sum(1 for inst in instances if inst.num_keypoints == 0)
            if without:
                self.skipped["no_keypoints"] = self.skipped.get("no_keypoints", 0) + without
            instances = [inst for inst in instances if inst.num_keypoints > 0]
        return instances

    def _detections(self, boxes: list[dict]) -> list[PersonInstance]:
        """Detector boxes (COCO results: image_id, bbox, score); ann_id is the entry's index in `boxes`."""
        instances = []
        skipped: Counter[str] = Counter()
        empty = np.zeros((self.num_joints, 3), dtype=np.float32)
        for index, det in enumerate(boxes):
            where = f"detector boxes entry {index}"
            if not isinstance(det, dict) or det.get("image_id") not in self.source.images:
                raise DataError(f"{where}: image_id {det.get('image_id') if isinstance(det, dict) else None!r} "
                                f"is not in {self.annotations_path}")
            if det.get("category_id", self.source.category_id) != self.source.category_id:
                skipped["other_category"] += 1
                continue
            bbox = det.get("bbox")
            if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
                raise DataError(f"{where}: 'bbox' must be [x, y, w, h], got {bbox!r}")
            x, y, w, h = (float(v) for v in bbox)
            if not (np.isfinite([x, y, w, h]).all() and w > 0 and h > 0):
                skipped["zero_area_box"] += 1
                continue
            instances.append(PersonInstance(ann_id=index, image_id=int(det["image_id"]),
                                            bbox=np.array([x, y, w, h], dtype=np.float32), keypoints=empty,
                                            area=w * h, num_keypoints=0))
            self._box_scores[index] = float(det.get("score", 1.0))
        for reason, count in skipped.items():
            self.skipped[f"detections_{reason}"] = count
        return instances

    def _check_images_exist(self) -> None:
        checked: set[int] = set()
        for inst in self._instances:
            if inst.image_id in checked:
                continue
            checked.add(inst.image_id)
            image_file = self.source.image_file(self.images_dir, inst.image_id)
            problem = file_problem(image_file)
            if problem == "not found":
                raise DataError(f"image file not found: {image_file} (image id {inst.image_id}, annotation id "
                                f"{inst.ann_id} in {self.annotations_path})")
            if problem is not None:
                raise DataError(f"{image_file}: {problem} (image id {inst.image_id}, annotation id {inst.ann_id} "
                                f"in {self.annotations_path})")

    # ---- items -----------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._instances)

    def instance(self, index: int) -> PersonInstance:
        """The annotation behind item `index` (box clipped to the image, keypoints in image px)."""
        return self._instances[index]

    def geometry(self, index: int) -> CropGeometry:
        """The crop of item `index` without reading its image (what the codec round trip needs)."""
        inst = self._instances[index]
        height, width = self.input_size
        center, scale = box_to_center_scale(inst.bbox, aspect_ratio=width / height)
        affine = crop_affine(center, scale, self.input_size)
        labelled = inst.keypoints[:, 2] > 0
        points = np.where(labelled[:, None], apply_affine(inst.keypoints[:, :2], affine), 0.0).astype(np.float32)
        visible = (labelled & _inside(points, width, height)).astype(np.float32)
        return CropGeometry(image_id=inst.image_id, ann_id=inst.ann_id, center=center, scale=scale,
                            affine=affine, keypoints=points, visible=visible, area=float(inst.area),
                            box_score=self._box_scores.get(inst.ann_id, 1.0))

    def read_image(self, image_id: int, ann_id: int) -> np.ndarray:
        """The image as uint8 HWC RGB; an unreadable file names itself and the annotation."""
        image_file = self.source.image_file(self.images_dir, image_id)
        image = cv2.imread(str(image_file), cv2.IMREAD_COLOR)
        if image is None:
            raise DataError(f"cannot read image {image_file} (image id {image_id}, annotation id {ann_id} in "
                            f"{self.annotations_path}): missing or not an image")
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        """One person: "image" float32 [3, H, W] RGB in [0, 1]; "keypoints" [J, 2] crop px; "visible" [J];
        "center", "scale" [2]; "image_id", "ann_id" int64; "area", "box_score" float32."""
        geo = self.geometry(index)
        height, width = self.input_size
        image = self.read_image(geo.image_id, geo.ann_id)
        crop = cv2.warpAffine(image, geo.affine, (width, height), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
        keypoints, visible = geo.keypoints, geo.visible
        if self.transform is not None:
            crop, keypoints, visible = self.transform(crop, keypoints.copy(), visible.copy())
            keypoints = np.asarray(keypoints, dtype=np.float32)
            visible = (np.asarray(visible, dtype=np.float32) > 0) & _inside(keypoints, width, height)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1).float().div_(255.0),
            "keypoints": torch.as_tensor(keypoints, dtype=torch.float32),
            "visible": torch.as_tensor(visible, dtype=torch.float32),
            "center": torch.as_tensor(geo.center, dtype=torch.float32),
            "scale": torch.as_tensor(geo.scale, dtype=torch.float32),
            "image_id": torch.tensor(geo.image_id, dtype=torch.int64),
            "ann_id": torch.tensor(geo.ann_id, dtype=torch.int64),
            "area": torch.tensor(geo.area, dtype=torch.float32),
            "box_score": torch.tensor(geo.box_score, dtype=torch.float32),
        }


def _inside(points: np.ndarray, width: int, height: int) -> np.ndarray:
    x, y = points[:, 0], points[:, 1]
    return (x >= 0) & (x < width) & (y >= 0) & (y < height)
