"""Runs any search method as a Ray Tune experiment and records it the same way for every method.

`run_search` builds the method's Tuner (or restores it), waits, and turns its trials into ledger rows, one
MLflow run with nested trial runs, and -- only when the search completed -- a registered policy version.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from da2_platform.config import ExperimentConfig
from da2_platform.data.splits import ExperimentData, prepare_data
from da2_platform.errors import Da2Error
from da2_platform.files import write_json_atomic
from da2_platform.ledger import CostLedger, LedgerRow, utc_now
from search_spaces.policy import Policy

RECORDED_FILE = "da2_recorded.json"  # written beside Tune's state once a search is logged and registered
_RECORD_LOCK = threading.Lock()  # concurrent searches (da2 compare) log, append and register one at a time
_REGISTRY_LOCK = threading.Lock()  # and register their trainables with Tune one at a time


@dataclass
class SearchOutcome:
    method: str
    experiment: str
    run_id: str
    best_policy: Policy
    best_val_ap: float
    device_seconds: float  # all trials of the search together
    wall_seconds: float
    trials: list[LedgerRow] = field(default_factory=list)
    registered_version: str | None = None

    def to_record(self) -> dict:
        return {**self.summary(), "policy_json": self.best_policy.to_json(), "wall_seconds": self.wall_seconds}

    @classmethod
    def from_record(cls, record: dict) -> SearchOutcome:
        return cls(record["method"], record["experiment"], record["mlflow_run_id"],
                   Policy.from_json(record["policy_json"]), record["best_val_ap"], record["device_seconds"],
                   record["wall_seconds"], [], record["registered_version"])

    def summary(self) -> dict:
        return {"method": self.method, "experiment": self.experiment, "mlflow_run_id": self.run_id,
                "best_val_ap": self.best_val_ap, "device_seconds": self.device_seconds,
                "device_hours": self.device_seconds / 3600, "wall_seconds": self.wall_seconds,
                "trials": len(self.trials), "registered_version": self.registered_version}


@dataclass
class TuneJob:
    """What a method contributes: the trainable and how the Tuner searches and schedules."""

    method: str
    trainable: Callable
    param_space: dict
    tune_config: dict  # kwargs of ray.tune.TuneConfig (search_alg, scheduler, num_samples, ...)
    search_params: dict  # logged as MLflow params
    artifacts: Callable[[list[dict]], dict[str, bytes]] | None = None  # extra files from the trials' results
    keep_checkpoints: int | None = 2  # per trial; None keeps all (PBT exploits older checkpoints)
    expected_trials: int = 1  # trials a finished search has
    allow_partial: bool = False  # early stopping (ASHA) or a time budget may leave trials incomplete


def trial_settings(cfg: ExperimentConfig, data: ExperimentData) -> dict:
    """The part of a trial's input that is the same for every trial (passed with tune.with_parameters)."""
    return {"cfg": cfg.model_dump(mode="json"),
            "train_annotations": str(data.search_train_annotations), "train_images": str(data.train_images),
            "eval_annotations": str(data.search_val_annotations), "eval_images": str(data.train_images)}


def run_search(cfg: ExperimentConfig, method: str, make_job: Callable[[ExperimentConfig, ExperimentData], TuneJob],
               resume: bool = False, tracking_uri: str | None = None, register: bool = True,
               stopper: Any = None) -> SearchOutcome:
    """`stopper` (a `control.BudgetStopper`) caps the search's device-seconds and lets another thread stop it."""
    from ray import tune

    from da2_platform.raycluster import ensure_ray
    from da2_platform.search.control import BudgetStopper
    from da2_platform.search.trial import trial_resources
    from da2_platform.tracking import setup_tracking

    stopper = stopper or BudgetStopper(None, None)  # no budget: only ends each trial at its complete report
    experiment_id = setup_tracking(cfg, tracking_uri)  # before any compute is spent
    data = prepare_data(cfg)
    job = make_job(cfg, data)
    ensure_ray()
    storage = (cfg.workdir / "ray_results").resolve()
    name = f"{cfg.name}-{method.replace(':', '-')}"
    path = storage / name
    # Tune's trainable registry is process-wide and not thread-safe: concurrent searches (da2 compare) each
    # register their own name under a lock and hand Tune that name, so Tune registers nothing itself
    trainable = f"{method.replace(':', '_')}_trial"
    with _REGISTRY_LOCK:
        tune.register_trainable(trainable, tune.with_resources(_named(job.trainable, trainable),
                                                               trial_resources(cfg)))
    start = time.perf_counter()
    recorded = path / RECORDED_FILE
    if resume and recorded.is_file():  # finished and recorded before: resuming again must not record twice
        return SearchOutcome.from_record(json.loads(recorded.read_text()))
    if resume:
        if not tune.Tuner.can_restore(str(path)):
            raise Da2Error(f"--resume: no {method} search to restore at {path}")
        tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_errored=True,
                                   param_space=job.param_space or None)
    else:
        if path.exists():
            import shutil

            shutil.rmtree(path)  # a new search of the same name replaces the old Tune state (its ledger rows stay)
        tuner = tune.Tuner(
            trainable,
            param_space=job.param_space,
            tune_config=tune.TuneConfig(**job.tune_config),
            run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=0, stop=stopper,
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=job.keep_checkpoints)),
        )
    grid = tuner.fit()
    wall = time.perf_counter() - start
    unfinished = [r for r in grid if r.error is None and not (r.metrics or {}).get("complete")]
    missing = max(0, job.expected_trials - len(grid))
    partial_ok = job.allow_partial or stopper.budget_reached
    if stopper.interrupted:
        raise Da2Error(f"{method} search {cfg.name!r} was stopped before it finished; nothing was recorded or "
                       "registered")
    if (unfinished or missing) and not partial_ok:
        # interrupted (Ctrl+C, a lost driver): Tune saved its state; record and register nothing
        raise Da2Error(f"{method} search {cfg.name!r} was interrupted with {len(unfinished) + missing} unfinished "
                       f"trial(s); nothing was registered. Continue it with: da2 search --method {method} --resume")
    results = [_result_record(r) for r in grid]
    with _RECORD_LOCK:
        outcome = record_search(cfg, method, results, job, wall, experiment_id, register)
        write_json_atomic(recorded, outcome.to_record())
    return outcome


