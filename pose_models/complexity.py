"""Parameters and multiply-adds of a P2Net, in total and per stage, counted by torch's FlopCounterMode.

Pose papers' "GFLOPs" are multiply-adds; FlopCounterMode counts a multiply-add as 2 FLOPs, so GMACs = FLOPs / 2e9.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

STAGES = ("backbone", "parallel_fusion", "progressive_fusion", "refinement")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def model_complexity(model: nn.Module, input_size: tuple[int, int]) -> dict[str, Any]:
    """{"params", "gmacs", "stages": [{"stage", "params", "gmacs"}, ...]} for one image of `input_size` (H, W).

    Runs one forward pass in eval mode on the model's device; a model built on the "meta" device costs no
    compute, so even ResNet-152 at 384x288 is counted instantly."""
    height, width = input_size
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    images = torch.zeros(1, 3, height, width, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(images)
    finally:
        model.train(was_training)
    by_module = counter.get_flop_counts()
    root = type(model).__name__
    stages = []
    for stage in STAGES:
        module = getattr(model, stage, None)
        if module is None:
            continue
        flops = sum(by_module.get(f"{root}.{stage}", {}).values())
        stages.append({"stage": stage, "params": count_parameters(module), "gmacs": flops / 2e9})
    return {"params": count_parameters(model), "gmacs": counter.get_total_flops() / 2e9, "stages": stages}
