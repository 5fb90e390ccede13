"""SynthPose: a COCO person-keypoints data set of rendered articulated figures, written in seconds on a CPU.

Each image holds 1-3 stick-and-blob figures with the 17 COCO joints over a textured background. Left limbs are
warm-coloured and right limbs cool-coloured, so left/right is learnable and a horizontal flip must swap joints.
Visibility follows COCO: v=2 where the joint's own body part is on top at its pixel, v=1 where something covers
it (another part, another figure, an occluder, the back of the head), v=0 with x=y=0 outside the image.

Three splits: train, val and an optional target split (a small labelled set from the deployment domain that
searches may score on; its image ids are disjoint from train and val). `shift` sets the style of val and target
relative to train: `wide` draws them from a wider distribution (rotation, scale, occlusion, blur, lighting), so a
model trained without augmentation loses AP there; `none` draws them from the train distribution, where
augmentation helps only as regularisation of a small train set; `lowlight` and `lowlight-tilt` move a few named
factors (light, contrast, blur; figure rotation) that ops of the search space can reproduce (`STYLES`). Every image draws from its own generator seeded
by (seed, split, index): the same seed writes the same bytes, and the first N images do not depend on how many
are written.
"""

from __future__ import annotations

import math
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from da2_platform.errors import ConfigError, DataError
from da2_platform.files import read_json, write_bytes_atomic, write_json_atomic
from da2_platform.limits import MAX_SYNTH_IMAGES, MAX_SYNTH_SIDE

COCO_KEYPOINT_NAMES: list[str] = [
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
]
COCO_SKELETON: list[list[int]] = [
    [16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7], [6, 8], [7, 9],
    [8, 10], [9, 11], [2, 3], [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7],
]
GENERATOR_VERSION = 1  # bump when the rendering changes, so a cached set is regenerated
SPLIT_CODES = {"train": 0, "val": 1, "target": 2}
FIRST_IMAGE_ID = {"train": 1, "val": 1_000_001, "target": 2_000_001}
SHIFTS = ("none", "wide", "lowlight", "lowlight-tilt")
SUBPIXEL_BITS = 4  # cv2 drawing takes fixed-point coordinates; 1/16 px keeps joints where they are labelled
JOINT = {name: i for i, name in enumerate(COCO_KEYPOINT_NAMES)}
STAGING_DIR = ".synthpose-partial"  # inside the output folder while a set is written


@dataclass(frozen=True)
class SynthPosePaths:
    root: Path
    train_annotations: Path  # root/annotations/person_keypoints_train.json
    train_images: Path  # root/images/train
    val_annotations: Path  # root/annotations/person_keypoints_val.json
    val_images: Path  # root/images/val
    target_annotations: Path | None = None  # root/annotations/person_keypoints_target.json (when target > 0)
    target_images: Path | None = None  # root/images/target


@dataclass(frozen=True)
class SplitStyle:
    """The distribution one split is drawn from."""

    rotation_deg: float  # global rotation drawn from +-this
    torso_lean_deg: float
    height_range: tuple[float, float]  # figure height / image height, single figure
    centre_jitter: float  # how far (fraction of the image) a figure centre may wander
    back_view_prob: float
    occluder_prob: float
    occluders: tuple[int, int]
    occluder_size: tuple[float, float]  # side / figure height
    blur_prob: float
    blur_sigma: tuple[float, float]
    brightness: float  # +- shift on 0..255
    contrast: tuple[float, float]
    gamma: tuple[float, float]
    colour_cast: float  # +- per-channel gain
    noise_sigma: tuple[float, float]
    brightness_offset: float = 0.0  # mean shift on 0..255 (negative: low light), before the +- brightness draw


TRAIN_STYLE = SplitStyle(rotation_deg=15.0, torso_lean_deg=10.0, height_range=(0.55, 0.85), centre_jitter=0.06,
                         back_view_prob=0.1, occluder_prob=0.2, occluders=(1, 1), occluder_size=(0.08, 0.18),
                         blur_prob=0.1, blur_sigma=(0.3, 0.7), brightness=15.0, contrast=(0.9, 1.1),
                         gamma=(0.9, 1.1), colour_cast=0.05, noise_sigma=(0.0, 3.0))
