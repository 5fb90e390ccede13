"""The shared training step: augment on the device, render targets, forward, loss, backward, clip, update.

Every method (DA2's w-step, RL/Optuna/PBA children, fixed baselines, production training) runs this exact code,
so device-seconds and AP compare like with like.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from da2_platform.config import TrainConfig
from da2_platform.data.heatmaps import render_heatmaps
from da2_platform.errors import TrainingError
from pose_models.losses import P2NetLoss
from search_spaces.batch import PoseBatch

Augment = Callable[[PoseBatch], PoseBatch]


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch generator for the augmentation draws."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def pick_device(use_gpu: bool | None = None) -> torch.device:
    if use_gpu is False or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def batch_to_device(samples: dict, device: torch.device) -> PoseBatch:
    """Collated dataset samples -> PoseBatch on the device (images stay in [0, 1])."""
    return PoseBatch(
        images=samples["image"].to(device, non_blocking=True),
        keypoints=samples["keypoints"].to(device, non_blocking=True),
        visible=samples["visible"].to(device, non_blocking=True),
    )


def targets_for(batch: PoseBatch, input_size: tuple[int, int],
                sigma: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Heatmap targets: carried through the augmentation (DA2 warps them) or rendered from the keypoints."""
    if batch.heatmaps is not None:
        return batch.heatmaps, batch.visible
    return render_heatmaps(batch.keypoints, batch.visible, input_size, sigma=sigma)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """Step decay at epoch milestones (the paper's recipe divides the lr at fixed points)."""
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=cfg.lr_milestones, gamma=cfg.lr_gamma)


def autocast_for(device: torch.device, bf16: bool):
    if device.type == "cuda" and bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def check_finite(loss: torch.Tensor, step: int, where: str = "training loss") -> None:
    if not torch.isfinite(loss).all():
        raise TrainingError(
            f"{where} is {loss.item()} at step {step}: stopping (lower train.lr, set train.grad_clip, "
            "or check the data and policy magnitudes)"
        )


@dataclass
class StepMetrics:
    step: int
    loss: float
    extraction: float
    refinement: float
    wall_seconds: float


class TrainingStep:
    """One optimisation step of P2Net on one batch, with an optional on-device augmentation."""

    def __init__(self, model: nn.Module, loss_fn: P2NetLoss, optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                 input_size: tuple[int, int], device: torch.device, augment: Augment | None = None,
                 sigma: float | None = None):
        self.model, self.loss_fn, self.optimizer, self.cfg = model, loss_fn, optimizer, cfg
        self.input_size, self.device, self.augment, self.sigma = input_size, device, augment, sigma
        self.step = 0

    def __call__(self, samples: dict | PoseBatch) -> StepMetrics:
        start = time.perf_counter()
        batch = samples if isinstance(samples, PoseBatch) else batch_to_device(samples, self.device)
        if self.augment is not None:
            with torch.no_grad():
                batch = self.augment(batch)
        heatmaps, weights = targets_for(batch, self.input_size, self.sigma)
        images = batch.images
        if self.cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        self.model.train()
        with autocast_for(self.device, self.cfg.bf16):
            output = self.model(images)
        losses = self.loss_fn(_float_output(output), heatmaps.float(), weights.float())
        check_finite(losses.total, self.step)
        self.optimizer.zero_grad(set_to_none=True)
        losses.total.backward()
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.step += 1
        return StepMetrics(self.step, losses.total.item(), losses.extraction.item(), losses.refinement.item(),
                           time.perf_counter() - start)


def _float_output(output):
    """Loss in float32 even when the forward ran under bf16 autocast."""
    from pose_models.p2net import P2NetOutput

    return P2NetOutput(heatmaps=output.heatmaps.float(), stage_heatmaps=[h.float() for h in output.stage_heatmaps])

