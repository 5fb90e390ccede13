"""Searches on a real local Ray with real MLflow: DA2 end to end, an interrupted search and its resume against
a real `mlflow server`, the promotion gate, and training by alias linking the trained model to its policy."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from cli_helpers import run_json
from mlflow.exceptions import MlflowException

from da2_platform.cli.main import main

pytestmark = pytest.mark.slow


def write_config(workdir: Path, synth, **search) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = {
        "name": "itest", "seed": 0, "workdir": str(workdir),
        "data": {"root": str(synth.root), "synth_train": 24, "synth_val": 8, "synth_seed": 0, "synth_shift": "none",
                 "search_val": "from_train"},
        "train": {"epochs": 1, "batch_size": 8, "max_steps_per_epoch": 2, "eval_batch_size": 16},
        "search": {"da2": {"sub_policies": 6, "steps": 4, "checkpoint_every": 2, "seeds": [0],
                           **search.get("da2", {})}},
    }
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def client_for(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@pytest.mark.parametrize("method, estimator", [("da2", "relaxed"), ("da2:score", "score")])
def test_da2_search_logs_mlflow_ledger_and_registers_a_candidate(synthpose_small, tmp_path, ray_session, capsys,
                                                                 method, estimator):
    cfg = write_config(tmp_path / "w", synthpose_small)
    out = run_json(["search", "--method", method, "--config", str(cfg), "--json"], capsys)
    assert out["method"] == method and out["registered_version"] == "1" and out["trials"] == 1
    assert 0.0 <= out["best_search_val_ap"] <= 1.0 and out["device_seconds"] > 0
    assert len(out["policy"]["sub_policies"]) == 6 and out["policy"]["metadata"]["method"] == method

    uri = f"sqlite:///{(tmp_path / 'w' / 'mlflow' / 'mlflow.db').resolve()}"
    client = client_for(uri)
    run = client.get_run(out["mlflow_run_id"])
    assert run.data.tags["da2.method"] == method and run.data.params["estimator"] == estimator
    assert run.data.params["tau1"] == "0.5" and run.data.params["hypergradient"] == "forward"
    assert run.data.metrics["best_search_val_ap"] == pytest.approx(out["best_search_val_ap"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "policy")}
    assert {"policy/policy.json", "policy/policy_top.json"} <= artifacts
    assert {a.path for a in client.list_artifacts(run.info.run_id, "curves")} == {"curves/seed0.json",
                                                                                 "curves/seed0.png"}
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    assert len(children) == 1 and children[0].data.tags["da2.status"] == "completed"

    ledger = pq.read_table(tmp_path / "w" / "ledger" / "itest.parquet").to_pylist()
    assert len(ledger) == 1
    row = ledger[0]
    assert row["method"] == method and row["status"] == "completed" and row["steps"] == 4
    assert row["device_kind"] == "cpu" and row["devices_held"] == 1.0
    assert row["device_seconds"] == pytest.approx(row["wall_seconds"] * row["devices_held"])
    assert row["search_run_id"] == run.info.run_id and json.loads(row["policy_json"])["sub_policies"]
    flip = [{"name": "HorizontalFlip", "p": 0.5, "m": 0.0}]
    assert json.loads(row["config_json"])["base_augment"] == flip  # what the batches saw before the policy
    assert row["search_val_ap"] == pytest.approx(out["best_search_val_ap"]) and row["val_ap"] is None

    version = client.get_model_version_by_alias("pose-aug-policy", "candidate")
    assert str(version.version) == "1" and version.run_id == run.info.run_id
    tags = version.tags
    assert tags["da2.method"] == method and tags["da2.experiment"] == "itest"
    assert tags["da2.search_run_id"] == run.info.run_id and tags["da2.search_space"] == "pose-v1"
    assert json.loads(tags["da2.base_augment"]) == flip
    assert float(tags["da2.device_hours"]) == pytest.approx(out["device_seconds"] / 3600, rel=1e-3)
    for key in ("da2.search_val_ap", "da2.dataset", "da2.code_version"):
        assert tags[key]

    shown = run_json(["policy", "show", "models:/pose-aug-policy@candidate", "--config", str(cfg), "--json"], capsys)
    assert shown["policy_json"]["sub_policies"] == out["policy"]["sub_policies"]


def test_unreachable_tracking_server_fails_before_any_compute(synthpose_small, tmp_path, capsys):
    cfg = write_config(tmp_path / "w", synthpose_small)
    start = time.perf_counter()
    rc = main(["search", "--method", "da2", "--config", str(cfg), "--tracking-uri", "http://127.0.0.1:9"])
    err = capsys.readouterr().err
    assert rc == 2 and "http://127.0.0.1:9 is unreachable" in err
    assert time.perf_counter() - start < 10
    assert not (tmp_path / "w" / "ray_results").exists()


# -- against a real `mlflow server` ---------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server on 127.0.0.1 (SQLite backend), stopped by PID."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    log = (root / "server.log").open("wb")  # the server's stderr, closed when the fixture ends
    proc = subprocess.Popen(
        [str(mlflow_bin), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts")],
        stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        os.killpg(proc.pid, signal.SIGTERM)
        pytest.fail(f"mlflow server did not answer on {uri}: {(root / 'server.log').read_text()[-2000:]}")
    yield uri
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    log.close()


def versions(client, name: str = "pose-aug-policy") -> list:
    try:
        return client.search_model_versions(f"name='{name}'")
    except MlflowException:  # the registered model does not exist yet
        return []


def test_interrupted_search_registers_nothing_and_its_resume_registers_once(synthpose_small, tmp_path,
                                                                             mlflow_server, capsys):
    workdir = tmp_path / "w"
    cfg = write_config(workdir, synthpose_small, da2={"steps": 40, "checkpoint_every": 2})
    client = client_for(mlflow_server)
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "da2_platform", "search", "--method", "da2", "--config", str(cfg), "--json"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    trial_dir = workdir / "ray_results" / "itest-da2"
    deadline = time.time() + 240
    while time.time() < deadline and not list(trial_dir.glob("*/checkpoint_*")):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.5)
    assert list(trial_dir.glob("*/checkpoint_*")), "no checkpoint appeared"
    proc.send_signal(signal.SIGINT)  # Ctrl+C: Tune saves its state and stops the trial
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 2, err[-3000:]
    assert "interrupted" in err and "--resume" in err
    assert f"Continue it with: da2 search --method da2 --config {cfg} --resume" in err  # its own flags (issue 28)
    assert versions(client) == []  # a killed search leaves no version
    assert not (workdir / "ledger" / "itest.parquet").exists()

    resume = ["search", "--method", "da2", "--config", str(cfg), "--tracking-uri", mlflow_server, "--resume", "--json"]
    out = run_json(resume, capsys)
    assert out["registered_version"] == "1"
    run = client.get_run(out["mlflow_run_id"])
    child = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")[0]
    assert child.data.metrics["search_val_ap"] == pytest.approx(out["best_search_val_ap"])
    ledger = pq.read_table(workdir / "ledger" / "itest.parquet").to_pylist()
    assert len(ledger) == 1 and ledger[0]["steps"] == 40  # continued to the end from the checkpoint
    again = run_json(resume, capsys)
    assert again["registered_version"] == "1"
    assert len(versions(client)) == 1  # resuming twice still leaves exactly one version
    assert len(pq.read_table(workdir / "ledger" / "itest.parquet")) == 1


def test_registry_life_cycle_against_a_server(synthpose_small, tmp_path, mlflow_server, ray_session, capsys):
    """search -> candidate -> promote (gate fails, then passes) -> train by alias -> p2net links the policy."""
    from da2_platform.registry import tag_final_ap

    workdir = tmp_path / "w"
    cfg = write_config(workdir, synthpose_small)
    client = client_for(mlflow_server)
    base = ["--config", str(cfg), "--tracking-uri", mlflow_server]
    first = run_json(["search", "--method", "da2", *base, "--json"], capsys)
    v1 = first["registered_version"]
    second = run_json(["search", "--method", "fixed:standard-pose", *base, "--json"], capsys)
    v2 = second["registered_version"]
    assert v1 != v2
    assert str(client.get_model_version_by_alias("pose-aug-policy", "candidate").version) == v2

    refused = main(["promote", v1, *base, "--json"])
    decision = json.loads(capsys.readouterr().out)
    assert refused == 1 and not decision["allowed"] and "no da2.final_ap" in decision["reason"]

    tag_final_ap("pose-aug-policy", v1, 0.30, "test: confirmation training")
    tag_final_ap("pose-aug-policy", v2, 0.20, "test: confirmation training")
    assert run_json(["promote", v1, *base, "--note", "first production policy", "--json"], capsys)["allowed"]
    assert str(client.get_model_version_by_alias("pose-aug-policy", "production").version) == v1
    assert main(["promote", v2, *base, "--json"]) == 1  # 0.20 does not beat 0.30
    assert "does not beat" in json.loads(capsys.readouterr().out)["reason"]
    promoted = client.get_model_version("pose-aug-policy", v1).tags
    assert promoted["da2.promoted_to"] == "production" and "first production policy" in promoted[
        "da2.promotion_reason"]
    assert promoted["da2.promoted_by"] and promoted["da2.promoted_at"]

    trained = run_json(["train", *base, "--policy", "models:/pose-aug-policy@production", "--json"], capsys)
    assert trained["policy_version"] == v1
    model_version = client.get_model_version("p2net", trained["model_version"])
    assert model_version.tags["da2.policy_version"] == v1
    assert model_version.tags["da2.policy_ref"] == "models:/pose-aug-policy@production"
    train_run = client.get_run(trained["mlflow_run_id"])
    assert train_run.data.tags["da2.policy_version"] == v1
    assert "val_AP" in train_run.data.metrics


@pytest.mark.parametrize("method", ["rl", "optuna", "pba"])
def test_black_box_searches_run_real_children_and_fill_the_ledger(method, synthpose_small, tmp_path, ray_session,
                                                                   capsys):
    workdir = tmp_path / "w"
    cfg_path = write_config(workdir, synthpose_small)
    cfg = yaml.safe_load(cfg_path.read_text())
    trials = 8 if method == "pba" else 3  # PBA: its smallest population
    cfg["search"][method] = {"trials": trials, "child_steps": 2, "concurrent": 2, "sub_policies": 2, "evals": 2}
    if method == "pba":
        cfg["search"][method]["perturbation_interval"] = 1
    if method == "optuna":
        cfg["search"][method]["evals"] = 3
    cfg_path.write_text(yaml.safe_dump(cfg))
    out = run_json(["search", "--method", method, "--config", str(cfg_path), "--json"], capsys)
    assert out["method"] == method and out["trials"] == trials and out["registered_version"] == "1"
    rows = pq.read_table(workdir / "ledger" / "itest.parquet").to_pylist()
    assert len(rows) == trials and {r["method"] for r in rows} == {method}
    assert len({r["trial_id"] for r in rows}) == trials
    for r in rows:
        assert r["status"] in ("completed", "stopped") and r["policy_json"] and r["start_time"] and r["end_time"]
        assert r["device_seconds"] == pytest.approx(r["wall_seconds"] * r["devices_held"]) and r["wall_seconds"] > 0
        assert 0.0 <= r["search_val_ap"] <= 1.0 and r["val_ap"] is None
        assert len(json.loads(r["policy_json"])["sub_policies"]) == 2
    assert sum(r["device_seconds"] for r in rows) == pytest.approx(out["device_seconds"])
    assert max(r["search_val_ap"] for r in rows) == pytest.approx(out["best_search_val_ap"])


def test_compare_runs_the_searches_side_by_side_under_a_device_budget(synthpose_small, tmp_path, ray_session,
                                                                      capsys):
    """`compare` runs every search at once on the shared Ray session under one budget (DA2 and the fixed policy
    too: theirs fit in it), stops the black-box search within one step of it, trains each best policy afresh and
    reports both."""
    from datetime import datetime

    workdir = tmp_path / "w"
    cfg_path = write_config(workdir, synthpose_small, da2={"steps": 2})
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["search"]["rl"] = {"trials": 40, "child_steps": 6, "concurrent": 1, "sub_policies": 2}
    cfg_path.write_text(yaml.safe_dump(cfg))
    budget_s = 90.0
    out = run_json(["compare", "--config", str(cfg_path), "--methods", "da2,rl,fixed:none",
                    "--budget-device-hours", str(budget_s / 3600), "--json"], capsys)

    by_method = {m["method"]: m for m in out["methods"]}
    assert set(by_method) == {"da2", "rl", "fixed:none"}
    assert all(m["final_ap"] is not None and 0.0 <= m["final_ap"] <= 1.0 for m in by_method.values())
    rows = pq.read_table(workdir / "ledger" / "itest.parquet").to_pylist()
    rl = [r for r in rows if r["method"] == "rl"]
    # the budget, not the trial count, ended RL: its last trial stopped at the first step past the budget
    assert 1 <= len(rl) < 40
    spent = sum(r["device_seconds"] for r in rl)
    assert spent >= budget_s
    # past the budget by at most what a trial spends before its next charge: a step and the evaluation before it,
    # or, for a trial started just before the budget ran out, its set-up and first step; never another child
    child = min(r["device_seconds"] for r in rl if r["status"] == "completed")
    assert spent - budget_s < child, (spent, child)
    assert by_method["rl"]["search_device_hours"] == pytest.approx(spent / 3600)
    assert {r["method"] for r in rows if r["method"].startswith("final:")} == {"final:da2", "final:rl",
                                                                                "final:fixed:none"}

    def interval(r):
        return datetime.fromisoformat(r["start_time"]), datetime.fromisoformat(r["end_time"])

    da2_start, da2_end = interval(next(r for r in rows if r["method"] == "da2"))
    others = [interval(r) for r in rows if r["method"] in ("rl", "fixed:none")]
    assert any(start < da2_end and da2_start < end for start, end in others), "no search ran beside DA2"


def test_one_pass_da2_registers_its_network_and_compare_trains_nothing_after_it(synthpose_small, tmp_path,
                                                                                ray_session, capsys):
    """`search.da2.one_pass`: DA2 runs the training schedule, the driver registers the network it trained as a
    `p2net` version linked to the policy version both ways, and compare scores that network on val instead of
    training a fresh one (its final row costs no device time; only the other method has a final trial)."""
    import mlflow

    from da2_platform.config import load_config
    from da2_platform.data.splits import prepare_data
    from da2_platform.data.topdown import TopDownDataset
    from da2_platform.inference import evaluate_model
    from da2_platform.training.loop import epoch_loader, model_from_checkpoint

    workdir = tmp_path / "w"
    cfg_path = write_config(workdir, synthpose_small, da2={"one_pass": True, "steps": 50})
    out = run_json(["compare", "--config", str(cfg_path), "--methods", "da2,fixed:none", "--json"], capsys)
    assert {m["method"] for m in out["methods"]} == {"da2", "fixed:none"}

    rows = pq.read_table(workdir / "ledger" / "itest.parquet").to_pylist()
    final = next(r for r in rows if r["method"] == "final:da2")
    extra = json.loads(final["extra_json"])
    assert extra["one_pass"] is True and final["device_seconds"] == 0.0
    search_row = next(r for r in rows if r["method"] == "da2")
    cfg = load_config(cfg_path)
    data = prepare_data(cfg)
    train = TopDownDataset(data.search_train_annotations, data.train_images, input_size=cfg.data.input_size)
    per_epoch = len(epoch_loader(train, cfg, 0))
    assert search_row["steps"] == cfg.train.epochs * per_epoch != cfg.search.da2.steps  # the schedule's steps
    finals = [p.name for p in (workdir / "ray_results" / "itest-final").iterdir() if p.is_dir()]
    assert len(finals) == 1  # fixed:none's fresh training only

    uri = f"sqlite:///{(workdir / 'mlflow' / 'mlflow.db').resolve()}"
    client = client_for(uri)
    model_version = extra["model_version"]
    model = client.get_model_version("p2net", model_version)
    policy = client.get_model_version("pose-aug-policy", model.tags["da2.policy_version"])
    assert policy.tags["da2.method"] == "da2" and model.run_id != policy.run_id
    assert model.tags["da2.policy_ref"] == f"models:/pose-aug-policy/{policy.version}"
    assert policy.tags["da2.model_version"] == model_version and policy.tags["da2.model_name"] == "p2net"
    assert float(policy.tags["da2.final_ap"]) == pytest.approx(final["val_ap"], abs=1e-6)

    # the registered network is the one compare scored: its checkpoint scores the same val AP, and the MLflow
    # model (exported) gives that network's heatmaps
    import torch

    mlflow.set_tracking_uri(uri)
    checkpoint = mlflow.artifacts.download_artifacts(model.tags["da2.checkpoint"], dst_path=str(tmp_path / "dl"))
    net = model_from_checkpoint(checkpoint).eval()
    coco = evaluate_model(net, data.val_annotations, data.val_images, cfg.data.input_size, torch_cpu(),
                          flip_test=cfg.train.flip_test, decoder=cfg.train.decoder, batch_size=16)
    assert coco["AP"] == pytest.approx(final["val_ap"], abs=1e-6)
    exported = mlflow.pytorch.load_model(f"models:/p2net/{model_version}")
    images = torch.stack([train[i]["image"] for i in range(3)])
    with torch.no_grad():
        torch.testing.assert_close(exported(images), net(images).heatmaps, rtol=1e-4, atol=1e-5)


def torch_cpu():
    import torch

    return torch.device("cpu")


def test_compare_budgets_reports_final_ap_at_equal_budgets(synthpose_small, tmp_path, ray_session, capsys):
    """`compare --budgets 1,2`: DA2 runs first and sets the unit; RL runs under twice DA2's cost; each method's
    anytime policy at each budget is trained and scored; the report holds the yardstick."""
    workdir = tmp_path / "w"
    cfg_path = write_config(workdir, synthpose_small, da2={"steps": 4})
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["search"]["rl"] = {"trials": 40, "child_steps": 3, "concurrent": 1, "sub_policies": 2, "ppo_batch": 2}
    cfg_path.write_text(yaml.safe_dump(cfg))
    out = run_json(["compare", "--config", str(cfg_path), "--methods", "da2,rl,fixed:none", "--budgets", "1,2",
                    "--json"], capsys)
    report = json.loads(Path(out["table"]).read_text())
    ys = report["yardstick"]
    assert [b["multiple"] for b in ys["budgets"]] == [1, 2]
    unit = ys["units_device_seconds"][0]
    assert ys["budgets"][1]["device_hours"] == pytest.approx(2 * unit / 3600, rel=1e-3)  # unit: 3 decimals
    da2 = ys["budgets"][0]["methods"]["da2"]
    assert da2["final_ap_mean"] is not None and 0 <= da2["final_ap_mean"] <= 1
    assert set(ys["budgets"][1]["methods"]) == {"da2", "rl", "fixed:none"}
    assert ys["to_target"]["target_ap"] == pytest.approx(da2["final_ap_mean"] - 0.005, abs=1e-4)
    assert ys["to_target"]["methods"]["da2"]["censored"] is False
    rows = pq.read_table(workdir / "ledger" / "itest.parquet").to_pylist()
    rl = [r for r in rows if r["method"] == "rl"]
    spent = [(r["status"], r["steps"], round(r["device_seconds"], 3), r["start_time"]) for r in rl]
    assert 1 <= len(rl) < 40 and sum(r["device_seconds"] for r in rl) >= 2 * unit, (spent, unit)  # by the budget