VAL_STYLE = SplitStyle(rotation_deg=60.0, torso_lean_deg=25.0, height_range=(0.3, 1.05), centre_jitter=0.18,
                       back_view_prob=0.25, occluder_prob=0.7, occluders=(1, 3), occluder_size=(0.12, 0.35),
                       blur_prob=0.6, blur_sigma=(0.6, 2.2), brightness=55.0, contrast=(0.55, 1.45),
                       gamma=(0.6, 1.6), colour_cast=0.2, noise_sigma=(2.0, 10.0))
# Deployment styles that move a few named factors of train's style, each of which an op of the search space can
# reproduce (Brightness, Contrast, GaussianBlur; Rotate for the tilt), so that the policy decides the AP:
# `lowlight`: train's geometry under dim, flat, soft light (a darker mean level, gamma > 1, contrast 0.35-0.6,
# blur on 90% of images); `lowlight-tilt`: the same light with figures rotated up to 45 degrees.
LOWLIGHT_STYLE = replace(TRAIN_STYLE, brightness=10.0, brightness_offset=-45.0, contrast=(0.35, 0.6),
                         gamma=(1.1, 1.5), blur_prob=0.9, blur_sigma=(1.2, 2.8))
LOWLIGHT_TILT_STYLE = replace(LOWLIGHT_STYLE, rotation_deg=45.0)
STYLES = {"none": TRAIN_STYLE, "wide": VAL_STYLE, "lowlight": LOWLIGHT_STYLE, "lowlight-tilt": LOWLIGHT_TILT_STYLE}


def split_style(split: str, shift: str) -> SplitStyle:
    """Train is always TRAIN_STYLE; val and target are drawn in the style `shift` names (`STYLES`)."""
    return TRAIN_STYLE if split == "train" else STYLES[shift]

# body model, in figure heights (head top to soles ~ 1)
TORSO, NECK, HEAD_RADIUS = 0.29, 0.05, 0.065
SHOULDER_HALF, HIP_HALF = 0.115, 0.08
UPPER_ARM, FOREARM, THIGH, SHIN = 0.16, 0.15, 0.23, 0.23
THICKNESS = {"upper_arm": 0.055, "forearm": 0.045, "thigh": 0.075, "shin": 0.06, "neck": 0.05}
# face points on the head sphere: (angle around the vertical axis from the face direction, height, radius factor)
FACE_POINTS = {"nose": (0.0, -0.012, 1.08), "left_eye": (0.38, 0.016, 1.0), "right_eye": (-0.38, 0.016, 1.0),
               "left_ear": (math.pi / 2, 0.004, 1.0), "right_ear": (-math.pi / 2, 0.004, 1.0)}
SKIN_TONES = [(241, 194, 160), (224, 172, 132), (198, 134, 96), (160, 102, 68), (110, 70, 46), (250, 214, 186)]


@dataclass
class Figure:
    """One posed figure in image px: joints [17, 2], the head, and the order its parts are drawn in."""

    joints: np.ndarray
    head_center: np.ndarray
    head_radius: float
    face_hidden: np.ndarray  # [17] bool: face points on the far side of the head
    parts: list[dict[str, Any]]
    extent: np.ndarray  # [4] x0, y0, x1, y1 of the whole figure (unclipped)


