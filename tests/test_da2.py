"""DA2's relaxed policy and bi-level step: sampling, gradient paths, and the Eq. 12 hypergradient."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from da2_platform.data.heatmaps import render_heatmaps
from da2_platform.search.bilevel import BilevelStep
from da2_platform.search.relaxed_policy import RelaxedPolicy, op_slots
from pose_models.losses import P2NetLoss
from pose_models.p2net import P2NetOutput
from search_spaces.batch import PoseBatch

H, W, J = 32, 24, 17
FLIP_PAIRS = [(1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)]


class TinyPoseNet(nn.Module):
    """Two convs to J heatmaps at 1/4 resolution: small enough for exact second-order autograd."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, J, 3, padding=1)

    def forward(self, x: torch.Tensor) -> P2NetOutput:
        h = torch.nn.functional.avg_pool2d(torch.tanh(self.conv1(x)), 4)
        out = self.conv2(h)
        return P2NetOutput(heatmaps=out, stage_heatmaps=[out])


def make_batch(batch_size: int, seed: int, dtype=torch.float32) -> PoseBatch:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch_size, 3, H, W, generator=g, dtype=dtype)
    keypoints = torch.rand(batch_size, J, 2, generator=g, dtype=dtype) * torch.tensor([W - 8, H - 8], dtype=dtype) + 4
    visible = torch.ones(batch_size, J, dtype=dtype)
    heatmaps, weights = render_heatmaps(keypoints, visible, (H, W))
    return PoseBatch(images=images, keypoints=keypoints, visible=weights.to(dtype), heatmaps=heatmaps.to(dtype))


def batch_loss(model: nn.Module, batch: PoseBatch) -> torch.Tensor:
    return P2NetLoss(ohkm_topk=J)(model(batch.images), batch.heatmaps, batch.visible).total


@pytest.mark.parametrize("mode", ["central", "forward"])
def test_finite_difference_hypergradient_matches_exact_second_order(mode):
    torch.manual_seed(0)
    slots = [("Brightness", "Rotate"), ("Contrast", "TranslateX"), ("Color", "ShearY")]
    model = TinyPoseNet().double()
    policy = RelaxedPolicy(slots, FLIP_PAIRS, tau1=0.5, tau2=0.5).double()
    zeta = 0.1
    step = BilevelStep(model, policy, batch_loss, torch.optim.SGD(model.parameters(), lr=zeta),
                       torch.optim.SGD(policy.parameters(), lr=0.0), zeta=zeta, hypergradient=mode)
    train, val = make_batch(6, 1, torch.float64), make_batch(6, 2, torch.float64)
    noise = policy.sample_noise(6, torch.Generator().manual_seed(3))
    noise.gumbel, noise.bernoulli_u = noise.gumbel.double(), noise.bernoulli_u.double()
    noise.sign, noise.draws = noise.sign.double(), noise.draws.double()
    w_before = [p.detach().clone() for p in step.weights]
    _, d_grad_at_w = step.w_step(train, noise, keep_d_grad=mode == "forward")
    fd, _, _ = step.hypergradient(train, val, noise, w_before, d_grad_at_w)

    # exact: -zeta * d/dd [ grad_w L_train(w, d) . grad_w' L_val(w') ], w' = weights after the step
    g_val = torch.autograd.grad(batch_loss(model, val), step.weights)
    w_after = [p.detach().clone() for p in step.weights]
    with torch.no_grad():
        for p, w in zip(step.weights, w_before):
            p.copy_(w)
    g_train = torch.autograd.grad(batch_loss(model, policy(train, noise)), step.weights, create_graph=True)
    dot = sum((gt * gv.detach()).sum() for gt, gv in zip(g_train, g_val))
    exact = [-zeta * g for g in torch.autograd.grad(dot, step.d_params)]
    with torch.no_grad():
        for p, w in zip(step.weights, w_after):
            p.copy_(w)

    fd_flat, exact_flat = torch.cat([g.flatten() for g in fd]), torch.cat([g.flatten() for g in exact])
    assert exact_flat.norm() > 0
    cosine = torch.nn.functional.cosine_similarity(fd_flat, exact_flat, dim=0).item()
    assert cosine >= 0.99, cosine


def test_hard_gumbel_choice_and_relaxed_bernoulli_match_pi_and_p():
    slots = op_slots(4, 2, seed=0)
    policy = RelaxedPolicy(slots, FLIP_PAIRS, tau1=0.3, tau2=0.3)
    pi = torch.tensor([0.1, 0.2, 0.3, 0.4])
    p = torch.tensor([0.15, 0.8])
    with torch.no_grad():
        policy.pi_logits.copy_(pi.log())
        policy.p_logits[2].copy_(torch.log(p / (1 - p)))
    n = 20000
    noise = policy.sample_noise(n, torch.Generator().manual_seed(7))
    c = policy.choice_weights(noise).detach()
    assert torch.all(c.sum(1) == 1) and torch.all((c == 0) | (c == 1))  # one sub-policy per image
    counts = c.sum(0).numpy()
    chi2 = stats.chisquare(counts, pi.numpy() * n)
    assert chi2.pvalue > 0.01, (counts, chi2)
    on = (policy.op_gates(2, noise.bernoulli_u) > 0.5).float().sum(0).numpy()
    for j in range(2):
        observed = np.array([on[j], n - on[j]])
        expected = np.array([p[j].item(), 1 - p[j].item()]) * n
        assert stats.chisquare(observed, expected).pvalue > 0.01, (j, observed, expected)


