"""What every search trial reports, whatever its method, so that one driver logs, ledgers and registers them."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from da2_platform.config import ExperimentConfig
from da2_platform.data.splits import ExperimentData
from da2_platform.ledger import device_seconds


@dataclass
class TrialClock:
    """Wall time of a trial, summed across restores, and the device-seconds it implies."""

    gpus: float
    cpus: float
    previous_wall: float = 0.0  # wall seconds spent before the last restore

    def __post_init__(self) -> None:
        self.started = time.perf_counter()
        self.start_time = time.time()

    def wall(self) -> float:
        return self.previous_wall + time.perf_counter() - self.started

    def report(self) -> dict:
        wall = self.wall()
        kind, held, dev = device_seconds(wall, self.gpus, self.cpus)
        return {"wall_seconds": wall, "device_kind": kind, "devices_held": held, "device_seconds": dev,
                "trial_start": self.start_time, "trial_end": time.time()}


def trial_settings(cfg: ExperimentConfig, data: ExperimentData) -> dict:
    """The part of a trial's input that is the same for every trial (passed with tune.with_parameters)."""
    return {"cfg": cfg.model_dump(mode="json"),
            "train_annotations": str(data.search_train_annotations), "train_images": str(data.train_images),
            "eval_annotations": str(data.search_val_annotations), "eval_images": str(data.search_val_images)}


def trial_resources(cfg: ExperimentConfig) -> dict:
    return {"cpu": cfg.search.cpus_per_trial, "gpu": cfg.search.gpus_per_trial}


def trial_device(cfg: ExperimentConfig) -> torch.device:
    return torch.device("cuda") if cfg.search.gpus_per_trial > 0 and torch.cuda.is_available() else torch.device("cpu")


def limit_threads(cfg: ExperimentConfig) -> None:
    """A trial uses the CPUs it reserved and no more, so concurrent trials do not fight over cores."""
    torch.set_num_threads(max(1, int(cfg.search.cpus_per_trial)))
