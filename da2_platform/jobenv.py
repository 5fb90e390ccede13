"""Checks for a `da2` command that runs as a Ray job (`ray job submit ... -- da2 ...`) on a cluster.

A job's driver runs in Ray's private copy of the uploaded working directory
(`<temp-dir>/session_*/runtime_resources/working_dir_files/_ray_pkg_*`), on one node, and Ray deletes that copy
when no job uses it any more. A relative output path would silently land there, so inside a job it is refused.
Trials and Ray Train workers run on other nodes and restore checkpoints from the workdir, so a multi-node run
needs its workdir on storage that every node mounts (NFS, EFS, ...); `check_shared_workdir` proves it before any
compute: the driver writes a marker file and one zero-CPU task per alive node must read it back.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from da2_platform.errors import ConfigError

JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray's job supervisor for the entrypoint (the driver) only


def in_ray_job() -> bool:
    """True in the entrypoint of a `ray job submit` job (not in its tasks and actors, nor in plain `da2`)."""
    return JOB_ENV in os.environ


def refuse_relative_in_job(value: Path | str, what: str) -> None:
    """Raise ValueError (a config validation error) for a relative output path inside a Ray job."""
    path = Path(value).expanduser()
    if in_ray_job() and not path.is_absolute():
        raise ValueError(
            f"relative path {str(value)!r} inside a Ray job would land in Ray's temporary copy of the working "
            f"directory ({Path.cwd()}) on one node, deleted when the job ends; give {what} as an absolute path "
            "on storage every node mounts, e.g. --workdir /mnt/shared/da2/<name>")


def _probe(marker: str, token: str) -> str | None:
    """On one node: None when the marker holds the driver's token and the folder is writable, else the reason."""
    import socket

    path = Path(marker)
    where = f"node {socket.gethostname()}"
    try:
        if not path.is_file():
            return f"{where} does not see {path}"
        if path.read_text() != token:
            return f"{where} sees another file at {path} (not the same storage)"
        probe = path.with_name(path.name + f".{os.getpid()}")
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        return f"{where} cannot use {path.parent}: {e}"
    return None


def check_shared_workdir(workdir: Path, source: str = "<config>", timeout_s: float = 120.0) -> int:
    """Before compute on a multi-node Ray cluster: every alive node must see and write `workdir`.

    Only runs when the command is connected to a cluster (RAY_ADDRESS set, as in every Ray job); a local Ray is
    one node and needs nothing. Returns the number of nodes checked (0 when nothing was checked)."""
    if not os.environ.get("RAY_ADDRESS"):
        return 0
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from da2_platform.raycluster import ensure_ray

    ensure_ray()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) < 2:
        return 0
    workdir = Path(workdir)
    token = secrets.token_hex(16)
    marker = workdir / f".da2-shared-check-{token[:8]}"
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        marker.write_text(token)
    except OSError as e:
        raise ConfigError(f"{source}: workdir: cannot write {workdir} on the driver's node: {e}") from None
    probe = ray.remote(num_cpus=0, max_retries=0)(_probe)
    try:
        refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(str(marker), token) for n in nodes]
        try:
            answers = ray.get(refs, timeout=timeout_s)
        except Exception as e:  # noqa: BLE001 (a node that cannot run a task: GetTimeoutError, a dead node)
            raise ConfigError(f"{source}: workdir: could not check {workdir} on every node: {e}") from None
    finally:
        marker.unlink(missing_ok=True)
    problems = [a for a in answers if a]
    if problems:
        raise ConfigError(
            f"{source}: workdir: {workdir} is not on storage that every node shares ({'; '.join(problems)}); "
            "a multi-node run needs its workdir on a filesystem all nodes mount (NFS, EFS; cluster.yaml mounts "
            "/mnt/shared), because trials and training workers checkpoint and restore there")
    return len(nodes)
