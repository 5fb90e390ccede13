"""Runs any search method as a Ray Tune experiment and records it the same way for every method.

`run_search` checks everything it can before compute (flags, the experiment folder, the model, the tracking
store, the cluster's resources), builds the method's Tuner (or restores it from a trusted folder) and waits.
While it runs, a `SearchRecorder` callback on the driver logs each report to the trial's nested MLflow run and
writes each trial's ledger row as the trial ends, so a crashed driver keeps what finished and a resume adds
nothing twice. A policy is registered only when the search completed, from its best completed trial.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import stat
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ray import tune

from da2_platform.config import ExperimentConfig
from da2_platform.data.splits import ExperimentData, prepare_data
from da2_platform.errors import ConfigError, Da2Error
from da2_platform.files import read_json, write_json_atomic
from da2_platform.ledger import CostLedger, LedgerRow, part_name, utc_now
from search_spaces.policy import Policy

RECORDED_FILE = "da2_recorded.json"  # written beside Tune's state once a search is logged and registered
SEARCH_FILE = "da2_search.json"  # the search's MLflow run and ledger part, written when the search starts
_RECORD_LOCK = threading.Lock()  # concurrent searches (da2 compare) register one at a time
_REGISTRY_LOCK = threading.Lock()  # and register their trainables with Tune one at a time
_MLFLOW_LOCK = threading.RLock()  # one MLflow writer at a time in this process (SQLite stores lock the file)
LIVE_METRICS = ("step", "val_ap", "train_loss", "device_seconds", "wall_seconds", "resumed_from_step")


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
    failed_trials: list[str] = field(default_factory=list)  # trial ids that failed after every retry
    retried_trials: dict[str, int] = field(default_factory=dict)  # trial id -> retries
    # one-pass DA2: the best trial's own network, scored on val, and its registered version (None otherwise)
    one_pass_val_ap: float | None = None
    model_version: str | None = None

    def to_record(self) -> dict:
        return {**self.summary(), "policy_json": self.best_policy.to_json(), "wall_seconds": self.wall_seconds}

    @classmethod
    def from_record(cls, record: dict) -> SearchOutcome:
        return cls(record["method"], record["experiment"], record["mlflow_run_id"],
                   Policy.from_json(record["policy_json"]), record["best_val_ap"], record["device_seconds"],
                   record["wall_seconds"], [], record["registered_version"], list(record.get("failed_trials", [])),
                   dict(record.get("retried_trials", {})), record.get("one_pass_val_ap"), record.get("model_version"))

    def summary(self) -> dict:
        return {"method": self.method, "experiment": self.experiment, "mlflow_run_id": self.run_id,
                "best_val_ap": self.best_val_ap, "device_seconds": self.device_seconds,
                "device_hours": self.device_seconds / 3600, "wall_seconds": self.wall_seconds,
                "trials": len(self.trials), "registered_version": self.registered_version,
                "failed_trials": self.failed_trials, "retried_trials": self.retried_trials,
                "one_pass_val_ap": self.one_pass_val_ap, "model_version": self.model_version}


@dataclass
class TuneJob:
    """What a method contributes: the trainable and how the Tuner searches and schedules."""

    method: str
    trainable: Callable
    param_space: dict
    tune_config: dict  # kwargs of ray.tune.TuneConfig (search_alg, scheduler, num_samples, ...)
    search_params: dict  # logged as MLflow params
    artifacts: Callable[[list[dict]], dict[str, bytes]] | None = None  # extra files from the trials' results
    # per running trial; None keeps all (PBT exploits older checkpoints). Two, not one: Tune deletes the older
    # checkpoint when it registers a new one, before it saves its experiment state, so a driver killed in
    # between (test_faults) left a saved state naming a deleted checkpoint and the trial could not restore
    keep_checkpoints: int | None = 2
    expected_trials: int = 1  # trials a finished search has
    allow_partial: bool = False  # early stopping (ASHA) or a time budget may leave trials incomplete
    # a search whose trials train the model itself (one-pass DA2): the checkpoint file, in the one training
    # format, whose network the driver registers beside the policy (the best trial's checkpoints are kept till then)
    model_file: str | None = None


def trial_settings(cfg: ExperimentConfig, data: ExperimentData) -> dict:
    """The part of a trial's input that is the same for every trial (passed with tune.with_parameters)."""
    return {"cfg": cfg.model_dump(mode="json"),
            "train_annotations": str(data.search_train_annotations), "train_images": str(data.train_images),
            "eval_annotations": str(data.search_val_annotations), "eval_images": str(data.search_val_images)}


