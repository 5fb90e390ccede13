"""Policy -> albumentations pipeline for CPU DataLoader workers (the twin of `compile_torch`).

    A.Compose([A.OneOf([A.Sequential([op, op, ...], p=weight_k) for each sub-policy], p=1)],
              keypoint_params=A.KeypointParams(format="xy", remove_invisible=False))

Each op is an albumentations transform (`GeometricOp`, a DualTransform, or `PhotometricOp`, an
ImageOnlyTransform) with p = the op's probability, running the numpy/cv2 twin of the torch op. Joint
visibility travels as an extra keypoint column, so every geometric op hides the joints it pushes out of frame
(as the torch path does after each op), and a flip swaps the rows of left and right joints.

All transforms share one random state (albumentations would give each child its own generator with the
same seed, which makes the coin flips of different ops move in lockstep); in a DataLoader worker the state
is reseeded from (seed, the worker's torch seed), so workers and epochs differ yet stay reproducible.
"""

from __future__ import annotations

import os
import random
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import albumentations as A
import cv2
import numpy as np
from albumentations.core.transforms_interface import DualTransform, ImageOnlyTransform
from albumentations.core.type_definitions import NUM_KEYPOINTS_COLUMNS_IN_ALBUMENTATIONS

from search_spaces.geometric import (
    affine_matrix_numpy,
    in_frame,
    warp_image_numpy,
    warp_keypoints_numpy,
)
from search_spaces.ops import flip_permutation, op_spec
from search_spaces.photometric import NUMPY_OPS

if TYPE_CHECKING:
    from search_spaces.policy import OpSetting, Policy

VISIBLE_COLUMN = NUM_KEYPOINTS_COLUMNS_IN_ALBUMENTATIONS  # our visibility column, after albumentations' 5


def _draw_sign(transform: A.BasicTransform, fixed: float | None) -> float:
    if fixed is not None:
        return float(fixed)
    return -1.0 if transform.random_generator.random() < 0.5 else 1.0


class GeometricOp(DualTransform):
    """A geometric op of the registry: the shared affine applied by cv2 to the image and to the joints."""

    def __init__(
        self,
        op_name: str,
        magnitude: float,
        flip_pairs: Sequence[Sequence[int]] | None = None,
        p: float = 1.0,
        sign: float | None = None,
    ) -> None:
        super().__init__(p=p)
        spec = op_spec(op_name)
        if not spec.geometric:
            raise ValueError(f"{op_name} is not a geometric op")
        if op_name == "HorizontalFlip" and flip_pairs is None:
            raise ValueError(
                "HorizontalFlip needs the dataset's flip_pairs to swap left and right joints ([] for none)"
            )
        self.op_name = op_name
        self.magnitude = float(magnitude)
        self.flip_pairs = [tuple(int(j) for j in pair) for pair in (flip_pairs or [])]
        self.sign = sign

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("op_name", "magnitude", "flip_pairs", "sign")

    def get_params(self) -> dict[str, Any]:
        spec = op_spec(self.op_name)
        sign = _draw_sign(self, self.sign) if spec.signed else 1.0
        return {"amount": spec.amount(self.magnitude) * sign}

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        size = tuple(int(v) for v in params["shape"][:2])
        return {"matrix": affine_matrix_numpy(self.op_name, params["amount"], size)}

    def apply(self, img: np.ndarray, matrix: np.ndarray, **params: Any) -> np.ndarray:
        if self.op_name == "HorizontalFlip":
            return cv2.flip(img, 1)  # exact mirror, as torch.flip on the other side
        return warp_image_numpy(img, matrix)

    def apply_to_keypoints(self, keypoints: np.ndarray, matrix: np.ndarray, **params: Any) -> np.ndarray:
        out = keypoints.copy()
        if not len(out):
            return out
        out[:, :2] = warp_keypoints_numpy(keypoints, matrix)
        if self.op_name == "HorizontalFlip":
            out = out[flip_permutation(self.flip_pairs, len(out))]
        if out.shape[1] > VISIBLE_COLUMN:
            size = tuple(int(v) for v in params["shape"][:2])
            out[:, VISIBLE_COLUMN] *= in_frame(out[:, :2], size).astype(out.dtype)
        return out


class PhotometricOp(ImageOnlyTransform):
    """A photometric op of the registry: its numpy/cv2 twin on the uint8 image."""

    def __init__(
        self,
        op_name: str,
        magnitude: float,
        p: float = 1.0,
        sign: float | None = None,
        draws: Sequence[float] | None = None,
    ) -> None:
        super().__init__(p=p)
        if op_spec(op_name).geometric:
            raise ValueError(f"{op_name} is a geometric op")
        self.op_name = op_name
        self.magnitude = float(magnitude)
        self.sign = sign
        self.draws = None if draws is None else tuple(float(d) for d in draws)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("op_name", "magnitude", "sign", "draws")

    def get_params(self) -> dict[str, Any]:
        spec = op_spec(self.op_name)
        sign = _draw_sign(self, self.sign) if spec.signed else 1.0
        draws = self.random_generator.random(2) if self.draws is None else np.asarray(self.draws)
        return {"amount": spec.amount(self.magnitude) * sign, "draws": draws}

    def apply(self, img: np.ndarray, amount: float, draws: np.ndarray, **params: Any) -> np.ndarray:
        return NUMPY_OPS[self.op_name](img, amount, draws)


