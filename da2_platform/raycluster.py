"""Connect to Ray once: the cluster a job was submitted to (RAY_ADDRESS), or a local one on this machine.

A local Ray binds to the loopback interface only. Ray 2.60 rewrites 127.0.0.1 to the machine's routable address
(and its servers then listen on every interface) unless `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` says that this is a
one-machine cluster; with it, `_node_ip_address="127.0.0.1"` holds and GCS, raylet, object store and workers all
listen on 127.0.0.1 (measured with psutil: benchmarks/results/ray_listen.json).
"""

from __future__ import annotations

import os

LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # Ray's switch; "0" keeps a node on loopback


def ensure_ray(num_cpus: int | None = None) -> None:
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=False)
        return
    init_local_ray(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)


def init_local_ray(**kwargs) -> None:
    """ray.init for a one-machine cluster on 127.0.0.1 (its child processes inherit the switch)."""
    import ray
    from ray._private import ray_constants

    os.environ[LOCAL_ONLY_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False  # read at call time by Ray's address helpers
    try:
        ray.init(_node_ip_address="127.0.0.1", **kwargs)
    except Exception as e:  # Ray raises a bare Exception when its raylet starts too slowly
        if "timed out during startup" not in str(e):
            raise
        ray.shutdown()  # a loaded machine: Ray gives its raylet 30 s; give it a second chance
        ray.init(_node_ip_address="127.0.0.1", **kwargs)


def cluster_has_gpus() -> bool:
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0


def cluster_gpus() -> float:
    """GPUs in the whole cluster (0 on a CPU machine)."""
    import ray

    return float(ray.cluster_resources().get("GPU", 0))
