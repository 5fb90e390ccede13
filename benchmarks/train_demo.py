"""Train the CPU demo config on SynthPose and measure: val AP after N steps (against the untrained model),
steps/s and peak memory. Writes benchmarks/results/train_demo.json.

    .venv/bin/python benchmarks/train_demo.py [--steps 300] [--config configs/demo.yaml] [--policy fixed:standard-pose]
        [--save-backbone PATH] [--save-model PATH]   # loadable as model.pretrained_path / model.init_weights
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch
from harness import parse_set, write_result

from da2_platform.config import load_config
from da2_platform.data.splits import prepare_data
from da2_platform.data.topdown import TopDownDataset
from da2_platform.inference import evaluate_model
from da2_platform.policies import resolve_policy
from da2_platform.search.da2 import BatchStream
from da2_platform.training.loop import build_model, device_augment
from da2_platform.training.step import TrainingStep, seed_everything


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--policy", default="fixed:standard-pose")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", nargs="*", default=[], help="dotted config overrides key=value (YAML values)")
    parser.add_argument("--out", default="benchmarks/results/train_demo.json")
    parser.add_argument("--save-backbone", default=None,
                        help="also write the trained backbone's weights here (a local pretrained_path for "
                             "model.pretrained_path: this machine cannot download ImageNet weights)")
    parser.add_argument("--save-model", default=None,
                        help="also write the whole trained P2Net's state dict here (loadable as model.init_weights)")
    args = parser.parse_args()


    torch.set_num_threads(args.threads)
    overrides = parse_set(args.set)
    cfg = load_config(args.config, {"workdir": "work/bench-train", **overrides})
    data = prepare_data(cfg)
    device = torch.device("cpu")
    seed_everything(cfg.seed)
    train = TopDownDataset(data.full_train_annotations, data.train_images, input_size=cfg.data.input_size)
    model = build_model(cfg, train.num_joints)
    policy = resolve_policy(args.policy).policy if args.policy != "none" else None
    step = TrainingStep.from_config(model, cfg, device, device_augment(cfg, policy, train.flip_pairs, device, 0))

    def val_ap() -> float:
        return evaluate_model(model, data.val_annotations, data.val_images, cfg.data.input_size, device,
                              flip_test=cfg.train.flip_test, decoder=cfg.train.decoder)["AP"]

    curve = [{"step": 0, "val_ap": val_ap()}]
    stream, train_seconds, losses = BatchStream(train, cfg), 0.0, []
    for i in range(1, args.steps + 1):
        t = time.perf_counter()
        losses.append(step(next(stream)).loss)
        train_seconds += time.perf_counter() - t
        if i % args.eval_every == 0 or i == args.steps:
            curve.append({"step": i, "val_ap": val_ap(), "loss": sum(losses[-20:]) / len(losses[-20:])})
            print(json.dumps(curve[-1]), flush=True)
    result = {
        "config": args.config, "overrides": overrides, "policy": args.policy, "model": cfg.model.preset,
        "input_size": list(cfg.data.input_size), "batch_size": cfg.train.batch_size, "threads": args.threads,
        "train_crops": len(train), "steps": args.steps, "steps_per_second": args.steps / train_seconds,
        "images_per_second": args.steps * cfg.train.batch_size / train_seconds,
        "untrained_val_ap": curve[0]["val_ap"], "final_val_ap": curve[-1]["val_ap"], "curve": curve,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "device": "cpu", "torch": torch.__version__,
    }
    for path, state in ((args.save_backbone, model.backbone.body.state_dict()), (args.save_model, model.state_dict())):
        if path:
            import io

            from da2_platform.files import write_bytes_atomic

            buf = io.BytesIO()
            torch.save(state, buf)
            write_bytes_atomic(Path(path), buf.getvalue())
    result.update(saved_backbone=args.save_backbone, saved_model=args.save_model)
    write_result(args.out, result, args.config, overrides)
    print(json.dumps({k: v for k, v in result.items() if k != "curve"}, indent=2))


if __name__ == "__main__":
    main()