def write_synthpose(out: str | Path, train: int = 400, val: int = 100, seed: int = 0,
                    image_size: tuple[int, int] = (256, 256),
                    on_progress: Callable[[str, int, int], None] | None = None, shift: str = "wide",
                    target: int = 0) -> SynthPosePaths:
    """Write SynthPose under `out` (PNG images, COCO JSON) and return its paths. Idempotent: a set already
    written with the same arguments by this generator version is left as it is.

    `image_size` is (H, W); `on_progress(split, done, total)` is called after every image. `shift` is the style
    of val and target relative to train (`none` or `wide`); `target` > 0 also writes that many target images.
    """
    if train < 0 or val < 0 or target < 0:
        raise ConfigError(f"SynthPose sizes must be >= 0, got train={train}, val={val}, target={target}")
    if shift not in SHIFTS:
        raise ConfigError(f"SynthPose shift must be one of {list(SHIFTS)}, got {shift!r}")
    height, width = int(image_size[0]), int(image_size[1])
    if min(height, width) < 64:
        raise ConfigError(f"SynthPose image_size must be at least 64x64, got {height}x{width}")
    if max(height, width) > MAX_SYNTH_SIDE:  # before anything is allocated or written (docs/security.md)
        raise ConfigError(f"SynthPose image_size {height}x{width} is larger than {MAX_SYNTH_SIDE} pixels a side")
    if max(train, val, target) > MAX_SYNTH_IMAGES:
        raise ConfigError(f"SynthPose sizes must be at most {MAX_SYNTH_IMAGES} images a split, got train={train}, "
                          f"val={val}, target={target}")
    root = Path(out)
    paths = SynthPosePaths(root=root,
                           train_annotations=root / "annotations" / "person_keypoints_train.json",
                           train_images=root / "images" / "train",
                           val_annotations=root / "annotations" / "person_keypoints_val.json",
                           val_images=root / "images" / "val",
                           target_annotations=root / "annotations" / "person_keypoints_target.json" if target else None,
                           target_images=root / "images" / "target" if target else None)
    manifest = {"generator": "synthpose", "version": GENERATOR_VERSION, "seed": int(seed), "train": int(train),
                "val": int(val), "image_size": [height, width]}
    if shift != "wide" or target:  # the manifest of a default set stays as it was
        manifest.update(shift=shift, target=int(target))
    manifest_path = root / "synthpose.json"
    if _already_written(manifest_path, manifest, paths):
        return paths
    # every split is written into a staging folder and moved into place once all are whole, so an interrupted
    # run (Ctrl+C) leaves what was there before: no half set, no folder it created
    created = [p for p in (root, *root.parents) if not p.exists()]
    staging = root / STAGING_DIR
    try:
        shutil.rmtree(staging, ignore_errors=True)  # left by a run that was killed outright
        staged = []
        for split, count, ann_path, image_dir in _splits(paths, train, val, target):
            coco = _write_split(split, count, seed, (height, width), staging / split, on_progress,
                                split_style(split, shift))
            write_json_atomic(staging / ann_path.name, coco, indent=None)
            staged.append((staging / split, image_dir, staging / ann_path.name, ann_path, coco))
        manifest_path.unlink(missing_ok=True)  # from here until the manifest is written the set is not whole
        for staged_images, image_dir, staged_ann, ann_path, coco in staged:
            image_dir.mkdir(parents=True, exist_ok=True)
            for image in coco["images"]:
                os.replace(staged_images / image["file_name"], image_dir / image["file_name"])
            _remove_stale_images(image_dir, {im["file_name"] for im in coco["images"]})
            ann_path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged_ann, ann_path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in sorted(created, key=lambda p: len(p.parts), reverse=True):
            shutil.rmtree(folder, ignore_errors=True)  # made by this run: nothing of anyone else's is inside
        raise
    shutil.rmtree(staging, ignore_errors=True)
    if not target:  # a target split an earlier run wrote does not belong to this set
        (root / "annotations" / "person_keypoints_target.json").unlink(missing_ok=True)
        stale = root / "images" / "target"
        _remove_stale_images(stale, set())
        if stale.is_dir() and not any(stale.iterdir()):
            stale.rmdir()
    write_json_atomic(manifest_path, manifest)
    return paths


def _splits(paths: SynthPosePaths, train: int, val: int, target: int) -> list[tuple[str, int, Path, Path]]:
    out = [("train", train, paths.train_annotations, paths.train_images),
           ("val", val, paths.val_annotations, paths.val_images)]
    if target:
        out.append(("target", target, paths.target_annotations, paths.target_images))
    return out


def _already_written(manifest_path: Path, manifest: dict[str, Any], paths: SynthPosePaths) -> bool:
    splits = _splits(paths, manifest["train"], manifest["val"], manifest.get("target", 0))
    if not (manifest_path.is_file() and all(ann.is_file() for _, _, ann, _ in splits)):
        return False
    try:
        if read_json(manifest_path) != manifest:
            return False
    except DataError:  # an unreadable manifest: write the set again
        return False
    for split, count, _, image_dir in splits:
        for i in range(count):
            if not (image_dir / _file_name(FIRST_IMAGE_ID[split] + i)).is_file():
                return False
    return True


def _file_name(image_id: int) -> str:
    return f"{image_id:012d}.png"