# -- checks before any compute ----------------------------------------------------------------------------------

def check_flags(resume: bool, fresh: bool) -> None:
    if resume and fresh:
        raise ConfigError("--resume and --fresh contradict each other: --resume continues the search in the "
                          "experiment folder, --fresh deletes it and starts again; give one")


def check_model(cfg: ExperimentConfig) -> None:
    """The model config names a known preset and backbone and files that exist, before Ray or data start."""
    import timm

    kwargs = cfg.model.build_kwargs(17)
    backbone = kwargs.get("backbone")
    if backbone is not None and not timm.is_model(str(backbone)):
        raise ConfigError(f"model.backbone: {backbone!r} is not a timm model")
    for key in ("pretrained_path", "init_weights"):
        value = getattr(cfg.model, key)
        if value is not None and not Path(value).is_file():
            raise ConfigError(f"model.{key}: {value} not found")


def check_resources(cfg: ExperimentConfig) -> None:
    """A trial that asks for more than the whole cluster has would wait forever: refuse it now."""
    import ray

    total = ray.cluster_resources()
    for key, wanted, field_name in (("GPU", cfg.search.gpus_per_trial, "gpus_per_trial"),
                                    ("CPU", cfg.search.cpus_per_trial, "cpus_per_trial")):
        have = float(total.get(key, 0.0))
        if wanted > have:
            raise ConfigError(f"search.{field_name}: a trial asks for {wanted:g} {key}(s) but the Ray cluster has "
                              f"{have:g}; lower search.{field_name} or run on a cluster that has them (an "
                              "autoscaling cluster: start its workers first)")


def check_trusted_folder(path: Path) -> None:
    """--resume loads Tune's state, which holds pickles: only from a folder that nobody but its user could
    have written. Every entry must belong to this user and be writable by nobody else; symlinks are refused."""
    uid = os.getuid()

    def refuse(entry: Path, why: str) -> None:
        raise Da2Error(f"--resume: {entry}: {why}; refusing to load a search state that someone else could have "
                       "written (Ray Tune's state holds pickles that run code when loaded). Check the folder, or "
                       "start again with --fresh")

    def check(entry: Path, st: os.stat_result) -> None:
        if stat.S_ISLNK(st.st_mode):
            refuse(entry, "is a symbolic link")
        if st.st_uid != uid:
            refuse(entry, f"belongs to user id {st.st_uid}, not to you ({uid})")
        if st.st_mode & stat.S_IWOTH or (st.st_mode & stat.S_IWGRP and not _private_group(st.st_gid)):
            refuse(entry, f"is writable by {'others' if st.st_mode & stat.S_IWOTH else 'its group'} "
                          f"(mode {stat.S_IMODE(st.st_mode):o})")

    parent = path.parent
    pst = parent.lstat()
    if pst.st_uid not in (uid, 0) or (pst.st_mode & stat.S_IWOTH and not pst.st_mode & stat.S_ISVTX):
        refuse(parent, "can be changed by other users (they could swap the experiment folder)")
    check(path, path.lstat())
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            entry = Path(root, name)
            check(entry, entry.lstat())


def _private_group(gid: int) -> bool:
    """A user's own group (umask 002 systems): named after the user, no other members."""
    import grp
    import pwd

    try:
        group, user = grp.getgrgid(gid), pwd.getpwuid(os.getuid())
    except KeyError:
        return False
    return group.gr_name == user.pw_name and not [m for m in group.gr_mem if m != user.pw_name]


def _check_tracking_uri(cfg: ExperimentConfig, override: str | None) -> str:
    """Reach a server now; create nothing for a SQLite store yet (that happens once the search can start)."""
    from da2_platform.tracking import check_tracking, resolve_tracking_uri

    uri = resolve_tracking_uri(cfg, override)
    if not uri.startswith("sqlite:///"):
        check_tracking(uri)
    return uri


# -- the search -------------------------------------------------------------------------------------------------

