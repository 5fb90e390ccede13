"""Faults, for real: a driver killed with SIGKILL while it records, a Ray worker killed mid-trial, two drivers on one
experiment at once. Each search runs as its own `da2 search` process with its own local Ray; every process a test
starts is stopped with its whole session."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray  # noqa: F401 -- Ray bundles psutil and puts it on sys.path
import yaml

from da2_platform.ledger import CostLedger
from da2_platform.procs import stop_session

pytestmark = pytest.mark.slow


psutil = pytest.importorskip("psutil")


def write_config(workdir: Path, synth, **search) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = {"name": "faults", "seed": 0, "workdir": str(workdir),
           "data": {"root": str(synth.root), "synth_train": 24, "synth_val": 8, "synth_seed": 0, "synth_shift": "none",
                 "search_val": "from_train"},
           "train": {"epochs": 1, "batch_size": 8, "eval_batch_size": 16},
           "search": {"rl": {"trials": 2, "child_steps": 2, "concurrent": 1, "sub_policies": 2}, **search}}
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def start(args: list[str], workdir: Path, tag: str) -> subprocess.Popen:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}
    for key in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
        env.pop(key, None)
    log = open(workdir / f"{tag}.log", "wb")  # noqa: SIM115 -- the child writes it
    return subprocess.Popen([sys.executable, "-m", "da2_platform", "search", *args], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def stop_all(proc: subprocess.Popen) -> None:
    """The driver and everything it started: its session (Ray's workers have process groups of their own)."""
    assert stop_session(proc, grace_s=0.0) == []


def wait_for(condition, proc: subprocess.Popen, log: Path, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        assert proc.poll() is None, f"exited {proc.returncode} before {what}: {log.read_text()[-3000:]}"
        time.sleep(0.2)
    pytest.fail(f"no {what} within {timeout} s: {log.read_text()[-3000:]}")


def finish(proc: subprocess.Popen, log: Path, timeout: float = 480) -> None:
    try:
        proc.wait(timeout=timeout)
    finally:
        stop_all(proc)  # whatever Ray left behind
    assert proc.returncode == 0, log.read_text()[-4000:]


def client_for(workdir: Path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{workdir / 'mlflow' / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_driver_killed_while_recording_then_resumed_counts_each_trial_once(synthpose_small, tmp_path):
    workdir = tmp_path / "w"
    cfg = write_config(workdir, synthpose_small)
    ledger = CostLedger.for_experiment(workdir, "faults")
    proc = start(["--method", "rl", "--config", str(cfg)], workdir, "first")
    try:
        wait_for(lambda: ledger.exists() and len(ledger.rows()) >= 1, proc, workdir / "first.log", 240,
                 "ledger row")
        os.kill(proc.pid, signal.SIGKILL)  # the driver, the moment its first trial is recorded
    finally:
        stop_all(proc)
    first_rows = ledger.rows()
    assert len(first_rows) >= 1
    client = client_for(workdir)
    parent = client.get_run(first_rows[0].search_run_id)
    assert parent.info.status == "RUNNING"  # killed: nothing could end it
    # live MLflow: the trial that ended before the search did already has its per-report curves
    ended = client.search_runs([parent.info.experiment_id],
                               f"tags.da2.trial_id = '{first_rows[0].trial_id}'")[0]
    assert [m.step for m in client.get_metric_history(ended.info.run_id, "train_loss")] == [1, 2]
    assert len(client.get_metric_history(ended.info.run_id, "search_val_ap")) >= 2

    again = start(["--method", "rl", "--config", str(cfg), "--resume", "--json"], workdir, "resume")
    finish(again, workdir / "resume.log")
    rows = ledger.rows()
    assert len(rows) == 2 and len({r.trial_id for r in rows}) == 2  # one row per trial, none twice
    assert {r.search_run_id for r in rows} == {parent.info.run_id}
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"
    versions = client.search_model_versions("name='pose-aug-policy'")
    assert len(versions) == 1
    assert str(client.get_model_version_by_alias("pose-aug-policy", "candidate").version) == str(
        versions[0].version)
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(c.data.tags["da2.trial_id"] for c in children) == sorted(r.trial_id for r in rows)
    assert all(c.info.status == "FINISHED" for c in children)
    # finished trials keep no checkpoint
    assert not list((workdir / "ray_results" / "faults-rl").glob("*/checkpoint_*"))


def test_worker_killed_mid_trial_is_retried_and_the_ledger_marks_it(synthpose_small, tmp_path):
    workdir = tmp_path / "w"
    # 90 steps, reported (and checkpointed) at 45 and 90: the kill lands in the 45 steps after the first
    # checkpoint, about 14 s on a quiet CI machine and longer on a loaded one
    cfg = write_config(workdir, synthpose_small, rl={"trials": 1, "child_steps": 90, "concurrent": 1,
                                                      "sub_policies": 2})
    proc = start(["--method", "rl", "--config", str(cfg), "--json"], workdir, "search")
    experiment = workdir / "ray_results" / "faults-rl"
    log = workdir / "search.log"

    def trial_worker():
        """The Ray worker holding the trial's actor, found by the title Ray gives it: `ray::ImplicitFunc.train`
        while Tune waits on a result, `ray::ImplicitFunc` in the moment between two (Tune's result.json names it
        too, but its lines lag the checkpoint by up to 6 s)."""
        for child in psutil.Process(proc.pid).children(recursive=True):
            try:
                title = " ".join(child.cmdline()).split()  # Ray pads the title
            except psutil.Error:  # gone, or a zombie, since the listing
                continue
            if title[:1] and title[0].split(".")[0] == "ray::ImplicitFunc":
                return child.pid
        return None

    worker: list[int] = []

    def checkpointed_and_found() -> bool:
        if not list(experiment.glob("*/checkpoint_*")):
            return False
        worker[:] = [pid for pid in [trial_worker()] if pid is not None]
        return bool(worker)

    try:
        wait_for(checkpointed_and_found, proc, log, 240, "first checkpoint, with the trial's worker alive")
        os.kill(worker[0], signal.SIGKILL)  # the Ray worker running the trial, mid-trial
        proc.wait(timeout=300)
    finally:
        stop_all(proc)
    assert proc.returncode == 0, log.read_text()[-4000:]
    rows = CostLedger.for_experiment(workdir, "faults").rows()
    assert len(rows) == 1 and rows[0].status == "completed" and rows[0].steps == 90
    assert json.loads(rows[0].extra_json)["retries"] == 1
    client = client_for(workdir)
    trial_run = client.search_runs([client.get_experiment_by_name("faults").experiment_id],
                                   f"tags.da2.trial_id = '{rows[0].trial_id}'")[0]
    assert trial_run.data.tags["da2.retries"] == "1" and trial_run.info.status == "FINISHED"
    assert str(client.get_model_version_by_alias("pose-aug-policy", "candidate").version) == "1"


def test_two_drivers_on_one_experiment_keep_every_row(synthpose_small, tmp_path):
    workdir = tmp_path / "w"
    cfg = write_config(workdir, synthpose_small)
    procs = [start(["--method", m, "--config", str(cfg)], workdir, m.replace(":", "-"))
             for m in ("fixed:none", "fixed:standard-pose")]
    for proc, m in zip(procs, ("fixed-none", "fixed-standard-pose")):
        finish(proc, workdir / f"{m}.log")
    ledger = CostLedger.for_experiment(workdir, "faults")
    rows = ledger.rows()
    assert sorted(r.method for r in rows) == ["fixed:none", "fixed:standard-pose"]
    assert len(ledger.parts()) == 2  # one part per search
