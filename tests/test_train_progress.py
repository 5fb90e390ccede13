"""Live progress of `da2 train`: rank 0's epoch reports reach the driver while training runs, one stderr line
each (epoch, steps, loss, val AP, device-hours, ETA); `--json` keeps stdout to one object."""

from __future__ import annotations

import json
import threading
import time

import pytest
import yaml

from da2_platform.cli.train import TrainProgress
from da2_platform.files import write_json_atomic
from da2_platform.training.ray_train import watch_epochs


def _report(epoch: int, **extra) -> dict:
    return {"epoch": epoch, "epochs": 3, "step": 20 * epoch, "loss": 0.0012345, "device_seconds": 36.0 * epoch,
            **extra}


def test_watch_epochs_hands_over_each_epoch_once_in_order(tmp_path):
    path = tmp_path / "run.progress.json"
    seen: list[dict] = []

    def worker() -> None:
        for epoch in (1, 2):
            write_json_atomic(path, _report(epoch))
            time.sleep(0.2)

    with watch_epochs(path, seen.append, poll_seconds=0.02):
        thread = threading.Thread(target=worker)
        thread.start()
        thread.join()
        write_json_atomic(path, _report(3, val_AP=0.5))  # written just before fit() returns: the last look sees it
    assert [r["epoch"] for r in seen] == [1, 2, 3] and seen[-1]["val_AP"] == 0.5


def test_progress_line_names_epoch_steps_loss_ap_device_hours_and_eta():
    progress = TrainProgress()
    progress.started = 1000.0
    assert progress.text(_report(1), now=1030.0) == (
        "train: epoch 1/3, 20 steps, loss 0.001234, val AP -, 0.0100 device-h, ETA 1m00s (30s in)"
    )
    assert "ETA 5s (35s in)" in progress.text(_report(2), now=1035.0)  # the pace from epoch 1 on: 5 s an epoch
    assert progress.text(_report(3, val_AP=0.61234), now=1040.0) == (
        "train: epoch 3/3, 60 steps, loss 0.001234, val AP 0.6123, 0.0300 device-h (40s in)"
    )
    resumed = TrainProgress()  # resumed after epoch 1: its first report is one epoch of this run
    resumed.started = 0.0
    assert "ETA 10s" in resumed.text(_report(2), now=10.0)


@pytest.mark.slow
def test_train_prints_a_line_per_epoch_and_one_json_object(synthpose_small, tmp_path, ray_session, capsys):
    from da2_platform.cli.main import main

    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump({
        "name": "progress", "workdir": str(tmp_path / "w"),
        "data": {"root": str(synthpose_small.root), "synth_train": 24, "synth_val": 8, "synth_seed": 0, "synth_shift": "none",
                 "search_val": "from_train"},
        "train": {"epochs": 2, "batch_size": 8, "max_steps_per_epoch": 2, "eval_batch_size": 16},
    }))
    assert main(["train", "--config", str(config), "--no-register", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["epoch"] == 2  # stdout: the one JSON object
    lines = [ln.strip() for ln in captured.err.splitlines() if "train: epoch" in ln]
    assert [ln.split(",")[0] for ln in lines] == ["train: epoch 1/2", "train: epoch 2/2"], captured.err[-3000:]
    assert "val AP -" in lines[0] and "ETA" in lines[0] and "val AP 0." in lines[1]