def _write_split(split: str, count: int, seed: int, image_size: tuple[int, int], image_dir: Path,
                 on_progress: Callable[[str, int, int], None] | None, style: SplitStyle) -> dict[str, Any]:
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(count):
        image_id = FIRST_IMAGE_ID[split] + i
        rng = np.random.default_rng([seed, SPLIT_CODES[split], i])
        pixels, persons = render_image(rng, image_size, style)
        ok, png = cv2.imencode(".png", cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR))
        if not ok:
            raise RuntimeError(f"cv2 could not encode SynthPose image {image_id} as PNG")
        write_bytes_atomic(image_dir / _file_name(image_id), png.tobytes())
        images.append({"id": image_id, "file_name": _file_name(image_id), "height": image_size[0],
                       "width": image_size[1]})
        for k, person in enumerate(persons):
            annotations.append({"id": image_id * 10 + k + 1, "image_id": image_id, "category_id": 1, **person})
        if on_progress is not None:
            on_progress(split, i + 1, count)
    return {
        "info": {"description": f"SynthPose {split} (rendered articulated figures)",
                 "version": str(GENERATOR_VERSION), "style": asdict(style)},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "person", "supercategory": "person",
                        "keypoints": list(COCO_KEYPOINT_NAMES), "skeleton": [list(s) for s in COCO_SKELETON]}],
    }


def _remove_stale_images(image_dir: Path, keep: set[str]) -> None:
    """Images a larger earlier run left behind (only files named the way this generator names them)."""
    if not image_dir.is_dir():
        return
    for path in image_dir.glob("*.png"):
        if re.fullmatch(r"\d{12}\.png", path.name) and path.name not in keep:
            path.unlink()


# ---- one image -------------------------------------------------------------------------------------------

