"""Causal attention for a packed batch whose sequences all have the same length: one batched SDPA call.

The packed forward (nlg.kernels.packed) attends each sequence on its own (nlg.kernels.varlen_attention), which pays off on E2E /
WebNLG / DART batches of very different lengths. Pretraining blocks (nlg.pretrain) are all ``block_size`` long:
there is no padding to skip, and the per-sequence loop only adds operator calls: in fp32 four calls forward
and nine backward per sequence and layer, in bf16 one flash call each way plus the copies. Measured
on this shared 2-core machine, forward + backward of every layer, 4 heads of 64: 32 blocks of 128 x 6 layers,
fp32 4.3 s per sequence against 0.9 s batched, bf16 1.6 s against 1.0 s; 16 blocks x 4 layers (the current
PretrainConfig), bf16 1.52 s against 0.65 s (scripts/bench_pretrain.py --profile).

For equal lengths the packed ``[N, 3d]`` q|k|v matrix is already a ``[B, L, 3, H, dh]`` grid (sequence i holds
rows ``i L .. (i + 1) L``), so q, k and v are strided views of it and ``scaled_dot_product_attention(is_causal=True)``
attends them all at once, as transformers' GPT-2 does; its output ``[B, H, L, dh]`` goes back to packed ``[N, d]``.
Any other layout goes to nlg.kernels.varlen_attention unchanged. Used by scripts/bench_pretrain.py's ``ours+fast``
variant; wiring it into nlg.kernels.varlen_attention is a proposed change (results/bench_pretrain.md).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from nlg.kernels.varlen_attention import varlen_causal_attention


def equal_length(bounds: tuple[tuple[int, int], ...], rows: int) -> int | None:
    """The common length when ``bounds`` tile ``0 .. rows`` with sequences of one length, else None."""
    if not bounds:
        return None
    length = bounds[0][1] - bounds[0][0]
    if length <= 0 or length * len(bounds) != rows:
        return None
    for i, (start, end) in enumerate(bounds):
        if start != i * length or end != start + length:
            return None
    return length


def batched_causal_attention(qkv: torch.Tensor, length: int, heads: int, scale: float) -> torch.Tensor:
    """Attention output ``[N, d]`` for packed ``qkv`` ``[N, 3d]`` holding ``N / length`` sequences of ``length``."""
    n, three_d = qkv.shape
    d = three_d // 3
    grid = qkv.view(n // length, length, 3, heads, d // heads).permute(2, 0, 3, 1, 4)  # [3, B, H, L, dh]
    out = F.scaled_dot_product_attention(grid[0], grid[1], grid[2], is_causal=True, scale=scale)
    return out.transpose(1, 2).reshape(n, d)


def causal_attention(qkv: torch.Tensor, bounds: tuple[tuple[int, int], ...], heads: int,
                     scale: float) -> torch.Tensor:
    """Drop-in for :func:`nlg.kernels.varlen_attention.varlen_causal_attention`: batched when every sequence has the
    same length and they tile the rows, per sequence otherwise."""
    length = equal_length(tuple(bounds), qkv.shape[0])
    if length is not None:
        return batched_causal_attention(qkv, length, heads, scale)
    return varlen_causal_attention(qkv, bounds, heads, scale)
