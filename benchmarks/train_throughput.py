"""Training throughput of P2Net with the shared training step: images/s, achieved FLOP/s and, on a GPU, model
FLOP utilisation (MFU) against the device's dense bf16 peak. Writes benchmarks/results/train_throughput.json.

    .venv/bin/python benchmarks/train_throughput.py --preset cpu-tiny --input-size 64x48 --batch 16 --steps 20
    .venv/bin/python benchmarks/train_throughput.py --preset paper-r50 --input-size 256x192 --batch 64   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from harness import mfu, write_result

from da2_platform.config import ExperimentConfig
from da2_platform.files import read_json
from da2_platform.training.step import TrainingStep, pick_device
from pose_models import build_p2net, model_complexity
from search_spaces.batch import PoseBatch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="cpu-tiny")
    parser.add_argument("--input-size", default="64x48")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/train_throughput.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    h, w = (int(v) for v in args.input_size.split("x"))
    device = pick_device()
    model = build_p2net(args.preset, num_joints=17).to(device)
    gmacs = model_complexity(model, (h, w))["gmacs"]
    cfg = ExperimentConfig.model_validate({"data": {"input_size": [h, w]}, "train": {"batch_size": args.batch}})
    step = TrainingStep.from_config(model, cfg, device)
    g = torch.Generator().manual_seed(0)
    batch = PoseBatch(images=torch.rand(args.batch, 3, h, w, generator=g).to(device),
                      keypoints=(torch.rand(args.batch, 17, 2, generator=g) * torch.tensor([w - 1, h - 1])).to(device),
                      visible=torch.ones(args.batch, 17, device=device))
    for _ in range(args.warmup):
        step(batch)
    start = time.perf_counter()
    for _ in range(args.steps):
        step(batch)
    seconds = time.perf_counter() - start
    images_per_second = args.steps * args.batch / seconds
    flops_per_image = 3 * 2 * gmacs * 1e9  # forward + backward ~ 3x forward; 2 FLOPs per multiply-add
    achieved = images_per_second * flops_per_image
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    entry = {"preset": args.preset, "input_size": [h, w], "batch": args.batch, "device": name,
             "threads": args.threads, "steps": args.steps, "images_per_second": images_per_second,
             "gmacs_per_image": gmacs, "achieved_tflops": achieved / 1e12,
             "mfu": mfu(flops_per_image * args.steps * args.batch, seconds, name), "torch": torch.__version__}
    out = Path(args.out)
    saved = read_json(out) if out.is_file() else {}
    runs = saved if isinstance(saved, list) else saved.get("runs", [])  # a list: written before provenance
    runs = [r for r in runs if (r["preset"], r["input_size"], r["batch"], r["device"]) !=
            (args.preset, [h, w], args.batch, name)] + [entry]
    write_result(out, {"runs": runs})
    print(json.dumps(entry, indent=2))


if __name__ == "__main__":
    main()
