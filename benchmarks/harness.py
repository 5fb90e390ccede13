"""What every benchmark script shares: writing its result JSON with what made it (git commit, config, machine),
`--set` config overrides, and the dense bf16 peak and MFU of the device it ran on.

    from harness import ensure_warm_start, parse_set, write_result
    ensure_warm_start(cfg, args.config)   # a fresh clone has no model.init_weights yet: train the shared one
    write_result("benchmarks/results/x.json", result, config="configs/bench_cpu.yaml", overrides=parse_set(args.set))

A resumable benchmark keeps one file per piece (`write_piece`, `read_pieces`) and summarises seeds with
`seed_stats`.

The scripts run as `python benchmarks/<name>.py`, so this folder is on their import path.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# the sha256 of the warm start a benchmark's models start from (set by `ensure_warm_start`), written into every
# result's provenance: two runs on the same config but different warm-start files are not the same experiment
WARM_START: dict[str, str] = {}

# dense bf16 Tensor Core peak FLOP/s by device-name fragment (vendor data sheets; the sparsity figures are twice
# these). H100 SXM and H200: 989.4 TFLOP/s; the H100 PCIe card is slower.
PEAK_BF16_DENSE_FLOPS = {"H100 PCIe": 756e12, "H100": 989.4e12, "H200": 989.4e12, "A100": 312e12,
                         "A10G": 125e12, "L4": 121e12}
PEAK_SOURCE = ("NVIDIA data sheets, dense BF16 Tensor Core: H100 SXM 989.4 TFLOP/s (PCIe 756), H200 989.4 "
               "(1,979 with sparsity), A100 312, A10G 125, L4 121")


def peak_flops(device_name: str) -> float | None:
    """The dense bf16 peak of a device by its name (`torch.cuda.get_device_name`; the longest fragment that it
    contains wins); None for a CPU or a device the table lacks."""
    found = [fragment for fragment in PEAK_BF16_DENSE_FLOPS if fragment in device_name]
    return PEAK_BF16_DENSE_FLOPS[max(found, key=len)] if found else None


def mfu(flops_per_step: float, step_seconds: float, device_name: str) -> float | None:
    """Model FLOP utilisation: the model's FLOPs per step over the step's time, against the device's peak."""
    peak = peak_flops(device_name)
    return None if peak is None or step_seconds <= 0 else flops_per_step / step_seconds / peak


def parse_set(items: list[str]) -> dict[str, Any]:
    """`--set a.b=VALUE ...` -> {"a.b": VALUE}, each VALUE read as YAML (numbers, lists, null), for load_config."""
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set: expected KEY=VALUE such as search.da2.steps=300, got {item!r}")
        out[key] = yaml.safe_load(value)
    return out


def git_commit() -> dict[str, Any]:
    """The commit the code ran at, and whether tracked files differed from it."""
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True,
                                  timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit or "unknown", "dirty": None if status is None else bool(status)}


def machine() -> dict[str, Any]:
    """What ran it, without naming the host: CPU model and cores, OS, Python, torch and the device."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    out: dict[str, Any] = {"cpu": cpu, "cores": os.cpu_count(), "os": f"{platform.system()} {platform.machine()}",
                           "python": platform.python_version()}
    try:
        import torch

        out["torch"] = torch.__version__
        out["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
        out["threads"] = torch.get_num_threads()
    except ImportError:
        out["device"] = "cpu"
    return out


def provenance(config: str | os.PathLike | None = None, overrides: dict | None = None,
               resolved: dict | None = None) -> dict[str, Any]:
    """commit, dirty, config (the file), overrides, config_resolved (the validated config, when given), the warm
    start's sha256 (when `ensure_warm_start` ran), machine."""
    return {**git_commit(), "config": None if config is None else str(config), "overrides": overrides or {},
            "config_resolved": resolved, **({"warm_start": dict(WARM_START)} if WARM_START else {}),
            "machine": machine(),
            "written": datetime.now(UTC).isoformat(timespec="seconds")}


def write_result(path: str | os.PathLike, result: dict, config: str | os.PathLike | None = None,
                 overrides: dict | None = None, resolved: dict | None = None) -> Path:
    """Write `result` atomically as JSON with a `provenance` block (replacing one it had: a resumed run's)."""
    from da2_platform.files import write_json_atomic

    return write_json_atomic(path, {**result, "provenance": provenance(config, overrides, resolved)})


def seed_stats(values: list[float]) -> dict[str, Any]:
    """A figure over seeds: the values, their mean and their sample std (None where there are too few)."""
    return {"per_seed": values, "mean": round(statistics.fmean(values), 4) if values else None,
            "std": round(statistics.stdev(values), 4) if len(values) > 1 else None}


def piece_file(key: str) -> str:
    """`search:0:da2:score` -> `search_0_da2_score.json` (the key itself is kept inside the file)."""
    return key.replace(":", "_") + ".json"


def write_piece(folder: Path, key: str, piece: dict, config: str | os.PathLike | None = None) -> Path:
    """One piece of a resumable benchmark, written atomically as <folder>/<piece_file(key)> with its key."""
    return write_result(folder / piece_file(key), {"key": key, **piece}, config)


def read_pieces(folder: Path) -> dict[str, dict]:
    """Every piece file in `folder`, by its key (its provenance dropped: the file keeps it)."""
    pieces = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        piece = json.loads(path.read_text())
        key = piece.pop("key")
        piece.pop("provenance", None)
        pieces[key] = piece
    return pieces


def ensure_warm_start(cfg, config_path: str | os.PathLike, settings=None) -> None:
    """Train the shared warm start on first use, where `model.init_weights` points (it must name
    <folder>/p2net.pt); a cached one with the same settings is reused. A fresh clone has none, so every benchmark
    on a config with init_weights calls this before it builds a model. `settings`: a `PretrainSettings` (default
    its defaults, what the demo and the configs use)."""
    from da2_platform.config import ExperimentConfig
    from da2_platform.warmstart import PretrainSettings, warm_start

    init = cfg.model.init_weights
    if init is None:
        return
    if init.is_file():
        _record_warm_start(init)
        return
    raw = cfg.model_dump(mode="json")
    raw["model"]["init_weights"] = None
    ws = warm_start(ExperimentConfig.model_validate(raw), settings or PretrainSettings(), folder=init.parent, threads=1)
    if ws.path != init:
        raise SystemExit(f"error: {config_path}: model.init_weights: name it <folder>/p2net.pt (the warm start "
                         f"writes {ws.path})")
    print(json.dumps({"warm_start": str(ws.path), "seconds": round(ws.seconds, 1)}), flush=True)
    _record_warm_start(init)


def _record_warm_start(path: Path) -> None:
    import hashlib

    WARM_START.update(path=str(path), sha256=hashlib.sha256(path.read_bytes()).hexdigest())
