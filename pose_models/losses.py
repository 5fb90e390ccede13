"""P2Net losses (Section III-D): L2 with joint weights on the feature-extraction outputs, and L2 with online hard
keypoint mining (OHKM: the top-k joints by loss, k = 10 in the paper) on the refinement output.

The per-sample and per-joint pieces are public because DA2's search weights the loss of each sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor, nn

from pose_models.p2net import P2NetOutput

PAPER_OHKM_TOPK = 10


@dataclass
class P2NetLossOutput:
    total: Tensor  # extraction_weight * extraction + refinement_weight * refinement
    extraction: Tensor  # L2 over all weighted joints, averaged over the feature-extraction outputs
    refinement: Tensor  # OHKM L2 on the final heatmaps


def joint_mse(pred: Tensor, target: Tensor, weights: Tensor) -> Tensor:
    """Per-joint heatmap L2, [B, J]: the pixel-mean of (pred - target)^2, times the joint's weight.

    pred, target: [B, J, h, w]; weights: [B, J] (or [B, J, 1]); a weight of 0 removes an unlabelled joint."""
    if pred.shape != target.shape:
        raise ValueError(f"heatmaps {list(pred.shape)} and targets {list(target.shape)} differ in shape")
    weights = weights.reshape(weights.shape[0], -1) if weights.ndim == 3 else weights
    if weights.shape != pred.shape[:2]:
        raise ValueError(f"target_weights must be [B, J] = {list(pred.shape[:2])}, got {list(weights.shape)}")
    return (pred - target).pow(2).mean(dim=(2, 3)) * weights.to(pred.dtype)


def ohkm(per_joint_loss: Tensor, k: int) -> Tensor:
    """Online hard keypoint mining, [B]: per sample, the mean of its k largest joint losses (k capped at J)."""
    if k < 1:
        raise ValueError(f"ohkm_topk must be at least 1, got {k}")
    k = min(k, per_joint_loss.shape[1])
    return per_joint_loss.topk(k, dim=1).values.mean(dim=1)


class P2NetLoss(nn.Module):
    """The paper's training loss: L2 on every feature-extraction output plus OHKM L2 on the refined heatmaps."""

    def __init__(
        self, ohkm_topk: int = PAPER_OHKM_TOPK, extraction_weight: float = 1.0, refinement_weight: float = 1.0
    ) -> None:
        super().__init__()
        if ohkm_topk < 1:
            raise ValueError(f"ohkm_topk must be at least 1, got {ohkm_topk}")
        self.ohkm_topk = ohkm_topk
        self.extraction_weight = extraction_weight
        self.refinement_weight = refinement_weight

    def forward(
        self,
        output: P2NetOutput,
        targets: Tensor,
        target_weights: Tensor,
        reduction: Literal["mean", "none"] = "mean",
    ) -> P2NetLossOutput:
        """targets [B, J, h, w] at the heatmap resolution, target_weights [B, J]. reduction="none" gives every
        field per sample, [B] (DA2 weights those); "mean" averages them over the batch."""
        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
        stage_losses = [joint_mse(h, targets, target_weights).mean(dim=1) for h in output.stage_heatmaps]
        extraction = sum(stage_losses) / len(stage_losses)
        refinement = ohkm(joint_mse(output.heatmaps, targets, target_weights), self.ohkm_topk)
        total = self.extraction_weight * extraction + self.refinement_weight * refinement
        if reduction == "mean":
            total, extraction, refinement = total.mean(), extraction.mean(), refinement.mean()
        return P2NetLossOutput(total=total, extraction=extraction, refinement=refinement)
