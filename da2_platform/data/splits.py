"""The three data roles every method shares: train, search-val and the held-out val.

Searches train on search-train and score policies on search-val (DA2 takes its d steps there); final AP is
measured on val, which no search sees. `data.search_val` says where search-val comes from:
- `from_train`: carved out of train by image (all persons of an image go to one side), written once as COCO
  files, so every consumer (DA2 d-steps, RL/Optuna children, evaluation) reads the same ids;
- `target`: a separate labelled set from the target domain (COCO: given by the user; SynthPose: a third split
  drawn in the val style with its own seeds); searches then train on all of train.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from da2_platform.config import ExperimentConfig
from da2_platform.errors import ConfigError
from da2_platform.files import read_json, write_json_atomic
from da2_platform.limits import MAX_ANNOTATIONS_BYTES


@dataclass(frozen=True)
class ExperimentData:
    """Annotation files and image folders of one experiment."""

    search_train_annotations: Path
    search_val_annotations: Path
    train_images: Path  # the images of train and search-train
    val_annotations: Path
    val_images: Path
    full_train_annotations: Path
    search_val_images: Path  # train_images (from_train) or the target set's folder


def prepare_data(cfg: ExperimentConfig) -> ExperimentData:
    """Generate SynthPose when configured and missing, then write the search split beside the work dir."""
    data = cfg.data
    target = data.search_val == "target"
    if data.kind == "synthpose":
        from da2_platform.data.synthpose import write_synthpose

        # one folder per (style, data seed): experiments of several seeds share a work dir
        root = data.root or cfg.workdir / "data" / f"synthpose-{data.synth_shift}-s{cfg.data_seed}"
        paths = write_synthpose(root, train=data.synth_train, val=data.synth_val, seed=cfg.data_seed,
                                shift=data.synth_shift, target=data.synth_search_val if target else 0)
        train_ann, train_img = paths.train_annotations, paths.train_images
        val_ann, val_img = paths.val_annotations, paths.val_images
        target_ann, target_img = paths.target_annotations, paths.target_images
    else:
        needed = ["train_annotations", "train_images", "val_annotations", "val_images"]
        needed += ["search_val_annotations", "search_val_images"] if target else []
        missing = [k for k in needed if getattr(data, k) is None]
        if missing:
            raise ConfigError(f"data.kind is 'coco' but data.{missing[0]} is not set")
        train_ann, train_img = Path(data.train_annotations), Path(data.train_images)
        val_ann, val_img = Path(data.val_annotations), Path(data.val_images)
        target_ann = Path(data.search_val_annotations) if target else None
        target_img = Path(data.search_val_images) if target else None
    if target:
        return ExperimentData(search_train_annotations=train_ann, search_val_annotations=target_ann,
                              train_images=train_img, val_annotations=val_ann, val_images=val_img,
                              full_train_annotations=train_ann, search_val_images=target_img)
    split_dir = cfg.workdir / "data" / f"splits-s{cfg.seed}"
    search_train, search_val = write_search_split(train_ann, split_dir, data.search_val_fraction, cfg.seed)
    return ExperimentData(search_train_annotations=search_train, search_val_annotations=search_val,
                          train_images=train_img, val_annotations=val_ann, val_images=val_img,
                          full_train_annotations=train_ann, search_val_images=train_img)


def write_search_split(train_annotations: Path, out_dir: Path, val_fraction: float, seed: int) -> tuple[Path, Path]:
    """Split a COCO keypoints file by image into search_train.json and search_val.json (deterministic)."""
    coco = read_json(train_annotations, "training annotations", MAX_ANNOTATIONS_BYTES)
    images = sorted(coco.get("images", []), key=lambda im: im["id"])
    if len(images) < 2:
        raise ConfigError(f"{train_annotations}: needs at least 2 images to carve a search-val split")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(images))
    n_val = max(1, round(val_fraction * len(images)))
    val_ids = {images[i]["id"] for i in order[:n_val]}
    sides = {"search_train": lambda i: i not in val_ids, "search_val": lambda i: i in val_ids}
    paths = []
    for name, keep in sides.items():
        subset = dict(coco)
        subset["images"] = [im for im in images if keep(im["id"])]
        subset["annotations"] = [a for a in coco.get("annotations", []) if keep(a.get("image_id"))]
        paths.append(write_json_atomic(out_dir / f"{name}.json", subset, indent=None))
    return paths[0], paths[1]