def run_search(cfg: ExperimentConfig, method: str, make_job: Callable[[ExperimentConfig, ExperimentData], TuneJob],
               resume: bool = False, tracking_uri: str | None = None, register: bool = True,
               stopper: Any = None, fresh: bool = False) -> SearchOutcome:
    """`stopper` (a `control.BudgetStopper`) caps the search's device-seconds and lets another thread stop it.

    A new search refuses an existing experiment folder unless `fresh` (delete it) or `resume` (continue it)."""
    from da2_platform.files import check_output_dir
    from da2_platform.raycluster import ensure_ray
    from da2_platform.search.control import BudgetStopper
    from da2_platform.search.progress import SearchProgress
    from da2_platform.search.trial import trial_resources
    from da2_platform.tracking import setup_tracking

    check_flags(resume, fresh)
    check_output_dir(cfg.workdir, "workdir")
    storage = (cfg.workdir / "ray_results").resolve()
    name = f"{cfg.name}-{method.replace(':', '-')}"
    path = storage / name
    recorded = path / RECORDED_FILE
    if resume:
        if not path.is_dir():
            raise Da2Error(f"--resume: no {method} search to restore at {path}")
        check_trusted_folder(path)
        if recorded.is_file():  # finished and recorded before: resuming again must not record twice
            return SearchOutcome.from_record(read_json(recorded, "search record"))
    elif path.exists() and not fresh:
        raise Da2Error(f"{path} holds an earlier {method} search of {cfg.name!r}; continue it with --resume, or "
                       "delete it and start again with --fresh (its ledger rows and MLflow runs stay)")
    check_model(cfg)
    uri = _check_tracking_uri(cfg, tracking_uri)
    ensure_ray()
    check_resources(cfg)
    stopper = stopper or BudgetStopper(None, None)  # no budget: only ends each trial at its complete report
    experiment_id = setup_tracking(cfg, tracking_uri)
    data = prepare_data(cfg)
    job = make_job(cfg, data)
    # Tune's trainable registry is process-wide and not thread-safe: concurrent searches (da2 compare) each
    # register their own name under a lock and hand Tune that name, so Tune registers nothing itself
    trainable = f"{method.replace(':', '_')}_trial"
    with _REGISTRY_LOCK:
        tune.register_trainable(trainable, tune.with_resources(_named(job.trainable, trainable),
                                                               trial_resources(cfg)))
    start = time.perf_counter()
    state = read_json(path / SEARCH_FILE, "search state") if resume and (path / SEARCH_FILE).is_file() else None
    if state is None:
        state = {"run_id": _start_parent_run(uri, experiment_id, cfg, method, job),
                 "part": part_name(method, uuid.uuid4().hex[:8])}
    recorder = SearchRecorder(cfg, method, uri, experiment_id, state["run_id"], state["part"],
                              delete_checkpoints=not cfg.search.keep_checkpoints,
                              defer_cleanup=job.keep_checkpoints is None or job.model_file is not None)
    # one checkpoint per running trial makes Tune save its state at every report, by design: not worth a warning
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    progress = SearchProgress(method, job.expected_trials, getattr(stopper, "budget", None))
    run_config = {"stop": stopper, "callbacks": [recorder, progress],
                  "failure_config": tune.FailureConfig(max_failures=cfg.search.max_failures)}
    try:
        if resume:
            if not tune.Tuner.can_restore(str(path)):
                raise Da2Error(f"--resume: no {method} search to restore at {path}")
            _client(uri).update_run(state["run_id"], status="RUNNING")
            tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_errored=True,
                                       param_space=job.param_space or None)
            restored = tuner._local_tuner.get_run_config()  # Tune pickled the old callbacks; use this driver's
            for key, value in run_config.items():
                setattr(restored, key, value)
        else:
            if path.exists():
                shutil.rmtree(path)  # --fresh: the old Tune state goes (its ledger rows and MLflow runs stay)
            tuner = tune.Tuner(
                trainable,
                param_space=job.param_space,
                tune_config=tune.TuneConfig(**job.tune_config),
                run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=0, **run_config,
                                          checkpoint_config=tune.CheckpointConfig(num_to_keep=job.keep_checkpoints)),
            )
        write_json_atomic(path / SEARCH_FILE, state)
        grid = tuner.fit()
        wall = time.perf_counter() - start
        unfinished = [r for r in grid if r.error is None and not (r.metrics or {}).get("complete")]
        missing = max(0, job.expected_trials - len(grid))
        partial_ok = job.allow_partial or stopper.budget_reached
        if stopper.interrupted:
            raise SearchInterrupted(f"{method} search {cfg.name!r} was stopped before it finished; the trials that "
                                    "ended are in the ledger, nothing was registered")
        if (unfinished or missing) and not partial_ok:
            # interrupted (Ctrl+C, a lost driver): Tune saved its state; register nothing
            raise SearchInterrupted(
                f"{method} search {cfg.name!r} was interrupted with {len(unfinished) + missing} unfinished "
                f"trial(s); nothing was registered. Continue it with: da2 search --method {method} --resume")
        results = [_result_record(r) for r in grid]
        with _RECORD_LOCK:
            outcome = record_search(cfg, method, results, job, wall, recorder, register, partial_ok)
            write_json_atomic(recorded, outcome.to_record())
        recorder.delete_finished_checkpoints(path)
    except SearchInterrupted:
        recorder.end_search("KILLED")
        raise
    except KeyboardInterrupt:
        recorder.end_search("KILLED")
        raise
    except BaseException:
        recorder.end_search("FAILED")
        raise
    return outcome


