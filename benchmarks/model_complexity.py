"""Parameters and GMACs of the P2Net presets, beside the paper's figures, and the CPU demo model's step time.

Run: PYTHONPATH=. .venv/bin/python benchmarks/model_complexity.py
Writes benchmarks/results/model_complexity.json.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any

import torch
from harness import write_result

from pose_models import P2NetLoss, build_p2net, model_complexity

RESULTS = Path(__file__).resolve().parent / "results" / "model_complexity.json"
CONFIGS = [
    ("paper-r50", (256, 192)),
    ("paper-r101", (256, 192)),
    ("paper-r101", (384, 288)),
    ("paper-r152", (384, 288)),
    ("cpu-tiny", (64, 48)),
    ("cpu-tiny", (128, 96)),
]
# Table I of the paper; pose papers' "GFLOPs" are multiply-adds
REFERENCES = [
    {
        "model": "P2Net (paper)",
        "backbone": "resnet101",
        "input_size": [384, 288],
        "params": 42.5e6,
        "gmacs": 26.3,
    },
    {
        "model": "HRNet-W32",
        "backbone": "hrnet_w32",
        "input_size": [384, 288],
        "params": 28.5e6,
        "gmacs": 16.0,
    },
    {
        "model": "SimpleBaseline",
        "backbone": "resnet152",
        "input_size": [384, 288],
        "params": 68.6e6,
        "gmacs": 35.6,
    },
]
PAPER_R101 = REFERENCES[0]


def count(preset: str, size: tuple[int, int]) -> dict[str, Any]:
    with torch.device("meta"):  # shapes are all the counter needs
        model = build_p2net(preset)
    info = model_complexity(model, size)
    return {"preset": preset, "config": model.config, "input_size": list(size), **info}


def cpu_train_step_seconds(preset: str, size: tuple[int, int], batch: int, steps: int = 4) -> float:
    """Median wall time of one forward+backward+Adam step on CPU with one thread (after one warm-up step)."""
    torch.manual_seed(0)
    model = build_p2net(preset).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = P2NetLoss()
    images = torch.rand(batch, 3, *size)
    targets = torch.rand(batch, 17, size[0] // 4, size[1] // 4)
    weights = torch.ones(batch, 17)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        loss = loss_fn(model(images), targets, weights).total
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        times.append(time.perf_counter() - start)
    return sorted(times[1:])[len(times[1:]) // 2]


def main() -> None:
    torch.set_num_threads(1)  # the machine is shared
    rows = [count(preset, size) for preset, size in CONFIGS]
    for row in rows:
        stages = ", ".join(f"{s['stage']} {s['params'] / 1e6:.2f}M/{s['gmacs']:.2f}" for s in row["stages"])
        print(
            f"{row['preset']:>10} {row['input_size'][0]}x{row['input_size'][1]}: "
            f"{row['params'] / 1e6:6.2f} M params {row['gmacs']:6.2f} GMACs  [{stages}]"
        )
    r101 = next(r for r in rows if r["preset"] == "paper-r101" and r["input_size"] == [384, 288])
    versus_paper = {
        "params_ratio": r101["params"] / PAPER_R101["params"],
        "gmacs_ratio": r101["gmacs"] / PAPER_R101["gmacs"],
    }
    versus_paper["within_10_percent"] = all(abs(v - 1) < 0.10 for v in versus_paper.values())
    print(
        f"paper-r101 384x288 vs paper: params x{versus_paper['params_ratio']:.3f}, "
        f"GMACs x{versus_paper['gmacs_ratio']:.3f}"
    )
    timings = []
    for size, batch in [((64, 48), 16), ((128, 96), 16)]:
        seconds = cpu_train_step_seconds("cpu-tiny", size, batch)
        timings.append(
            {
                "preset": "cpu-tiny",
                "input_size": list(size),
                "batch": batch,
                "threads": 1,
                "train_step_seconds": seconds,
            }
        )
        print(f"cpu-tiny {size[0]}x{size[1]} batch {batch}: {seconds:.3f} s per train step (1 CPU thread)")
    write_result(
        RESULTS,
        {
            "counter": "torch.utils.flop_counter.FlopCounterMode; GMACs = FLOPs / 2e9; batch 1, eval mode",
            "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(),
            "models": rows,
            "references": REFERENCES,
            "paper_r101_384x288": versus_paper,
            "cpu_train_step": timings,
        },
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
