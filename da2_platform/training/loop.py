"""The training loop around `TrainingStep`: data loading, epochs, checkpoints, evaluation.

The same `Fit` runs in a Ray Train worker (`da2 train`, DDP across GPUs), inside a Ray Tune trial (search
children) and in a plain process (tests, benchmarks). Data order and augmentation draws are seeded per epoch,
so a run resumed from an epoch checkpoint reaches the same weights as an uninterrupted one.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler

from da2_platform.config import ExperimentConfig
from da2_platform.data.topdown import TopDownDataset
from da2_platform.errors import TrainingError
from da2_platform.files import write_bytes_atomic
from da2_platform.training.step import (
    TrainingStep,
    make_optimizer,
    make_scheduler,
    seed_everything,
)
from pose_models import P2Net, build_p2net
from pose_models.losses import P2NetLoss
from search_spaces.policy import Policy

CHECKPOINT_FORMAT = 1


def build_model(cfg: ExperimentConfig, num_joints: int = 17) -> P2Net:
    torch.manual_seed(cfg.seed)
    model = build_p2net(**cfg.model.build_kwargs(num_joints))
    if cfg.model.init_weights is not None:
        load_init_weights(model, cfg.model.init_weights)
    return model


def load_init_weights(model: P2Net, path: str | Path) -> None:
    """Start from a trained P2Net: a da2-platform checkpoint or a bare state dict, read with weights_only=True."""
    from pose_models.weights import BackboneWeightsError, read_state_dict

    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"model.init_weights: {path} not found")
    try:  # the same safe reader as backbone weights: unwraps a checkpoint's "model" entry and DDP prefixes
        state = read_state_dict(path)
    except BackboneWeightsError as e:
        raise TrainingError(f"model.init_weights: {path}: not a loadable weights file ({e})") from None
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # a tensor of another shape
        raise TrainingError(f"model.init_weights: {path} does not fit this model ({str(e).splitlines()[-1].strip()})")\
            from None
    if missing or unexpected:
        raise TrainingError(f"model.init_weights: {path} does not fit this model (missing {missing[:5]}, "
                            f"unexpected {unexpected[:5]}); check model.preset and the joint count")


def device_augment(cfg: ExperimentConfig, policy: Policy | None, flip_pairs, device: torch.device, seed: int):
    """The torch compilation of the policy, applied on the device after cropping (None when not needed)."""
    if policy is None or cfg.train.augment_on != "device":
        return None
    generator = torch.Generator(device=device).manual_seed(seed) if device.type == "cuda" else \
        torch.Generator().manual_seed(seed)
    return policy.to_torch(flip_pairs, generator=generator).to(device)


def epoch_loader(dataset: Dataset, cfg: ExperimentConfig, epoch: int, rank: int = 0, world: int = 1) -> DataLoader:
    """A loader whose order depends only on (seed, epoch, rank): the key to exact resume."""
    seed = cfg.seed * 1000 + epoch
    if world > 1:
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed,
                                     drop_last=True)
        sampler.set_epoch(epoch)
    else:
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    return DataLoader(dataset, batch_size=cfg.train.batch_size, sampler=sampler, drop_last=len(dataset) >=
                      cfg.train.batch_size, num_workers=cfg.data.loader_workers,
                      worker_init_fn=_seed_worker, generator=torch.Generator().manual_seed(seed),
                      persistent_workers=False)


def _seed_worker(worker_id: int) -> None:
    import random

    import numpy as np

    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


@dataclass
class FitState:
    """Everything a checkpoint holds, as tensors and plain values (loadable with weights_only=True)."""

    epoch: int = 0  # epochs completed
    step: int = 0
    device_seconds: float = 0.0
    history: list[dict] = field(default_factory=list)


@dataclass
class Fit:
    """Train `model` for cfg.train.epochs on `dataset` with an optional policy; resumable at epoch ends."""

    cfg: ExperimentConfig
    model: torch.nn.Module
    dataset: TopDownDataset
    policy: Policy | None
    device: torch.device
    rank: int = 0
    world: int = 1
    devices_held: float = 1.0  # accelerators (or CPUs) this worker holds, for device-seconds
    state: FitState = field(default_factory=FitState)

    def __post_init__(self) -> None:
        self.loss_fn = P2NetLoss(ohkm_topk=self.cfg.model.ohkm_topk)
        self.optimizer = make_optimizer(self.model, self.cfg.train)
        self.scheduler = make_scheduler(self.optimizer, self.cfg.train)
        if self.cfg.train.channels_last:
            self.model.to(memory_format=torch.channels_last)

    def run(self, on_epoch_end: Callable[[Fit], None] | None = None,
            progress: Callable[[int, int, float], None] | None = None) -> FitState:
        cfg = self.cfg
        for epoch in range(self.state.epoch, cfg.train.epochs):
            seed_everything(cfg.seed * 7919 + epoch)
            aug_seed = cfg.seed * 104729 + epoch * 31 + self.rank
            augment = device_augment(cfg, self.policy, self.dataset.flip_pairs, self.device, aug_seed)
            if self.policy is not None and cfg.train.augment_on == "loader":
                # albumentations in the loader workers, seeded per epoch like the device path
                self.dataset.transform = self.policy.to_albumentations(self.dataset.flip_pairs, seed=aug_seed)
            step_fn = TrainingStep(self.model, self.loss_fn, self.optimizer, cfg.train, cfg.data.input_size,
                                   self.device, augment, cfg.data.heatmap_sigma)
            step_fn.step = self.state.step
            loader = epoch_loader(self.dataset, cfg, epoch, self.rank, self.world)
            limit = cfg.train.max_steps_per_epoch or len(loader)
            losses = []
            for i, samples in enumerate(loader):
                if i >= limit:
                    break
                metrics = step_fn(samples)
                losses.append(metrics.loss)
                self.state.device_seconds += metrics.wall_seconds * self.devices_held
                if progress is not None:
                    progress(i + 1, min(limit, len(loader)), metrics.loss)
            if not losses:
                raise TrainingError(f"epoch {epoch}: no training batches (dataset has {len(self.dataset)} crops, "
                                    f"batch size {cfg.train.batch_size})")
            self.scheduler.step()
            self.state.step = step_fn.step
            self.state.epoch = epoch + 1
            self.state.history.append({"epoch": epoch + 1, "loss": sum(losses) / len(losses),
                                       "steps": len(losses), "time": time.time()})
            if on_epoch_end is not None:
                on_epoch_end(self)
        return self.state

    # -- checkpoints ---------------------------------------------------------------------------------------
    def checkpoint_bytes(self) -> bytes:
        model = self.model.module if hasattr(self.model, "module") else self.model
        payload = {
            "format": CHECKPOINT_FORMAT,
            "model_config": dict(model.config),
            "input_size": list(self.cfg.data.input_size),
            "model": model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "state": {"epoch": self.state.epoch, "step": self.state.step,
                      "device_seconds": self.state.device_seconds, "history": self.state.history},
        }
        buf = io.BytesIO()
        torch.save(payload, buf)
        return buf.getvalue()

    def save(self, path: Path) -> Path:
        return write_bytes_atomic(path, self.checkpoint_bytes())

    def load(self, path: Path) -> None:
        payload = load_checkpoint(path, expect_config=_unwrap(self.model).config)
        _unwrap(self.model).load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        s = payload["state"]
        self.state = FitState(epoch=int(s["epoch"]), step=int(s["step"]),
                              device_seconds=float(s["device_seconds"]), history=list(s["history"]))


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def load_checkpoint(path: str | Path, expect_config: dict | None = None) -> dict:
    """Load a P2Net checkpoint safely (weights_only=True); a different architecture is a clear error."""
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a corrupt or non-torch file, or one that needs unpickling code
        raise TrainingError(f"{path}: not a loadable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT or "model" not in payload:
        raise TrainingError(f"{path}: not a da2-platform checkpoint (missing 'format'/'model' fields)")
    if expect_config is not None:
        got = dict(payload.get("model_config", {}))
        diff = {k: (got.get(k), v) for k, v in expect_config.items() if k != "pretrained_path" and got.get(k) != v}
        if diff:
            details = ", ".join(f"{k}: checkpoint {a!r} vs model {b!r}" for k, (a, b) in diff.items())
            raise TrainingError(f"{path}: checkpoint is from another architecture ({details})")
    return payload


def model_from_checkpoint(path: str | Path) -> P2Net:
    payload = load_checkpoint(path)
    cfg = dict(payload["model_config"])
    cfg.pop("pretrained_path", None)
    model = build_p2net(**cfg)
    model.load_state_dict(payload["model"])
    return model