class SearchInterrupted(Da2Error):
    """The search stopped before its trials finished; its Tune state allows --resume."""


def _named(trainable: Callable, name: str) -> Callable:
    def trial(config: dict):
        return trainable(config)

    trial.__name__ = trial.__qualname__ = name
    return trial


def _result_record(result: Any) -> dict:
    metrics = dict(result.metrics or {})
    return {"trial_id": metrics.get("trial_id") or Path(str(result.path)).name, "metrics": metrics,
            "config": dict(result.config or {}), "error": None if result.error is None else str(result.error),
            "checkpoint": result.checkpoint.path if result.checkpoint is not None else None}


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _start_parent_run(uri: str, experiment_id: str, cfg: ExperimentConfig, method: str, job: TuneJob) -> str:
    """The search's MLflow run, open from the first trial on (its trials' runs nest under it)."""
    from mlflow.entities import Param

    client = _client(uri)
    with _MLFLOW_LOCK:
        run = client.create_run(experiment_id, run_name=f"{method}-search",
                                tags={"da2.method": method, "da2.experiment": cfg.name, "da2.kind": "search"})
        params = {"method": method, **{k: str(v)[:500] for k, v in job.search_params.items()},
                  "max_failures": str(cfg.search.max_failures)}
        client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()])
    return run.info.run_id


# -- recording as trials end ------------------------------------------------------------------------------------

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
            self._mlflow = _client(self.uri)
        return self._mlflow

    def trial_run(self, trial_id: str) -> str:
        """The trial's nested run: created once, found again after a driver restart."""
        if trial_id in self._runs:
            return self._runs[trial_id]
        with _MLFLOW_LOCK:
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
        metrics = [Metric(k, float(result[k]), stamp, step) for k in LIVE_METRICS
                   if isinstance(result.get(k), (int, float)) and math.isfinite(float(result[k]))]
        if metrics:
            with BestEffort("log a report to MLflow"), _MLFLOW_LOCK:
                self.client.log_batch(self.trial_run(trial.trial_id), metrics=metrics)

    def on_trial_recover(self, iteration: int, trials: list, trial, **info) -> None:
        """A worker died or the trial raised, and Tune retries it from its last checkpoint."""
        with BestEffort("tag a retry in MLflow"), _MLFLOW_LOCK:
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
            _delete_checkpoints(trial_dir)
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
        row = ledger_row(self.cfg, self.method, record)
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
        with _MLFLOW_LOCK:
            run = self.client.get_run(run_id)
            if run.info.status not in ("FINISHED", "FAILED"):
                stamp = int(time.time() * 1000)
                # the trial's last report usually logged these already (live): add only what is missing or
                # different, so a curve does not end with the same point twice
                self.client.log_batch(run_id, metrics=[
                    Metric(k, float(v), stamp, row.steps) for k, v in
                    (("val_ap", row.val_ap), ("device_seconds", row.device_seconds),
                     ("wall_seconds", row.wall_seconds))
                    if math.isfinite(float(v)) and run.data.metrics.get(k) != float(v)])
                self.client.set_tag(run_id, "da2.status", row.status)
                self.client.set_tag(run_id, "da2.retries", str(retries))
                self.client.set_terminated(run_id, "FAILED" if row.status == "failed" else "FINISHED")
        self._ended.add(row.trial_id)

    def end_search(self, status: str) -> None:
        """An interrupted or failed search: its run and its trials' open runs end with `status`."""
        try:
            with _MLFLOW_LOCK:
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


def delete_experiment_checkpoints(experiment_dir: Path) -> None:
    """Every trial's checkpoint folders in a finished Tune experiment (its results and logs stay)."""
    if experiment_dir.is_dir():
        for trial_dir in experiment_dir.iterdir():
            if trial_dir.is_dir() and not trial_dir.is_symlink():
                _delete_checkpoints(trial_dir)


