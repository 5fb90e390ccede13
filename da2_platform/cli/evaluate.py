"""`da2 evaluate`: COCO keypoint AP/AR of a predictions file, with pose rescoring and OKS-NMS."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from da2_platform.cli.options import Rescore
from da2_platform.cli.output import emit_json, print_table


def evaluate(
    annotations: Annotated[Path, typer.Option("--annotations", help="Ground truth: COCO person-keypoints JSON.")],
    predictions: Annotated[Path, typer.Option(
        "--predictions", help="COCO keypoint results list (image_id, category_id, keypoints with per-joint "
        "scores, score; optional bbox, area, box_score).")],
    rescore: Annotated[Rescore | None, typer.Option(
        "--rescore", help="bbox_keypoint: score = box_score (else score) x mean of joint scores above 0.2.")] = None,
    oks_nms: Annotated[float | None, typer.Option(
        "--oks-nms", min=0.0, max=1.0, help="OKS-NMS per image at this OKS (e.g. 0.9), after rescoring.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the metrics as one JSON object on stdout.")] = False,
) -> None:
    """COCO keypoint AP, AP50, AP75, APm, APl and AR of a predictions file (pycocotools COCOeval).

    With --rescore and --oks-nms, poses are rescored and suppressed first, as mmpose's CocoMetric does."""
    from da2_platform.evaluation import evaluate_keypoints

    metrics = evaluate_keypoints(annotations, predictions, rescore=rescore,
                                 oks_nms=oks_nms)
    if json_out:
        emit_json(metrics)
    else:
        print_table(f"COCO keypoints: {predictions}", ["metric", "value"], [[k, v] for k, v in metrics.items()])
