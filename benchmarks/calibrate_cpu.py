"""Learning curves (val AP against steps) behind the CPU benchmark/demo setting. One thread.

1. The warm start exactly as the demo and configs/bench_cpu.yaml make it (`da2_platform.warmstart`: standard-pose
   on the train split of SynthPose seed 1000), with val AP of the experiment's val split at `--pretrain-evals`.
   Written where the config's model.init_weights points, so later runs reuse it.
2. From that warm start, fixed:none and fixed:standard-pose with the final-training code (`child_fit` +
   `run_child`) on the full train split, val AP every `--eval-every` steps.
Writes benchmarks/results/calibrate_cpu.json.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/calibrate_cpu.py [--config configs/bench_cpu.yaml]
        [--finetune-steps 300] [--set train.lr=0.001 ...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from harness import parse_set, write_result

from da2_platform.config import ExperimentConfig, load_config
from da2_platform.data.splits import prepare_data
from da2_platform.inference import evaluate_model
from da2_platform.policies import resolve_policy
from da2_platform.search.children import child_fit, run_child
from da2_platform.warmstart import PretrainSettings, warm_start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/bench_cpu.yaml")
    parser.add_argument("--set", nargs="*", default=[], help="dotted config overrides key=value (YAML values)")
    parser.add_argument("--pretrain-steps", type=int, default=PretrainSettings().steps)
    parser.add_argument("--pretrain-evals", type=int, nargs="*", default=[100, 200, 300])
    parser.add_argument("--finetune-steps", type=int, default=300)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--policies", nargs="*", default=["fixed:none", "fixed:standard-pose"],
                        help="fine-tuning runs (none: the warm start's curve only)")
    parser.add_argument("--out", default="benchmarks/results/calibrate_cpu.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    overrides = parse_set(args.set)
    cfg = load_config(args.config, overrides)
    data = prepare_data(cfg)
    size, device = cfg.data.input_size, torch.device("cpu")
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.is_file() else {}
    result.update(config=args.config, overrides=overrides, threads=1, device="cpu", torch=torch.__version__,
                  note="val AP of the config's val split; differences under ~0.02 are noise")

    def val_ap(model) -> float:
        return round(evaluate_model(model, data.val_annotations, data.val_images, size, device,
                                    flip_test=cfg.train.flip_test, decoder=cfg.train.decoder)["AP"], 4)

    settings = PretrainSettings(steps=args.pretrain_steps)
    pre_curve: list[dict] = []
    start = time.perf_counter()

    def on_step(step: int, model) -> None:
        if step in args.pretrain_evals or step == settings.steps:
            pre_curve.append({"step": step, "val_ap": val_ap(model), "seconds": round(time.perf_counter() - start)})
            print(json.dumps({"pretrain": pre_curve[-1]}), flush=True)

    raw = cfg.model_dump(mode="json")
    raw["model"]["init_weights"] = None
    ws = warm_start(ExperimentConfig.model_validate(raw), settings,
                    folder=cfg.model.init_weights.parent if cfg.model.init_weights else None, threads=1,
                    on_step=on_step)
    if not ws.cached:
        result["warm_start"] = {"steps": settings.steps, "images": settings.images, "seed": settings.seed,
                                "lr": settings.lr, "policy": "fixed:standard-pose", "seconds": round(ws.seconds),
                                "curve": pre_curve, "path": str(ws.path)}
        write_result(out, result, args.config, overrides)
    raw = cfg.model_dump(mode="json")
    raw["model"]["init_weights"] = str(ws.path)
    cfg = ExperimentConfig.model_validate(raw)
    result.setdefault("finetune", [])
    for name in args.policies:
        fs = {"cfg": cfg.model_dump(mode="json"), "space": None, "child_steps": args.finetune_steps,
              "evals": args.finetune_steps // args.eval_every,
              "train_annotations": str(data.full_train_annotations), "train_images": str(data.train_images),
              "eval_annotations": str(data.val_annotations), "eval_images": str(data.val_images)}
        curve: list[dict] = []
        t0 = time.perf_counter()
        fit = child_fit(cfg, fs, resolve_policy(name).policy, device)

        def report(metrics: dict, blob: bytes, curve=curve, name=name) -> None:
            curve.append({"step": metrics["step"], "val_ap": round(metrics["val_ap"], 4)})
            print(json.dumps({name: curve[-1]}), flush=True)

        run_child(fit, fs, report)
        result["finetune"].append({"policy": name, "lr": cfg.train.lr, "model": cfg.model.build_kwargs(17),
                                   "curve": curve, "seconds": round(time.perf_counter() - t0)})
        write_result(out, result, args.config, overrides)


if __name__ == "__main__":
    main()
