"""docs/cluster.md's "Running on a Ray cluster", run for real on a two-node Ray 2.60 cluster started on one machine.

Two `ray start` nodes with their own temp dirs (the worker with a custom resource and, where `unshare` works, its
own mount namespace with one private folder), token authentication as Ray 2.60 does it (`ray get-auth-token
--generate` into ~/.ray/auth_token of a HOME made for the test; every process runs with RAY_AUTH_MODE=token), a
real `mlflow server` on 127.0.0.1 and the page's `ray job submit` lines with a tiny config, the test's
addresses and ports. Only loopback addresses are used (the nodes on 127.0.0.2: Ray rewrites 127.0.0.1 to the
machine's routable address unless the cluster is one node). Every process the fixture started is stopped by PID;
never a global `ray stop`, other Ray sessions may run on this machine.

The fast tests at the bottom check the refusal of a relative work directory inside a job without a cluster.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
README_CONFIG = "configs/coco_r50_256x192.yaml"
README_DASHBOARD = "http://127.0.0.1:8265"
README_MLFLOW = "http://127.0.0.1:5000"
NODE_IP = "127.0.0.2"

TINY_CONFIG = """\
name: cluster-tiny
seed: 0
workdir: {workdir}
data:
  kind: synthpose
  synth_train: 24
  synth_val: 8
  input_size: [64, 48]
  search_val_fraction: 0.25
model:
  preset: cpu-tiny
train:
  epochs: 1
  max_steps_per_epoch: 2
  batch_size: 4
  flip_test: false
  workers: 1
  cpus_per_worker: 1
  eval_batch_size: 8
search:
  cpus_per_trial: 1
  gpus_per_trial: 0
  rl: {{sub_policies: 2, ops_per_sub_policy: 2, trials: 2, child_steps: 2, concurrent: 2}}
"""


# -- the README's commands ------------------------------------------------------------------------------------

def readme_cluster_lines() -> list[str]:
    """The shell lines of docs/cluster.md's first bash block (the page the README links), continuation lines joined."""
    text = (REPO / "docs" / "cluster.md").read_text()
    section = text[text.index("# Running on a Ray cluster"):]
    section = section[:section.index("\n## ", 1)]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL)[1]
    return [" ".join(part.strip() for part in line.split("\\\n")) for line in re.split(r"(?<!\\)\n", block)
            if line.strip()]


def readme_submit_script(kind: str, dashboard: str, mlflow_uri: str, config: str) -> str:
    """The README's address export, MLFLOW_ENV and the `ray job submit` line running `da2 <kind>`."""
    lines = readme_cluster_lines()
    export = next(line for line in lines if line.startswith("export RAY_ADDRESS="))
    env_line = next(line for line in lines if line.startswith("MLFLOW_ENV="))
    submit = next(line for line in lines if line.startswith("ray job submit") and f"-- da2 {kind} " in line)
    assert README_DASHBOARD in export and "RAY_AUTH_MODE=token" in export
    assert README_MLFLOW in env_line and README_CONFIG in submit
    return "\n".join([export.replace(README_DASHBOARD, dashboard), env_line.replace(README_MLFLOW, mlflow_uri),
                      submit.replace(README_CONFIG, config)])


def test_readme_cluster_section_submits_search_and_train_by_candidate():
    script = readme_submit_script("search", "http://x:1", "http://y:2", "c.yaml")
    assert '--runtime-env-json "$MLFLOW_ENV"' in script and "da2 search --method rl --config c.yaml" in script
    train = readme_submit_script("train", "http://x:1", "http://y:2", "c.yaml")
    assert "--policy models:/pose-aug-policy@candidate" in train


# -- the cluster ------------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def node_ports() -> list[str]:
    """Ray's fixed default ports, each replaced by a free one (two nodes and other sessions share this machine)."""
    return [f"--{flag}={free_port()}" for flag in (
        "node-manager-port", "object-manager-port", "runtime-env-agent-port", "dashboard-agent-grpc-port",
        "dashboard-agent-listen-port", "metrics-export-port")]


