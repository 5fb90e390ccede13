"""cluster.yaml against the Ray launcher's own JSON schema; its setup installs the package with its `cluster` extra,
every node gets the token, and MLflow stays on the head's loopback where the jobs' drivers reach it."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import jsonschema
import ray
import yaml

REPO = Path(__file__).resolve().parents[1]


def load_cluster() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def test_cluster_yaml_validates_against_ray_schema():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(load_cluster(), schema)


def test_cluster_has_cpu_head_and_gpu_workers():
    cfg = load_cluster()
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    gpu_types = [t for name, t in types.items() if t["resources"].get("GPU", 0) >= 1]
    assert gpu_types, "no GPU worker node type"


def test_setup_commands_install_this_package():
    cfg = load_cluster()
    mounts = cfg["file_mounts"]
    remote_checkout = next(remote for remote, local in mounts.items() if local in (".", "./"))
    installs = [c for c in cfg["setup_commands"]
                if re.search(r"pip install\b.*" + re.escape(remote_checkout) + r"\[cluster\]", c)]
    assert installs, f"no setup command pip-installs the checkout mounted at {remote_checkout} with [cluster]"
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["name"] == "da2-platform"
    # `ray job submit` needs the dashboard's job server: Ray's `default` extra
    cluster_extra = project["optional-dependencies"]["cluster"]
    assert any(re.match(r"ray\[[^]]*\bdefault\b", dep) for dep in cluster_extra), cluster_extra


def test_every_node_starts_ray_with_token_auth_and_gets_the_token():
    cfg = load_cluster()
    starts = [c for key in ("head_start_ray_commands", "worker_start_ray_commands") for c in cfg[key]
              if "ray start" in c]
    assert len(starts) == 2 and all("RAY_AUTH_MODE=token ray start" in c for c in starts)
    token_mounts = {remote: local for remote, local in cfg["file_mounts"].items() if remote.endswith("auth_token")}
    assert token_mounts == {"/home/ubuntu/.ray/auth_token": "~/.ray/auth_token"}  # Ray's default token path
    assert cfg["auth"]["ssh_user"] == "ubuntu"


def test_mlflow_server_binds_loopback_on_head():
    cfg = load_cluster()
    servers = [c for c in cfg["head_start_ray_commands"] if "mlflow server" in c]
    assert servers and all("--host 127.0.0.1" in c for c in servers)


def test_coco_configs_point_at_the_heads_loopback_mlflow():
    """Drivers of `ray job submit` jobs run on the head, where MLflow listens on 127.0.0.1:5000."""
    server = next(c for c in load_cluster()["head_start_ray_commands"] if "mlflow server" in c)
    port = re.search(r"--port (\d+)", server)[1]
    for path in sorted((REPO / "configs").glob("coco_*.yaml")):
        assert yaml.safe_load(path.read_text())["tracking"]["uri"] == f"http://127.0.0.1:{port}", path.name
