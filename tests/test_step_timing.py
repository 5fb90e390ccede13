"""Step timing without a per-step wait: on the CPU a step's metrics are plain numbers (as before); on a GPU they
stay on the device until read, and the loop folds them into its state only once they are done or at epoch ends
and checkpoints."""

from __future__ import annotations

import pytest
import torch

from da2_platform.config import load_config
from da2_platform.data.topdown import TopDownDataset
from da2_platform.errors import TrainingError
from da2_platform.training.loop import Fit, build_model
from da2_platform.training.step import TrainingStep, make_optimizer
from pose_models.losses import P2NetLoss

INPUT = (64, 48)


def _config(tmp_path, synth):
    return load_config(None, {"workdir": str(tmp_path), "data.root": str(synth.root), "data.synth_seed": 0, "data.synth_shift": "none",
        "data.search_val": "from_train", "data.synth_train": 24,
                              "data.synth_val": 8, "data.input_size": list(INPUT), "train.batch_size": 8,
                              "train.epochs": 2, "train.max_steps_per_epoch": 2})


def _samples(synth, n: int = 4) -> dict:
    ds = TopDownDataset(synth.train_annotations, synth.train_images, input_size=INPUT)
    return torch.utils.data.default_collate([ds[i] for i in range(n)])


def test_cpu_step_metrics_are_numbers_at_once(synthpose_small, tmp_path):
    cfg = _config(tmp_path, synthpose_small)
    model = build_model(cfg)
    step = TrainingStep(model, P2NetLoss(), make_optimizer(model, cfg.train), cfg.train, INPUT, torch.device("cpu"))
    metrics = step(_samples(synthpose_small))
    assert metrics.ready() and metrics.step == 1
    assert all(isinstance(v, float) for v in (metrics.loss, metrics.extraction, metrics.refinement))
    assert metrics.loss > 0 and 0 < metrics.wall_seconds < 60


def test_the_loop_state_holds_every_step_it_took(synthpose_small, tmp_path):
    """The folded epoch losses and device-seconds are the sums of what each step reported, in order."""
    cfg = _config(tmp_path, synthpose_small)
    ds = TopDownDataset(synthpose_small.train_annotations, synthpose_small.train_images, input_size=INPUT)
    fit = Fit(cfg, build_model(cfg), ds, None, torch.device("cpu"), devices_held=2.0)
    seen = []
    state = fit.run(on_step=lambda f, m: seen.append(m))
    assert [m.step for m in seen] == [1, 2, 3, 4] and fit._unread == []
    losses = [h["loss"] for h in state.history]
    assert losses == [(seen[0].loss + seen[1].loss) / 2, (seen[2].loss + seen[3].loss) / 2]
    assert state.device_seconds == pytest.approx(2.0 * sum(m.wall_seconds for m in seen), rel=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_step_waits_for_nothing_until_read(synthpose_small, tmp_path):
    from da2_platform.training.step import batch_to_device

    cfg = _config(tmp_path, synthpose_small)
    device = torch.device("cuda")
    model = build_model(cfg).to(device)
    step = TrainingStep(model, P2NetLoss(), make_optimizer(model, cfg.train), cfg.train, INPUT, device)
    batch = batch_to_device(_samples(synthpose_small), device)
    assert step(batch).loss > 0  # warm-up (cuDNN autotuning, allocations)
    torch.cuda.set_sync_debug_mode("error")  # any host-device sync inside the steps raises
    try:
        metrics = [step(batch) for _ in range(3)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(m.loss > 0 and m.wall_seconds > 0 for m in metrics) and metrics[-1].ready()
    batch.images[0, 0, 0, 0] = float("nan")
    bad = step(batch)
    with pytest.raises(TrainingError, match=r"training loss is nan at step 4"):
        _ = bad.loss
