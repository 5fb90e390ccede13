"""`da2 train` (P2Net on Ray Train) and `da2 predict` (top-down inference to a COCO results file)."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from da2_platform.cli.options import INPUT_SIZE_HELP, Decoder
from da2_platform.cli.output import console, emit_json, print_table


def train(
    config: Path | None = typer.Option(None, "--config", "-c", help="Experiment YAML (default: embedded demo)."),
    policy: str | None = typer.Option(
        None, "--policy", help="Policy JSON file, fixed:NAME (none, standard-pose, randaugment, trivialaugment), "
        "or models:/NAME@ALIAS from the registry."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run from its latest epoch checkpoint."),
    fresh: bool = typer.Option(False, "--fresh", help="Replace an existing run of the same name."),
    epochs: int | None = typer.Option(None, "--epochs", help="Override train.epochs."),
    workdir: Path | None = typer.Option(None, "--workdir", help="Override the config's workdir."),
    tracking_uri: str | None = typer.Option(None, "--tracking-uri", help="MLflow server URI."),
    no_register: bool = typer.Option(False, "--no-register", help="Do not log/register the trained model."),
    json_out: bool = typer.Option(False, "--json", help="Print the final metrics as JSON on stdout."),
) -> None:
    """Train P2Net with a policy on Ray Train (DDP, one worker per GPU), checkpoint each epoch, report val AP.

    The trained model is registered as a version of `p2net` whose tags name the exact policy version used."""
    from da2_platform.config import load_config
    from da2_platform.files import check_output_dir
    from da2_platform.jobenv import check_shared_workdir
    from da2_platform.names import check_workdir_paths
    from da2_platform.policies import resolve_policy
    from da2_platform.registry import register_trained_model
    from da2_platform.tracking import setup_tracking
    from da2_platform.training.ray_train import run_training

    overrides = {}
    if epochs is not None:
        overrides["train.epochs"] = epochs
    if workdir is not None:
        overrides["workdir"] = str(workdir)
    cfg = load_config(config, overrides)
    source = str(config or "<defaults>")
    check_output_dir(cfg.workdir, "workdir")  # the same clear error as `da2 search` for a bad work dir
    check_workdir_paths(cfg.workdir, cfg.name, source, [f"train-{cfg.name}"])  # before --fresh deletes
    check_shared_workdir(cfg.workdir, source)  # a multi-node job: every node sees it
    if not no_register or (policy or "").startswith("models:/"):
        setup_tracking(cfg, tracking_uri)  # an unreachable server fails here, before any compute
    resolved = resolve_policy(policy, cfg, tracking_uri) if policy else None
    console.print(f"[bold]train[/] {cfg.name}: {cfg.train.epochs} epochs, model {cfg.model.preset or cfg.model.backbone}, "
                  f"policy {resolved.reference if resolved else 'none'}")
    outcome = run_training(cfg, resolved.policy.to_json() if resolved else None, resume=resume, fresh=fresh,
                           on_epoch=TrainProgress())
    result = {"run": outcome.run_name, "checkpoint": str(outcome.checkpoint), "wall_seconds": outcome.wall_seconds,
              "device_seconds": outcome.device_seconds, "policy": resolved.reference if resolved else None,
              "policy_version": resolved.registry_version if resolved else None,
              **{k: v for k, v in outcome.metrics.items() if k.startswith("val_") or k in ("epoch", "step")}}
    if not no_register:
        run_id, version = register_trained_model(
            cfg, outcome.checkpoint, {**outcome.metrics, "wall_seconds": outcome.wall_seconds},
            resolved.reference if resolved else None, resolved.registry_version if resolved else None,
            resolved.registry_name if resolved else None, tracking_uri)
        result.update(mlflow_run_id=run_id, model_version=version)
    if json_out:
        emit_json(result)
    else:
        print_table("P2Net training", ["metric", "value"], [[k, v] for k, v in result.items()])


class TrainProgress:
    """A line on stderr per finished epoch: epoch/epochs, steps, loss, val AP (after the last epoch), device-hours
    and an ETA at this run's pace (from its first epoch on, once there are two: start-up is not an epoch's cost)."""

    def __init__(self) -> None:
        self.started = time.time()
        self.first: tuple[int, float] | None = None  # (epoch, time) of this run's first report

    def __call__(self, report: dict) -> None:
        from da2_platform.cli.output import safe

        console.print(f"  {safe(self.text(report))}", highlight=False, soft_wrap=True)

    def text(self, report: dict, now: float | None = None) -> str:
        from da2_platform.search.progress import _duration

        now = time.time() if now is None else now
        epoch, epochs = int(report["epoch"]), int(report["epochs"])
        if self.first is None:
            self.first = (epoch, now)
        first_epoch, first_time = self.first
        ap = report.get("val_AP")
        parts = [f"train: epoch {epoch}/{epochs}", f"{report['step']} steps", f"loss {report['loss']:.4g}",
                 "val AP " + ("-" if ap is None else f"{ap:.4f}"),
                 f"{report['device_seconds'] / 3600:.4f} device-h"]
        if epoch < epochs:
            # one report so far: this run's one epoch (runs resume at epoch ends), start-up included
            per_epoch = (now - first_time) / (epoch - first_epoch) if epoch > first_epoch else now - self.started
            parts.append(f"ETA {_duration(per_epoch * (epochs - epoch))}")
        return ", ".join(parts) + f" ({_duration(now - self.started)} in)"


def predict(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="A checkpoint written by `da2 train`."),
    annotations: Path = typer.Option(..., "--annotations", help="COCO keypoints JSON (images and GT boxes)."),
    images: Path = typer.Option(..., "--images", help="Image folder."),
    out: Path = typer.Option(..., "--out", help="Where to write the COCO results JSON."),
    boxes: Path | None = typer.Option(None, "--boxes", help="Detector boxes (COCO results with bbox, score)."),
    input_size: str | None = typer.Option(None, "--input-size", help=f"{INPUT_SIZE_HELP} Default: the trained one."),
    decoder: Decoder = typer.Option("dark", "--decoder", help="standard (paper) or dark."),
    flip_test: bool = typer.Option(True, "--flip-test/--no-flip-test", help="Average with the mirrored pass."),
    batch_size: int = typer.Option(32, "--batch-size"),
    json_out: bool = typer.Option(False, "--json", help="Print a summary as JSON on stdout."),
) -> None:
    """Top-down inference with ground-truth or detector boxes; the output feeds `da2 evaluate`."""
    from da2_platform.cli.options import check_batch_size, parse_input_size
    from da2_platform.data.topdown import TopDownDataset
    from da2_platform.files import check_output_file, read_json, write_json_atomic
    from da2_platform.inference import predict_dataset
    from da2_platform.limits import MAX_PREDICTIONS_BYTES
    from da2_platform.training.loop import load_checkpoint, model_from_checkpoint
    from da2_platform.training.step import pick_device

    check_batch_size(batch_size)
    check_output_file(out, "--out")  # before any compute, so a bad path costs nothing
    requested = parse_input_size(input_size) if input_size else None
    model = model_from_checkpoint(checkpoint)
    size = requested or tuple(load_checkpoint(checkpoint)["input_size"])
    det = read_json(boxes, "detections file", MAX_PREDICTIONS_BYTES) if boxes else None
    dataset = TopDownDataset(annotations, images, input_size=size, boxes=det, require_keypoints=False)
    results = predict_dataset(model, dataset, pick_device(), batch_size, flip_test, decoder)
    write_json_atomic(out, results, indent=None)
    summary = {"predictions": len(results), "out": str(out), "skipped": dataset.skipped}
    if json_out:
        emit_json(summary)
    else:
        console.print(f"wrote {len(results)} predictions to {out}")
