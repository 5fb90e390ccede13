"""The unit costs a plan adds up, their cache, and the data sizes they are multiplied by.

Every cost is in the ledger's unit: device-seconds of one trial (wall time x the devices the trial holds:
`search.gpus_per_trial`, or `search.cpus_per_trial` where trials hold no GPU). Measurements are cached per
(config, device) under `<workdir>/plan/`, which is all a plan ever writes.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from da2_platform.config import ExperimentConfig
from da2_platform.files import read_json, write_json_atomic
from da2_platform.plan.work import DataSizes

MEASURE_VERSION = 2  # bump when the measurement changes, so cached costs are measured again
ESTIMATORS = ("relaxed", "score")  # search.da2.estimator
STAND_IN_CAP = 400  # SynthPose images per split the plan writes for itself; larger sets are counted by ratio
# COCO 2017 person instances with labelled keypoints, as HRNet's top-down loader counts them (57k train images)
COCO_TRAIN_CROPS, COCO_VAL_CROPS = 149_813, 6_352


@dataclass
class UnitCosts:
    """Device-seconds of the units of work on one device.

    Measured costs are per unit. Costs read from a ledger are `amortized`: a whole trial's device-seconds over its
    steps, its setup and evaluations spread in (setup, evaluation and checkpoint costs are then 0)."""

    device: str
    devices_held: float  # what a trial holds: device-seconds = wall seconds x this
    source: str
    train_step: float  # one plain training step (the shared TrainingStep, a searched policy's augmentation)
    da2_step: dict[str, float]  # one DA2 step per estimator, policy_update_every and val_grad_every averaged in
    setup: float = 0.0  # a child's or final training's setup: data set, model, optimiser
    da2_setup: float = 0.0  # a DA2 trial's: both data sets, model, relaxed policy, both optimisers
    eval_crop: float = 0.0  # one evaluation, per crop (flip test, decode, COCOeval)
    checkpoint: float = 0.0  # one report's checkpoint
    final_step: float | None = None  # a final training's step where it differs (amortized costs)
    amortized: bool = False
    measured_seconds: float = 0.0  # what the measurement took
    notes: list[str] = field(default_factory=list)

    def step(self, kind: str) -> float:
        if kind == "final" and self.final_step is not None:
            return self.final_step
        if kind.startswith("da2:"):
            return self.da2_step[kind.removeprefix("da2:")]
        return self.train_step

    def to_dict(self) -> dict:
        return asdict(self)


def held_per_trial(cfg: ExperimentConfig) -> tuple[str, float]:
    """(device kind, devices held) of one search trial."""
    if cfg.search.gpus_per_trial > 0:
        return "gpu", float(cfg.search.gpus_per_trial)
    return "cpu", float(cfg.search.cpus_per_trial)


def plan_dir(cfg: ExperimentConfig) -> Path:
    return Path(cfg.workdir) / "plan"


def config_hash(cfg: ExperimentConfig) -> str:
    """What a unit cost depends on: data, model, the training recipe, DA2's step settings, a trial's devices.
    Not: the counts of steps, trials and seeds, paths, names, the estimator (each is measured on its own)."""
    data = cfg.data.model_dump(mode="json", exclude={"root", "train_annotations", "train_images",
                                                     "val_annotations", "val_images", "search_val_annotations",
                                                     "search_val_images"})
    model = cfg.model.model_dump(mode="json", exclude={"pretrained_path", "init_weights"})
    da2 = cfg.search.da2.model_dump(mode="json", exclude={"steps", "seeds", "one_pass", "top_n", "estimator",
                                                          "policy_lr", "pi_lr_scale", "checkpoint_every"})
    key = {"version": MEASURE_VERSION, "data": data, "model": model, "train": cfg.train.model_dump(mode="json"),
           "da2": da2, "cpus": cfg.search.cpus_per_trial, "gpus": cfg.search.gpus_per_trial,
           "discrete": cfg.search.rl.model_dump(mode="json", include={"sub_policies", "ops_per_sub_policy"}),
           "include_flip": cfg.search.include_flip}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def device_key(cfg: ExperimentConfig) -> tuple[str, str]:
    """(a file-name key, words) for the device a trial of `cfg` runs on here."""
    import torch

    from da2_platform.search.trial import trial_device

    if trial_device(cfg).type == "cuda":
        name = torch.cuda.get_device_name(0)
        return "cuda-" + re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower(), f"cuda ({name})"
    threads = max(1, int(cfg.search.cpus_per_trial))
    return f"cpu-{threads}t", f"cpu ({threads} thread{'s' if threads > 1 else ''})"


def cache_path(cfg: ExperimentConfig) -> Path:
    return plan_dir(cfg) / "costs" / f"{config_hash(cfg)}-{device_key(cfg)[0]}.json"


def read_cached(cfg: ExperimentConfig, estimators: set[str]) -> UnitCosts | None:
    path = cache_path(cfg)
    if not path.is_file():
        return None
    costs = UnitCosts(**read_json(path, "plan cost cache"))
    if not estimators <= set(costs.da2_step):
        return None
    costs.source = f"cache {path} ({costs.source})"
    return costs


def write_cached(cfg: ExperimentConfig, costs: UnitCosts) -> Path:
    """Add `costs` to the cache; estimators measured earlier with the same config stay."""
    path = cache_path(cfg)
    if path.is_file():
        earlier = read_json(path, "plan cost cache")
        costs.da2_step = {**earlier.get("da2_step", {}), **costs.da2_step}
    return write_json_atomic(path, costs.to_dict())


# -- data sizes --------------------------------------------------------------------------------------------------

def stand_in_data(cfg: ExperimentConfig):
    """A SynthPose set under the plan's folder to measure on: the config's own (at most STAND_IN_CAP images a
    split; the generator draws each image alone, so these are the config's first images) or, for COCO configs,
    a small set at the config's input size. Returns (SynthPosePaths, scale per split)."""
    from da2_platform.data.synthpose import write_synthpose

    d = cfg.data
    if d.kind == "synthpose":
        wanted = {"train": d.synth_train, "val": d.synth_val,
                  "target": d.synth_search_val if d.search_val == "target" else 0}
        shift = d.synth_shift
    else:
        wanted, shift = {"train": 64, "val": 32, "target": 32}, "none"
    counts = {k: min(v, STAND_IN_CAP) for k, v in wanted.items()}
    paths = write_synthpose(plan_dir(cfg) / "data" / f"synthpose-{shift}-s{cfg.data_seed}", train=counts["train"],
                            val=counts["val"], seed=cfg.data_seed, shift=shift, target=counts["target"])
    scale = {k: (wanted[k] / counts[k] if counts[k] else 0.0) for k in wanted}
    return paths, scale


def _crops(annotations: Path, keypoints_only: bool = True) -> int:
    coco = read_json(annotations, "annotations")
    return sum(1 for a in coco.get("annotations", []) if not a.get("iscrowd")
               and (a.get("num_keypoints", 0) > 0 or not keypoints_only))


def data_sizes(cfg: ExperimentConfig) -> DataSizes:
    """Crops per data role: SynthPose counted on the stand-in (scaled where capped); COCO counted from its
    annotation files where this machine has them, else COCO 2017's published counts."""
    from da2_platform.data.splits import write_search_split

    d = cfg.data
    if d.kind == "synthpose":
        paths, scale = stand_in_data(cfg)
        train = round(_crops(paths.train_annotations) * scale["train"])
        val = round(_crops(paths.val_annotations) * scale["val"])
        if d.search_val == "target":
            search_val = round(_crops(paths.target_annotations) * scale["target"])
            return DataSizes(train, train, search_val, val, "SynthPose, counted on the plan's copy")
        search_train_ann, search_val_ann = write_search_split(paths.train_annotations, plan_dir(cfg) / "data" /
                                                              "splits", d.search_val_fraction, cfg.seed)
        return DataSizes(train, round(_crops(search_train_ann) * scale["train"]),
                         round(_crops(search_val_ann) * scale["train"]), val, "SynthPose, counted on the plan's copy")
    have = [p for p in (d.train_annotations, d.val_annotations) if p is not None and Path(p).is_file()]
    if len(have) == 2:
        train, val, source = _crops(Path(d.train_annotations)), _crops(Path(d.val_annotations)), "the COCO files"
    else:
        train, val = COCO_TRAIN_CROPS, COCO_VAL_CROPS
        source = "COCO 2017's counts (persons with keypoints: train 149,813, val 6,352); no COCO files here"
    if d.search_val == "target":
        target = d.search_val_annotations
        search_val = _crops(Path(target)) if target is not None and Path(target).is_file() else val
        return DataSizes(train, train, search_val, val, source)
    search_val = round(train * d.search_val_fraction)  # carved by image; persons per image taken as even
    return DataSizes(train, train - search_val, search_val, val, source)
