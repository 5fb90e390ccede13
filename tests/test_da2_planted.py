"""Planted direction of DA2's d gradient (score estimator): a rotated search-val must raise the credit of rotated
train images, and so the p of the slot holding Rotate, against a paired natural search-val.

The pairing removes everything but the shift: same network, same w step, same train batch (8 images, each once
as it is and once rotated by the policy's own Rotate at +-40 deg), and a search-val of the same 8 crops, rotated
the same way (planted) or as they are (natural). The planted set is extreme on purpose (the rotated train crops
themselves), so a flipped sign in the credits or in the score-function gradient fails at any seed and at the
untrained network; benchmarks/da2_planted.py measures the realistic case (held-out val crops, a whole search)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from da2_platform.config import ExperimentConfig
from da2_platform.data.heatmaps import render_heatmaps
from da2_platform.data.topdown import TopDownDataset
from da2_platform.search.da2 import make_da2_step
from da2_platform.search.relaxed_policy import PolicyChoices, RelaxedPolicy
from da2_platform.training.step import make_optimizer
from pose_models.p2net import P2NetOutput
from search_spaces.batch import PoseBatch

SIZE = (64, 48)
SLOTS = [("Rotate", "Brightness"), ("Contrast", "Cutout"), ("GaussianBlur", "Color")]


class SmallPoseNet(nn.Module):
    """Four 3x3 convs to 17 heatmaps at 1/4 resolution: a cheap stand-in for P2Net (same output type)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU(),
                                  nn.Conv2d(32, 32, 3, 1, 2, dilation=2), nn.BatchNorm2d(32), nn.ReLU(),
                                  nn.Conv2d(32, 17, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> P2NetOutput:
        heatmaps = self.body(images)
        return P2NetOutput(heatmaps=heatmaps, stage_heatmaps=[heatmaps])


def crops(annotations, images) -> PoseBatch:
    ds = TopDownDataset(annotations, images, input_size=SIZE)
    items = [ds[i] for i in range(len(ds))]
    keypoints, visible = torch.stack([i["keypoints"] for i in items]), torch.stack([i["visible"] for i in items])
    heatmaps, weights = render_heatmaps(keypoints, visible, SIZE)
    return PoseBatch(images=torch.stack([i["image"] for i in items]), keypoints=keypoints, visible=weights,
                     heatmaps=heatmaps)


@pytest.mark.parametrize("seed", [0, 1])
def test_rotated_search_val_raises_rotate_p_against_the_paired_natural_val(synthpose_small, seed):
    torch.set_num_threads(1)
    cfg = ExperimentConfig.model_validate({
        "seed": seed, "train": {"lr": 1e-3, "bf16": False},
        "search": {"da2": {"estimator": "score", "hypergradient": "central"}}})
    data = crops(synthpose_small.train_annotations, synthpose_small.train_images)
    torch.manual_seed(seed)
    model = SmallPoseNet()
    policy = RelaxedPolicy(SLOTS, [])
    flip_pairs = TopDownDataset(synthpose_small.train_annotations, synthpose_small.train_images,
                                input_size=SIZE).flip_pairs  # the val side is scored with flip test, as evaluated
    step = make_da2_step(cfg, model, policy, make_optimizer(model, cfg.train), torch.optim.SGD(policy.parameters(), 0),
                         torch.device("cpu"), flip_pairs=flip_pairs)
    g = torch.Generator().manual_seed(seed)
    # 8 images, each once as it is and once rotated by the policy (sub-policy 0, Rotate on / off)
    images = data.select(torch.randperm(len(data), generator=g)[:8].repeat_interleave(2))
    on = torch.tensor([[float(i % 2), 0.0] for i in range(16)])
    choices = PolicyChoices(k=torch.zeros(16, dtype=torch.long), on=on, m=torch.full((16, 2), 40 / 45),
                            z=torch.zeros(16, 2))
    noise = policy.sample_noise(16, torch.Generator().manual_seed(seed))
    aug = policy.apply_choices(images, choices, noise)
    assert not torch.equal(aug.images[1], images.images[1]) and torch.equal(aug.images[0], images.images[0])
    vals = {"planted": aug.select(torch.arange(1, 16, 2)), "natural": aug.select(torch.arange(0, 16, 2))}
    w_before = [p.detach().clone() for p in step.weights]
    loss_at_w = step.w_step(aug)
    ascent, gap = {}, {}
    for name, val in vals.items():
        r, _, _ = step.credits(aug, val, w_before, loss_at_w)
        gap[name] = (r[1::2] - r[0::2]).mean().item()  # rotated minus as-is, per image
        ascent[name] = -step.policy_grads(choices, r, torch.arange(8).repeat_interleave(2))[1][0, 0].item()
    # rotated crops lose joints out of frame, so their loss, gradient and credit are smaller under either val;
    # the shift's own contribution is the paired difference
    assert gap["planted"] > gap["natural"], gap
    assert ascent["planted"] > ascent["natural"], ascent


@pytest.mark.parametrize("seed", [0, 1])
def test_flip_test_val_objective_credits_flipped_train_images(synthpose_small, seed):
    """The d objective scores the predictor the way evaluation does (flip test): a policy that never flips trains
    a network that fails on mirrored crops, which ruins flip-test AP (measured: none 0.044 with flip test, 0.361
    without). Paired on one network, w step and train batch (8 crops, each as it is and mirrored by the policy's
    HorizontalFlip), against a search-val of the same crops: the flip-test objective must raise the credit of the
    mirrored crops, and so HorizontalFlip's p, against the plain objective."""
    torch.set_num_threads(1)
    data = crops(synthpose_small.train_annotations, synthpose_small.train_images)
    flip_pairs = TopDownDataset(synthpose_small.train_annotations, synthpose_small.train_images,
                                input_size=SIZE).flip_pairs
    g = torch.Generator().manual_seed(seed)
    images = data.select(torch.randperm(len(data), generator=g)[:8].repeat_interleave(2))
    on = torch.tensor([[float(i % 2), 0.0] for i in range(16)])
    choices = PolicyChoices(k=torch.zeros(16, dtype=torch.long), on=on, m=torch.full((16, 2), 0.5),
                            z=torch.zeros(16, 2))
    gap, ascent = {}, {}
    for flip_val in (True, False):
        cfg = ExperimentConfig.model_validate({
            "seed": seed, "train": {"lr": 1e-3, "bf16": False},
            "search": {"da2": {"estimator": "score", "val_flip_test": flip_val}}})
        torch.manual_seed(seed)
        model, policy = SmallPoseNet(), RelaxedPolicy([("HorizontalFlip", "Brightness")], flip_pairs)
        step = make_da2_step(cfg, model, policy, make_optimizer(model, cfg.train),
                             torch.optim.SGD(policy.parameters(), 0), torch.device("cpu"), flip_pairs=flip_pairs)
        aug = policy.apply_choices(images, choices, policy.sample_noise(16, torch.Generator().manual_seed(seed)))
        assert torch.equal(aug.images[1], images.images[1].flip(-1)) and torch.equal(aug.images[0], images.images[0])
        val = aug.select(torch.arange(0, 16, 2))  # the crops as they are
        w_before = [p.detach().clone() for p in step.weights]
        loss_at_w = step.w_step(aug)
        r, _, _ = step.credits(aug, val, w_before, loss_at_w)
        gap[flip_val] = (r[1::2] - r[0::2]).mean().item()  # mirrored minus as-is, per crop
        ascent[flip_val] = -step.policy_grads(choices, r, torch.arange(8).repeat_interleave(2))[1][0, 0].item()
    assert gap[True] > gap[False], gap
    assert ascent[True] > ascent[False], ascent
