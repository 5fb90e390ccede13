"""The one resumable training loop around `TrainingStep`: data order, augmentation, epochs, checkpoints.

Production training (`da2 train`, one Ray Train worker per GPU), every search child (RL, Optuna, PBA, fixed) and
every final training of `da2 compare` run `Fit`. Data order is seeded per (seed, epoch, rank); the policy's draws
are seeded per step on the device (`augment_on: device`) or per epoch in the loader workers (`augment_on:
loader`), so a run resumed from any checkpoint -- at an epoch end or mid-epoch, as PBT's exploit does -- takes
the same batches and augmentation draws as an uninterrupted one.

One checkpoint format for all of them, and for DA2's search: a dict with `kind` ("p2net-training") and `version`,
the model config, the weights, optimizer and lr-scheduler state and the loop state, loadable with
`weights_only=True` (DA2 adds a `da2` section: the relaxed policy, its optimiser and the draw generator).
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler

from da2_platform.config import ExperimentConfig, TrainConfig
from da2_platform.data.topdown import TopDownDataset
from da2_platform.errors import TrainingError
from da2_platform.files import write_bytes_atomic
from da2_platform.training.step import (
    StepMetrics,
    TrainingStep,
    follow_schedule,
    make_optimizer,
    make_scheduler,
    seed_everything,
)
from pose_models import P2Net, build_p2net
from pose_models.losses import P2NetLoss
from search_spaces import compile_albumentations, compile_torch
from search_spaces.policy import OpSetting, Policy

CHECKPOINT_KIND = "p2net-training"
CHECKPOINT_VERSION = 2  # 1: the earlier {"format": 1} files, still readable (epoch-end state only)
CHECKPOINT_FILE = "checkpoint.pt"  # the file name inside a Ray Train / Tune checkpoint folder


def build_model(cfg: ExperimentConfig, num_joints: int = 17) -> P2Net:
    torch.manual_seed(cfg.seed)
    model = build_p2net(**cfg.model.build_kwargs(num_joints))
    if cfg.model.init_weights is not None:
        load_init_weights(model, cfg.model.init_weights)
    return model


def load_init_weights(model: P2Net, path: str | Path) -> None:
    """Start from a trained P2Net: a da2-platform checkpoint or a bare state dict, read with weights_only=True."""
    from da2_platform.files import file_problem
    from pose_models.weights import BackboneWeightsError, read_state_dict

    path = Path(path)
    problem = file_problem(path)
    if problem is not None:
        raise TrainingError(f"model.init_weights: {path} {problem}")
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


def base_ops(train: TrainConfig) -> tuple[OpSetting, ...]:
    """`train.base_augment` as policy ops."""
    return tuple(OpSetting(op.name, op.p, op.m) for op in train.base_augment)


def training_policy(policy: Policy | None, train: TrainConfig) -> Policy | None:
    """What a training applies: the base augmentation, then the policy (None: neither)."""
    base = base_ops(train)
    if not base:
        return policy
    if policy is None:
        return Policy.uniform([base], name="base-augment", metadata={"method": "base"})
    return policy.after_base(base)


def augmentation_seed(cfg: ExperimentConfig, index: int, rank: int = 0) -> int:
    """The seed of the policy's draws at step `index` (device) or epoch `index` (loader) on worker `rank`."""
    return (cfg.seed * 1_000_003 + index) * 64 + rank


class StepSeededAugment:
    """The torch compilation of a policy whose draws are reseeded at every step: resumable at any step."""

    def __init__(self, policy: Policy, flip_pairs, device: torch.device, seed_of_step: Callable[[int], int]):
        self.generator = torch.Generator(device=device) if device.type == "cuda" else torch.Generator()
        self.module = compile_torch.compile_policy(policy, flip_pairs, generator=self.generator).to(device)
        self.seed_of_step = seed_of_step
        self.step = 0  # set by the loop before each call

    def __call__(self, batch):
        self.generator.manual_seed(self.seed_of_step(self.step))
        return self.module(batch)


