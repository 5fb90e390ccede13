"""The three splits every method shares: search-train and search-val carved out of train, and the held-out val.

Search methods score policies on search-val (never on val); final AP is measured on val, which no search sees.
The split is by image (all persons of an image go to one side) and written once as COCO files, so every
consumer (DA2 d-steps, RL/Optuna children, evaluation) reads the same ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from da2_platform.config import ExperimentConfig
from da2_platform.errors import ConfigError
from da2_platform.files import read_json, write_json_atomic


@dataclass(frozen=True)
class ExperimentData:
    """Annotation files and image folders of one experiment."""

    search_train_annotations: Path
    search_val_annotations: Path
    train_images: Path
    val_annotations: Path
    val_images: Path
    full_train_annotations: Path


def prepare_data(cfg: ExperimentConfig) -> ExperimentData:
    """Generate SynthPose when configured and missing, then write the search split beside the work dir."""
    data = cfg.data
    if data.kind == "synthpose":
        from da2_platform.data.synthpose import write_synthpose

        root = data.root or cfg.workdir / "data" / "synthpose"
        paths = write_synthpose(root, train=data.synth_train, val=data.synth_val, seed=data.synth_seed)
        train_ann, train_img = paths.train_annotations, paths.train_images
        val_ann, val_img = paths.val_annotations, paths.val_images
    else:
        missing = [k for k in ("train_annotations", "train_images", "val_annotations", "val_images")
                   if getattr(data, k) is None]
        if missing:
            raise ConfigError(f"data.kind is 'coco' but data.{missing[0]} is not set")
        train_ann, train_img = Path(data.train_annotations), Path(data.train_images)
        val_ann, val_img = Path(data.val_annotations), Path(data.val_images)
    split_dir = cfg.workdir / "data" / "splits"
    search_train, search_val = write_search_split(train_ann, split_dir, data.search_val_fraction, cfg.seed)
    return ExperimentData(search_train, search_val, train_img, val_ann, val_img, train_ann)


def write_search_split(train_annotations: Path, out_dir: Path, val_fraction: float, seed: int) -> tuple[Path, Path]:
    """Split a COCO keypoints file by image into search_train.json and search_val.json (deterministic)."""
    coco = read_json(train_annotations, "training annotations")
    images = sorted(coco.get("images", []), key=lambda im: im["id"])
    if len(images) < 2:
        raise ConfigError(f"{train_annotations}: needs at least 2 images to carve a search-val split")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(images))
    n_val = max(1, int(round(val_fraction * len(images))))
    val_ids = {images[i]["id"] for i in order[:n_val]}
    sides = {"search_train": lambda i: i not in val_ids, "search_val": lambda i: i in val_ids}
    paths = []
    for name, keep in sides.items():
        subset = dict(coco)
        subset["images"] = [im for im in images if keep(im["id"])]
        subset["annotations"] = [a for a in coco.get("annotations", []) if keep(a.get("image_id"))]
        paths.append(write_json_atomic(out_dir / f"{name}.json", subset, indent=None))
    return paths[0], paths[1]
