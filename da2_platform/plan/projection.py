"""A plan at a named scale (`--scale coco-r50-256x192`): the named COCO config's work, priced from the unit
costs measured on a small config at their FLOP rate.

A training step does about 3x its forward pass's FLOPs (forward, then backward through activations and
weights): 6 x MACs x batch. The measured plain step gives a FLOP rate per device-second; the named config's
steps cost their FLOPs at that rate (or at `--tflops`). DA2 steps keep their measured ratio to a plain step,
an evaluation's crop scales with the MACs, a checkpoint with the parameters; setup is not scaled.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from da2_platform.config import ExperimentConfig, load_config
from da2_platform.errors import ConfigError
from da2_platform.plan.costs import UnitCosts, held_per_trial

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TRAIN_FLOPS_PER_MAC = 6  # 2 FLOPs a multiply-add, x3 for forward + backward


def scale_names() -> list[str]:
    return sorted(p.stem.replace("_", "-") for p in CONFIGS.glob("coco_*.yaml"))


def scale_config(name: str) -> tuple[ExperimentConfig, Path]:
    """`coco-r50-256x192` -> configs/coco_r50_256x192.yaml, loaded."""
    path = CONFIGS / f"{name.replace('-', '_')}.yaml"
    if name not in scale_names():
        raise ConfigError(f"da2 plan: --scale: unknown scale {name!r}; known: {', '.join(scale_names())} "
                          f"(the COCO configs in {CONFIGS})")
    return load_config(path), path


def model_size(cfg: ExperimentConfig) -> tuple[float, float]:
    """(GMACs of one crop's forward pass, parameters) of the config's P2Net, counted as `da2 model-info` does."""
    from da2_platform.cli.model_info import describe_model

    overrides = {"fusion_channels": cfg.model.fusion_channels, "refine_channels": cfg.model.refine_channels,
                 "num_joints": 17}
    info = describe_model(cfg.model.preset, cfg.model.backbone, cfg.data.input_size, overrides)
    return float(info["gmacs"]), float(info["params"])


def project(costs: UnitCosts, base: ExperimentConfig, target: ExperimentConfig, target_name: str,
            tflops: float | None = None) -> tuple[UnitCosts, dict]:
    """The unit costs of `target` on the device `costs` were measured on (or one of `tflops` sustained), and the
    projection's facts and assumptions."""
    base_gmacs, base_params = model_size(base)
    gmacs, params = model_size(target)
    base_flops = TRAIN_FLOPS_PER_MAC * base_gmacs * 1e9 * base.train.batch_size
    flops = TRAIN_FLOPS_PER_MAC * gmacs * 1e9 * target.train.batch_size
    measured_rate = base_flops / costs.train_step  # FLOP per device-second
    rate = measured_rate if tflops is None else tflops * 1e12
    slower = measured_rate / rate  # how much longer each FLOP takes at the assumed rate
    _, held = held_per_trial(target)
    train_step = flops / rate
    ratios = {e: s / costs.train_step for e, s in costs.da2_step.items()}
    projected = replace(
        costs, devices_held=held, train_step=train_step,
        da2_step={e: train_step * r for e, r in ratios.items()},
        eval_crop=costs.eval_crop * gmacs / base_gmacs * slower,
        checkpoint=costs.checkpoint * params / base_params,
        final_step=None if costs.final_step is None else costs.final_step * flops / base_flops * slower,
        device=(f"{costs.device}, projected" if tflops is None else f"a device of {tflops:g} TFLOP/s sustained"),
        source=f"projected to {target_name} from {costs.source}", notes=list(costs.notes))
    facts = {"scale": target_name, "measured_config": base.name, "measured_device": costs.device,
             "measured": {"gmacs_per_crop": base_gmacs, "params": base_params, "batch": base.train.batch_size,
                          "train_flops_per_step": base_flops, "train_step_device_seconds": costs.train_step,
                          "flops_per_device_second": measured_rate},
             "target": {"gmacs_per_crop": gmacs, "params": params, "batch": target.train.batch_size,
                        "input_size": list(target.data.input_size), "train_flops_per_step": flops,
                        "flops_per_device_second": rate, "train_step_device_seconds": train_step},
             "da2_step_ratio": ratios}
    rate_words = (f"the measured rate, {measured_rate / 1e9:.3g} GFLOP/s per device" if tflops is None
                  else f"--tflops {tflops:g} (the measured {measured_rate / 1e9:.3g} GFLOP/s not used)")
    ratio_words = ", ".join(f"{e} {r:.2f}x" for e, r in sorted(ratios.items())) or "none measured"
    facts["assumptions"] = [
        (f"measured: {base.name} on {costs.device} ({costs.source.split(' (')[0]}): a plain step of "
        f"{TRAIN_FLOPS_PER_MAC} x {base_gmacs:.3g} GMACs x batch {base.train.batch_size} = {base_flops / 1e9:.3g} "
        f"GFLOP in {costs.train_step:.3g} device-s"),
        (f"scaled: a {target_name} step ({TRAIN_FLOPS_PER_MAC} x {gmacs:.3g} GMACs x batch {target.train.batch_size}"
        f" = {flops / 1e12:.3g} TFLOP) at {rate_words}: {train_step:.3g} device-s"),
        (f"scaled: DA2 steps keep their measured ratio to a plain step ({ratio_words}); an evaluated crop by the "
        f"MACs ratio ({gmacs / base_gmacs:.3g}x); a checkpoint by the parameter ratio ({params / base_params:.3g}x)"),
        ("not scaled: a trial's setup (data set, model) and data loading per step, as measured on the small config "
        "(COCO's annotation file and JPEG decoding in loader workers cost more)"),
        ("a FLOP rate measured on a small model is not a large model's rate on the same device, nor a GPU's: give "
        "--tflops for the target device's sustained training rate"),
    ]
    return projected, facts
