"""`da2 policy show | validate | render | schema`: read, check and picture an augmentation policy.

A policy reference is a JSON file path, `fixed:NAME` (none, standard-pose, randaugment[:N:M], trivialaugment)
or a `models:/NAME@ALIAS` registry URI (`da2_platform.policies.resolve_policy`).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from da2_platform.cli.options import INPUT_SIZE_HELP, parse_input_size
from da2_platform.cli.output import console, emit_json, print_table
from da2_platform.policies import resolve_policy
from search_spaces import compile_albumentations

if TYPE_CHECKING:
    import numpy as np

    from search_spaces.policy import OpSetting, Policy

app = typer.Typer(
    help="Read, check and picture augmentation policies (JSON files, fixed:NAME, models:/ URIs).",
    no_args_is_help=True,
)

TRACKING_HELP = (
    "MLflow tracking URI for models:/ references (default: MLFLOW_TRACKING_URI, then the config's)."
)
CONFIG_HELP = "Experiment YAML whose tracking store a models:/ reference is read from."


def describe_op(op: OpSetting) -> str:
    """ "Rotate p=0.60 m=0.33 (a=+-15 deg)": the op with its physical amount a."""
    from search_spaces.ops import OPS

    spec = OPS[op.name]
    text = f"{op.name} p={op.p:.2f}"
    if spec.has_magnitude:
        amount = spec.amount(op.m)
        text += f" m={op.m:.2f} (a={'+-' if spec.signed else ''}{amount:.3g}: {spec.unit})"
    return text


def _summary(ref: str, policy: Policy) -> dict:
    return {
        "policy": ref,
        "name": policy.name,
        "search_space": policy.search_space,
        "schema_version": policy.schema_version,
        "num_sub_policies": len(policy.sub_policies),
        "ops_per_sub_policy": sorted({len(s.ops) for s in policy.sub_policies}),
        "ops_used": sorted({op.name for s in policy.sub_policies for op in s.ops}),
    }


@app.command("validate")
def validate(
    policy: str = typer.Argument(..., help="Policy JSON file, fixed:NAME or models:/ URI."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object to stdout."),
    tracking_uri: str | None = typer.Option(None, "--tracking-uri", help=TRACKING_HELP),
    config: Path | None = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
) -> None:
    """Check a policy file against the schema; an invalid one prints `error: FILE: FIELD: REASON`, exit 2."""
    loaded = resolve_policy(policy, config, tracking_uri).policy
    summary = {"valid": True, **_summary(policy, loaded)}
    if json_out:
        emit_json(summary)
        return
    console.print(
        f"[green]valid[/green]: {policy}: {summary['num_sub_policies']} sub-policies, "
        f"ops per sub-policy {summary['ops_per_sub_policy']}, search space {loaded.search_space}"
    )


@app.command("schema")
def schema() -> None:
    """Print the JSON Schema of a policy file (op names, ranges, required keys) to stdout."""
    from search_spaces.policy import Policy

    emit_json(Policy.json_schema())


@app.command("show")
def show(
    policy: str = typer.Argument(..., help="Policy JSON file, fixed:NAME or models:/ URI."),
    top: int = typer.Option(0, "--top", min=0, help="Only the N heaviest sub-policies (0: all)."),
    json_out: bool = typer.Option(False, "--json", help="Print the policy and a summary as JSON to stdout."),
    tracking_uri: str | None = typer.Option(None, "--tracking-uri", help=TRACKING_HELP),
    config: Path | None = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
) -> None:
    """Print a policy as a table: one row per sub-policy with its weight and ops (p, m and physical amount)."""
    loaded = resolve_policy(policy, config, tracking_uri).policy
    shown = loaded.top(top) if top else loaded
    if json_out:
        emit_json({**_summary(policy, loaded), "policy_json": shown.to_dict()})
        return
    rows = [
        [k, sub.weight, "; ".join(describe_op(op) for op in sub.ops)]
        for k, sub in enumerate(shown.sub_policies)
    ]
    title = f"{loaded.name or policy} ({len(loaded.sub_policies)} sub-policies, {loaded.search_space})"
    print_table(title, ["#", "weight", "ops (in order)"], rows)
    if loaded.metadata:
        console.print(f"metadata: {loaded.metadata}")


@app.command("render")
def render(
    policy: str = typer.Argument(..., help="Policy JSON file, fixed:NAME or models:/ URI."),
    annotations: Path = typer.Option(..., "--annotations", help="COCO person-keypoints JSON."),
    images: Path = typer.Option(..., "--images", help="Folder of the images it names."),
    out: Path = typer.Option(Path("policy_grid.png"), "--out", help="PNG to write."),
    columns: int = typer.Option(4, "--columns", min=1, max=16, help="Crops per row."),
    max_rows: int = typer.Option(
        10, "--max-rows", min=1, max=64, help="At most this many sub-policies (heaviest)."
    ),
    input_size: str = typer.Option("256x192", "--input-size", help=INPUT_SIZE_HELP),
    seed: int = typer.Option(0, "--seed", help="Seed of the augmentations."),
    json_out: bool = typer.Option(False, "--json", help="Print what was written as JSON to stdout."),
    tracking_uri: str | None = typer.Option(None, "--tracking-uri", help=TRACKING_HELP),
    config: Path | None = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
) -> None:
    """Draw a grid of augmented crops with the skeleton: a first row of originals, then one row per sub-policy
    (its ops applied by the albumentations compiler, each op with its own probability)."""
    from da2_platform.data.topdown import TopDownDataset
    from da2_platform.errors import ConfigError, DataError
    from da2_platform.files import write_bytes_atomic

    size = parse_input_size(input_size)
    loaded = resolve_policy(policy, config, tracking_uri).policy
    dataset = TopDownDataset(annotations, images, input_size=size)
    if len(dataset) == 0:
        raise DataError(f"{annotations}: no person with keypoints to render")
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--out {out}: the grid is written as PNG; name the file *.png")
    shown = loaded.top(max_rows) if len(loaded.sub_policies) > max_rows else loaded
    picks = [round(i * (len(dataset) - 1) / max(columns - 1, 1)) for i in range(min(columns, len(dataset)))]
    crops = [_crop(dataset[i]) for i in picks]
    rows = [("original", list(crops))]
    for k, sub in enumerate(shown.sub_policies):
        pipeline = compile_albumentations.compile_policy(_one_sub_policy(sub.ops), dataset.flip_pairs, seed=seed + k)
        label = f"w={sub.weight:.3f}\n" + "\n".join(describe_op(op) for op in sub.ops)
        rows.append((label, [pipeline(*crop) for crop in crops]))
    png = _draw_grid(rows, dataset.flip_pairs, dataset.num_joints)
    write_bytes_atomic(out, png)
    result = {
        "out": str(out),
        "rows": len(rows) - 1,
        "columns": len(crops),
        "sub_policies_total": len(loaded.sub_policies),
        "sub_policies_shown": len(shown.sub_policies),
    }
    if json_out:
        emit_json(result)
        return
    extra = (
        "" if shown is loaded else f" (the {len(shown.sub_policies)} heaviest of {len(loaded.sub_policies)})"
    )
    console.print(f"wrote {out}: {result['rows']} sub-policies{extra} x {len(crops)} crops")


def _one_sub_policy(ops: tuple[OpSetting, ...]) -> Policy:
    from search_spaces.policy import Policy, SubPolicy

    return Policy((SubPolicy(1.0, ops),))


def _crop(item: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    image = (item["image"].permute(1, 2, 0).numpy() * 255.0).round().astype("uint8")
    return image, item["keypoints"].numpy(), item["visible"].numpy()


def _draw_skeleton(
    image: np.ndarray,
    keypoints: np.ndarray,
    visible: np.ndarray,
    flip_pairs: list[tuple[int, int]],
    num_joints: int,
) -> np.ndarray:
    """Limbs in white, left joints blue, right joints orange, others green; only visible joints."""
    import cv2

    from da2_platform.data.synthpose import COCO_SKELETON

    canvas = image.copy()
    shown = visible > 0
    if num_joints == 17:
        for a, b in COCO_SKELETON:  # 1-based, as in COCO's category "skeleton"
            if shown[a - 1] and shown[b - 1]:
                cv2.line(
                    canvas, _pt(keypoints[a - 1]), _pt(keypoints[b - 1]), (255, 255, 255), 1, cv2.LINE_AA
                )
    left = {a for a, _ in flip_pairs}
    right = {b for _, b in flip_pairs}
    for j in range(num_joints):
        if shown[j]:
            colour = (40, 120, 255) if j in left else (255, 140, 0) if j in right else (0, 220, 0)
            cv2.circle(canvas, _pt(keypoints[j]), 3, colour, -1, cv2.LINE_AA)
    return canvas


def _pt(point: np.ndarray) -> tuple[int, int]:
    return round(float(point[0])), round(float(point[1]))


def _draw_grid(rows: list[tuple[str, list]], flip_pairs: list[tuple[int, int]], num_joints: int) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n_rows, n_cols = len(rows), len(rows[0][1])
    height, width = rows[0][1][0][0].shape[:2]
    panel = 1.6  # inches per crop column
    label_width = 0.2 + 0.052 * max(len(line) for label, _ in rows for line in label.splitlines())
    figure_width = label_width + n_cols * panel
    figure = Figure(figsize=(figure_width, n_rows * panel * height / width + 0.2), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.subplots(n_rows, n_cols, squeeze=False)
    for r, (label, crops) in enumerate(rows):
        for c, (image, keypoints, visible) in enumerate(crops):
            ax = axes[r][c]
            ax.imshow(_draw_skeleton(image, keypoints, visible, flip_pairs, num_joints))
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=6.5, labelpad=6)
    figure.subplots_adjust(
        left=label_width / figure_width, right=0.99, top=0.99, bottom=0.01, wspace=0.04, hspace=0.04
    )
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
