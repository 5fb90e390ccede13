"""A warm start for CPU-sized experiments: one P2Net trained on a separate SynthPose set, cached in the work dir.

From scratch, a CPU-sized training leaves AP near the noise floor and every policy ties. A network that already
knows the figures -- trained once with fixed:standard-pose on the train split of another SynthPose seed, which
shares no image with the experiment -- plays the role of ImageNet weights: `model.init_weights` points every
training (search children, DA2, final trainings, production) at it. It is the same start for every method and
costs no search anything; its cost is reported on its own.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from da2_platform.config import ExperimentConfig
from da2_platform.errors import DataError
from da2_platform.files import read_json, write_bytes_atomic, write_json_atomic

PRETRAIN_SEED = 1000  # the SynthPose seed of the pretraining set (experiments use other seeds)
PRETRAIN_POLICY = "fixed:standard-pose"


@dataclass(frozen=True)
class PretrainSettings:
    steps: int = 600
    images: int = 400
    seed: int = PRETRAIN_SEED
    lr: float = 1e-3


@dataclass(frozen=True)
class WarmStart:
    path: Path  # a P2Net state dict, loadable as model.init_weights
    seconds: float  # 0 when it came from the cache
    cached: bool
    settings: PretrainSettings


def warm_start(cfg: ExperimentConfig, settings: PretrainSettings = PretrainSettings(), folder: Path | None = None,
               threads: int | None = None, on_step: Callable[[int, Any], None] | None = None) -> WarmStart:
    """Train (or reuse) the pretrained P2Net for `cfg`'s model and input size under `folder`
    (default <workdir>/pretrain). A cached one is reused when every setting that shaped it is the same.
    `on_step(step, model)` is called after every step (progress, or a benchmark's learning curve)."""
    import torch

    from da2_platform.data.heatmaps import default_sigma, heatmap_size_for
    from da2_platform.data.synthpose import GENERATOR_VERSION, write_synthpose

    folder = Path(folder or cfg.workdir / "pretrain")
    weights, manifest_path = folder / "p2net.pt", folder / "pretrain.json"
    model_kwargs = {k: v for k, v in cfg.model.build_kwargs(17).items() if k != "pretrained_path"}
    manifest = {"model": model_kwargs, "input_size": list(cfg.data.input_size), "batch_size": cfg.train.batch_size,
                "heatmap_sigma": cfg.data.heatmap_sigma or default_sigma(heatmap_size_for(cfg.data.input_size)),
                "policy": PRETRAIN_POLICY, "base_augment": cfg.model_dump(mode="json")["train"]["base_augment"],
                "steps": settings.steps,
                "images": settings.images, "seed": settings.seed, "lr": settings.lr,
                "synthpose_version": GENERATOR_VERSION}
    if weights.is_file() and manifest_path.is_file() and _recorded(manifest_path) == manifest:
        return WarmStart(weights, 0.0, True, settings)
    start = time.perf_counter()
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        state = _pretrain(cfg, settings, folder, write_synthpose, on_step)
    finally:
        torch.set_num_threads(old_threads)
    buf = io.BytesIO()
    torch.save(state, buf)
    write_bytes_atomic(weights, buf.getvalue())
    seconds = time.perf_counter() - start
    write_json_atomic(manifest_path, {"settings": manifest, "seconds": seconds})  # last: marks it complete
    return WarmStart(weights, seconds, False, settings)


def _recorded(manifest_path: Path) -> dict | None:
    try:
        return read_json(manifest_path).get("settings")
    except DataError:  # an unreadable manifest: train again
        return None


def _pretrain(cfg: ExperimentConfig, settings: PretrainSettings, folder: Path, write_synthpose,
              on_step: Callable[[int, Any], None] | None) -> dict:
    import torch

    from da2_platform.data.topdown import TopDownDataset
    from da2_platform.policies import resolve_policy
    from da2_platform.search.da2 import BatchStream
    from da2_platform.training.loop import build_model, device_augment
    from da2_platform.training.step import TrainingStep, seed_everything

    raw = cfg.model_dump(mode="json")
    raw["model"]["init_weights"] = None
    raw["train"]["lr"] = settings.lr
    raw["seed"] = settings.seed
    pre_cfg = ExperimentConfig.model_validate(raw)
    paths = write_synthpose(folder / "synthpose", train=settings.images, val=0, seed=settings.seed)
    device = torch.device("cpu")
    seed_everything(settings.seed)
    dataset = TopDownDataset(paths.train_annotations, paths.train_images, input_size=pre_cfg.data.input_size)
    model = build_model(pre_cfg, dataset.num_joints)
    policy = resolve_policy(PRETRAIN_POLICY).policy
    step = TrainingStep.from_config(model, pre_cfg, device,
                                    device_augment(pre_cfg, policy, dataset.flip_pairs, device, settings.seed))
    stream = BatchStream(dataset, pre_cfg)
    for i in range(1, settings.steps + 1):
        step(next(stream))
        if on_step is not None:
            on_step(i, model)
    return model.state_dict()
