"""`da2 model-info`: parameters and GMACs of a P2Net configuration, per stage."""

from __future__ import annotations

from typing import Any

import typer

from da2_platform.cli.options import INPUT_SIZE_HELP, parse_input_size
from da2_platform.cli.output import console, emit_json
from da2_platform.errors import ConfigError

DEFAULT_PRESET = "paper-r101"
PAPER_R101_384x288 = {
    "params": 42.5e6,
    "gmacs": 26.3,
}  # Table I of the paper ("GFLOPs" there are multiply-adds)


def describe_model(
    preset: str | None, backbone: str | None, input_size: tuple[int, int], overrides: dict[str, Any]
) -> dict[str, Any]:
    """Build the P2Net on the meta device (no memory, no compute) and count it; JSON-ready."""
    import torch

    from pose_models.complexity import model_complexity
    from pose_models.p2net import INPUT_MULTIPLE, PRESETS, build_p2net

    preset_name = preset or DEFAULT_PRESET
    if preset_name not in PRESETS:
        raise ConfigError(f"--preset: unknown preset {preset_name!r}, choose one of {sorted(PRESETS)}")
    height, width = input_size
    if height % INPUT_MULTIPLE or width % INPUT_MULTIPLE:
        raise ConfigError(
            f"--input-size: height and width must be multiples of {INPUT_MULTIPLE}, got {height}x{width}"
        )
    kwargs = {k: v for k, v in overrides.items() if v is not None}
    if backbone is not None:
        kwargs["backbone"] = backbone
    try:
        with torch.device("meta"):
            model = build_p2net(preset_name, **kwargs)
    except ValueError as e:
        raise ConfigError(str(e)) from None  # names the field: backbone, fusion_channels, ...
    counted = model_complexity(model, input_size)
    return {"preset": preset_name, "config": model.config, "input_size": [height, width], **counted}


def model_info(
    backbone: str | None = typer.Option(
        None,
        "--backbone",
        help="Any timm model name (resnet50, resnet101, "
        "resnet152, convnext_tiny, ...); default: the preset's.",
    ),
    input_size: str = typer.Option("384x288", "--input-size", help=INPUT_SIZE_HELP),
    preset: str | None = typer.Option(
        None,
        "--preset",
        help="Width preset: paper-r50, paper-r101, paper-r152, "
        f"cpu-tiny (default {DEFAULT_PRESET}; --backbone swaps its backbone).",
    ),
    fusion_channels: int | None = typer.Option(None, "--fusion-channels", help="Override the fusion width."),
    refine_channels: int | None = typer.Option(
        None, "--refine-channels", help="Override the refinement bottleneck width."
    ),
    num_joints: int | None = typer.Option(None, "--num-joints", help="Heatmap channels (17 for COCO)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object to stdout."),
) -> None:
    """Parameters and GMACs (multiply-adds, torch's FLOP counter / 2) of a P2Net, per stage."""
    size = parse_input_size(input_size)
    overrides = {
        "fusion_channels": fusion_channels,
        "refine_channels": refine_channels,
        "num_joints": num_joints,
    }
    info = describe_model(preset, backbone, size, overrides)
    if as_json:
        emit_json(info)
        return
    from rich.table import Table

    table = Table(
        title=f"P2Net {info['config']['backbone']} at {size[0]}x{size[1]} ({info['preset']} widths)"
    )
    for column in ("stage", "params (M)", "GMACs"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for stage in info["stages"]:
        table.add_row(stage["stage"], f"{stage['params'] / 1e6:.2f}", f"{stage['gmacs']:.2f}")
    table.add_row("total", f"{info['params'] / 1e6:.2f}", f"{info['gmacs']:.2f}", style="bold")
    console.print(table)
    console.print(
        f"paper, R101 at 384x288: {PAPER_R101_384x288['params'] / 1e6:.1f} M params, "
        f"{PAPER_R101_384x288['gmacs']:.1f} GMACs"
    )
