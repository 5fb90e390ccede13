"""Where a DA2 step's time goes (score estimator, flip-test d objective): each part of one step timed alone, with
a plain step's compiled augmentation beside it. Process CPU seconds, 1 thread, mean over --steps steps on
pre-loaded batches. Writes benchmarks/results/da2_step_profile.json.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/da2_step_profile.py [--config configs/bench_cpu.yaml] [--steps 12]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from harness import ensure_warm_start, write_result

from da2_platform.config import load_config
from da2_platform.data.splits import prepare_data
from da2_platform.data.topdown import TopDownDataset
from da2_platform.search.da2 import DA2Search, with_targets
from da2_platform.training.loop import device_augment

CLOCK = time.process_time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/bench_cpu.yaml")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--out", default="benchmarks/results/da2_step_profile.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(args.config, {"workdir": "work/bench-da2"})
    ensure_warm_start(cfg, args.config)
    data, cpu = prepare_data(cfg), torch.device("cpu")
    size = cfg.data.input_size
    train = TopDownDataset(data.search_train_annotations, data.train_images, input_size=size)
    val = TopDownDataset(data.search_val_annotations, data.search_val_images, input_size=size)
    search = DA2Search(cfg, train, val, cpu)
    step = search.step_fn
    batches = [with_targets(next(search.train_stream), cfg, cpu) for _ in range(6)]
    val_batch = with_targets(next(search.val_stream), cfg, cpu)
    plain_augment = device_augment(cfg, search.learned_policy(), train.flip_pairs, cpu, cfg.seed)
    seconds: dict[str, float] = {}

    def timed(name, fn):
        start = CLOCK()
        out = fn()
        seconds[name] = seconds.get(name, 0.0) + CLOCK() - start
        return out

    for i in range(args.steps):
        batch = batches[i % len(batches)]
        noise = search.policy.sample_noise(batch.images.shape[0], search.generator)
        choices = timed("policy draw", lambda n=noise: step.policy.sample_choices(n, step.m_sigma, step.explore))
        aug = timed("policy augmentation", lambda b=batch, c=choices, n=noise: step.policy.apply_choices(b, c, n))
        w_before = [p.detach().clone() for p in step.weights]
        timed("w step (the plain step's work)", lambda a=aug: step.w_step(a))
        timed("val gradient (2B flip-test images)",
              lambda: step.val_loss(step.model, val_batch, reduction="none").mean().backward())
        step.model.zero_grad(set_to_none=True)
        timed("one shifted forward (train batch)",
              lambda a=aug, w=w_before: step._losses_at(w, [p.detach() for p in step.weights], 1e-4, a))
        timed("plain step's compiled augmentation", lambda b=batch: plain_augment(b))
    per_step_ms = {k: round(v / args.steps * 1000, 1) for k, v in seconds.items()}
    result = {"config": args.config, "steps": args.steps, "threads": 1, "timer": "process CPU seconds",
              "batch_size": cfg.train.batch_size, "input_size": list(size), "per_step_ms": per_step_ms}
    write_result(args.out, result, args.config)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