def render_image(rng: np.random.Generator, image_size: tuple[int, int],
                 style: SplitStyle) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """One RGB uint8 image and its person annotations (bbox, area, iscrowd, num_keypoints, keypoints)."""
    height, width = image_size
    canvas = _background(rng, height, width)
    labels = np.zeros((height, width), dtype=np.int32)  # which part is on top at each pixel
    count = int(rng.choice([1, 2, 3], p=[0.5, 0.3, 0.2]))
    slots = rng.permutation(count)
    figures, areas = [], []
    for k in range(count):
        figure = _pose_figure(rng, k, int(slots[k]), count, image_size, style)
        _draw_figure(canvas, labels, figure)
        ids = [part["id"] for part in figure.parts]
        areas.append(float(np.isin(labels, ids).sum()))  # drawn last so far: its whole in-image silhouette
        figures.append(figure)
    _draw_occluders(rng, canvas, labels, figures, style)
    canvas = _photometric(rng, canvas, style)

    persons = []
    for figure, area in zip(figures, areas):
        keypoints = _visibility(figure, labels, height, width)
        x0, y0, x1, y1 = figure.extent
        x0, y0 = max(x0 - 2.0, 0.0), max(y0 - 2.0, 0.0)
        x1, y1 = min(x1 + 2.0, float(width)), min(y1 + 2.0, float(height))
        persons.append({
            "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
            "area": round(max(area, 1.0), 2),
            "iscrowd": 0,
            "num_keypoints": int(sum(1 for v in keypoints[2::3] if v > 0)),
            "keypoints": keypoints,
        })
    return canvas, persons


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    ys = np.arange(height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :]

    def texture() -> np.ndarray:
        c1, c2 = rng.uniform(0, 255, 3).astype(np.float32), rng.uniform(0, 255, 3).astype(np.float32)
        kind = int(rng.integers(4))
        if kind == 0:  # smooth noise
            grid = rng.uniform(0, 255, (int(rng.integers(3, 12)), int(rng.integers(3, 12)), 3))
            return cv2.resize(grid.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
        if kind == 1:  # stripes
            angle, cycles, phase = rng.uniform(0, math.pi), rng.uniform(2, 14), rng.uniform(0, 2 * math.pi)
            t = 0.5 + 0.5 * np.sin(2 * math.pi * cycles * (xs * math.cos(angle) + ys * math.sin(angle)) / width
                                   + phase)
        elif kind == 2:  # linear gradient
            angle = rng.uniform(0, 2 * math.pi)
            t = xs * math.cos(angle) + ys * math.sin(angle)
            t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        else:  # checkerboard
            cell = int(rng.integers(8, 48))
            t = ((xs // cell + ys // cell) % 2).astype(np.float32)
        t = np.broadcast_to(t, (height, width))
        return c1 + (c2 - c1) * t[..., None]

    image = texture()
    if rng.random() < 0.5:
        image = 0.5 * image + 0.5 * texture()
    image += rng.standard_normal((height, width, 1), dtype=np.float32) * np.float32(rng.uniform(2, 12))
    canvas = np.clip(image, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(0, 7))):  # clutter, some of it limb-like
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        p0 = (int(rng.uniform(0, width)), int(rng.uniform(0, height)))
        if rng.random() < 0.5:
            p1 = (int(rng.uniform(0, width)), int(rng.uniform(0, height)))
            cv2.line(canvas, p0, p1, colour, int(rng.integers(2, 12)), cv2.LINE_AA)
        else:
            axes = (int(rng.integers(3, width // 6)), int(rng.integers(3, height // 6)))
            cv2.ellipse(canvas, p0, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1, cv2.LINE_AA)
    return canvas


def _rotate(vector: np.ndarray, degrees: float) -> np.ndarray:
    """Counter-clockwise in the body frame (y up)."""
    t = math.radians(degrees)
    c, s = math.cos(t), math.sin(t)
    return np.array([c * vector[0] - s * vector[1], s * vector[0] + c * vector[1]])


def _pose_figure(rng: np.random.Generator, index: int, slot: int, count: int, image_size: tuple[int, int],
                 style: SplitStyle) -> Figure:
    """Random plausible pose in the body frame (y up, person's left at +x when facing the camera), then
    scaled, rotated and placed in the image."""
    height, width = image_size
    yaw = math.radians(rng.uniform(-70, 70)) + (math.pi if rng.random() < style.back_view_prob else 0.0)
    # lateral sign and foreshortening of the person's left side (+1 facing the camera, -1 seen from the back)
    left_x = math.cos(yaw)
    lean = rng.uniform(-style.torso_lean_deg, style.torso_lean_deg)
    up = _rotate(np.array([0.0, 1.0]), lean)
    across = _rotate(np.array([1.0, 0.0]), lean)
    joints = np.zeros((17, 2))
    pelvis = np.zeros(2)
    neck_base = pelvis + TORSO * up
    for side, sign in (("left", 1.0), ("right", -1.0)):
        lateral = sign * left_x
        outward = 1.0 if lateral >= 0 else -1.0
        shoulder = neck_base + SHOULDER_HALF * lateral * across
        hip = pelvis + HIP_HALF * lateral * across
        raise_deg = rng.uniform(-25, 170) if rng.random() < 0.6 else rng.uniform(-15, 40)
        upper = _rotate(-up, outward * raise_deg)
        elbow = shoulder + UPPER_ARM * upper
        wrist = elbow + FOREARM * _rotate(upper, rng.choice([-1.0, 1.0]) * rng.uniform(0, 150))
        kick = rng.uniform(40, 100) if rng.random() < 0.15 else rng.uniform(-12, 35)
        thigh = _rotate(-up, outward * kick)
        knee = hip + THIGH * thigh
        ankle = knee + SHIN * _rotate(thigh, -outward * rng.uniform(0, 110 if kick > 40 else 45))
        for name, point in (("shoulder", shoulder), ("elbow", elbow), ("wrist", wrist), ("hip", hip),
                            ("knee", knee), ("ankle", ankle)):
            joints[JOINT[f"{side}_{name}"]] = point
    head_up = _rotate(up, rng.uniform(-20, 20))
    head_center = neck_base + (NECK + HEAD_RADIUS) * head_up
    head_across = np.array([head_up[1], -head_up[0]])
    head_yaw = yaw + math.radians(rng.uniform(-15, 15))
    face_hidden = np.zeros(17, dtype=bool)
    for name, (angle, rise, radius) in FACE_POINTS.items():
        around = angle + head_yaw
        joints[JOINT[name]] = (head_center + HEAD_RADIUS * radius * math.sin(around) * head_across
                               + rise * head_up)
        depth = math.cos(around)  # > 0: on the camera's side of the head
        face_hidden[JOINT[name]] = depth < (-0.3 if name.endswith("ear") else 0.15)
    # body frame -> image: scale, flip y, rotate about the figure's centre, place
    figure_height = rng.uniform(*style.height_range) * height * (1.0 - 0.18 * (count - 1))
    points = np.vstack([joints, head_center[None]])
    points = points * np.array([1.0, -1.0]) * figure_height
    points -= points.mean(axis=0)
    turn = math.radians(rng.uniform(-style.rotation_deg, style.rotation_deg))
    c, s = math.cos(turn), math.sin(turn)
    points = points @ np.array([[c, s], [-s, c]])
    jitter = style.centre_jitter
    centre = np.array([(slot + 0.5) / count * width + rng.uniform(-jitter, jitter) * width,
                       height * (0.5 + rng.uniform(-jitter, jitter))])
    points += centre
    joints_px, head_px = points[:17], points[17]
    head_radius = HEAD_RADIUS * figure_height
    left_depth = -math.sin(yaw)  # > 0: the person's left side is nearer the camera
    parts = _figure_parts(rng, index, joints_px, head_px, head_radius, figure_height, left_depth, face_hidden)
    margin = THICKNESS["thigh"] * figure_height / 2
    extent = np.array([min(joints_px[:, 0].min() - margin, head_px[0] - head_radius),
                       min(joints_px[:, 1].min() - margin, head_px[1] - head_radius),
                       max(joints_px[:, 0].max() + margin, head_px[0] + head_radius),
                       max(joints_px[:, 1].max() + margin, head_px[1] + head_radius)])
    return Figure(joints=joints_px, head_center=head_px, head_radius=head_radius, face_hidden=face_hidden,
                  parts=parts, extent=extent)


def _figure_parts(rng: np.random.Generator, index: int, joints: np.ndarray, head: np.ndarray, head_radius: float,
                  figure_height: float, left_depth: float, face_hidden: np.ndarray) -> list[dict[str, Any]]:
    """Drawing list, back to front: far limbs, torso, near limbs, neck, head, face. Each part owns the joints
    it shows (a joint is visible when one of its owners is on top at its pixel)."""
    def jitter(colour: tuple[int, int, int], amount: int = 25) -> tuple[int, int, int]:
        return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in colour)

    colours = {"left_arm": jitter((225, 45, 35)), "left_leg": jitter((240, 150, 25)),
               "right_arm": jitter((35, 75, 225)), "right_leg": jitter((30, 185, 170))}
    base_id = (index + 1) * 100
    parts: list[dict[str, Any]] = []

    def add(kind: str, owners: list[str], colour: tuple[int, ...], **geometry: Any) -> None:
        parts.append({"kind": kind, "id": base_id + len(parts) + 1, "colour": colour,
                      "owners": [JOINT[o] for o in owners], **geometry})

    def limbs(side: str) -> None:
        for limb, (a, b), group in (("thigh", ("hip", "knee"), "leg"), ("shin", ("knee", "ankle"), "leg"),
                                    ("upper_arm", ("shoulder", "elbow"), "arm"),
                                    ("forearm", ("elbow", "wrist"), "arm")):
            colour = colours[f"{side}_{group}"]
            if limb in ("shin", "forearm"):
                colour = tuple(int(c * 0.78) for c in colour)  # lower segments darker: elbow/knee stand out
            add("line", [f"{side}_{a}", f"{side}_{b}"], colour, p0=joints[JOINT[f"{side}_{a}"]],
                p1=joints[JOINT[f"{side}_{b}"]], thickness=THICKNESS[limb] * figure_height)

    near = "left" if left_depth >= 0 else "right"
    far = "right" if near == "left" else "left"
    limbs(far)
    torso = joints[[JOINT["left_shoulder"], JOINT["right_shoulder"], JOINT["right_hip"], JOINT["left_hip"]]]
    add("polygon", ["left_shoulder", "right_shoulder", "left_hip", "right_hip"],
        tuple(int(c) for c in rng.integers(20, 236, 3)), points=torso)
    limbs(near)
    neck_base = (joints[JOINT["left_shoulder"]] + joints[JOINT["right_shoulder"]]) / 2
    skin = jitter(SKIN_TONES[int(rng.integers(len(SKIN_TONES)))], 10)
    add("line", [], skin, p0=neck_base, p1=head, thickness=THICKNESS["neck"] * figure_height)
    add("circle", ["nose", "left_eye", "right_eye", "left_ear", "right_ear"], skin, center=head,
        radius=head_radius)
    face_colours = {"left_eye": (130, 20, 20), "right_eye": (20, 30, 130), "nose": (205, 95, 85),
                    "left_ear": (190, 110, 70), "right_ear": (110, 120, 190)}
    for name, colour in face_colours.items():
        if face_hidden[JOINT[name]]:
            continue
        size = 0.16 if name.endswith("ear") else 0.12
        add("circle", [name], colour, center=joints[JOINT[name]], radius=max(size * head_radius, 1.0))
    return parts


def _fixed(point: np.ndarray) -> tuple[int, int]:
    scale = 1 << SUBPIXEL_BITS
    return round(float(point[0]) * scale), round(float(point[1]) * scale)


def _draw_figure(canvas: np.ndarray, labels: np.ndarray, figure: Figure) -> None:
    scale = 1 << SUBPIXEL_BITS
    for part in figure.parts:
        for target, colour, line_type in ((canvas, part["colour"], cv2.LINE_AA),
                                          (labels, part["id"], cv2.LINE_8)):
            if part["kind"] == "line":
                cv2.line(target, _fixed(part["p0"]), _fixed(part["p1"]), colour,
                         max(round(part["thickness"]), 1), line_type, SUBPIXEL_BITS)
            elif part["kind"] == "circle":
                cv2.circle(target, _fixed(part["center"]), round(part["radius"] * scale), colour, -1,
                           line_type, SUBPIXEL_BITS)
            else:
                polygon = np.array([_fixed(p) for p in part["points"]], dtype=np.int32)
                cv2.fillPoly(target, [polygon], colour, line_type, SUBPIXEL_BITS)


def _draw_occluders(rng: np.random.Generator, canvas: np.ndarray, labels: np.ndarray, figures: list[Figure],
                    style: SplitStyle) -> None:
    """Rectangles over random joints: what they cover becomes v=1."""
    if rng.random() >= style.occluder_prob:
        return
    for n in range(int(rng.integers(style.occluders[0], style.occluders[1] + 1))):
        figure = figures[int(rng.integers(len(figures)))]
        figure_height = figure.head_radius / HEAD_RADIUS
        anchor = figure.joints[int(rng.integers(17))] + rng.normal(0, 0.05 * figure_height, 2)
        w, h = rng.uniform(*style.occluder_size, 2) * figure_height
        x0, y0 = anchor - np.array([w, h]) * rng.uniform(0.2, 0.8, 2)
        corners = [(int(x0), int(y0)), (int(x0 + w), int(y0 + h))]
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.rectangle(canvas, corners[0], corners[1], colour, -1)
        cv2.rectangle(labels, corners[0], corners[1], 60_000 + n, -1)
        if rng.random() < 0.5:  # a striped occluder, so that it is not always a flat block
            stripe = tuple(int(c) for c in rng.integers(0, 256, 3))
            for x in range(corners[0][0], corners[1][0], 6):
                cv2.line(canvas, (x, corners[0][1]), (x, corners[1][1]), stripe, 2)


def _photometric(rng: np.random.Generator, canvas: np.ndarray, style: SplitStyle) -> np.ndarray:
    """Lighting (gamma, contrast, colour cast, brightness) as one per-channel lookup table, then blur, noise."""
    gamma, contrast = rng.uniform(*style.gamma), rng.uniform(*style.contrast)
    gain = 1.0 + rng.uniform(-style.colour_cast, style.colour_cast, 3)
    shift = (style.brightness_offset + rng.uniform(-style.brightness, style.brightness)) / 255.0
    levels = (np.arange(256, dtype=np.float64) / 255.0)[:, None] ** gamma
    table = (((levels - 0.5) * contrast + 0.5) * gain + shift) * 255.0
    image = cv2.LUT(canvas, np.clip(np.rint(table), 0, 255).astype(np.uint8).reshape(256, 1, 3))
    if rng.random() < style.blur_prob:
        image = cv2.GaussianBlur(image, (0, 0), float(rng.uniform(*style.blur_sigma)))
    noise = rng.standard_normal(image.shape, dtype=np.float32) * np.float32(rng.uniform(*style.noise_sigma))
    noise += image
    return np.clip(noise, 0, 255, out=noise).round().astype(np.uint8)


def _visibility(figure: Figure, labels: np.ndarray, height: int, width: int) -> list[float]:
    """COCO keypoints [x, y, v] * 17 for one figure, from the finished label map."""
    owners: dict[int, set[int]] = {j: set() for j in range(17)}
    for part in figure.parts:
        for j in part["owners"]:
            owners[j].add(part["id"])
    values: list[float] = []
    for j, point in enumerate(figure.joints):
        x, y = round(float(point[0]), 2), round(float(point[1]), 2)
        if not (0 <= x < width and 0 <= y < height):
            values += [0.0, 0.0, 0]
            continue
        on_top = int(labels[min(round(y), height - 1), min(round(x), width - 1)])
        visible = not figure.face_hidden[j] and on_top in owners[j]
        values += [x, y, 2 if visible else 1]
    return values
