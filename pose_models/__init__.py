"""P2Net (Parallel-Pyramid Net) for top-down pose estimation, its losses, complexity counting and weight loading.

Depends on torch and timm only: nothing here imports da2_platform.
"""

from pose_models.complexity import count_parameters, model_complexity
from pose_models.losses import P2NetLoss, P2NetLossOutput, joint_mse, ohkm
from pose_models.p2net import PRESETS, P2Net, P2NetOutput, build_p2net
from pose_models.weights import BackboneWeightsError, load_backbone_weights, read_state_dict

__all__ = [
    "PRESETS",
    "BackboneWeightsError",
    "P2Net",
    "P2NetLoss",
    "P2NetLossOutput",
    "P2NetOutput",
    "build_p2net",
    "count_parameters",
    "joint_mse",
    "load_backbone_weights",
    "model_complexity",
    "ohkm",
    "read_state_dict",
]
