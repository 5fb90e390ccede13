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
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from da2_platform.errors import TrainingError
from da2_platform.search.relaxed_policy import PolicyNoise, RelaxedPolicy
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
                 grad_clip: float | None = None):
        if hypergradient not in ("central", "forward"):
            raise ValueError(f"hypergradient must be 'central' or 'forward', not {hypergradient!r}")
        self.model, self.policy, self.loss = model, policy, loss
        self.w_optimizer, self.d_optimizer = w_optimizer, d_optimizer
        self.zeta, self.mode, self.grad_clip = zeta, hypergradient, grad_clip
        self.weights = [p for p in model.parameters() if p.requires_grad]
        self.d_params = list(policy.parameters())
        self.step_count = 0

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
        _check(loss, self.step_count, "DA2 train loss")
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
        val_loss = self.loss(self.model, val)
        _check(val_loss, self.step_count, "DA2 val loss")
        g_val = torch.autograd.grad(val_loss, self.weights, allow_unused=True)
        g_val = [_zero_if_none(g, p) for g, p in zip(g_val, self.weights)]
        norm = torch.sqrt(sum((g.float() ** 2).sum() for g in g_val))
        if not torch.isfinite(norm) or norm == 0:
            raise TrainingError(f"DA2 step {self.step_count}: val gradient norm is {norm.item()}")
        eps = (0.01 / norm).item()
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
        for p, g in zip(self.d_params, hyper):
            p.grad = g
        self.d_optimizer.step()
        self.d_optimizer.zero_grad(set_to_none=True)
        hyper_norm = torch.sqrt(sum((g.float() ** 2).sum() for g in hyper)).item()
        return DA2StepStats(loss, val_loss, hyper_norm, eps, time.perf_counter() - start)


def _check(loss: torch.Tensor, step: int, what: str) -> None:
    if not torch.isfinite(loss).all():
        raise TrainingError(f"{what} is {loss.item()} at step {step}: stopping")


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
