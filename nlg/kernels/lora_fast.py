"""LoRA's fast forward: ``FastLoRAConv1D``, the trainer's ``--kernels fast`` class for every ``LoRAConv1D``.

Same function as loralib's forward (``nlg.lora.LoRAConv1D.forward``), computed with fewer passes over memory:
``dropout(x) @ A^T`` for every adapted slice in one matmul; then ``x @ W`` (through MKL's pre-packed copy of the
frozen W when one exists, nlg.kernels.mkl_prepack), onto which one thin in-place matmul adds the B blocks (in
their slices' columns, zero elsewhere) together with the bias (a row of B against a column of ones): one pass over
the output for LoRA and bias together, none in the backward. On the CPU the dropout mask comes from
``cpu_dropout`` (31-bit integer draws from torch's generator) rather than ``nn.Dropout``'s ``bernoulli_``: the same
distribution from another random stream, so masks (and with dropout on, every update) differ from the reference
kernels; with dropout 0 the two differ only by float rounding (MKL's summation order, the fused bias).
"""
from __future__ import annotations

import torch
from torch import nn

from nlg.kernels.mkl_prepack import frozen_mm
from nlg.lora import LoRAConv1D

_INT31 = 2 ** 31  # ``random_()`` on int32 draws uniformly from [0, 2^31)


def cpu_dropout(x: torch.Tensor, p: float, scale: bool = True) -> torch.Tensor:
    """Inverted dropout drawing one 31-bit uniform integer per element (from torch's generator, so seeds and
    checkpointed RNG states govern it) instead of ``bernoulli_``, which costs twice as much on the CPU: each
    element is kept with probability 1 - p (to within 2^-31) and kept ones are scaled by 1 / (1 - p), the same
    distribution as ``nn.Dropout``. With ``scale=False`` the kept values are left unscaled, for a caller that
    applies 1 / (1 - p) after a matmul that shrinks the tensor (LoRA: after ``A``, on r columns instead of d)."""
    if p <= 0.0:
        return x
    draws = torch.empty(x.shape, dtype=torch.int32, device=x.device).random_()
    keep = torch.ge(draws, round(p * _INT31), out=torch.empty(x.shape, dtype=x.dtype, device=x.device))
    if scale:
        keep.mul_(1.0 / (1.0 - p))
    return x * keep


class FastLoRAConv1D(LoRAConv1D):
    """A ``LoRAConv1D`` with the fast forward; ``nlg.kernels.install`` swaps the class in, ``remove`` swaps it back
    (parameters, names and state dict are the same object's)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return super().forward(x)
        size_out = x.shape[:-1] + (self.nf,)
        x2 = x.reshape(-1, self.nx)
        if self.training and type(self.lora_dropout) is nn.Dropout and x2.device.type == "cpu":
            p = self.lora_dropout.p
            after_a = cpu_dropout(x2, p, scale=False) @ self.lora_A.t()  # (N, G·r)
            if p > 0.0:
                after_a.mul_(1.0 / (1.0 - p))  # dropout's scale, on G·r columns instead of nx
        else:
            after_a = self.lora_dropout(x2) @ self.lora_A.t()  # (N, G·r)
        if torch.is_autocast_enabled(x2.device.type):  # in-place accumulation would mix dtypes
            lora_and_bias = torch.addmm(self.bias, after_a, self._b_full(), alpha=self.scaling)
            return torch.addmm(lora_and_bias, x2, self.weight).view(size_out)
        a_and_one = torch.cat([after_a, after_a.new_ones(after_a.shape[0], 1)], dim=1)  # (N, G·r + 1)
        b_and_bias = torch.cat([self._b_full() * self.scaling, self.bias.unsqueeze(0)], dim=0)  # (G·r + 1, nf)
        return frozen_mm(x2, self.weight).addmm_(a_and_one, b_and_bias).view(size_out)