def unshare_works() -> bool:
    if not shutil.which("unshare") or not hasattr(os, "geteuid") or os.geteuid() != 0:
        return False
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "true"],
                          check=False, capture_output=True).returncode == 0


def snapshot_checkout(dest: Path) -> Path:
    """Copy the checkout's files (tracked and untracked, not ignored) to `dest`: `ray job submit --working-dir .`
    hashes the folder twice, and a file that changes in between (people edit this checkout) breaks the job."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            check=True, capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def run(cmd: list[str] | str, env: dict, timeout: float, cwd: Path = REPO, shell: bool = False
        ) -> subprocess.CompletedProcess:
    args = ["bash", "-c", cmd] if shell else cmd
    return subprocess.run(args, check=False, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          start_new_session=True)


def _psutil():
    import ray  # noqa: F401  (puts the psutil that Ray bundles on sys.path)

    return importlib.import_module("psutil")


def our_processes(root: Path, roots: list[int]) -> list:
    """Every live process under `root` (by command line) or descended from one we started."""
    psutil = _psutil()
    found = {}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if str(root) in " ".join(proc.info["cmdline"] or []):
            found[proc.pid] = proc
    for pid in roots:
        try:
            found.setdefault(pid, psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    for proc in list(found.values()):
        try:
            for child in proc.children(recursive=True):
                found.setdefault(child.pid, child)
        except psutil.NoSuchProcess:
            pass
    return [p for p in found.values() if p.pid != os.getpid()]


def stop_processes(root: Path, roots: list[int]) -> None:
    psutil = _psutil()

    procs = our_processes(root, roots)
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=15)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=10)


def wait_http(url: str, timeout_s: float, log: Path | None = None) -> None:
    """Until `url` answers at all (the job server answers 401 without the token: it is up)."""
    deadline = time.time() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            pass
        assert time.time() < deadline, f"{url} did not answer: {log.read_text()[-2000:] if log else ''}"
        time.sleep(0.5)


def start_node(cmd: list[str], temp_dir: Path, env: dict, attempts: int = 3) -> None:
    """`ray start`, again from scratch when it fails: Ray 2.60 gives a raylet 30 s to register with the GCS
    (hard-coded in ray/_private/node.py), which a machine busy with other test runs can miss."""
    for attempt in range(attempts):
        out = run(cmd, env, 240)
        if out.returncode == 0:
            return
        stop_processes(temp_dir, [])
        shutil.rmtree(temp_dir, ignore_errors=True)
        time.sleep(10 * (attempt + 1))
    pytest.fail(f"{' '.join(cmd[:3])} failed {attempts} times: {out.stdout[-2000:]}{out.stderr[-3000:]}")


@pytest.fixture(scope="module")
def cluster():
    # short root: Ray's Unix socket paths under <temp-dir>/session_*/sockets must stay under 107 characters
    root = Path(tempfile.mkdtemp(prefix="da2c-", dir="/tmp"))
    home = root / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in (
        "RAY_ADDRESS", "RAY_TMPDIR", "MLFLOW_TRACKING_URI", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH",
        "RAY_JOB_CONFIG_JSON_ENV_VAR", "VIRTUAL_ENV", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    env.update(HOME=str(home), PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", RAY_AUTH_MODE="token",
               RAY_USAGE_STATS_ENABLED="0", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    started: list[int] = []
    info: dict = {"root": root, "env": env}
    try:
        # the token as the README makes it: `ray get-auth-token --generate` -> ~/.ray/auth_token (HOME is ours)
        out = run([str(BIN / "ray"), "get-auth-token", "--generate"], env, 60)
        token = home / ".ray" / "auth_token"
        assert out.returncode == 0 and token.is_file(), out.stderr[-2000:]
        token.chmod(0o600)

        mlflow_port = free_port()
        (root / "mlflow").mkdir()
        server_log = open(root / "mlflow" / "server.log", "wb")  # noqa: SIM115 (the server's whole life)
        server = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{root / 'mlflow' / 'mlflow.db'}",
             "--artifacts-destination", str(root / "mlflow" / "artifacts")],
            env=env, stdout=subprocess.DEVNULL, stderr=server_log,
            start_new_session=True)
        started.append(server.pid)

        gcs, dash = free_port(), free_port()
        common = ["--node-ip-address", NODE_IP, "--num-cpus=1", "--object-store-memory=150000000",
                  "--disable-usage-stats"]
        start_node([str(BIN / "ray"), "start", "--head", f"--port={gcs}", "--dashboard-host", NODE_IP,
                    f"--dashboard-port={dash}", "--include-dashboard=true", f"--ray-client-server-port={free_port()}",
                    f"--temp-dir={root / 'head'}", *node_ports(), *common], root / "head", env)

        # the head's dashboard and the MLflow server are busy starting: let them finish before the worker's
        # raylet has to register within Ray's 30 s
        info.update(dashboard=f"http://{NODE_IP}:{dash}", mlflow=f"http://127.0.0.1:{mlflow_port}")
        wait_http(info["dashboard"] + "/api/version", 120)
        wait_http(info["mlflow"] + "/health", 120, root / "mlflow" / "server.log")

        # the worker node: its own temp dir, a custom resource, and (where allowed) a private folder that only
        # it sees, mounted in its own mount namespace: a workdir there is not on shared storage
        private = root / "private"
        private.mkdir()
        worker_cmd = [str(BIN / "ray"), "start", f"--address={NODE_IP}:{gcs}", f"--temp-dir={root / 'worker'}",
                      '--resources={"cluster_test_worker": 1}', *node_ports(), *common]
        info["private_mount"] = unshare_works()
        if info["private_mount"]:
            quoted = " ".join(f"'{a}'" for a in worker_cmd)
            worker_cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                          f"mount -t tmpfs tmpfs '{private}' && exec {quoted}"]
        start_node(worker_cmd, root / "worker", env)

        info["private"] = private
        workdir = root / "shared" / "work"  # one filesystem for both nodes: shared storage
        config = root / "tiny.yaml"
        config.write_text(TINY_CONFIG.format(workdir=workdir))
        info.update(workdir=workdir, config=config, checkout=snapshot_checkout(root / "checkout"))
        yield info
    finally:
        stop_processes(root, started)
        shutil.rmtree(root, ignore_errors=True)


def submit(cluster: dict, kind: str, config: str | None = None, extra: str = "") -> subprocess.CompletedProcess:
    script = readme_submit_script(kind, cluster["dashboard"], cluster["mlflow"], config or str(cluster["config"]))
    return run(script + extra, cluster["env"], 540, cwd=cluster["checkout"], shell=True)


def state(cluster: dict, *args: str) -> list[dict]:
    env = {**cluster["env"], "RAY_ADDRESS": cluster["dashboard"]}
    out = run([str(BIN / "ray"), "list", *args, "--format", "json", "--limit", "10000"], env, 120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


@pytest.mark.slow
def test_readme_jobs_search_then_train_by_candidate_on_two_nodes(cluster):
    from mlflow import MlflowClient

    # without the token the job server refuses the submission
    no_token = {**cluster["env"], "HOME": str(cluster["root"] / "nobody")}
    refused = run(readme_submit_script("search", cluster["dashboard"], cluster["mlflow"], str(cluster["config"])),
                  no_token, 120, cwd=cluster["checkout"], shell=True)
    assert refused.returncode != 0 and "Authentication" in refused.stdout + refused.stderr

    search = submit(cluster, "search")
    log = search.stdout + search.stderr
    assert search.returncode == 0 and "succeeded" in log, log[-6000:]
    train = submit(cluster, "train")
    log = train.stdout + train.stderr
    assert train.returncode == 0 and "succeeded" in log, log[-6000:]

    nodes = {n["node_id"]: n for n in state(cluster, "nodes") if n["state"] == "ALIVE"}
    head = next(nid for nid, n in nodes.items() if n["is_head_node"])
    assert len(nodes) == 2
    actors = state(cluster, "actors", "--detail")
    trial_nodes = [a["node_id"] for a in actors if a["class_name"] == "ImplicitFunc"]  # Tune's function trials
    assert len(trial_nodes) >= 2 and set(trial_nodes) == set(nodes), trial_nodes  # trials ran on both nodes
    drivers = [a["node_id"] for a in actors if a["class_name"] == "JobSupervisor"]
    assert drivers and set(drivers) == {head}  # job drivers on the head, beside the loopback MLflow server

    client = MlflowClient(tracking_uri=cluster["mlflow"], registry_uri=cluster["mlflow"])
    policies = client.search_model_versions("name='pose-aug-policy'")
    assert len(policies) == 1 and policies[0].tags["da2.method"] == "rl"
    candidate = client.get_model_version_by_alias("pose-aug-policy", "candidate")
    assert candidate.version == policies[0].version
    models = client.search_model_versions("name='p2net'")
    assert len(models) == 1 and models[0].tags.get("da2.policy_version") == str(candidate.version)

    import pyarrow.parquet as pq

    rows = [r for r in pq.read_table(cluster["workdir"] / "ledger" / "cluster-tiny.parquet").to_pylist()
            if r["method"] == "rl"]
    ids = [r["trial_id"] for r in rows]
    assert len(ids) == 2 and len(set(ids)) == 2  # each trial once
    assert not list(cluster["workdir"].glob(".da2-shared-check-*"))  # the storage check cleaned up


@pytest.mark.slow
def test_job_with_relative_workdir_is_refused(cluster):
    out = submit(cluster, "search", config="configs/demo.yaml")  # demo.yaml: workdir work/demo (relative)
    log = out.stdout + out.stderr
    assert out.returncode != 0 and "failed" in log, log[-4000:]
    assert "error: configs/demo.yaml: workdir:" in log and "relative path 'work/demo'" in log, log[-4000:]
    leftovers = list((cluster["root"] / "head").glob("session_*/runtime_resources/working_dir_files/*/work"))
    assert leftovers == []


@pytest.mark.slow
def test_job_with_a_workdir_one_node_cannot_see_is_refused_before_compute(cluster):
    if not cluster["private_mount"]:
        pytest.skip("no mount namespace (unshare as root) to give the worker node a folder the head cannot share")
    workdir = cluster["private"] / "work"
    out = submit(cluster, "search", extra=f" --workdir {workdir}")
    log = out.stdout + out.stderr
    assert out.returncode != 0, log[-4000:]
    assert f"workdir: {workdir} is not on storage that every node shares" in log, log[-4000:]
    assert not (workdir / "ray_results").exists() and not (workdir / "data").exists()  # refused before compute


# -- without a cluster: what the driver of a job checks ----------------------------------------------------------

def test_relative_workdir_refused_only_inside_a_job(tmp_path, monkeypatch):
    from da2_platform.config import load_config
    from da2_platform.errors import ConfigError

    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: x\nworkdir: work/x\n")
    monkeypatch.chdir(tmp_path)
    assert load_config(cfg).workdir == tmp_path / "work" / "x"  # plain `da2`: relative to where it runs
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": {}, "metadata": {}}))
    with pytest.raises(ConfigError, match=r"c\.yaml: workdir: .*relative path 'work/x' inside a Ray job"):
        load_config(cfg)
    with pytest.raises(ConfigError, match=r"data: .*relative path 'd' inside a Ray job"):
        load_config(cfg, {"workdir": str(tmp_path / "abs"), "data.root": "d"})
    assert load_config(cfg, {"workdir": str(tmp_path / "abs")}).workdir == tmp_path / "abs"


def test_relative_workdir_in_a_job_exits_2_with_error_line(tmp_path, monkeypatch, capsys):
    from da2_platform.cli.main import main

    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["search", "--method", "rl", "--config", str(REPO / "configs" / "demo.yaml")]) == 2
    err = capsys.readouterr().err
    assert re.search(r"^error: .*demo\.yaml: workdir: .*relative path 'work/demo'", err, re.MULTILINE), err
    assert not (tmp_path / "work").exists()


def test_storage_check_needs_a_cluster_address(tmp_path, monkeypatch):
    from da2_platform.jobenv import check_shared_workdir

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert check_shared_workdir(tmp_path / "w") == 0 and not (tmp_path / "w").exists()
