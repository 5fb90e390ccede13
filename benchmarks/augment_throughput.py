"""Augmentation throughput: crops/s of a policy's two compilations at 256x192.

- albumentations compilation (DataLoader-worker path): one process, one thread (cv2 and torch), so the figure
  is crops/s per CPU core;
- torch compilation (on-device path): batches of `--batch` crops, on the CPU (one thread, and all threads)
  and on the GPU where there is one.

Policies: `standard-pose`, a random 5x2 policy of the discrete space (seed 0), and optionally more fixed
ones. Crops are SynthPose person crops. Writes benchmarks/results/augment_throughput.json (atomically).

    PYTHONPATH=. .venv/bin/python benchmarks/augment_throughput.py [--seconds 4] [--batch 64]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from harness import write_result

from da2_platform.data.synthpose import write_synthpose
from da2_platform.data.topdown import TopDownDataset
from search_spaces import (
    DiscreteSpace,
    Policy,
    PoseBatch,
    compile_albumentations,
    compile_torch,
    fixed_policy,
)

INPUT_SIZE = (256, 192)
RESULTS = Path(__file__).resolve().parent / "results" / "augment_throughput.json"


def synthpose_crops(count: int, workdir: Path) -> tuple[list[dict], list[tuple[int, int]]]:
    paths = write_synthpose(workdir / "synthpose", train=count, val=0, seed=0)
    dataset = TopDownDataset(paths.train_annotations, paths.train_images, input_size=INPUT_SIZE)
    items = [dataset[i] for i in range(min(count, len(dataset)))]
    return items, dataset.flip_pairs


def random_policy(seed: int = 0) -> Policy:
    space = DiscreteSpace(num_sub_policies=5, ops_per_sub_policy=2)
    rng = np.random.default_rng(seed)
    decisions = [int(rng.integers(0, n)) for _ in range(10) for n in space.decisions_per_op()]
    return space.to_policy(decisions, name="random-5x2")


def albumentations_rate(policy: Policy, items: list[dict], flip_pairs, seconds: float) -> dict:
    """Crops/s of the CPU pipeline on one thread (wall and process-CPU time)."""
    pipeline = compile_albumentations.compile_policy(policy, flip_pairs, seed=0)
    crops = [
        (
            (it["image"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8),
            it["keypoints"].numpy(),
            it["visible"].numpy(),
        )
        for it in items
    ]
    for image, keypoints, visible in crops[:8]:  # warm-up
        pipeline(image, keypoints, visible)
    done, wall0, cpu0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - wall0 < seconds:
        image, keypoints, visible = crops[done % len(crops)]
        pipeline(image, keypoints, visible)
        done += 1
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return {
        "crops": done,
        "wall_s": round(wall, 3),
        "crops_per_s": round(done / wall, 1),
        "crops_per_cpu_s": round(done / cpu, 1),
    }


def torch_rate(
    policy: Policy, items: list[dict], flip_pairs, device: str, batch_size: int, seconds: float
) -> dict:
    """Crops/s of the batched module on `device`."""
    index = [i % len(items) for i in range(batch_size)]
    batch = PoseBatch(
        images=torch.stack([items[i]["image"] for i in index]).to(device),
        keypoints=torch.stack([items[i]["keypoints"] for i in index]).to(device),
        visible=torch.stack([items[i]["visible"] for i in index]).to(device),
    )
    module = compile_torch.compile_policy(policy, flip_pairs, generator=torch.Generator(device=device).manual_seed(0)).to(device)
    with torch.no_grad():
        module(batch)  # warm-up
        _sync(device)
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            module(batch)
            done += batch_size
        _sync(device)
        wall = time.perf_counter() - start
    return {
        "crops": done,
        "batch": batch_size,
        "wall_s": round(wall, 3),
        "crops_per_s": round(done / wall, 1),
    }


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="timing window per measurement")
    parser.add_argument("--batch", type=int, default=64, help="torch batch size")
    parser.add_argument("--crops", type=int, default=32, help="distinct SynthPose crops to cycle through")
    parser.add_argument("--extra", nargs="*", default=[], help="more fixed policies, e.g. randaugment")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    cv2.setNumThreads(1)
    all_threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        items, flip_pairs = synthpose_crops(args.crops, Path(tmp))
    policies = {"standard-pose": fixed_policy("standard-pose"), "random-5x2": random_policy(0)}
    policies.update({name: fixed_policy(name) for name in args.extra})

    results: dict = {}
    for name, policy in policies.items():
        entry: dict = {"sub_policies": len(policy.sub_policies)}
        torch.set_num_threads(1)
        entry["albumentations_1_core"] = albumentations_rate(policy, items, flip_pairs, args.seconds)
        entry["torch_cpu_1_thread"] = torch_rate(policy, items, flip_pairs, "cpu", args.batch, args.seconds)
        torch.set_num_threads(all_threads)
        entry[f"torch_cpu_{all_threads}_threads"] = torch_rate(
            policy, items, flip_pairs, "cpu", args.batch, args.seconds
        )
        if torch.cuda.is_available():
            entry["torch_cuda"] = torch_rate(policy, items, flip_pairs, "cuda", args.batch, args.seconds)
        results[name] = entry
        print(name, json.dumps(entry))

    report = {
        "input_size": list(INPUT_SIZE),
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": all_threads,
            "platform": platform.platform(),
            "load_average_1min": round(os.getloadavg()[0], 2),  # other jobs on the machine skew the figures
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "torch": torch.__version__,
        },
        "policies": results,
        "note": "albumentations figures are one process on one thread: crops/s per CPU core",
    }
    write_result(args.out, report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
