"""Records a search the same way for every method, on the driver.

While the search runs, `SearchRecorder` (a Tune callback) logs each report to the trial's nested MLflow run and
writes each trial's ledger row as the trial ends, so a crashed driver keeps what finished and a resume adds
nothing twice. When the search completes, `record_search` writes the search run's summary and artifacts and
registers the best completed trial's policy (and, one-pass DA2, its network) through `da2_platform.registry`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from pathlib import Path

from ray import tune

from da2_platform.config import ExperimentConfig
from da2_platform.errors import Da2Error
from da2_platform.ledger import CostLedger, LedgerRow, ledger_row
from da2_platform.registry import register_policy, register_search_model
from da2_platform.search.anytime import returned_policy
from da2_platform.search.checkpoints import delete_experiment_checkpoints, delete_trial_checkpoints
from da2_platform.search.spec import SearchOutcome, SearchSpec
from da2_platform.tracking import MLFLOW_LOCK, mlflow_client, point_mlflow_at
from search_spaces.policy import Policy

# a trial's report key -> its MLflow metric: a search trial's `val_ap` is its AP on search-val
LIVE_METRICS = {"step": "step", "val_ap": "search_val_ap", "train_loss": "train_loss",
                "device_seconds": "device_seconds", "wall_seconds": "wall_seconds",
                "resumed_from_step": "resumed_from_step"}


def start_search_run(uri: str, experiment_id: str, cfg: ExperimentConfig, method: str, spec: SearchSpec) -> str:
    """The search's MLflow run, open from the first trial on (its trials' runs nest under it)."""
    from mlflow.entities import Param

    client = mlflow_client(uri)
    with MLFLOW_LOCK:
        run = client.create_run(experiment_id, run_name=f"{method}-search",
                                tags={"da2.method": method, "da2.experiment": cfg.name, "da2.kind": "search"})
        params = {"method": method, **{k: str(v)[:500] for k, v in spec.search_params.items()},
                  "max_failures": str(cfg.search.max_failures)}
        client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()])
    return run.info.run_id


class SearchRecorder(tune.Callback):
    """Tune callback on the driver: per-report metrics to each trial's nested MLflow run, and each trial's
    ledger row and final run status as it ends. Every write is idempotent by trial id."""

    def __init__(self, cfg: ExperimentConfig, method: str, tracking_uri: str, experiment_id: str, run_id: str,
                 part: str, delete_checkpoints: bool = True, defer_cleanup: bool = False):
        self.cfg, self.method, self.uri = cfg, method, tracking_uri
        self.experiment_id, self.run_id, self.part = experiment_id, run_id, part
        self.delete_checkpoints = delete_checkpoints
        self.defer_cleanup = defer_cleanup  # PBT exploits finished trials' checkpoints: delete them at the end
        self._runs: dict[str, str] = {}
        self._ended: set[str] = set()
        self._finished: list[Path] = []  # trials finished since Tune last saved its state
        self._saved_finished: list[Path] = []  # finished before that save
        self._mlflow = None

    def __getstate__(self) -> dict:  # Tune pickles its callbacks with the experiment; the client stays here
        return {**self.__dict__, "_mlflow": None, "_runs": {}, "_ended": set(), "_finished": [],
                "_saved_finished": []}

    @property
    def ledger(self) -> CostLedger:
        return CostLedger.for_experiment(self.cfg.workdir, self.cfg.name)

    @property
    def client(self):
        if self._mlflow is None:
            self._mlflow = mlflow_client(self.uri)
        return self._mlflow

    def trial_run(self, trial_id: str) -> str:
        """The trial's nested run: created once, found again after a driver restart."""
        if trial_id in self._runs:
            return self._runs[trial_id]
        with MLFLOW_LOCK:
            found = self.client.search_runs(
                [self.experiment_id], f"tags.mlflow.parentRunId = '{self.run_id}' and tags.da2.trial_id = '{trial_id}'",
                max_results=1)
            if found:
                run_id = found[0].info.run_id
                if found[0].info.status == "KILLED":  # an interrupted search resumed: the trial goes on
                    self.client.update_run(run_id, status="RUNNING")
            else:
                run_id = self.client.create_run(
                    self.experiment_id, run_name=f"{self.method}-{trial_id}",
                    tags={"mlflow.parentRunId": self.run_id, "da2.method": self.method, "da2.trial_id": trial_id,
                          "da2.kind": "trial", "da2.status": "running"}).info.run_id
        self._runs[trial_id] = run_id
        return run_id

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        with BestEffort("open the trial's MLflow run"):
            self.trial_run(trial.trial_id)

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        from mlflow.entities import Metric

        step = int(result.get("step", result.get("training_iteration", 0)) or 0)
        stamp = int(time.time() * 1000)
        metrics = [Metric(name, float(result[k]), stamp, step) for k, name in LIVE_METRICS.items()
                   if isinstance(result.get(k), (int, float)) and math.isfinite(float(result[k]))]
        if metrics:
            with BestEffort("log a report to MLflow"), MLFLOW_LOCK:
                self.client.log_batch(self.trial_run(trial.trial_id), metrics=metrics)

    def on_trial_recover(self, iteration: int, trials: list, trial, **info) -> None:
        """A worker died or the trial raised, and Tune retries it from its last checkpoint."""
        with BestEffort("tag a retry in MLflow"), MLFLOW_LOCK:
            self.client.set_tag(self.trial_run(trial.trial_id), "da2.retries", str(trial.num_failures))

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self.record_trial(_trial_record(trial), retries=trial.num_failures, strict=False)
        if self.delete_checkpoints and not self.defer_cleanup and trial.path:
            self._finished.append(Path(trial.path))

    def get_state(self) -> None:
        """Called as Tune saves its experiment state. A finished trial's checkpoints go once a saved state
        records it as finished (the save before this one: that one has been copied to storage since), so a
        restore never looks for a checkpoint that is gone."""
        for trial_dir in self._saved_finished:
            delete_trial_checkpoints(trial_dir)
        self._saved_finished, self._finished = self._finished, []

    def delete_finished_checkpoints(self, experiment_dir: Path) -> None:
        """After the search: every trial's checkpoints (the search is recorded; nothing will restore them)."""
        self._finished, self._saved_finished = [], []
        if self.delete_checkpoints:
            delete_experiment_checkpoints(experiment_dir)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self.record_trial(_trial_record(trial), retries=max(0, trial.num_failures - 1), strict=False)

    def record_trial(self, record: dict, retries: int = 0, strict: bool = True) -> LedgerRow:
        """The trial's ledger row (once) and its nested run's final metrics and status (once). The ledger row
        must be written; an MLflow failure during the search (`strict=False`) is retried when the search ends."""
        base = self.cfg.model_dump(mode="json")["train"]["base_augment"]
        row = ledger_row(self.cfg.name, self.method, record, base)
        row.search_run_id = self.run_id
        extra = json.loads(row.extra_json)
        if retries:
            extra["retries"] = int(retries)
        if record.get("error"):
            extra["error"] = str(record["error"])[-500:]
        row.extra_json = json.dumps(extra, sort_keys=True)
        self.ledger.append([row], part=self.part)
        if row.trial_id in self._ended:
            return row
        if not strict:
            with BestEffort("record the trial in MLflow"):
                self._end_trial_run(row, retries)
            return row
        self._end_trial_run(row, retries)
        return row

    def _end_trial_run(self, row: LedgerRow, retries: int) -> None:
        from mlflow.entities import Metric

        run_id = self.trial_run(row.trial_id)
        with MLFLOW_LOCK:
            run = self.client.get_run(run_id)
            if run.info.status not in ("FINISHED", "FAILED"):
                stamp = int(time.time() * 1000)
                # the trial's last report usually logged these already (live): add only what is missing or
                # different, so a curve does not end with the same point twice
                self.client.log_batch(run_id, metrics=[
                    Metric(k, float(v), stamp, row.steps) for k, v in
                    (("search_val_ap", row.search_val_ap), ("device_seconds", row.device_seconds),
                     ("wall_seconds", row.wall_seconds))
                    if math.isfinite(float(v)) and run.data.metrics.get(k) != float(v)])
                self.client.set_tag(run_id, "da2.status", row.status)
                self.client.set_tag(run_id, "da2.retries", str(retries))
                self.client.set_terminated(run_id, "FAILED" if row.status == "failed" else "FINISHED")
        self._ended.add(row.trial_id)

    def end_search(self, status: str) -> None:
        """An interrupted or failed search: its run and its trials' open runs end with `status`."""
        try:
            with MLFLOW_LOCK:
                for trial_id, run_id in self._runs.items():
                    if trial_id not in self._ended and self.client.get_run(run_id).info.status == "RUNNING":
                        self.client.set_terminated(run_id, status)
                self.client.set_terminated(self.run_id, status)
        except Exception as e:  # noqa: BLE001 -- the search's own error is the one to show
            logging.getLogger(__name__).warning("could not mark MLflow run %s %s: %s", self.run_id, status, e)


