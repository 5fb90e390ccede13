"""P2Net losses: joint-weighted L2, OHKM against hand-built cases and properties, per-sample reduction for DA2."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pose_models import P2NetLoss, P2NetOutput, joint_mse, ohkm
from pose_models.losses import PAPER_OHKM_TOPK


def test_joint_mse_is_pixel_mean_squared_error_times_joint_weight() -> None:
    target = torch.zeros(1, 3, 2, 2)
    pred = torch.zeros(1, 3, 2, 2)
    pred[0, 0, 0, 0] = 2.0  # joint 0: one pixel off by 2 -> 4 / 4 pixels = 1
    pred[0, 1] = 1.0  # joint 1: every pixel off by 1 -> 1, but its weight halves it
    pred[0, 2] = 3.0  # joint 2: unlabelled (weight 0)
    weights = torch.tensor([[1.0, 0.5, 0.0]])
    assert torch.allclose(joint_mse(pred, target, weights), torch.tensor([[1.0, 0.5, 0.0]]))
    assert torch.allclose(joint_mse(pred, target, weights[..., None]), torch.tensor([[1.0, 0.5, 0.0]]))


def test_joint_mse_refuses_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        joint_mse(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 8, 8), torch.ones(1, 3))
    with pytest.raises(ValueError, match="target_weights must be"):
        joint_mse(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4), torch.ones(1, 4))


def test_ohkm_keeps_the_k_hardest_joints_of_each_sample() -> None:
    per_joint = torch.tensor(
        [
            [0.1, 0.9, 0.3, 0.7, 0.2],  # top 2: 0.9 (joint 1), 0.7 (joint 3)
            [0.5, 0.0, 0.6, 0.1, 0.8],  # top 2: 0.8 (joint 4), 0.6 (joint 2)
        ],
        requires_grad=True,
    )
    mined = ohkm(per_joint, k=2)
    assert torch.allclose(mined, torch.tensor([0.8, 0.7]))
    mined.sum().backward()
    # only the mined joints receive gradient, each 1/k
    expected = torch.tensor([[0, 0.5, 0, 0.5, 0], [0, 0, 0.5, 0, 0.5]])
    assert torch.equal(per_joint.grad, expected)


def test_ohkm_k_larger_than_joint_count_averages_all_and_k_below_one_is_refused() -> None:
    per_joint = torch.tensor([[1.0, 2.0, 3.0]])
    assert torch.allclose(ohkm(per_joint, k=PAPER_OHKM_TOPK), torch.tensor([2.0]))
    with pytest.raises(ValueError, match="at least 1"):
        ohkm(per_joint, k=0)
    with pytest.raises(ValueError, match="at least 1"):
        P2NetLoss(ohkm_topk=0)


joint_losses = st.lists(
    st.lists(st.floats(0, 100, allow_nan=False, width=32), min_size=17, max_size=17), min_size=1, max_size=4
)


@settings(max_examples=60, deadline=None)
@given(values=joint_losses, k=st.integers(1, 17), seed=st.integers(0, 2**16))
def test_ohkm_properties(values: list[list[float]], k: int, seed: int) -> None:
    per_joint = torch.tensor(values, dtype=torch.float64)
    mined = ohkm(per_joint, k)
    assert mined.shape == (per_joint.shape[0],)
    assert (mined >= per_joint.mean(dim=1) - 1e-9).all()  # the hardest k average at least the mean
    assert (mined <= per_joint.max(dim=1).values + 1e-9).all()
    if k < 17:
        assert (ohkm(per_joint, k + 1) <= mined + 1e-9).all()  # mining more joints never raises the loss
    permutation = torch.randperm(17, generator=torch.Generator().manual_seed(seed))
    assert torch.allclose(ohkm(per_joint[:, permutation], k), mined)  # joint order does not matter
    assert torch.allclose(ohkm(per_joint, 17), per_joint.mean(dim=1))


def _output_with(targets: torch.Tensor, final_error: torch.Tensor, stage_error: float) -> P2NetOutput:
    """Heatmaps off from `targets` by a constant per joint (final) and per stage (uniform)."""
    final = targets + final_error[:, :, None, None]
    stages = [targets + stage_error * (i + 1) for i in range(4)]
    return P2NetOutput(heatmaps=final, stage_heatmaps=stages)


def test_p2net_loss_hand_built_case() -> None:
    targets = torch.rand(2, 17, 8, 6, generator=torch.Generator().manual_seed(0))
    weights = torch.ones(2, 17)
    final_error = torch.zeros(2, 17)
    final_error[0, :3] = torch.tensor([3.0, 2.0, 1.0])  # sample 0: three hard joints, squared errors 9, 4, 1
    final_error[1, 5] = 2.0  # sample 1: one hard joint, squared error 4
    output = _output_with(targets, final_error, stage_error=0.1)
    per_sample = P2NetLoss(ohkm_topk=2)(output, targets, weights, reduction="none")
    assert torch.allclose(per_sample.refinement, torch.tensor([(9 + 4) / 2, (4 + 0) / 2]))
    # the stages are off by 0.1, 0.2, 0.3, 0.4 on every joint: mean of squares
    stage_mean = sum((0.1 * (i + 1)) ** 2 for i in range(4)) / 4
    assert torch.allclose(per_sample.extraction, torch.full((2,), stage_mean))
    assert torch.allclose(per_sample.total, per_sample.extraction + per_sample.refinement)

    weighted = P2NetLoss(ohkm_topk=2, extraction_weight=0.5, refinement_weight=2.0)(output, targets, weights)
    assert weighted.total.ndim == 0
    assert torch.allclose(weighted.total, (0.5 * per_sample.extraction + 2.0 * per_sample.refinement).mean())
    assert torch.allclose(weighted.refinement, per_sample.refinement.mean())


def test_p2net_loss_ignores_zero_weight_joints_in_mining() -> None:
    targets = torch.zeros(1, 17, 4, 4)
    final_error = torch.zeros(1, 17)
    final_error[0, 0] = 10.0  # huge error on an unlabelled joint
    final_error[0, 1] = 1.0
    weights = torch.ones(1, 17)
    weights[0, 0] = 0.0
    loss = P2NetLoss(ohkm_topk=1)(_output_with(targets, final_error, 0.0), targets, weights)
    assert torch.allclose(loss.refinement, torch.tensor(1.0))


def test_per_sample_losses_do_not_depend_on_the_rest_of_the_batch() -> None:
    gen = torch.Generator().manual_seed(3)
    targets = torch.rand(3, 17, 8, 6, generator=gen)
    output = P2NetOutput(
        heatmaps=torch.rand(3, 17, 8, 6, generator=gen),
        stage_heatmaps=[torch.rand(3, 17, 8, 6, generator=gen) for _ in range(4)],
    )
    weights = (torch.rand(3, 17, generator=gen) > 0.3).float()
    loss = P2NetLoss()
    batch = loss(output, targets, weights, reduction="none").total
    for i in range(3):
        alone = P2NetOutput(
            heatmaps=output.heatmaps[i : i + 1], stage_heatmaps=[s[i : i + 1] for s in output.stage_heatmaps]
        )
        assert torch.allclose(
            loss(alone, targets[i : i + 1], weights[i : i + 1], reduction="none").total, batch[i : i + 1]
        )
    assert torch.allclose(loss(output, targets, weights).total, batch.mean())
    assert loss.ohkm_topk == 10  # the paper's alpha
    with pytest.raises(ValueError, match="reduction"):
        loss(output, targets, weights, reduction="sum")
