"""`da2 train` on Ray Train: one TorchTrainer worker per GPU (DDP), CPU workers where there is none.

Each epoch rank 0 writes a checkpoint that Ray persists under <workdir>/ray_results/<run>. `--resume` starts the
same run (same name, same storage) again: Ray Train V2 finds the run's checkpoint snapshot there and hands the
latest checkpoint to the workers (`ray.train.get_checkpoint`), which continue from that epoch with the same data
order and augmentation draws. At the end rank 0 evaluates on the val split with flip test (pycocotools) and
reports COCO AP; the final checkpoint is `result.checkpoint`.

Live progress: after each epoch rank 0 also writes its report to `<storage>/<run>.progress.json` (the workdir is
shared by every node); the driver polls that file while `fit()` runs and hands each new epoch to `on_epoch`.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from da2_platform.config import ExperimentConfig
from da2_platform.data.splits import prepare_data
from da2_platform.errors import TrainingError

CHECKPOINT_FILE = "checkpoint.pt"
POLL_SECONDS = 0.5  # how often the driver looks for a new epoch report
SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"  # Ray Train V2's record of a run's reported checkpoints


@dataclass
class TrainOutcome:
    run_name: str
    run_dir: Path
    checkpoint: Path  # the final model checkpoint copied out of Ray's storage
    metrics: dict  # val COCO metrics plus epochs, steps, device_seconds
    wall_seconds: float
    device_seconds: float


def train_worker(config: dict) -> None:
    """Runs inside every Ray Train worker."""
    import ray.train
    import ray.train.torch

    from da2_platform.data.topdown import TopDownDataset
    from da2_platform.files import write_json_atomic
    from da2_platform.inference import evaluate_model
    from da2_platform.training.loop import Fit, build_model
    from search_spaces.policy import Policy

    cfg = ExperimentConfig.model_validate(config["cfg"])
    policy = Policy.from_json(config["policy"]) if config["policy"] else None
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    dataset = TopDownDataset(config["train_annotations"], config["train_images"], input_size=cfg.data.input_size)
    model = build_model(cfg, dataset.num_joints)
    model = ray.train.torch.prepare_model(model) if world > 1 else model.to(device)
    fit = Fit(cfg, model, dataset, policy, device, rank=rank, world=world, devices_held=config["devices_held"])
    checkpoint = ray.train.get_checkpoint()  # Ray Train's own restore of this run (--resume, a worker retry)
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            fit.load(Path(d) / CHECKPOINT_FILE)

    def report_epoch(f: Fit) -> None:
        metrics = {"epoch": f.state.epoch, "step": f.state.step, "loss": f.state.history[-1]["loss"],
                   "device_seconds": f.state.device_seconds * world}
        if rank == 0 and f.state.epoch == cfg.train.epochs:  # the last epoch's report carries the val AP
            net = model.module if hasattr(model, "module") else model
            coco = evaluate_model(net, Path(config["val_annotations"]), Path(config["val_images"]),
                                  cfg.data.input_size, device, flip_test=cfg.train.flip_test,
                                  decoder=cfg.train.decoder, batch_size=cfg.train.eval_batch_size)
            metrics.update({f"val_{k}": v for k, v in coco.items()})
        if rank == 0:
            write_json_atomic(config["progress_file"], {**metrics, "epochs": cfg.train.epochs})
        with tempfile.TemporaryDirectory() as tmp:
            if rank == 0:
                f.save(Path(tmp) / CHECKPOINT_FILE)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
            else:
                ray.train.report(metrics)

    fit.run(on_epoch_end=report_epoch)


def run_training(cfg: ExperimentConfig, policy_json: str | None, resume: bool = False, fresh: bool = False,
                 run_name: str | None = None, on_epoch: Callable[[dict], None] | None = None) -> TrainOutcome:
    """Launch the TorchTrainer and wait; returns the final metrics and the path of the last checkpoint.

    `on_epoch(report)` is called in the driver, in order, for each epoch rank 0 finishes (epoch, epochs, step,
    loss, device_seconds, and val_* COCO metrics after the last one), from a thread that polls its file."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from da2_platform.raycluster import cluster_has_gpus, ensure_ray

    storage = (cfg.workdir / "ray_results").resolve()
    run_name = run_name or f"train-{cfg.name}"
    run_dir = storage / run_name
    if run_dir.exists() and not resume:
        if not fresh:
            raise TrainingError(f"a training run named {run_name!r} already exists in {storage}: pass --resume to "
                                "continue it from its latest checkpoint, or --fresh to start over")
        shutil.rmtree(run_dir)
    if resume and not (run_dir / SNAPSHOT_FILE).is_file():
        raise TrainingError(f"--resume: no checkpoint of run {run_name!r} under {storage}")
    progress_file = storage / f"{run_name}.progress.json"
    progress_file.unlink(missing_ok=True)  # an earlier run's last epoch is not news
    data = prepare_data(cfg)
    ensure_ray()
    use_gpu = cluster_has_gpus() if cfg.train.use_gpu is None else cfg.train.use_gpu
    per_worker = {"CPU": cfg.train.cpus_per_worker, **({"GPU": 1} if use_gpu else {})}
    devices_held = 1.0 if use_gpu else float(cfg.train.cpus_per_worker)
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={
            "cfg": cfg.model_dump(mode="json"),
            "policy": policy_json,
            "train_annotations": str(data.full_train_annotations),
            "train_images": str(data.train_images),
            "val_annotations": str(data.val_annotations),
            "val_images": str(data.val_images),
            "devices_held": devices_held,
            "progress_file": str(progress_file),
        },
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.train.workers, use_gpu=use_gpu,
                                               resources_per_worker=per_worker),
        run_config=ray.train.RunConfig(name=run_name, storage_path=str(storage),
                                       checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1)),
    )
    start = time.perf_counter()
    try:
        with watch_epochs(progress_file, on_epoch):
            result = trainer.fit()
    except Exception as e:  # surface the worker's own error (NaN loss, bad data) in one line
        raise TrainingError(f"training run {run_name!r} failed: {_root_cause(e)}") from e
    wall = time.perf_counter() - start
    final = Path(result.checkpoint.path) / CHECKPOINT_FILE if result.checkpoint is not None else None
    if final is None or not final.is_file():  # storage_path is a local or mounted folder (checked by the config)
        raise TrainingError(f"training run {run_name!r} finished without a checkpoint in {run_dir}")
    metrics = dict(result.metrics or {})
    return TrainOutcome(run_name, run_dir, final, metrics, wall, float(metrics.get("device_seconds", 0.0)))


@contextlib.contextmanager
def watch_epochs(path: Path, on_epoch: Callable[[dict], None] | None,
                 poll_seconds: float = POLL_SECONDS) -> Iterator[None]:
    """While inside, call `on_epoch` with each new epoch report written to `path` (atomically, by rank 0); a last
    look on the way out, so the final epoch is never missed."""
    if on_epoch is None:
        yield
        return
    stop = threading.Event()
    seen = {"epoch": None}

    def look() -> None:
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # not written yet
            return
        if report.get("epoch") != seen["epoch"]:
            seen["epoch"] = report.get("epoch")
            on_epoch(report)

    def poll() -> None:
        while not stop.wait(poll_seconds):
            look()

    watcher = threading.Thread(target=poll, name="da2-train-progress", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join()
        look()


def _root_cause(e: BaseException) -> str:
    while e.__cause__ is not None:
        e = e.__cause__
    text = str(e).strip().splitlines()
    return text[-1] if text else type(e).__name__