def test_gradients_reach_pi_p_and_m():
    slots = [("Rotate", "Brightness"), ("TranslateY", "Contrast")]
    policy = RelaxedPolicy(slots, FLIP_PAIRS)
    model = TinyPoseNet()
    batch = make_batch(8, 0)
    noise = policy.sample_noise(8, torch.Generator().manual_seed(0))
    batch_loss(model, policy(batch, noise)).backward()
    for name in ("pi_logits", "p_logits", "m_logits"):
        grad = getattr(policy, name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def test_one_bilevel_step_changes_policy_and_weights():
    torch.manual_seed(0)
    policy = RelaxedPolicy(op_slots(6, 2, seed=1), FLIP_PAIRS)
    model = TinyPoseNet()
    step = BilevelStep(model, policy, batch_loss, torch.optim.Adam(model.parameters(), 1e-3),
                       torch.optim.Adam(policy.parameters(), 1e-2), zeta=1e-3)
    w0 = [p.detach().clone() for p in model.parameters()]
    d0 = [p.detach().clone() for p in policy.parameters()]
    result = step(make_batch(8, 0), make_batch(8, 1), policy.sample_noise(8, torch.Generator().manual_seed(0)))
    assert result.val_loss is not None and result.hypergrad_norm > 0 and result.eps > 0
    assert any(not torch.equal(a, b) for a, b in zip(w0, model.parameters()))
    assert all(not torch.equal(a, b) for a, b in zip(d0, policy.parameters()))


def test_learned_policy_is_a_valid_policy():
    """The learned policy carries pi, p and m slot by slot, and its top-n are the n heaviest sub-policies
    whatever their place: here the heaviest is the second slot and the runner-up the fourth."""
    slots = op_slots(5, 2, seed=0)
    policy = RelaxedPolicy(slots, FLIP_PAIRS)
    logits = torch.tensor([0.0, 2.0, -1.0, 0.5, 0.1])
    with torch.no_grad():
        policy.pi_logits.copy_(logits)
    learned = policy.to_policy({"method": "da2"})
    pi = torch.softmax(logits.double(), 0)
    assert [s.weight for s in learned.sub_policies] == pytest.approx(pi.tolist(), abs=1e-5)  # 6 decimals
    assert [tuple(op.name for op in s.ops) for s in learned.sub_policies] == [tuple(slot) for slot in slots]
    top = learned.top(2)
    assert [s.ops for s in top.sub_policies] == [learned.sub_policies[1].ops, learned.sub_policies[3].ops]
    assert [s.weight for s in top.sub_policies] == pytest.approx((pi[[1, 3]] / pi[[1, 3]].sum()).tolist(), abs=1e-5)
    from search_spaces.policy import Policy

    assert Policy.from_json(learned.to_json()) == learned


def test_exploring_draws_reach_every_sub_policy_and_keep_the_gradient_unbiased():
    """explore = e draws k from (1 - e) pi + e / K: a sub-policy that pi has all but dropped still gets about
    e / K of the images, and the importance-weighted score-function gradient has the same expectation as the
    gradient under pi itself (fixed advantages per sub-policy, 40,000 draws)."""
    slots = op_slots(4, 2, 0)
    policy = RelaxedPolicy(slots, [])
    with torch.no_grad():
        policy.pi_logits.copy_(torch.tensor([4.0, 0.0, 0.0, -4.0]))  # pi = 0.95, 0.017, 0.017, 0.0003
    per_k = torch.tensor([1.0, -2.0, 0.5, 3.0])
    grads, counts = {}, {}
    for explore in (0.0, 0.4):
        noise = policy.sample_noise(40_000, torch.Generator().manual_seed(0))
        choices = policy.sample_choices(noise, 0.5, explore)
        counts[explore] = torch.bincount(choices.k, minlength=4).double() / 40_000
        g_pi, g_p, _ = policy.log_prob_grads(choices, per_k[choices.k], 0.5)
        grads[explore] = (g_pi / 40_000, g_p / 40_000)
    assert choices.weight is not None and torch.all(choices.weight <= 1 / (1 - 0.4) + 1e-9)
    assert counts[0.0][3] < 0.002 and counts[0.4][3] > 0.09  # the dropped sub-policy: 0.0003 -> 0.1 of the draws
    pi = policy.pi().detach().double()
    exact = pi * (per_k.double() - (pi * per_k.double()).sum())  # d E_pi[A(k)] / d logits
    assert torch.allclose(grads[0.0][0], exact, atol=0.01)
    assert torch.allclose(grads[0.4][0], exact, atol=0.01)
    assert torch.allclose(grads[0.4][1], grads[0.0][1], atol=0.01)
