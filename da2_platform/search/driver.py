"""Runs any search method as a Ray Tune experiment, the same way for every method.

`run_search` checks everything it can before compute (`preflight`), builds the method's Tuner from its
`SearchSpec` (or restores it from a trusted folder) and waits; a `SearchRecorder` on the driver logs and ledgers
the trials as they run, and `record_search` registers a policy only when the search completed, from its best
completed trial.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray import tune

from da2_platform.config import ExperimentConfig
from da2_platform.data.splits import ExperimentData, prepare_data
from da2_platform.errors import Da2Error
from da2_platform.files import read_json, write_json_atomic
from da2_platform.ledger import part_name
from da2_platform.search.preflight import (
    check_flags,
    check_model,
    check_resources,
    check_tracking_uri,
    check_trusted_folder,
)
from da2_platform.search.recorder import SearchRecorder, record_search, start_search_run
from da2_platform.search.spec import SearchOutcome, SearchSpec
from da2_platform.tracking import mlflow_client

RECORDED_FILE = "da2_recorded.json"  # written beside Tune's state once a search is logged and registered
SEARCH_FILE = "da2_search.json"  # the search's MLflow run and ledger part, written when the search starts
_RECORD_LOCK = threading.Lock()  # concurrent searches (da2 compare) register one at a time
_REGISTRY_LOCK = threading.Lock()  # and register their trainables with Tune one at a time


def run_search(cfg: ExperimentConfig, method: str, make_spec: Callable[[ExperimentConfig, ExperimentData], SearchSpec],
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
    uri = check_tracking_uri(cfg, tracking_uri)
    ensure_ray()
    check_resources(cfg)
    stopper = stopper or BudgetStopper(None, None)  # no budget: only ends each trial at its complete report
    experiment_id = setup_tracking(cfg, tracking_uri)
    data = prepare_data(cfg)
    spec = make_spec(cfg, data)
    # Tune's trainable registry is process-wide and not thread-safe: concurrent searches (da2 compare) each
    # register their own name under a lock and hand Tune that name, so Tune registers nothing itself
    trainable = f"{method.replace(':', '_')}_trial"
    with _REGISTRY_LOCK:
        tune.register_trainable(trainable, tune.with_resources(_named(spec.trainable, trainable),
                                                               trial_resources(cfg)))
    start = time.perf_counter()
    state = read_json(path / SEARCH_FILE, "search state") if resume and (path / SEARCH_FILE).is_file() else None
    if state is None:
        state = {"run_id": start_search_run(uri, experiment_id, cfg, method, spec),
                 "part": part_name(method, uuid.uuid4().hex[:8])}
    recorder = SearchRecorder(cfg, method, uri, experiment_id, state["run_id"], state["part"],
                              delete_checkpoints=not cfg.search.keep_checkpoints,
                              defer_cleanup=spec.keep_checkpoints is None or spec.model_file is not None)
    # one checkpoint per running trial makes Tune save its state at every report, by design: not worth a warning
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # a budgeted search: its trials charge every step to the account named after this Tune experiment
    spent_before = sum(r.device_seconds for r in recorder.ledger.rows() if r.search_run_id == state["run_id"])
    if isinstance(stopper, BudgetStopper):
        stopper.open(name, spent_before)
    progress = SearchProgress(method, spec.expected_trials, getattr(stopper, "budget", None))
    run_config = {"stop": stopper, "callbacks": [recorder, progress],
                  "failure_config": tune.FailureConfig(max_failures=cfg.search.max_failures)}
    try:
        if resume:
            if not tune.Tuner.can_restore(str(path)):
                raise Da2Error(f"--resume: no {method} search to restore at {path}")
            mlflow_client(uri).update_run(state["run_id"], status="RUNNING")
            tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_errored=True,
                                       param_space=spec.param_space or None)
            restored = tuner._local_tuner.get_run_config()  # Tune pickled the old callbacks; use this driver's
            for key, value in run_config.items():
                setattr(restored, key, value)
        else:
            if path.exists():
                shutil.rmtree(path)  # --fresh: the old Tune state goes (its ledger rows and MLflow runs stay)
            tuner = tune.Tuner(
                trainable,
                param_space=spec.param_space,
                tune_config=tune.TuneConfig(**spec.tune_config),
                run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=0, **run_config,
                                          checkpoint_config=tune.CheckpointConfig(num_to_keep=spec.keep_checkpoints)),
            )
        write_json_atomic(path / SEARCH_FILE, state)
        grid = tuner.fit()
        wall = time.perf_counter() - start
        unfinished = [r for r in grid if r.error is None and not (r.metrics or {}).get("complete")]
        missing = max(0, spec.expected_trials - len(grid))
        partial_ok = spec.allow_partial or stopper.budget_reached
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
            outcome = record_search(cfg, method, results, spec, wall, recorder, register, partial_ok)
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
    finally:
        if isinstance(stopper, BudgetStopper):
            stopper.close()
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

