"""Causal self-attention over packed sequences of different lengths, on the CPU, without a padded grid.

The packed forward (nlg.kernels.packed) keeps a batch's real tokens as one ``[N, 3d]`` q|k|v matrix. Padding them into a
``[B, H, T, dh]`` grid for ``scaled_dot_product_attention`` costs a zero-fill, a scatter, a gather and their
backward copies, and the attention kernel then also works on every pad row up to the longest sequence. Here each
sequence is attended on its own, reading q, k and v as strided views of the packed matrix and writing straight
into packed ``[N, d]`` outputs and ``[N, 3d]`` gradients. Short sequences (E2E's, WebNLG's) go through batched
matmuls over the heads with the probabilities kept for the backward pass (two matmuls forward, four backward:
faster than the flash kernel at these lengths); long ones through the CPU flash-attention kernel SDPA itself
dispatches to (ATen's ``_scaled_dot_product_flash_attention_for_cpu`` and its backward), which keeps only the
log-sum-exp. On E2E batches this cuts attention's share of a step by more than half. tests/test_train_kernels.py
compares outputs and gradients, both routes, with SDPA.
"""
from __future__ import annotations

import functools

import torch

_FLASH = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_FLASH_BACKWARD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


MATH_MAX_LEN = 128  # up to this length a sequence is attended by batched matmuls keeping its probabilities
# (H·L² floats: ≤ 1 MB per sequence and layer for GPT-2 medium); longer ones by the flash kernel, which keeps
# only the log-sum-exp


def _views(x: torch.Tensor, start: int, end: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v of one sequence as ``[H, L, dh]`` views of the packed ``[N, 3, H, dh]`` matrix."""
    return tuple(x[start:end, i].transpose(0, 1) for i in range(3))


@functools.lru_cache(maxsize=1024)
def _causal_mask(length: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``[L, L]`` additive mask: 0 on and below the diagonal, -inf above (cached per length)."""
    return torch.full((length, length), float("-inf"), dtype=dtype, device=device).triu(1)


def _use_math(length: int, dtype: torch.dtype) -> bool:
    return length <= MATH_MAX_LEN and dtype in (torch.float32, torch.float64)


class _VarlenCausalAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv: torch.Tensor, bounds: tuple[tuple[int, int], ...], heads: int, scale: float):
        n = qkv.shape[0]
        d = qkv.shape[1] // 3
        x = qkv.view(n, 3, heads, d // heads)
        out = qkv.new_empty(n, d)
        saved = []
        for start, end in bounds:
            q, k, v = _views(x, start, end)
            if _use_math(end - start, qkv.dtype):
                probs = torch.baddbmm(_causal_mask(end - start, q.dtype, q.device), q, k.transpose(1, 2), alpha=scale).softmax(-1)
                o = torch.bmm(probs, v)  # [H, L, dh]
                saved.append(probs)
            else:
                o, lse = _FLASH(q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), 0.0, True, scale=scale)
                saved += [o, lse]
                o = o[0]
            out[start:end].view(end - start, heads, -1).copy_(o.transpose(0, 1))
        ctx.save_for_backward(qkv, *saved)
        ctx.bounds, ctx.heads, ctx.scale = bounds, heads, scale
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        qkv, *saved = ctx.saved_tensors
        n, heads, scale = qkv.shape[0], ctx.heads, ctx.scale
        dh = qkv.shape[1] // 3 // heads
        x = qkv.view(n, 3, heads, dh)
        grad_qkv = torch.empty_like(qkv)
        gx = grad_qkv.view(n, 3, heads, dh)
        g = grad_out.reshape(n, heads, dh)
        at = 0
        for start, end in ctx.bounds:
            q, k, v = _views(x, start, end)
            go = g[start:end].transpose(0, 1)  # [H, L, dh]
            if _use_math(end - start, qkv.dtype):
                probs = saved[at]
                at += 1
                grad_v = torch.bmm(probs.transpose(1, 2), go)
                grad_s = torch._softmax_backward_data(torch.bmm(go, v.transpose(1, 2)), probs, -1, probs.dtype)
                grad_s.mul_(scale)
                grads = (torch.bmm(grad_s, k), torch.bmm(grad_s.transpose(1, 2), q), grad_v)
            else:
                o, lse = saved[at], saved[at + 1]
                at += 2
                grads = [gi[0] for gi in _FLASH_BACKWARD(go.unsqueeze(0), q.unsqueeze(0), k.unsqueeze(0),
                                                         v.unsqueeze(0), o, lse, 0.0, True, scale=scale)]
            for i, gi in enumerate(grads):
                gx[start:end, i].copy_(gi.transpose(0, 1))
        return grad_qkv, None, None, None


def varlen_causal_attention(qkv: torch.Tensor, bounds: tuple[tuple[int, int], ...], heads: int,
                            scale: float) -> torch.Tensor:
    """Attention output ``[N, d]`` for packed ``qkv`` ``[N, 3d]``; sequence i occupies rows ``bounds[i]``."""
    if qkv.device.type != "cpu":
        raise ValueError("varlen_causal_attention runs ATen's CPU flash-attention kernel; use SDPA on other devices")
    return _VarlenCausalAttention.apply(qkv, tuple(bounds), int(heads), float(scale))
