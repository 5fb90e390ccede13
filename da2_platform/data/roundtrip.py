"""Codec round trip: how much AP the target encoding and the decoders lose on their own, with no model.

Every person with keypoints goes the real path: box -> crop affine -> Gaussian heatmaps -> decode -> back to
image px, and the result (all joints, score 1) is scored with pycocotools against the same file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from da2_platform.data.heatmaps import (
    DECODE_METHODS,
    decode_heatmaps,
    heatmap_size_for,
    heatmap_to_image_coords,
    render_heatmaps,
)
from da2_platform.data.topdown import TopDownDataset


@dataclass(frozen=True)
class RoundTripReport:
    annotations: str
    input_size: tuple[int, int]
    images: int
    persons: int  # annotations of the keypoint category in the file
    persons_with_keypoints: int  # usable persons with at least one labelled joint: the ones round-tripped
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> persons left out
    roundtrip_ap: dict[str, float] = field(default_factory=dict)  # decoder -> COCO keypoint AP
    mean_oks: dict[str, float] = field(default_factory=dict)  # decoder -> mean OKS with the person's own GT
    mean_error_px: dict[str, float] = field(default_factory=dict)  # decoder -> mean joint error in image px
    num_keypoints_mismatch: list[int] = field(default_factory=list)  # ann ids whose num_keypoints is wrong

    def to_json(self) -> dict:
        return {"images": self.images, "persons": self.persons,
                "persons_with_keypoints": self.persons_with_keypoints,
                "roundtrip_ap": dict(self.roundtrip_ap), "skipped": dict(self.skipped),
                "mean_oks": dict(self.mean_oks), "mean_error_px": dict(self.mean_error_px),
                "input_size": list(self.input_size), "annotations": self.annotations,
                "num_keypoints_mismatch": len(self.num_keypoints_mismatch)}


def codec_roundtrip(annotations: str | Path, images: str | Path, input_size: tuple[int, int] = (256, 192),
                    methods: Sequence[str] = DECODE_METHODS, batch_size: int = 256,
                    on_progress: Callable[[int, int], None] | None = None) -> RoundTripReport:
    """Counts of the file and the round-trip AP per decoder. `on_progress(done, total)` after every batch."""
    from da2_platform.evaluation import evaluate_keypoints  # evaluation imports this package: import late

    dataset = TopDownDataset(annotations, images, input_size=input_size, require_keypoints=True)
    heatmap_size = heatmap_size_for(input_size)
    decoded: dict[str, list[dict]] = {method: [] for method in methods}
    oks: dict[str, list[float]] = {method: [] for method in methods}
    errors: dict[str, list[np.ndarray]] = {method: [] for method in methods}
    total = len(dataset)
    for start in range(0, total, batch_size):
        crops = [dataset.geometry(i) for i in range(start, min(start + batch_size, total))]
        keypoints = torch.from_numpy(np.stack([c.keypoints for c in crops]))
        visible = torch.from_numpy(np.stack([c.visible for c in crops]))
        centers = np.stack([c.center for c in crops])
        scales = np.stack([c.scale for c in crops])
        heatmaps, _ = render_heatmaps(keypoints, visible, input_size, heatmap_size)
        for method in methods:
            coords, _ = decode_heatmaps(heatmaps, method=method)
            points = heatmap_to_image_coords(coords, centers, scales, heatmap_size)
            for index, crop, joints in zip(range(start, start + len(crops)), crops, points):
                truth = dataset.instance(index)
                labelled = truth.keypoints[:, 2] > 0
                distance = np.linalg.norm(joints - truth.keypoints[:, :2], axis=-1)[labelled]
                errors[method].append(distance)
                oks[method].append(_oks(distance, truth.area, labelled))
                values = np.concatenate([joints, np.ones((len(joints), 1), dtype=np.float32)], axis=1)
                decoded[method].append({"image_id": crop.image_id, "category_id": dataset.source.category_id,
                                        "keypoints": [float(v) for v in values.reshape(-1)], "score": 1.0})
        if on_progress is not None:
            on_progress(min(start + batch_size, total), total)
    roundtrip_ap = {method: evaluate_keypoints(dataset.source, results)["AP"]
                    for method, results in decoded.items()}
    return RoundTripReport(annotations=str(annotations), input_size=(int(input_size[0]), int(input_size[1])),
                           images=len(dataset.source.images), persons=dataset.source.persons,
                           persons_with_keypoints=total, skipped=dict(sorted(dataset.skipped.items())),
                           roundtrip_ap=roundtrip_ap,
                           mean_oks={m: float(np.mean(v)) if v else 0.0 for m, v in oks.items()},
                           mean_error_px={m: float(np.concatenate(v).mean()) if v else 0.0
                                          for m, v in errors.items()},
                           num_keypoints_mismatch=list(dataset.source.num_keypoints_mismatch))


def _oks(distance: np.ndarray, area: float, labelled: np.ndarray) -> float:
    """COCO's OKS of one pose with its ground truth (labelled joints only)."""
    from da2_platform.evaluation import COCO_OKS_SIGMAS

    variances = (2 * COCO_OKS_SIGMAS[labelled]) ** 2
    return float(np.exp(-(distance**2) / variances / (area + np.spacing(1)) / 2).mean())
