"""PoseBatch: the images, joints and (optional) heatmap targets that augmentation ops move together."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor


@dataclass
class PoseBatch:
    """A batch of top-down crops and their targets.

    Coordinates are pixel-index coordinates of the crop (the centre of pixel (row i, column j) is at x=j, y=i),
    the convention of cv2.warpAffine and of the platform's crop geometry. Heatmap pixels relate to crop pixels
    by a plain scale: x_heatmap = x_crop * w / W (the usual `joint / feature_stride` of top-down pose code).
    """

    images: Tensor  # [B, 3, H, W] float in [0, 1]
    keypoints: Tensor  # [B, J, 2] crop pixel coordinates (x, y)
    visible: Tensor  # [B, J] float 0/1
    heatmaps: Tensor | None = None  # [B, J, h, w] targets; geometric ops warp them with the images

    def __post_init__(self) -> None:
        if self.images.dim() != 4 or self.images.shape[1] != 3:
            raise ValueError(f"PoseBatch.images must be [B, 3, H, W], got {tuple(self.images.shape)}")
        batch = self.images.shape[0]
        if self.keypoints.dim() != 3 or self.keypoints.shape[0] != batch or self.keypoints.shape[2] != 2:
            raise ValueError(
                f"PoseBatch.keypoints must be [B={batch}, J, 2], got {tuple(self.keypoints.shape)}"
            )
        joints = self.keypoints.shape[1]
        if tuple(self.visible.shape) != (batch, joints):
            raise ValueError(
                f"PoseBatch.visible must be [B={batch}, J={joints}], got {tuple(self.visible.shape)}"
            )
        if self.heatmaps is not None and (
            self.heatmaps.dim() != 4 or tuple(self.heatmaps.shape[:2]) != (batch, joints)
        ):
            raise ValueError(
                f"PoseBatch.heatmaps must be [B={batch}, J={joints}, h, w], got {tuple(self.heatmaps.shape)}"
            )

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the crops."""
        return int(self.images.shape[2]), int(self.images.shape[3])

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def replace(self, **changes) -> PoseBatch:
        return dataclasses.replace(self, **changes)

    def select(self, index: Tensor) -> PoseBatch:
        """The sub-batch at `index` (a 1-D long tensor)."""
        # advanced indexing, not index_select: the latter is ~20x slower on multi-threaded CPU for image batches
        return PoseBatch(
            images=self.images[index],
            keypoints=self.keypoints[index],
            visible=self.visible[index],
            heatmaps=None if self.heatmaps is None else self.heatmaps[index],
        )

    def put(self, index: Tensor, part: PoseBatch) -> PoseBatch:
        """A new batch with the rows at `index` replaced by `part` (out of place, so autograd sees it)."""
        return PoseBatch(
            images=self.images.index_put((index,), part.images.to(self.images.dtype)),
            keypoints=self.keypoints.index_put((index,), part.keypoints.to(self.keypoints.dtype)),
            visible=self.visible.index_put((index,), part.visible.to(self.visible.dtype)),
            heatmaps=None
            if self.heatmaps is None
            else self.heatmaps.index_put((index,), part.heatmaps.to(self.heatmaps.dtype)),
        )

    def clone(self) -> PoseBatch:
        return PoseBatch(
            images=self.images.clone(),
            keypoints=self.keypoints.clone(),
            visible=self.visible.clone(),
            heatmaps=None if self.heatmaps is None else self.heatmaps.clone(),
        )

    def put_(self, index: Tensor, part: PoseBatch) -> PoseBatch:
        """Write `part` into the rows at `index` in place (autograd-safe on a batch this code owns, e.g. a
        `clone()`); returns self."""
        self.images[index] = part.images.to(self.images.dtype)
        self.keypoints[index] = part.keypoints.to(self.keypoints.dtype)
        self.visible[index] = part.visible.to(self.visible.dtype)
        if self.heatmaps is not None:
            self.heatmaps[index] = part.heatmaps.to(self.heatmaps.dtype)
        return self
