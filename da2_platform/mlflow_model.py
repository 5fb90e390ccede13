"""P2Net as an MLflow-native model: what `mlflow.pytorch.load_model("models:/p2net@production")` hands back.

The logged model is the network's final heatmaps as one tensor (`HeatmapModel`), exported with `torch.export`
(MLflow's `pt2` format, which MLflow checks is free of pickle payloads before it loads it), with a tensor
signature `[B, 3, H, W] float32 -> [B, J, H/4, W/4] float32` and an input example, so MLflow's own tools can load
and serve it. Pixels are expected normalised as the training pipeline feeds them (`TopDownDataset`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

ARTIFACT_NAME = "model"


class HeatmapModel(nn.Module):
    """P2Net reduced to its served output: the refined heatmaps (intermediate stage outputs are for the loss)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images).heatmaps


def heatmap_signature(input_size: tuple[int, int], num_joints: int):
    """The tensor signature of a P2Net at `input_size` (H, W): batch is free, the rest fixed."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    height, width = input_size
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, height, width))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, num_joints, height // 4, width // 4))]),
    )


def log_p2net(net: nn.Module, input_size: tuple[int, int], num_joints: int, seed: int = 0):
    """Log `net` under the active MLflow run as an MLflow pytorch model; returns MLflow's `ModelInfo`."""
    import mlflow

    model = HeatmapModel(net.cpu()).eval()  # batch norm in inference mode: the export freezes the graph
    generator = torch.Generator().manual_seed(seed)
    example = torch.rand(2, 3, *input_size, generator=generator)
    return mlflow.pytorch.log_model(model, name=ARTIFACT_NAME, input_example=example.numpy(),
                                    signature=heatmap_signature(input_size, num_joints),
                                    serialization_format="pt2")
