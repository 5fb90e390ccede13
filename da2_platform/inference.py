"""Top-down inference: crops -> P2Net (+ flip test) -> decode -> image coordinates -> COCO results -> AP."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from da2_platform.data.heatmaps import decode_heatmaps, flip_heatmaps_back, heatmap_to_image_coords
from da2_platform.data.topdown import TopDownDataset
from da2_platform.evaluation import evaluate_keypoints


@torch.no_grad()
def predict_heatmaps(model: torch.nn.Module, images: torch.Tensor, flip_pairs, flip_test: bool,
                     flip_shift: bool = True) -> torch.Tensor:
    """Refined heatmaps; with flip test, the average of the original and the flipped-back mirrored pass."""
    heatmaps = model(images).heatmaps.float()
    if flip_test:
        flipped = model(torch.flip(images, dims=[3])).heatmaps.float()
        heatmaps = (heatmaps + flip_heatmaps_back(flipped, flip_pairs, shift=flip_shift)) / 2
    return heatmaps


@torch.no_grad()
def predict_dataset(model: torch.nn.Module, dataset: TopDownDataset, device: torch.device, batch_size: int = 32,
                    flip_test: bool = True, decoder: str = "dark", flip_shift: bool = True) -> list[dict]:
    """COCO keypoint results for every crop of `dataset` (GT or detector boxes)."""
    model.eval().to(device)
    results: list[dict] = []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    for samples in loader:
        images = samples["image"].to(device)
        heatmaps = predict_heatmaps(model, images, dataset.flip_pairs, flip_test, flip_shift)
        coords, scores = decode_heatmaps(heatmaps.cpu(), method=decoder)
        points = heatmap_to_image_coords(coords, samples["center"].numpy(), samples["scale"].numpy(),
                                         tuple(heatmaps.shape[-2:]))
        for i in range(points.shape[0]):
            kps = np.concatenate([points[i], scores[i][:, None]], axis=1)
            box_score = float(samples["box_score"][i])
            results.append({
                "image_id": int(samples["image_id"][i]),
                "category_id": 1,
                "keypoints": [round(float(v), 3) for v in kps.reshape(-1)],
                "score": box_score * float(scores[i].mean()),
                "box_score": box_score,
                "area": float(samples["area"][i]),
            })
    return results


def evaluate_model(model: torch.nn.Module, annotations: Path, images: Path, input_size: tuple[int, int],
                   device: torch.device, flip_test: bool = True, decoder: str = "dark",
                   batch_size: int = 32) -> dict[str, float]:
    """COCO keypoint AP of `model` on an annotated split, with ground-truth boxes (pycocotools)."""
    dataset = TopDownDataset(annotations, images, input_size=input_size, require_keypoints=False)
    results = predict_dataset(model, dataset, device, batch_size, flip_test, decoder)
    return evaluate_keypoints(annotations, results, rescore="bbox_keypoint", oks_nms=None)
