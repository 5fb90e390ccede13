"""DA2's bi-level optimisation (paper Eq. 9-12): a w step on a train batch, then a d step on a val batch.

The d gradient is the second-order term of the unrolled objective. The val loss does not depend on d (val
batches are not augmented), so the whole hypergradient is

    grad_d = -zeta * grad^2_{d,w} L_train(w, d) . grad_w' L_val(w')

approximated by a finite difference (Eq. 12):

    central (default):  -zeta [grad_d L_train(w+, d) - grad_d L_train(w-, d)] / (2 eps)
    forward (cheaper):  -zeta [grad_d L_train(w+, d) - grad_d L_train(w,  d)] / eps

with w+- = w -+ ... = w +- eps grad_w' L_val(w') and eps = 0.01 / ||grad_w' L_val(w')||. w is the weights before
the step and w' the weights after the real w step (the unrolled step is the real one, so it costs nothing).
The forward mode reuses grad_d L_train(w, d) from the w step's own backward pass, saving one pass.
The same augmentation draw (`PolicyNoise`) is used at w, w+ and w-, and batch-norm running statistics are
restored after the extra passes so only the real w step moves them.

Scale. zeta (~1e-3) times a heatmap-MSE loss (~5e-3) puts the raw hypergradient at 1e-10..1e-8, under Adam's eps,
so the d optimiser moved nothing. `BilevelStep(normalise=True)` (the default) drops -zeta (as DADA does: it only
scales) and divides the step's hypergradient by its RMS over all d parameters, so the d step size is the policy
learning rate whatever the loss's absolute size; the direction is untouched.

`ScoreStep` (DA2Config.estimator = "score", the default) is the op-specific estimator. The same unrolled
objective L_val(w - zeta grad_w L_train(w, d)) has, to first order, the derivative -zeta <grad_w l_i, g_val> for
each train image i, so every image gets a credit

    r_i = <grad_w l_i(w), grad_w' L_val(w')>  ~  [l_i(w + eps g_val) - l_i(w - eps g_val)] / (2 eps)

(central; forward: [l_i(w + eps g_val) - l_i(w)] / eps with l_i(w) from the w step), from one or two forward
passes of the train batch with per-sample losses. The policy is drawn hard per image (sub-policy, gates,
magnitude: what the exported policy does) and d follows the score-function gradient sum_i A_i grad_d log q(draw_i)
with the advantage A_i = (r_i - mean r) / std r: the batch mean is the baseline and the std removes the scale.
L_val is the loss of the predictor evaluation scores (`val_loss`; with flip test, of the average of the output and
the flipped-back output of the mirrored crop, see `da2.make_batch_loss`), so the search optimises what AP
measures. Because any augmentation makes an image's loss, and so its gradient, larger, "op on" scores higher than "op off"
for every op when the val set is harder than train; `centre_p` subtracts the mean over all slots from the p
gradient, so ops are ranked against each other rather than against no augmentation.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from da2_platform.errors import TrainingError
from da2_platform.search.relaxed_policy import PolicyChoices, PolicyNoise, RelaxedPolicy
from da2_platform.training.step import TrainingStep, check_finite
from search_spaces.batch import PoseBatch

# loss(model, batch) -> scalar; the batch carries images, heatmap targets and visibility (target weights)
BatchLoss = Callable[[nn.Module, PoseBatch], torch.Tensor]


@dataclass
class DA2StepStats:
    train_loss: float
    val_loss: float | None
    hypergrad_norm: float | None
    eps: float | None
    wall_seconds: float


class BilevelStep:
    """One DA2 iteration over (train batch, val batch)."""

    def __init__(self, model: nn.Module, policy: RelaxedPolicy, loss: BatchLoss, w_optimizer: torch.optim.Optimizer,
                 d_optimizer: torch.optim.Optimizer, zeta: float, hypergradient: str = "central",
                 grad_clip: float | None = None, normalise: bool = False, val_loss: BatchLoss | None = None):
        if hypergradient not in ("central", "forward"):
            raise ValueError(f"hypergradient must be 'central' or 'forward', not {hypergradient!r}")
        self.model, self.policy, self.loss = model, policy, loss
        self.w_optimizer, self.d_optimizer = w_optimizer, d_optimizer
        self.zeta, self.mode, self.grad_clip, self.normalise = zeta, hypergradient, grad_clip, normalise
        self.val_loss = val_loss or loss  # the d objective: the val loss of the predictor as evaluation runs it
        self.weights = [p for p in model.parameters() if p.requires_grad]
        self.d_params = list(policy.parameters())
        self.step_count = 0
        self.fd_scale = 0.01  # the paper's eps = 0.01 / ||grad_w' L_val||; benchmarks/da2_hypergradient.py varies it

    # -- the two halves ----------------------------------------------------------------------------------
    def w_step(self, train: PoseBatch, noise: PolicyNoise, keep_d_grad: bool = False) -> tuple[float, list | None]:
        """Update w on the augmented train batch; optionally also return grad_d L_train(w, d) (forward mode)."""
        self.model.train()
        if keep_d_grad:
            aug = self.policy(train, noise)
        else:
            with torch.no_grad():
                aug = self.policy(train, noise)
        loss = self.loss(self.model, aug)
        check_finite(loss, self.step_count, "DA2 train loss")
        params = self.weights + (self.d_params if keep_d_grad else [])
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        for p, g in zip(self.weights, grads[: len(self.weights)]):
            p.grad = g
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.weights, self.grad_clip)
        self.w_optimizer.step()
        self.w_optimizer.zero_grad(set_to_none=True)
        d_grads = [_zero_if_none(g, p) for g, p in zip(grads[len(self.weights):], self.d_params)] if keep_d_grad else None
        return loss.item(), d_grads

    def hypergradient(self, train: PoseBatch, val: PoseBatch, noise: PolicyNoise, w_before: list[torch.Tensor],
                      d_grad_at_w: list[torch.Tensor] | None = None) -> tuple[list[torch.Tensor], float, float]:
        """Eq. 12: the finite-difference approximation of the second-order term; returns (grad_d, L_val, eps)."""
        buffers = _save_buffers(self.model)
        w_after = [p.detach().clone() for p in self.weights]
        val_loss = self.val_loss(self.model, val)
        check_finite(val_loss, self.step_count, "DA2 val loss")
        g_val = torch.autograd.grad(val_loss, self.weights, allow_unused=True)
        g_val = [_zero_if_none(g, p) for g, p in zip(g_val, self.weights)]
        norm = torch.sqrt(sum((g.float() ** 2).sum() for g in g_val))
        if not torch.isfinite(norm) or norm == 0:
            raise TrainingError(f"DA2 step {self.step_count}: val gradient norm is {norm.item()}")
        eps = (self.fd_scale / norm).item()
        grad_plus = self._d_grad_at(w_before, g_val, +eps, train, noise)
        if self.mode == "central":
            grad_minus = self._d_grad_at(w_before, g_val, -eps, train, noise)
            hyper = [-self.zeta * (gp - gm) / (2 * eps) for gp, gm in zip(grad_plus, grad_minus)]
        else:
            hyper = [-self.zeta * (gp - g0) / eps for gp, g0 in zip(grad_plus, d_grad_at_w)]
        _assign(self.weights, w_after)
        _restore_buffers(self.model, buffers)
        return hyper, val_loss.item(), eps

    def _d_grad_at(self, w_base: list[torch.Tensor], direction: list[torch.Tensor], scale: float,
                   train: PoseBatch, noise: PolicyNoise) -> list[torch.Tensor]:
        with torch.no_grad():
            for p, w, g in zip(self.weights, w_base, direction):
                p.copy_(w + scale * g)
        loss = self.loss(self.model, self.policy(train, noise))
        grads = torch.autograd.grad(loss, self.d_params, allow_unused=True)
        return [_zero_if_none(g, p) for g, p in zip(grads, self.d_params)]

    # -- the full iteration --------------------------------------------------------------------------------
    def __call__(self, train: PoseBatch, val: PoseBatch | None, noise: PolicyNoise) -> DA2StepStats:
        start = time.perf_counter()
        self.step_count += 1
        if val is None:  # a w-only step (d is updated every few steps)
            loss, _ = self.w_step(train, noise)
            return DA2StepStats(loss, None, None, None, time.perf_counter() - start)
        w_before = [p.detach().clone() for p in self.weights]
        loss, d_grad_w = self.w_step(train, noise, keep_d_grad=self.mode == "forward")
        hyper, val_loss, eps = self.hypergradient(train, val, noise, w_before, d_grad_w)
        hyper_norm = torch.sqrt(sum((g.float() ** 2).sum() for g in hyper)).item()
        if self.normalise:
            rms = hyper_norm / max(1, sum(g.numel() for g in hyper)) ** 0.5
            hyper = [g / rms for g in hyper] if rms > 0 else hyper  # -zeta's sign kept, its size dropped
        for p, g in zip(self.d_params, hyper):
            p.grad = g
        self.d_optimizer.step()
        self.d_optimizer.zero_grad(set_to_none=True)
        return DA2StepStats(loss, val_loss, hyper_norm, eps, time.perf_counter() - start)


class ScoreStep:
    """One DA2 iteration with per-image alignment credits and a score-function d gradient (see the module doc).

    `loss(model, batch, reduction="none")` must return per-sample losses [B]."""

    def __init__(self, trainer: TrainingStep, policy: RelaxedPolicy, loss: Callable[..., torch.Tensor],
                 d_optimizer: torch.optim.Optimizer, hypergradient: str = "central", m_sigma: float = 0.5,
                 centre_p: bool = True, draws_per_image: int = 1, val_loss: Callable[..., torch.Tensor] | None = None,
                 val_grad_every: int = 1, explore: float = 0.0):
        if hypergradient not in ("central", "forward"):
            raise ValueError(f"hypergradient must be 'central' or 'forward', not {hypergradient!r}")
        if draws_per_image < 1:
            raise ValueError(f"draws_per_image must be at least 1, not {draws_per_image}")
        self.trainer, self.model, self.policy, self.loss = trainer, trainer.model, policy, loss
        self.d_optimizer = d_optimizer
        self.mode, self.m_sigma, self.centre_p = hypergradient, m_sigma, centre_p
        self.draws_per_image = draws_per_image
        self.explore = explore  # share of sub-policy draws from the uniform (RelaxedPolicy.sample_choices)
        self.val_loss = val_loss or loss  # the d objective: the val loss of the predictor as evaluation runs it
        self.weights = [p for p in self.model.parameters() if p.requires_grad]
        self.step_count = 0
        # grad_w' L_val is recomputed every `val_grad_every` d steps and reused in between (it moves slowly; the
        # val pass of 2B flip-test images is the d step's largest cost). Not checkpointed: a resumed search
        # recomputes it at its first d step
        self.val_grad_every = val_grad_every
        self._d_steps = 0
        self._val_grad: tuple[list[torch.Tensor], float, torch.Tensor] | None = None

    def w_step(self, aug: PoseBatch) -> torch.Tensor:
        """Update w on the (already augmented) batch with the shared training step (the one every training
        runs); returns the per-sample losses at w, detached."""
        return self.trainer.update(aug.images, aug.heatmaps, aug.visible).total.detach()

    def credits(self, aug: PoseBatch, val: PoseBatch, w_before: list[torch.Tensor],
                loss_at_w: torch.Tensor | None) -> tuple[torch.Tensor, float, float]:
        """r_i = <grad_w l_i(w), grad_w' L_val(w')> for every train image, by finite differences of forward passes;
        returns (r [B], L_val(w'), eps). Weights and batch-norm buffers are restored afterwards."""
        buffers = _save_buffers(self.model)
        w_after = [p.detach().clone() for p in self.weights]
        g_val, val_loss, norm = self.val_gradient(val)
        eps = (0.01 / norm).item()
        plus = self._losses_at(w_before, g_val, +eps, aug)
        if self.mode == "central":
            r = (plus - self._losses_at(w_before, g_val, -eps, aug)) / (2 * eps)
        else:
            r = (plus - loss_at_w) / eps
        _assign(self.weights, w_after)
        _restore_buffers(self.model, buffers)
        return r, val_loss, eps

    def val_gradient(self, val: PoseBatch) -> tuple[list[torch.Tensor], float, torch.Tensor]:
        """(grad_w' L_val at the current weights, L_val, the gradient's norm): fresh every `val_grad_every` d steps,
        else the last."""
        fresh = self._val_grad is None or self._d_steps % self.val_grad_every == 0
        self._d_steps += 1
        if not fresh:
            return self._val_grad
        val_loss = self.val_loss(self.model, val, reduction="none").mean()
        check_finite(val_loss, self.step_count, "DA2 val loss")
        g_val = [_zero_if_none(g, p) for g, p in
                 zip(torch.autograd.grad(val_loss, self.weights, allow_unused=True), self.weights)]
        norm = torch.sqrt(sum((g.float() ** 2).sum() for g in g_val))
        if not torch.isfinite(norm) or norm == 0:
            raise TrainingError(f"DA2 step {self.step_count}: val gradient norm is {norm.item()}")
        self._val_grad = (g_val, val_loss.item(), norm)
        return self._val_grad

    @torch.no_grad()
    def _losses_at(self, w_base: list[torch.Tensor], direction: list[torch.Tensor], scale: float,
                   aug: PoseBatch) -> torch.Tensor:
        for p, w, g in zip(self.weights, w_base, direction):
            p.copy_(w + scale * g)
        return self.loss(self.model, aug, reduction="none").detach().float()

    def repeat_images(self, train: PoseBatch) -> tuple[PoseBatch, torch.Tensor | None]:
        """With draws_per_image c > 1: the first B // c images, each c times in a row (same batch size up to
        rounding), and each row's image index; every image then gets c independent policy draws."""
        c = self.draws_per_image
        if c == 1:
            return train, None
        n = max(1, len(train) // c)
        rows = torch.arange(n, device=train.images.device).repeat_interleave(c)
        return train.select(rows), rows.cpu()

    def advantages(self, r: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
        """A_i: r minus a baseline, over the batch's std. Baseline: the batch mean, or with repeated images the
        mean of the image's other draws (leave-one-out), which cancels how much the image itself weighs."""
        r = r.detach().double().cpu()
        if groups is None:
            centred = r - r.mean()
        else:
            sums = torch.zeros(int(groups.max()) + 1, dtype=r.dtype).index_add_(0, groups, r)
            counts = torch.zeros_like(sums).index_add_(0, groups, torch.ones_like(r))
            others = (sums[groups] - r) / (counts[groups] - 1).clamp(min=1)
            centred = torch.where(counts[groups] > 1, r - others, r - r.mean())
        std = centred.std() if centred.numel() > 1 else torch.tensor(0.0, dtype=r.dtype)
        return centred / std if std > 0 else torch.zeros_like(centred)

    def policy_grads(self, choices: PolicyChoices, r: torch.Tensor, groups: torch.Tensor | None = None
                     ) -> list[torch.Tensor]:
        """The descent gradients of (pi_logits, p_logits, m_logits) from credits r (ascending E[r])."""
        adv = self.advantages(r, groups)
        g_pi, g_p, g_m = self.policy.log_prob_grads(choices, adv / len(r), self.m_sigma)
        if self.centre_p:
            g_p = g_p - g_p.mean()
        params = (self.policy.pi_logits, self.policy.p_logits, self.policy.m_logits)
        return [-g.to(p.device, p.dtype) for g, p in zip((g_pi, g_p, g_m), params)]

    def __call__(self, train: PoseBatch, val: PoseBatch | None, noise: PolicyNoise) -> DA2StepStats:
        start = time.perf_counter()
        self.step_count += 1
        train, groups = self.repeat_images(train)
        choices = self.policy.sample_choices(noise, self.m_sigma, self.explore)
        aug = self.policy.apply_choices(train, choices, noise)
        if val is None:
            loss_at_w = self.w_step(aug)
            return DA2StepStats(loss_at_w.mean().item(), None, None, None, time.perf_counter() - start)
        w_before = [p.detach().clone() for p in self.weights]
        loss_at_w = self.w_step(aug)
        r, val_loss, eps = self.credits(aug, val, w_before, loss_at_w)
        grads = self.policy_grads(choices, r, groups)
        for p, g in zip((self.policy.pi_logits, self.policy.p_logits, self.policy.m_logits), grads):
            p.grad = g
        self.d_optimizer.step()
        self.d_optimizer.zero_grad(set_to_none=True)
        norm = torch.sqrt(sum((g.float() ** 2).sum() for g in grads)).item()
        return DA2StepStats(loss_at_w.mean().item(), val_loss, norm, eps, time.perf_counter() - start)


def _zero_if_none(g: torch.Tensor | None, p: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(p) if g is None else g.detach()


def _assign(params: list[torch.Tensor], values: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for p, v in zip(params, values):
            p.copy_(v)


def _save_buffers(model: nn.Module) -> list[torch.Tensor]:
    return [b.detach().clone() for b in model.buffers()]


def _restore_buffers(model: nn.Module, saved: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for b, s in zip(model.buffers(), saved):
            b.copy_(s)
