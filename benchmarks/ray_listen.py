"""What a local `da2` Ray session listens on: every listening socket of the driver and the processes it starts
(GCS, raylet, object manager, runtime-env agent, workers), measured with psutil after one task and one Tune trial.

    .venv/bin/python benchmarks/ray_listen.py   ->  benchmarks/results/ray_listen.json
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

from harness import write_result

OUT = Path(__file__).parent / "results" / "ray_listen.json"


def listeners() -> list[dict]:
    import psutil

    me = psutil.Process()
    found = []
    for proc in [me, *me.children(recursive=True)]:
        try:
            name = proc.name()
            for conn in proc.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    found.append({"process": name, "address": conn.laddr.ip, "port": conn.laddr.port})
        except psutil.Error:
            continue
    return sorted(found, key=lambda f: (f["process"], f["port"]))


def main() -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    from da2_platform.raycluster import ensure_ray

    ensure_ray(num_cpus=1)

    @ray.remote
    def ping() -> int:
        return 1

    ray.get(ping.remote())
    time.sleep(2)  # let every worker finish binding
    found = listeners()
    ray.shutdown()
    loopback = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}
    result = {
        "what": "listening sockets of a local da2 Ray session (ensure_ray) and its child processes",
        "ray": ray.__version__, "platform": platform.platform(),
        "listeners": found,
        "all_on_loopback": all(f["address"] in loopback for f in found),
        "not_on_loopback": [f for f in found if f["address"] not in loopback],
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    write_result(OUT, result)
    print(json.dumps({k: result[k] for k in ("all_on_loopback", "not_on_loopback")}, indent=2))


if __name__ == "__main__":
    main()
