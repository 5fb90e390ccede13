"""The relaxed policy groups its work by op (one call per op and slot), with the same values and gradients as
applying each image's sub-policy on its own (K = 136 pairs would otherwise cost one call per image)."""

from __future__ import annotations

import torch

from da2_platform.data.heatmaps import render_heatmaps
from da2_platform.search.relaxed_policy import RelaxedPolicy, op_slots
from search_spaces.batch import PoseBatch

H, W, J = 32, 24, 17
FLIP_PAIRS = [(1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)]


def _batch(n: int) -> PoseBatch:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(n, 3, H, W, generator=g, dtype=torch.float64)
    keypoints = torch.rand(n, J, 2, generator=g, dtype=torch.float64) * torch.tensor([W - 8.0, H - 8.0]) + 4
    heatmaps, weights = render_heatmaps(keypoints, torch.ones(n, J, dtype=torch.float64), (H, W))
    return PoseBatch(images=images, keypoints=keypoints, visible=weights.double(), heatmaps=heatmaps.double())


def _per_sub_policy(policy: RelaxedPolicy, batch: PoseBatch, noise) -> PoseBatch:
    """The reference: each chosen sub-policy applied to its own images, then weighted by its choice weight."""
    c = policy.choice_weights(noise)
    chosen = c.detach().argmax(dim=1)
    images, heatmaps = torch.zeros_like(batch.images), torch.zeros_like(batch.heatmaps)
    keypoints = batch.keypoints.clone()
    for k in sorted(set(chosen.tolist())):
        rows = (chosen == k).nonzero().squeeze(1)
        sub = PoseBatch(images=batch.images[rows], keypoints=batch.keypoints[rows], visible=batch.visible[rows],
                        heatmaps=batch.heatmaps[rows])
        out = policy._apply_sub_policy(k, sub, noise, rows)
        ck = c[rows, k].view(-1, 1, 1, 1)
        images = images.index_add(0, rows, ck * out.images)
        heatmaps = heatmaps.index_add(0, rows, ck * out.heatmaps)
        keypoints[rows] = out.keypoints
    return PoseBatch(images=images, keypoints=keypoints, visible=batch.visible, heatmaps=heatmaps)


def test_grouped_forward_equals_per_sub_policy_forward_in_value_and_gradient():
    policy = RelaxedPolicy(op_slots(None, 2, 0), FLIP_PAIRS).double()
    assert policy.num_sub_policies == 136
    with torch.no_grad():
        policy.pi_logits.normal_(0, 1, generator=torch.Generator().manual_seed(1))
        policy.p_logits.normal_(0, 1, generator=torch.Generator().manual_seed(2))
    batch = _batch(24)
    noise = policy.sample_noise(24, torch.Generator().manual_seed(3))
    target = torch.rand(24, 3, H, W, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    grads = []
    for forward in (lambda: policy(batch, noise), lambda: _per_sub_policy(policy, batch, noise)):
        out = forward()
        loss = ((out.images - target) ** 2).sum() + out.heatmaps.sum()
        grads.append((out, torch.autograd.grad(loss, list(policy.parameters()), allow_unused=True)))
    (new, g_new), (old, g_old) = grads
    assert torch.allclose(new.images, old.images) and torch.allclose(new.heatmaps, old.heatmaps)
    assert torch.allclose(new.keypoints, old.keypoints)
    for a, b in zip(g_new, g_old):
        assert (a is None and b is None) or torch.allclose(a, b)
    assert any(g is not None and g.abs().sum() > 0 for g in g_new)