def _named(trainable: Callable, name: str) -> Callable:
    def trial(config: dict):
        return trainable(config)

    trial.__name__ = trial.__qualname__ = name
    return trial


def _result_record(result: Any) -> dict:
    metrics = dict(result.metrics or {})
    return {"trial_id": metrics.get("trial_id") or Path(str(result.path)).name, "metrics": metrics,
            "config": dict(result.config or {}), "error": None if result.error is None else str(result.error)}


def record_search(cfg: ExperimentConfig, method: str, results: list[dict], job: TuneJob, wall: float,
                  experiment_id: str, register: bool) -> SearchOutcome:
    """Ledger rows, the MLflow runs and (when every trial finished) the registered policy."""
    import mlflow

    rows = [ledger_row(cfg, method, r) for r in results]
    done = [(row, r) for row, r in zip(rows, results) if row.status != "failed" and r["metrics"].get("policy_json")]
    if not done:
        errors = "; ".join(r["error"] or "no result" for r in results)[:2000]
        raise Da2Error(f"{method} search {cfg.name!r}: no trial finished ({errors})")
    best_row, best = max(done, key=lambda pair: pair[0].val_ap)
    policy = Policy.from_json(best["metrics"]["policy_json"], source=f"{method} trial {best_row.trial_id}")
    total_dev = sum(r.device_seconds for r in rows)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"{method}-search") as run:
        mlflow.set_tags({"da2.method": method, "da2.experiment": cfg.name, "da2.kind": "search"})
        mlflow.log_params({"method": method, **{k: str(v)[:500] for k, v in job.search_params.items()}})
        for row in rows:
            row.search_run_id = run.info.run_id
            with mlflow.start_run(experiment_id=experiment_id, run_name=f"{method}-{row.trial_id}", nested=True):
                mlflow.set_tags({"da2.method": method, "da2.trial_id": row.trial_id, "da2.status": row.status})
                mlflow.log_metrics({"val_ap": row.val_ap, "device_seconds": row.device_seconds,
                                    "wall_seconds": row.wall_seconds})
        mlflow.log_metrics({"best_val_ap": best_row.val_ap, "device_seconds": total_dev,
                            "device_hours": total_dev / 3600, "wall_seconds": wall, "trials": len(rows)})
        mlflow.log_text(policy.to_json(), "policy/policy.json")
        mlflow.log_text(policy.top(cfg.search.da2.top_n).to_json(), "policy/policy_top.json")
        for name, blob in (job.artifacts(results) if job.artifacts else {}).items():
            _log_bytes(blob, name)
        ledger = CostLedger.for_experiment(cfg.workdir, cfg.name)
        ledger.append(rows)
        mlflow.log_artifact(str(ledger.path), "ledger")
        version = None
        if register:
            from da2_platform.registry import register_policy

            version = register_policy(cfg, policy, method=method, run_id=run.info.run_id, val_ap=best_row.val_ap,
                                      device_hours=total_dev / 3600)
    return SearchOutcome(method, cfg.name, run.info.run_id, policy, best_row.val_ap, total_dev, wall, rows, version)


def ledger_row(cfg: ExperimentConfig, method: str, r: dict) -> LedgerRow:
    m = r["metrics"]
    status = "failed" if r["error"] else ("completed" if m.get("complete") else "stopped")
    start = m.get("trial_start")
    start_iso = datetime.fromtimestamp(start, UTC).isoformat(timespec="milliseconds") if start else ""
    end = m.get("trial_end") or (start + float(m.get("wall_seconds", 0.0)) if start else None)  # last report
    end_iso = datetime.fromtimestamp(end, UTC).isoformat(timespec="milliseconds") if end else utc_now()
    config = {k: v for k, v in r["config"].items() if k != "policy_json"}
    return LedgerRow(
        experiment=cfg.name, method=method, trial_id=str(r["trial_id"]), policy_json=m.get("policy_json", ""),
        device_kind=m.get("device_kind", "cpu"), devices_held=float(m.get("devices_held", 0.0)),
        wall_seconds=float(m.get("wall_seconds", 0.0)), device_seconds=float(m.get("device_seconds", 0.0)),
        val_ap=float(m.get("val_ap", 0.0)), status=status, start_time=start_iso, end_time=end_iso,
        steps=int(m.get("step", 0)), config_json=json.dumps(config, sort_keys=True, default=str),
    )


def _log_bytes(blob: bytes, artifact_path: str) -> None:
    import tempfile

    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / Path(artifact_path).name
        local.write_bytes(blob)
        parent = str(Path(artifact_path).parent)
        mlflow.log_artifact(str(local), None if parent == "." else parent)
