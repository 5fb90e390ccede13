"""The demo's pieces: the cached warm start, and library output kept out of the terminal."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from da2_platform.config import load_config
from da2_platform.training.loop import build_model
from da2_platform.warmstart import PretrainSettings, warm_start


def test_warm_start_is_trained_once_and_loads_as_init_weights(tmp_path: Path):
    cfg = load_config(None, {"workdir": str(tmp_path), "train.batch_size": 4})
    settings = PretrainSettings(steps=2, images=2)
    seen: list[int] = []
    first = warm_start(cfg, settings, on_step=lambda step, model: seen.append(step))
    assert not first.cached and seen == [1, 2] and first.path == tmp_path / "pretrain" / "p2net.pt"
    mtime = first.path.stat().st_mtime_ns
    again = warm_start(cfg, settings)
    assert again.cached and again.path.stat().st_mtime_ns == mtime
    # the pretraining set is its own SynthPose seed, not the experiment's
    assert (tmp_path / "pretrain" / "synthpose" / "synthpose.json").read_text().count('"seed": 1000') == 1
    started = build_model(load_config(None, {"workdir": str(tmp_path), "model.init_weights": str(first.path)}))
    saved = torch.load(first.path, weights_only=True)
    assert all(torch.equal(started.state_dict()[k], v) for k, v in saved.items())
    assert not warm_start(cfg, PretrainSettings(steps=3, images=2)).cached  # other settings: trained again


CHILD = """
import logging, os, sys, warnings
from pathlib import Path
from da2_platform.console import libraries_to_log
noisy = logging.getLogger("ray.tune.banner")
noisy.addHandler(logging.StreamHandler())
with libraries_to_log(Path(sys.argv[1])) as terminal:
    terminal.print("ours: step 1")
    noisy.warning("View detailed results here")
    print("a library print")
    os.write(2, b"core worker line\\n")
    warnings.warn("a library warning")
print("stdout again")
"""


def test_library_output_goes_to_the_log_and_ours_to_the_terminal(tmp_path: Path):
    log = tmp_path / "logs" / "demo.log"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", CHILD, str(log)], capture_output=True, text=True, env=env,
                          timeout=60, check=True)
    terminal = done.stdout + done.stderr
    assert "ours: step 1" in terminal and "stdout again" in done.stdout
    for line in ("View detailed results here", "a library print", "core worker line", "a library warning"):
        assert line not in terminal and line in log.read_text()