class BestEffort(contextlib.AbstractContextManager):
    """Live MLflow logging must not end a search: a failed write is logged and the search goes on."""

    def __init__(self, what: str):
        self.what = what

    def __exit__(self, kind, error, tb) -> bool:
        if error is not None and isinstance(error, Exception):
            logging.getLogger(__name__).warning("could not %s: %s", self.what, error)
            return True
        return False


def _trial_record(trial) -> dict:
    error = None
    if trial.status == "ERROR":
        error = "trial failed"
        if trial.error_file and Path(trial.error_file).is_file():
            lines = [ln for ln in Path(trial.error_file).read_text(errors="replace").splitlines() if ln.strip()]
            error = lines[-1] if lines else error
    return {"trial_id": trial.trial_id, "metrics": dict(trial.last_result or {}), "config": dict(trial.config or {}),
            "error": error}


def record_search(cfg: ExperimentConfig, method: str, results: list[dict], spec: SearchSpec, wall: float,
                  recorder: SearchRecorder, register: bool, partial_ok: bool = False) -> SearchOutcome:
    """Every trial's row and run (those the callback already wrote stay as they are), the search run's summary
    and (from the best completed trial) the registered policy."""
    rows = [recorder.record_trial(r) for r in results]
    by_id = {r.trial_id: r for r in recorder.ledger.rows() if r.search_run_id == recorder.run_id}
    rows = [by_id.get(r.trial_id, r) for r in rows]  # the rows as first written (with their retries)
    failed = [row.trial_id for row in rows if row.status == "failed"]
    retried = {row.trial_id: int(json.loads(row.extra_json).get("retries", 0)) for row in rows
               if json.loads(row.extra_json).get("retries")}
    done = [(row, r) for row, r in zip(rows, results) if row.status == "completed" and r["metrics"].get("policy_json")]
    if not done and partial_ok:  # a budget or early stopping ended every trial before its last report
        done = [(row, r) for row, r in zip(rows, results) if row.status == "stopped" and r["metrics"].get("policy_json")]
    if not done:
        if any(r["metrics"].get("budget_stop") for r in results):
            spent = sum(row.device_seconds for row in rows)
            raise Da2Error(f"{method} search {cfg.name!r}: its budget ran out ({spent / 3600:.4f} device-hours "
                           "spent) before any trial was scored; give it a larger budget")
        errors = "; ".join(r["error"] or "no result" for r in results)[:2000]
        raise Da2Error(f"{method} search {cfg.name!r}: no trial completed ({errors})")
    best_row, best = max(done, key=lambda pair: pair[0].search_val_ap)
    # the method's own rule over its scored trials (RL: its top children's sub-policies, as AutoAugment's)
    policy = returned_policy(method, [row for row, _ in done], cfg.search.rl.top_children) or Policy.from_json(
        best["metrics"]["policy_json"], source=f"{method} trial {best_row.trial_id}")
    total_dev = sum(r.device_seconds for r in rows)
    client, run_id = recorder.client, recorder.run_id
    from mlflow.entities import Metric

    with MLFLOW_LOCK:
        stamp = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, float(v), stamp, 0) for k, v in {
            "best_search_val_ap": best_row.search_val_ap, "device_seconds": total_dev, "device_hours": total_dev / 3600,
            "wall_seconds": wall, "trials": len(rows), "failed_trials": len(failed)}.items()])
        client.set_tag(run_id, "da2.best_trial", best_row.trial_id)
        if failed:
            client.set_tag(run_id, "da2.failed_trials", ",".join(failed)[:5000])
        client.log_text(run_id, policy.to_json(), "policy/policy.json")
        client.log_text(run_id, policy.top(cfg.search.da2.top_n).to_json(), "policy/policy_top.json")
        for name, blob in (spec.artifacts(results) if spec.artifacts else {}).items():
            _log_bytes(client, run_id, blob, name)
        part = recorder.ledger.path / f"{recorder.part}.parquet"
        if part.is_file():
            client.log_artifact(run_id, str(part), "ledger")
        version = None
        if register:
            point_mlflow_at(recorder.uri)
            version = register_policy(cfg, policy, method=method, run_id=run_id,
                                      search_val_ap=best_row.search_val_ap,
                                      device_hours=total_dev / 3600)
        one_pass_ap = best["metrics"].get("one_pass_val_ap")
        model_version = None
        if spec.model_file is not None and version is not None:
            model_version = register_search_model(cfg, recorder.uri, best, spec.model_file, version, one_pass_ap,
                                                  best_row.search_val_ap)
        client.set_terminated(run_id, "FINISHED")
    return SearchOutcome(method, cfg.name, run_id, policy, best_row.search_val_ap, total_dev, wall, rows, version, failed,
                         retried, None if one_pass_ap is None else float(one_pass_ap), model_version)


def _log_bytes(client, run_id: str, blob: bytes, artifact_path: str) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / Path(artifact_path).name
        local.write_bytes(blob)
        parent = str(Path(artifact_path).parent)
        client.log_artifact(run_id, str(local), None if parent == "." else parent)