def op_transform(
    op: OpSetting,
    flip_pairs: Sequence[Sequence[int]] | None,
    sign: float | None = None,
    draws: Sequence[float] | None = None,
) -> A.BasicTransform:
    """The albumentations transform of one policy op (p = its probability); sign/draws fix the random parts."""
    return _transform(op.name, op.p, op.m, flip_pairs, sign, draws)


def _transform(name: str, p: float, m: float, flip_pairs: Sequence[Sequence[int]] | None,
               sign: float | None, draws: Sequence[float] | None) -> A.BasicTransform:
    if op_spec(name).geometric:
        return GeometricOp(name, m, flip_pairs, p=p, sign=sign)
    return PhotometricOp(name, m, p=p, sign=sign, draws=draws)


class AlbumentationsPolicy:
    """policy(image_uint8_hwc, keypoints [J, 2], visible [J]) -> (image, keypoints, visible), float32 joints.

    `compose` is the A.Compose it runs (KeypointParams(format="xy", remove_invisible=False)).
    """

    def __init__(self, compose: A.Compose, seed: int | None = None) -> None:
        self.compose = compose
        self.seed = seed
        self._rng_owner: tuple[int, int] | None = None
        self._reseed(np.random.SeedSequence(seed))

    def __call__(
        self, image: np.ndarray, keypoints: np.ndarray, visible: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        image, keypoints, visible = np.asarray(image), np.asarray(keypoints), np.asarray(visible)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected a uint8 HxWx3 image, got {image.dtype} {image.shape}")
        if keypoints.ndim != 2 or keypoints.shape[1] != 2 or visible.shape != (keypoints.shape[0],):
            raise ValueError(
                f"expected keypoints [J, 2] and visible [J], got {keypoints.shape} and {visible.shape}"
            )
        self._reseed_in_worker()
        joints = np.concatenate([keypoints.astype(np.float32), visible.astype(np.float32)[:, None]], axis=1)
        out = self.compose(image=image, keypoints=joints)
        moved = np.asarray(out["keypoints"], dtype=np.float32).reshape(-1, 3)
        return out["image"], np.ascontiguousarray(moved[:, :2]), np.ascontiguousarray(moved[:, 2])

    def _reseed(self, seed_sequence: np.random.SeedSequence) -> None:
        state = seed_sequence.generate_state(2)
        self.compose.set_random_state(
            np.random.default_rng(seed_sequence), random.Random(int(state[0]) << 32 | int(state[1]))
        )

    def _reseed_in_worker(self) -> None:
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        if info is None:
            return
        owner = (os.getpid(), int(info.id))
        if owner != self._rng_owner:
            self._rng_owner = owner
            self._reseed(np.random.SeedSequence([0 if self.seed is None else int(self.seed), int(info.seed)]))

    def __repr__(self) -> str:
        return f"AlbumentationsPolicy(seed={self.seed}, compose={self.compose!r})"


def _compose(transforms: list) -> A.Compose:
    with warnings.catch_warnings():
        # a photometric-only policy has no keypoint transform; albumentations warns, the joints pass unchanged
        warnings.filterwarnings("ignore", message="Got processor for keypoints")
        return A.Compose(transforms, keypoint_params=A.KeypointParams(format="xy", remove_invisible=False))


def compile_policy(
    policy: Policy, flip_pairs: Sequence[Sequence[int]], seed: int | None = None
) -> AlbumentationsPolicy:
    """The CPU pipeline of `policy`: weighted choice of one sub-policy, then its ops in order with their p."""
    sequences = [
        A.Sequential([op_transform(op, flip_pairs) for op in sub.ops], p=sub.weight)
        for sub in policy.sub_policies
    ]
    return AlbumentationsPolicy(_compose([A.OneOf(sequences, p=1.0)]), seed)


def single_op_pipeline(
    name: str,
    magnitude: float,
    flip_pairs: Sequence[Sequence[int]] | None = None,
    sign: float | None = None,
    draws: Sequence[float] | None = None,
) -> AlbumentationsPolicy:
    """One op at p = 1 with optionally fixed sign and draws: the CPU side of the parity tests."""
    op_spec(name)  # an unknown name fails here, as it would in a Policy
    return AlbumentationsPolicy(_compose([_transform(name, 1.0, magnitude, flip_pairs, sign, draws)]), seed=0)
