"""Screenshots of the MLflow UI over a store the platform filled (e.g. `make demo`'s), with headless Chromium.

Starts `mlflow ui` on 127.0.0.1 over the store (read only in effect: the UI is only looked at), finds the newest
search parent run with nested trials and the newest registered P2Net version, captures
  1. the experiment's chart view of the search's runs (val_ap / train_loss curves of every trial),
  2. one trial run's metric page (its per-report history),
  3. the registered P2Net version (its tags name the policy version it trained with),
  4. the policy's registered version (with its aliases),
and stops the server by PID. Needs a Chromium binary (`chromium`, `chromium-browser` or --chromium); Debian:
`apt-get install chromium`.

    .venv/bin/python benchmarks/mlflow_ui_screenshot.py --store work/demo/mlflow [--out benchmarks/results/mlflow_ui]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from harness import write_result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(url: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"error: mlflow ui exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url + "/health", timeout=2).read()
            return
        except OSError:
            time.sleep(1)
    raise SystemExit(f"error: mlflow ui did not answer at {url} within {timeout:.0f} s")


def shoot(chromium: str, url: str, path: Path, size: str = "1800,1100", budget_ms: int = 120000) -> None:
    cmd = [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--run-all-compositor-stages-before-draw",
           f"--window-size={size}", f"--virtual-time-budget={budget_ms}", f"--screenshot={path}", url]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    if not path.is_file() or path.stat().st_size < 5000:
        raise SystemExit(f"error: {path}: screenshot missing or empty")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store", default="work/demo/mlflow", help="folder holding mlflow.db")
    parser.add_argument("--out", default="benchmarks/results/mlflow_ui")
    parser.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser"))
    args = parser.parse_args()
    if not args.chromium:
        raise SystemExit("error: --chromium: no Chromium binary found (apt-get install chromium)")
    store = Path(args.store).resolve()
    db = store / "mlflow.db"
    if not db.is_file():
        raise SystemExit(f"error: {db}: no MLflow store there (run make demo first)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{db}"

    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    searches = [r for exp in client.search_experiments() for r in client.search_runs(
        [exp.experiment_id], "tags.`da2.kind` = 'search'", order_by=["attributes.start_time DESC"])]
    nested = {r.info.run_id: client.search_runs([r.info.experiment_id],
                                                f"tags.mlflow.parentRunId = '{r.info.run_id}'") for r in searches}
    if not any(nested.values()):
        raise SystemExit(f"error: {db}: no search run with nested trials")
    parent = max(searches, key=lambda r: len(nested[r.info.run_id]))  # the search with the most trials
    exp_id = parent.info.experiment_id
    # stores made before da2 tagged its experiments: open the experiment as model training, not GenAI
    client.set_experiment_tag(exp_id, "mlflow.experimentKind", "custom_model_development")
    trials = nested[parent.info.run_id]
    trial = max(trials, key=lambda r: len(client.get_metric_history(r.info.run_id, "search_val_ap")))
    models = client.search_model_versions("name = 'p2net'", order_by=["version_number DESC"])
    policies = client.search_model_versions("name = 'pose-aug-policy'", order_by=["version_number DESC"])

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "ui", "--backend-store-uri", uri,
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    shots = {}
    try:
        wait_up(base, proc)
        pages = {
            "1_search_charts": f"{base}/#/experiments/{exp_id}/runs?compareRunsMode=CHART",
            "2_trial_metrics": f"{base}/#/experiments/{exp_id}/runs/{trial.info.run_id}/model-metrics",
        }
        if models:
            pages["3_p2net_version"] = f"{base}/#/models/p2net/versions/{models[0].version}"
        if policies:
            pages["4_policy_version"] = f"{base}/#/models/pose-aug-policy/versions/{policies[0].version}"
        for name, url in pages.items():
            path = out / f"{name}.png"
            shoot(args.chromium, url, path)
            shots[name] = {"url": url.replace(base, ""), "file": str(path), "bytes": path.stat().st_size}
            print(json.dumps({name: shots[name]}), flush=True)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    described = {
        "store": str(db), "experiment_id": exp_id, "search_run": parent.info.run_name,
        "trials": len(trials), "trial_shown": trial.info.run_name,
        "trial_search_val_ap_points": len(client.get_metric_history(trial.info.run_id, "search_val_ap")),
        "p2net_version": models[0].version if models else None,
        "p2net_tags": dict(models[0].tags) if models else None,
        "policy_version": policies[0].version if policies else None,
        "policy_aliases": list(policies[0].aliases) if policies else None,
        "screenshots": shots,
    }
    write_result(out / "screenshots.json", described)
    print(json.dumps(described, indent=2))


if __name__ == "__main__":
    main()
