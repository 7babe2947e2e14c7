"""The authors' AdamW and learning-rate schedules (their ``optimizer.py``), written for this project.

AdamW differs from ``torch.optim.AdamW`` in where weight decay goes: the Adam update is applied first, then
``p -= lr * wd * p`` on the *updated* weights. The bias correction folds into the step size
(``lr * sqrt(1 - b2^t) / (1 - b1^t)``) and ``eps`` is added to ``sqrt(v)`` before that correction, as theirs.

The schedule is a pure function of the number of updates already done, exactly their ``LambdaLR`` lambda:
the k-th update (k from 1) runs at ``lr * f(k - 1)``, so the very first update has learning rate 0 under warm-up.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch
from torch.optim import Optimizer

SCHEDULES = ("linear", "constant")


class AdamW(Optimizer):
    """Adam with decoupled weight decay applied after the update, as in the authors' ``optimizer.AdamW``."""

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0, correct_bias: bool = True):
        if lr < 0.0:
            raise ValueError(f"invalid learning rate {lr}: must be >= 0")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"invalid betas {betas}: each must be in [0, 1)")
        if eps < 0.0:
            raise ValueError(f"invalid eps {eps}: must be >= 0")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, correct_bias=correct_bias))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse:
                    raise RuntimeError("AdamW does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                state["step"] += 1
                exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
                denom = exp_avg_sq.sqrt().add_(group["eps"])
                step_size = group["lr"]
                if group["correct_bias"]:
                    bias_correction1 = 1.0 - beta1 ** state["step"]
                    bias_correction2 = 1.0 - beta2 ** state["step"]
                    step_size = step_size * math.sqrt(bias_correction2) / bias_correction1
                p.addcdiv_(exp_avg, denom, value=-step_size)
                if group["weight_decay"] > 0.0:
                    p.add_(p, alpha=-group["lr"] * group["weight_decay"])
        return loss


def lr_factor(done: int, warmup: int, total: int, kind: str = "linear") -> float:
    """Multiplier of the base learning rate after ``done`` updates (the authors' lambdas, same float arithmetic)."""
    if kind not in SCHEDULES:
        raise ValueError(f"unknown scheduler {kind!r}; expected one of {', '.join(SCHEDULES)}")
    if done < warmup:
        return float(done) / float(max(1, warmup))
    if kind == "constant":
        return 1.0
    return max(0.0, float(total - done) / float(max(1, total - warmup)))


def set_lr(optimizer: Optimizer, base_lr: float, done: int, warmup: int, total: int, kind: str = "linear") -> float:
    """Put the scheduled rate for the next update into every parameter group; returns it."""
    lr = base_lr * lr_factor(done, warmup, total, kind)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg) -> AdamW:
    """AdamW over ``params`` with the run's hyper-parameters (one group: the authors decay every trained tensor)."""
    return AdamW(list(params), lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps,
                 weight_decay=cfg.weight_decay, correct_bias=cfg.correct_bias)
