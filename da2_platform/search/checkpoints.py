"""Checkpoint clean-up after a search: a recorded search's trials keep their results and logs, not their weights."""

from __future__ import annotations

import shutil
from pathlib import Path


def delete_experiment_checkpoints(experiment_dir: Path) -> None:
    """Every trial's checkpoint folders in a finished Tune experiment (its results and logs stay)."""
    if experiment_dir.is_dir():
        for trial_dir in experiment_dir.iterdir():
            if trial_dir.is_dir() and not trial_dir.is_symlink():
                delete_trial_checkpoints(trial_dir)


def delete_trial_checkpoints(trial_dir: Path) -> None:
    for checkpoint in trial_dir.glob("checkpoint_*"):
        if checkpoint.is_dir() and not checkpoint.is_symlink():
            shutil.rmtree(checkpoint, ignore_errors=True)
