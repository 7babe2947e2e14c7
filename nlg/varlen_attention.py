"""Causal self-attention over packed sequences of different lengths, on the CPU, without a padded grid.

The packed forward (nlg.packed) keeps a batch's real tokens as one ``[N, 3d]`` q|k|v matrix. Padding them into a
``[B, H, T, dh]`` grid for ``scaled_dot_product_attention`` costs a zero-fill, a scatter, a gather and their
backward copies, and the attention kernel then also works on every pad row up to the longest sequence. Here each
sequence is attended on its own by the same CPU flash-attention kernel SDPA dispatches to (ATen's
``_scaled_dot_product_flash_attention_for_cpu`` and its backward), reading q, k and v as strided views of the
packed matrix and writing straight into packed ``[N, d]`` outputs and ``[N, 3d]`` gradients. On E2E batches that
halves attention's share of a step. The same kernel on the same values: tests/test_train_packed.py compares
outputs and gradients with SDPA on the padded grid.
"""
from __future__ import annotations

import torch

_FLASH = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_FLASH_BACKWARD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


def _views(x: torch.Tensor, start: int, end: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v of one sequence as ``[1, H, L, dh]`` views of the packed ``[N, 3, H, dh]`` matrix."""
    return tuple(x[start:end, i].permute(1, 0, 2).unsqueeze(0) for i in range(3))


class _VarlenCausalAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv: torch.Tensor, bounds: tuple[tuple[int, int], ...], heads: int, scale: float):
        n = qkv.shape[0]
        d = qkv.shape[1] // 3
        x = qkv.view(n, 3, heads, d // heads)
        out = qkv.new_empty(n, d)
        outs, lses = [], []
        for start, end in bounds:
            o, lse = _FLASH(*_views(x, start, end), 0.0, True, scale=scale)
            out[start:end].view(end - start, heads, -1).copy_(o[0].transpose(0, 1))
            outs.append(o)
            lses.append(lse)
        ctx.save_for_backward(qkv, *outs, *lses)
        ctx.bounds, ctx.heads, ctx.scale = bounds, heads, scale
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        qkv, *saved = ctx.saved_tensors
        outs, lses = saved[:len(ctx.bounds)], saved[len(ctx.bounds):]
        n, heads = qkv.shape[0], ctx.heads
        dh = qkv.shape[1] // 3 // heads
        x = qkv.view(n, 3, heads, dh)
        grad_qkv = torch.empty_like(qkv)
        gx = grad_qkv.view(n, 3, heads, dh)
        g = grad_out.reshape(n, heads, dh)
        for (start, end), o, lse in zip(ctx.bounds, outs, lses):
            go = g[start:end].permute(1, 0, 2).unsqueeze(0)
            grads = _FLASH_BACKWARD(go, *_views(x, start, end), o, lse, 0.0, True, scale=ctx.scale)
            for i, gi in enumerate(grads):
                gx[start:end, i].copy_(gi[0].transpose(0, 1))
        return grad_qkv, None, None, None


def varlen_causal_attention(qkv: torch.Tensor, bounds: tuple[tuple[int, int], ...], heads: int,
                            scale: float) -> torch.Tensor:
    """Attention output ``[N, d]`` for packed ``qkv`` ``[N, 3d]``; sequence i occupies rows ``bounds[i]``."""
    if qkv.device.type != "cpu":
        raise ValueError("varlen_causal_attention runs ATen's CPU flash-attention kernel; use SDPA on other devices")
    return _VarlenCausalAttention.apply(qkv, tuple(bounds), int(heads), float(scale))