def _delete_checkpoints(trial_dir: Path) -> None:
    for checkpoint in trial_dir.glob("checkpoint_*"):
        if checkpoint.is_dir() and not checkpoint.is_symlink():
            shutil.rmtree(checkpoint, ignore_errors=True)


def record_search(cfg: ExperimentConfig, method: str, results: list[dict], job: TuneJob, wall: float,
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
        errors = "; ".join(r["error"] or "no result" for r in results)[:2000]
        raise Da2Error(f"{method} search {cfg.name!r}: no trial completed ({errors})")
    best_row, best = max(done, key=lambda pair: pair[0].val_ap)
    policy = Policy.from_json(best["metrics"]["policy_json"], source=f"{method} trial {best_row.trial_id}")
    total_dev = sum(r.device_seconds for r in rows)
    client, run_id = recorder.client, recorder.run_id
    from mlflow.entities import Metric

    with _MLFLOW_LOCK:
        stamp = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, float(v), stamp, 0) for k, v in {
            "best_val_ap": best_row.val_ap, "device_seconds": total_dev, "device_hours": total_dev / 3600,
            "wall_seconds": wall, "trials": len(rows), "failed_trials": len(failed)}.items()])
        client.set_tag(run_id, "da2.best_trial", best_row.trial_id)
        if failed:
            client.set_tag(run_id, "da2.failed_trials", ",".join(failed)[:5000])
        client.log_text(run_id, policy.to_json(), "policy/policy.json")
        client.log_text(run_id, policy.top(cfg.search.da2.top_n).to_json(), "policy/policy_top.json")
        for name, blob in (job.artifacts(results) if job.artifacts else {}).items():
            _log_bytes(client, run_id, blob, name)
        part = recorder.ledger.path / f"{recorder.part}.parquet"
        if part.is_file():
            client.log_artifact(run_id, str(part), "ledger")
        version = None
        if register:
            from da2_platform.registry import register_policy
            from da2_platform.tracking import point_mlflow_at

            point_mlflow_at(recorder.uri)
            version = register_policy(cfg, policy, method=method, run_id=run_id, val_ap=best_row.val_ap,
                                      device_hours=total_dev / 3600)
        one_pass_ap = best["metrics"].get("one_pass_val_ap")
        model_version = None
        if job.model_file is not None and version is not None:
            model_version = register_search_model(cfg, recorder.uri, best, job.model_file, version, one_pass_ap,
                                                  best_row.val_ap)
        client.set_terminated(run_id, "FINISHED")
    return SearchOutcome(method, cfg.name, run_id, policy, best_row.val_ap, total_dev, wall, rows, version, failed,
                         retried, None if one_pass_ap is None else float(one_pass_ap), model_version)


def register_search_model(cfg: ExperimentConfig, uri: str, best: dict, model_file: str, policy_version: str,
                          val_ap: float | None, search_val_ap: float) -> str:
    """One-pass DA2: register the best trial's own network (its last checkpoint) as a `p2net` version whose tags
    name the policy version it trained with, and tag that policy version with the network's version and val AP."""
    from da2_platform.registry import register_trained_model, tag_final_ap

    if not best.get("checkpoint"):
        raise Da2Error(f"one-pass {cfg.name!r}: trial {best['trial_id']} left no checkpoint to register")
    name = cfg.tracking.registered_policy
    metrics = {"search_val_AP": search_val_ap, **({"val_AP": float(val_ap)} if val_ap is not None else {})}
    _, model_version = register_trained_model(cfg, Path(best["checkpoint"]) / model_file, metrics,
                                              policy_ref=f"models:/{name}/{policy_version}",
                                              policy_version=policy_version, policy_name=name, tracking_uri=uri)
    client = _client(uri)
    client.set_model_version_tag(name, policy_version, "da2.model_name", cfg.tracking.registered_model)
    client.set_model_version_tag(name, policy_version, "da2.model_version", model_version)
    if val_ap is not None:
        tag_final_ap(name, policy_version, float(val_ap),
                     f"one-pass DA2 {cfg.name}: the search's own network ({cfg.train.epochs} epochs), val AP")
    return model_version


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


def _log_bytes(client, run_id: str, blob: bytes, artifact_path: str) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / Path(artifact_path).name
        local.write_bytes(blob)
        parent = str(Path(artifact_path).parent)
        client.log_artifact(run_id, str(local), None if parent == "." else parent)
