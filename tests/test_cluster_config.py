"""cluster.yaml against the Ray launcher's own JSON schema, and its setup installs this package."""

from __future__ import annotations

import json
import re
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
    installs = [c for c in cfg["setup_commands"] if re.search(r"pip install\b.*" + re.escape(remote_checkout), c)]
    assert installs, f"no setup command pip-installs the checkout mounted at {remote_checkout}"
    project = (REPO / "pyproject.toml").read_text()
    assert 'name = "da2-platform"' in project


def test_mlflow_server_binds_loopback_on_head():
    cfg = load_cluster()
    servers = [c for c in cfg["head_start_ray_commands"] if "mlflow server" in c]
    assert servers and all("--host 127.0.0.1" in c for c in servers)
