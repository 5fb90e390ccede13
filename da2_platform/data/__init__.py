"""Data: SynthPose, COCO keypoint files, the top-down crop dataset and the heatmap codec.

The names below are re-exported lazily: importing a light submodule (say `da2_platform.data.splits`) must not
pull in torch and cv2, so that `da2 --help` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "da2_platform.data.coco": ["CocoKeypoints", "PersonInstance", "load_coco_keypoints"],
    "da2_platform.data.geometry": ["apply_affine", "box_to_center_scale", "crop_affine"],
    "da2_platform.data.heatmaps": ["decode_heatmaps", "default_sigma", "flip_heatmaps_back",
                                   "flip_pairs_from_names", "heatmap_size_for", "heatmap_to_image_coords",
                                   "render_heatmaps"],
    "da2_platform.data.roundtrip": ["RoundTripReport", "codec_roundtrip"],
    "da2_platform.data.synthpose": ["COCO_KEYPOINT_NAMES", "COCO_SKELETON", "SynthPosePaths", "write_synthpose"],
    "da2_platform.data.topdown": ["CropGeometry", "TopDownDataset"],
}
_HOME = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = [
    "COCO_KEYPOINT_NAMES", "COCO_SKELETON", "CocoKeypoints", "CropGeometry", "PersonInstance", "RoundTripReport",
    "SynthPosePaths", "TopDownDataset", "apply_affine", "box_to_center_scale", "codec_roundtrip", "crop_affine",
    "decode_heatmaps", "default_sigma", "flip_heatmaps_back", "flip_pairs_from_names",
    "heatmap_size_for", "heatmap_to_image_coords", "load_coco_keypoints", "render_heatmaps",
    "write_synthpose",
]


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'da2_platform.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOME[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