def device_augment(cfg: ExperimentConfig, policy: Policy | None, flip_pairs, device: torch.device, seed: int):
    """The torch compilation of the policy on the device with one seeded generator (None when not on the device).

    `Fit` reseeds per step instead (`StepSeededAugment`); this form serves benchmarks that drive `TrainingStep`
    themselves."""
    policy = training_policy(policy, cfg.train)
    if policy is None or cfg.train.augment_on != "device":
        return None
    generator = torch.Generator(device=device) if device.type == "cuda" else torch.Generator()
    return compile_torch.compile_policy(policy, flip_pairs, generator=generator.manual_seed(seed)).to(device)


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
    """Everything a checkpoint holds besides tensors, as plain values (loadable with weights_only=True)."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimisation steps taken
    epoch_steps: int = 0  # steps taken in the unfinished epoch
    epoch_loss: float = 0.0  # their summed loss
    device_seconds: float = 0.0
    history: list[dict] = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # the caller's JSON-able state (a child's PBA schedule, its wall time)

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "epoch_steps": self.epoch_steps,
                "epoch_loss": self.epoch_loss, "device_seconds": self.device_seconds, "history": self.history,
                "extra_json": json.dumps(self.extra)}

    @classmethod
    def from_dict(cls, s: dict) -> FitState:
        return cls(epoch=int(s["epoch"]), step=int(s["step"]), epoch_steps=int(s.get("epoch_steps", 0)),
                   epoch_loss=float(s.get("epoch_loss", 0.0)), device_seconds=float(s["device_seconds"]),
                   history=list(s["history"]), extra=json.loads(s.get("extra_json", "{}")))


# on_step(fit, metrics) after every step; on_epoch_end(fit) after every epoch
StepHook = Callable[["Fit", StepMetrics], None]


@dataclass
class Fit:
    """Train `model` on `dataset` with an optional policy: cfg.train.epochs epochs (production, final trainings)
    or `max_steps` steps across epochs (search children); resumable after any step."""

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
        cfg = self.cfg
        self.loss_fn = P2NetLoss(ohkm_topk=cfg.model.ohkm_topk)
        self.optimizer = make_optimizer(self.model, cfg.train)
        self.scheduler = make_scheduler(self.optimizer, cfg.train)
        if cfg.train.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.augment = None
        # the policy the batches see: the base augmentation, then `policy` (which reports and registers alone)
        self.applied_policy = training_policy(self.policy, cfg.train)
        if self.applied_policy is not None and cfg.train.augment_on == "device":
            self.augment = StepSeededAugment(self.applied_policy, self.dataset.flip_pairs, self.device,
                                             lambda step: augmentation_seed(cfg, step, self.rank))
        self.step_fn = TrainingStep.from_config(self.model, cfg, self.device, self.augment, self.optimizer,
                                                self.loss_fn)
        self._unread: list[StepMetrics] = []  # steps whose losses and seconds the state does not hold yet

    def steps_per_epoch(self) -> int:
        batches = len(epoch_loader(self.dataset, self.cfg, 0, self.rank, self.world))
        return min(self.cfg.train.max_steps_per_epoch or batches, batches)

    def total_steps(self) -> int:
        """Steps of cfg.train.epochs epochs (what `run()` without `max_steps` takes)."""
        return self.cfg.train.epochs * self.steps_per_epoch()

    def _use_epoch_augmentation(self, epoch: int) -> None:
        """`augment_on: loader`: albumentations in the loader workers, seeded per epoch."""
        if self.applied_policy is not None and self.cfg.train.augment_on == "loader":
            self.dataset.transform = compile_albumentations.compile_policy(
                self.applied_policy, self.dataset.flip_pairs, seed=augmentation_seed(self.cfg, epoch, self.rank))
        else:
            self.dataset.transform = None

    def run(self, max_steps: int | None = None, on_step: StepHook | None = None,
            on_epoch_end: Callable[[Fit], None] | None = None,
            progress: Callable[[int, int, float], None] | None = None) -> FitState:
        cfg, state = self.cfg, self.state

        def more() -> bool:
            return state.epoch < cfg.train.epochs if max_steps is None else state.step < max_steps

        while more():
            epoch = state.epoch
            seed_everything(cfg.seed * 7919 + epoch)
            self._use_epoch_augmentation(epoch)
            loader = epoch_loader(self.dataset, cfg, epoch, self.rank, self.world)
            limit = min(cfg.train.max_steps_per_epoch or len(loader), len(loader))
            if limit == 0:
                raise TrainingError(f"epoch {epoch}: no training batches (dataset has {len(self.dataset)} crops, "
                                    f"batch size {cfg.train.batch_size})")
            batches = iter(loader)
            for _ in range(state.epoch_steps):  # resumed mid-epoch: replay the loader up to where it stopped
                next(batches)
            while state.epoch_steps < limit and (max_steps is None or state.step < max_steps):
                samples = next(batches)
                self.step_fn.step = state.step
                if self.augment is not None:
                    self.augment.step = state.step
                metrics = self.step_fn(samples)
                state.step = self.step_fn.step
                state.epoch_steps += 1
                self._unread.append(metrics)
                self._fold(wait=False)
                if progress is not None:
                    progress(state.epoch_steps, limit, metrics.loss)
                if on_step is not None:
                    on_step(self, metrics)
            self._fold(wait=True)
            if state.epoch_steps < limit:  # stopped at max_steps mid-epoch
                break
            self.scheduler.step()
            state.history.append({"epoch": epoch + 1, "loss": state.epoch_loss / state.epoch_steps,
                                  "steps": state.epoch_steps, "time": time.time()})
            state.epoch, state.epoch_steps, state.epoch_loss = epoch + 1, 0, 0.0
            if on_epoch_end is not None:
                on_epoch_end(self)
        return state

    def _fold(self, wait: bool) -> None:
        """Add finished steps' losses and seconds to the state, in order; on a GPU without waiting for a running
        step unless `wait` (epoch ends and checkpoints), so the device never idles for the bookkeeping."""
        while self._unread and (wait or self._unread[0].ready()):
            metrics = self._unread.pop(0)
            self.state.epoch_loss += metrics.loss
            self.state.device_seconds += metrics.wall_seconds * self.devices_held

    # -- checkpoints ---------------------------------------------------------------------------------------
    def checkpoint_bytes(self) -> bytes:
        self._fold(wait=True)
        return checkpoint_bytes(self.cfg, self.model, self.optimizer, self.scheduler, self.state)

    def save(self, path: Path) -> Path:
        return write_bytes_atomic(path, self.checkpoint_bytes())

    def load(self, path: Path) -> None:
        payload = load_checkpoint(path, expect_config=_unwrap(self.model).config)
        _unwrap(self.model).load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        follow_schedule(self.optimizer, self.scheduler, self.cfg.train)
        self.state = FitState.from_dict(payload["state"])


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def checkpoint_bytes(cfg: ExperimentConfig, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     scheduler: torch.optim.lr_scheduler.LRScheduler, state: FitState, **sections: dict) -> bytes:
    """The one checkpoint format (every training, and DA2's search, which adds its policy side as `sections`)."""
    model = _unwrap(model)
    payload = {
        "kind": CHECKPOINT_KIND,
        "version": CHECKPOINT_VERSION,
        "model_config": dict(model.config),
        "input_size": list(cfg.data.input_size),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "state": state.to_dict(),
        **sections,
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf.getvalue()


def load_checkpoint(path: str | Path, expect_config: dict | None = None) -> dict:
    """Load a P2Net training checkpoint safely (weights_only=True); a different architecture is a clear error."""
    from da2_platform.files import check_input_file
    from pose_models.weights import load_refusal

    path = Path(path)
    check_input_file(path, "checkpoint", TrainingError)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- a corrupt or non-torch file, or one that needs unpickling code
        raise TrainingError(f"{path}: not a loadable checkpoint ({load_refusal(e)}); checkpoints load with "
                            "weights_only=True, which runs no code from the file") from None
    if not isinstance(payload, dict) or "model" not in payload:
        raise TrainingError(f"{path}: not a da2-platform checkpoint (missing 'kind'/'version'/'model' fields)")
    if payload.get("format") == 1 and "kind" not in payload:  # version 1 files, written before 'kind' existed
        payload = {**payload, "kind": CHECKPOINT_KIND, "version": 1}
    if payload.get("kind") != CHECKPOINT_KIND:
        raise TrainingError(f"{path}: field 'kind' is {payload.get('kind')!r}, expected {CHECKPOINT_KIND!r}")
    if payload.get("version") not in (1, CHECKPOINT_VERSION):
        raise TrainingError(f"{path}: field 'version' is {payload.get('version')!r}; this code reads 1 and "
                            f"{CHECKPOINT_VERSION}")
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
