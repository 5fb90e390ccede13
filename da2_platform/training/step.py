"""The shared training step: augment on the device, render targets, forward, loss, backward, clip, update.

Every method (DA2's w-step, RL/Optuna/PBA children, fixed baselines, production training) runs this exact code,
so device-seconds and AP compare like with like.

On a GPU a step waits for nothing: its losses stay on the device and its time is a pair of CUDA events, read
(one wait) when someone reads `StepMetrics` -- at report points, not after every step.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from da2_platform.config import ExperimentConfig, TrainConfig
from da2_platform.data.heatmaps import render_heatmaps
from da2_platform.errors import TrainingError
from pose_models.losses import P2NetLoss, P2NetLossOutput
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


def lr_milestones(cfg: TrainConfig) -> list[int]:
    """The config's milestones; without any, once before the last epoch (none for a single epoch: it would run
    all of it at the lower lr)."""
    if cfg.lr_milestones is not None:
        return list(cfg.lr_milestones)
    return [cfg.epochs - 1] if cfg.epochs > 1 else []


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """Step decay at epoch milestones (the paper's recipe divides the lr at fixed points)."""
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=lr_milestones(cfg), gamma=cfg.lr_gamma)


def follow_schedule(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.MultiStepLR,
                    cfg: TrainConfig) -> None:
    """After a restore: the schedule of the config the run resumes with, not the one it was saved with (a run
    resumed with more epochs moves its default last-epoch drop), at the epoch the restored scheduler reached."""
    from collections import Counter

    milestones = lr_milestones(cfg)
    scheduler.milestones = Counter(milestones)
    scheduler.gamma = cfg.lr_gamma
    drops = sum(1 for m in milestones if m <= scheduler.last_epoch)
    for group, base in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
        group["lr"] = base * cfg.lr_gamma**drops
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


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


class StepMetrics:
    """One step's losses (total, extraction, refinement) and its seconds.

    On the CPU they are plain numbers. On a GPU the losses are copied to host memory asynchronously and the time
    is a pair of CUDA events: the first read waits for that step's end event only (never for the steps queued
    after it), and raises TrainingError there if its loss is not finite. `ready()` tells, without waiting,
    whether a read would wait."""

    def __init__(self, step: int, losses: tuple[float, float, float] | torch.Tensor,
                 seconds: float | tuple[torch.cuda.Event, torch.cuda.Event]):
        self.step = step
        self._losses, self._seconds = losses, seconds

    def ready(self) -> bool:
        return not isinstance(self._seconds, tuple) or self._seconds[1].query()

    def _wait(self) -> None:
        if isinstance(self._seconds, tuple):
            start, end = self._seconds
            end.synchronize()  # this step's event: the queue behind it keeps running
            self._seconds = start.elapsed_time(end) / 1000.0
        if isinstance(self._losses, torch.Tensor):  # host copy, complete once the end event is
            values = tuple(self._losses.tolist())
            if not math.isfinite(values[0]):
                check_finite(self._losses[0], self.step - 1)
            self._losses = values

    def _values(self) -> tuple[float, float, float]:
        self._wait()
        return self._losses

    @property
    def loss(self) -> float:
        return self._values()[0]

    @property
    def extraction(self) -> float:
        return self._values()[1]

    @property
    def refinement(self) -> float:
        return self._values()[2]

    @property
    def wall_seconds(self) -> float:
        self._wait()
        return self._seconds

    def __repr__(self) -> str:
        return f"StepMetrics(step={self.step}, {'ready' if self.ready() else 'running on the device'})"


class TrainingStep:
    """One optimisation step of P2Net on one batch, with an optional on-device augmentation."""

    def __init__(self, model: nn.Module, loss_fn: P2NetLoss, optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                 input_size: tuple[int, int], device: torch.device, augment: Augment | None = None,
                 sigma: float | None = None):
        self.model, self.loss_fn, self.optimizer, self.cfg = model, loss_fn, optimizer, cfg
        self.input_size, self.device, self.augment, self.sigma = input_size, device, augment, sigma
        self.step = 0

    @classmethod
    def from_config(cls, model: nn.Module, cfg: ExperimentConfig, device: torch.device,
                    augment: Augment | None = None, optimizer: torch.optim.Optimizer | None = None,
                    loss_fn: P2NetLoss | None = None) -> TrainingStep:
        """The step an experiment config describes: P2Net's loss with cfg.model's OHKM k, cfg.train's optimiser,
        cfg.data's input size and heatmap sigma (a caller that keeps the optimiser or the loss passes its own)."""
        return cls(model, loss_fn or P2NetLoss(ohkm_topk=cfg.model.ohkm_topk),
                   optimizer or make_optimizer(model, cfg.train), cfg.train, cfg.data.input_size, device, augment,
                   cfg.data.heatmap_sigma)

    def __call__(self, samples: dict | PoseBatch) -> StepMetrics:
        on_gpu = self.device.type == "cuda"
        start = time.perf_counter()
        if on_gpu:
            events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            events[0].record()
        batch = samples if isinstance(samples, PoseBatch) else batch_to_device(samples, self.device)
        if self.augment is not None:
            with torch.no_grad():
                batch = self.augment(batch)
        heatmaps, weights = targets_for(batch, self.input_size, self.sigma)
        per_sample = self.update(batch.images, heatmaps, weights)
        losses = P2NetLossOutput(total=per_sample.total.mean(), extraction=per_sample.extraction.mean(),
                                 refinement=per_sample.refinement.mean())
        if on_gpu:  # a non-blocking copy into pinned memory, then the end event: nothing waits here
            values = torch.stack([losses.total, losses.extraction, losses.refinement]).detach().float()
            host = torch.empty(3, pin_memory=True).copy_(values, non_blocking=True)
            events[1].record()
            return StepMetrics(self.step, host, events)
        return StepMetrics(self.step, (losses.total.item(), losses.extraction.item(), losses.refinement.item()),
                           time.perf_counter() - start)

    def update(self, images: torch.Tensor, heatmaps: torch.Tensor, weights: torch.Tensor) -> P2NetLossOutput:
        """The optimisation step itself, on a batch that already has its targets: forward, the P2Net loss (the
        batch mean of the per-sample losses), backward, clip, optimiser step. Returns the per-sample losses [B]
        (still on the device). Every training calls it: `__call__` here (production, children, final trainings)
        and DA2's w step (`search.bilevel.ScoreStep`), which needs the per-sample losses for its credits."""
        if self.cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        self.model.train()
        with autocast_for(self.device, self.cfg.bf16):
            output = self.model(images)
        losses = self.loss_fn(_float_output(output), heatmaps.float(), weights.float(), reduction="none")
        loss = losses.total.mean()
        if self.device.type != "cuda":  # on a GPU the check waits for the loss: it runs when the metrics are read
            check_finite(loss, self.step)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.step += 1
        return losses


def _float_output(output):
    """Loss in float32 even when the forward ran under bf16 autocast."""
    from pose_models.p2net import P2NetOutput

    return P2NetOutput(heatmaps=output.heatmaps.float(), stage_heatmaps=[h.float() for h in output.stage_heatmaps])

