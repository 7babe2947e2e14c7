"""GPT-2 forward pass on packed rows: no compute at all on padding, identical results.

Everything in a GPT-2 block except attention works token by token, so the linear layers, LayerNorms, GELU and
LoRA can run on the real tokens of a batch stacked into one ``[N_real, d]`` matrix. Only attention needs the
sequences apart: q, k, v are scattered into a ``[B, T]`` grid (pads after the real tokens, causal attention, so a
pad never reaches a real position), attended with ``scaled_dot_product_attention(is_causal=True)`` and gathered
back; on the CPU each sequence is attended on its own rows instead (nlg.kernels.varlen_attention; all at once when they have
one length, nlg.kernels.equal_length_attention), with no grid at all.
On E2E batches about a quarter of a padded batch's rows are padding; here they cost nothing. On the CPU in fp32
the frozen weights' matmuls go through MKL's pre-packed copies when the trainer made them (nlg.kernels.mkl_prepack), and
GPT-2's tanh GELU through a cache-chunked kernel that keeps its derivative (``_TanhGelu``).

The path calls the model's own modules (``ln_1``, ``attn.c_attn`` with its LoRA, ``attn.c_proj``, ``mlp``,
``ln_2``, ``ln_f``) and re-implements only GPT-2's block wiring and attention core, so it is used only when
``supports(model)`` finds stock GPT-2 blocks (any method that wraps or replaces them falls back to
``model.transformer``). tests/test_train_packed.py checks loss and gradients against the padded forward.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.gpt2.modeling_gpt2 import GPT2MLP, GPT2Attention, GPT2Block, GPT2Model
from transformers.pytorch_utils import Conv1D

from nlg.kernels.mkl_prepack import frozen_mm, has_pack
from nlg.kernels.equal_length_attention import causal_attention

_STOCK_FORWARD = {GPT2Block: GPT2Block.forward, GPT2Attention: GPT2Attention.forward, GPT2MLP: GPT2MLP.forward}


def _plain(module: nn.Module) -> bool:
    """Exactly the stock class, its forward not replaced, no hooks."""
    stock = _STOCK_FORWARD.get(type(module))
    if stock is not None and type(module).forward is not stock:
        return False
    return ("forward" not in module.__dict__ and not module._forward_hooks and not module._forward_pre_hooks
            and not getattr(module, "_backward_hooks", None))


def supports(model: nn.Module) -> bool:
    """True when ``model.transformer`` is a stock GPT-2 stack whose linear layers are Conv1D (LoRA's included)."""
    tr = getattr(model, "transformer", None)
    if type(tr) is not GPT2Model or not _plain(tr) or tr.config.add_cross_attention:
        return False
    if tr.config._attn_implementation not in ("sdpa", "eager") or tr.config.reorder_and_upcast_attn:
        return False
    for block in tr.h:
        if type(block) is not GPT2Block or not _plain(block):
            return False
        attn, mlp = block.attn, block.mlp
        if type(attn) is not GPT2Attention or not _plain(attn) or attn.is_cross_attention:
            return False
        if type(mlp) is not GPT2MLP or not _plain(mlp):
            return False
        if not all(isinstance(m, Conv1D) for m in (attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj)):
            return False
        if attn.attn_dropout.p != 0.0:
            return False
    return True


def _grid_attention(qkv: torch.Tensor, flat: torch.Tensor, b: int, t: int, attn: GPT2Attention) -> torch.Tensor:
    """q, k, v scattered into the padded ``[B, H, T, dh]`` grid, SDPA, gathered back to ``[N_real, d]``."""
    grid = qkv.new_zeros(b * t, qkv.shape[-1]).index_copy(0, flat, qkv).view(b, t, 3, attn.num_heads, attn.head_dim)
    q, k, v = grid.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, T, dh]
    o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=attn.scaling)
    return o.transpose(1, 2).reshape(b * t, -1).index_select(0, flat)


def packed_hidden(transformer: GPT2Model, input_ids: torch.Tensor, position_ids: torch.Tensor,
                  lengths: torch.Tensor, varlen: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Final hidden states of the real tokens, ``[N_real, d]`` in row-major order, and their flat indices in ``[B*T]``.

    On the CPU attention runs per sequence on the packed rows (nlg.kernels.varlen_attention); elsewhere, or with
    ``varlen=False``, through SDPA on a padded grid.
    """
    b, t = input_ids.shape
    valid = torch.arange(t, device=input_ids.device).unsqueeze(0) < lengths.unsqueeze(1)
    flat = valid.reshape(-1).nonzero().squeeze(1)
    ids = input_ids.reshape(-1).index_select(0, flat)
    pos = position_ids.reshape(-1).index_select(0, flat)
    x = transformer.drop(transformer.wte(ids) + transformer.wpe(pos))
    bounds = None
    if x.device.type == "cpu" and varlen:
        ends = lengths.cumsum(0).tolist()
        bounds = tuple((e - n, e) for e, n in zip(ends, lengths.tolist()) if n > 0)
    for block in transformer.h:
        attn = block.attn
        qkv = attn.c_attn(block.ln_1(x))
        if bounds is not None:
            # one batched SDPA call when every sequence has one length (pretraining blocks), else per sequence
            o = causal_attention(qkv, bounds, attn.num_heads, attn.scaling)
        else:
            o = _grid_attention(qkv, flat, b, t, attn)
        x = _residual_linear(x, o, attn.c_proj, attn.resid_dropout)
        x = _residual_linear(x, _mlp_hidden(block.ln_2(x), block.mlp), block.mlp.c_proj, block.mlp.dropout)
    return transformer.ln_f(x), flat


def _mlp_hidden(x: torch.Tensor, mlp: GPT2MLP) -> torch.Tensor:
    """``act(c_fc(x))``. For GPT-2's tanh GELU after a pre-packed frozen ``c_fc`` the bias is added inside the
    GELU's cached chunks (nlg.kernels.mkl_prepack's matmul writes ``x @ W`` alone) instead of being copied into the
    ``[N, 4d]`` output before the matmul."""
    act, fc = mlp.act, mlp.c_fc
    if type(act) is not nn.GELU or act.approximate != "tanh":
        return act(_linear(x, fc))
    if (type(fc) is Conv1D and has_pack(fc.weight) and not fc.bias.requires_grad
            and not torch.is_autocast_enabled(x.device.type)):
        return _TanhGelu.apply(frozen_mm(x, fc.weight), fc.bias)
    return _TanhGelu.apply(_linear(x, fc), None)


def _linear(x: torch.Tensor, conv: nn.Module) -> torch.Tensor:
    """``conv(x)``; for a plain Conv1D as ``bias + x @ W`` with the matmul through MKL's pre-packed weight when the
    trainer packed it (nlg.kernels.mkl_prepack), else exactly Conv1D's ``addmm``."""
    if type(conv) is Conv1D and has_pack(conv.weight) and not torch.is_autocast_enabled(x.device.type):
        return frozen_mm(x, conv.weight, acc=conv.bias.expand(x.shape[0], conv.nf).contiguous())
    return conv(x)


def _residual_linear(x: torch.Tensor, inp: torch.Tensor, conv: nn.Module, dropout: nn.Module) -> torch.Tensor:
    """``x + dropout(conv(inp))``; for a plain Conv1D without active dropout as ``(x + bias) += inp @ W`` in place,
    so the matmul accumulates onto the residual instead of writing a separate output to add afterwards."""
    if (type(conv) is Conv1D and (dropout.p == 0.0 or not dropout.training)
            and not torch.is_autocast_enabled(x.device.type)):  # in place would mix autocast's dtypes
        return frozen_mm(inp.reshape(-1, conv.nx), conv.weight, acc=torch.add(x, conv.bias))
    return x + dropout(conv(inp))


_GELU_C2 = 2.0 * math.sqrt(2.0 / math.pi)  # 2 sqrt(2/pi): 0.5 (1 + tanh(z)) = sigmoid(2 z)
_GELU_K = 0.044715
_GELU_CHUNK = 65536  # elements per chunk: the passes below stay in the core's L2 cache


def _tanh_gelu_forward(h: torch.Tensor, with_derivative: bool = False,
                       bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """GPT-2's tanh GELU of ``u = h (+ bias)``, ``0.5 u (1 + tanh(z))`` with ``z = sqrt(2/pi) (u + 0.044715 u^3)``,
    computed as the identical ``u * S``, ``S = sigmoid(2 z)``, chunk by chunk of rows; with ``with_derivative``
    also its derivative ``S + u S (1 - S) 2 sqrt(2/pi) (1 + 3 * 0.044715 u^2)`` from the same ``S``.

    PyTorch's fused CPU kernels evaluate tanh with a slow vectorised formula, forward and again backward (~3.8 +
    4.2 ms for E2E's [517, 4096] per layer); its sigmoid goes through MKL's vector library, and the passes below
    stay in cache. Keeping the derivative instead of ``u`` (same memory) makes the backward one multiplication.
    Equal to ``F.gelu(u, approximate="tanh")`` and its gradient to float rounding (tests/test_train_kernels.py).
    """
    out = torch.empty_like(h)
    deriv = torch.empty_like(h) if with_derivative else None
    rows = max(1, _GELU_CHUNK // max(h.shape[1], 1))
    n = min(rows, h.shape[0])
    scratch = h.new_empty(n, h.shape[1])
    sig_scratch = None if with_derivative else h.new_empty(n, h.shape[1])
    biased = None if bias is None else h.new_empty(n, h.shape[1])
    for start in range(0, h.shape[0], rows):
        x = h[start:start + rows]
        if biased is not None:
            x = torch.add(x, bias, out=biased[: x.shape[0]])
        b = scratch[: x.shape[0]]
        s = deriv[start:start + rows] if with_derivative else sig_scratch[: x.shape[0]]
        torch.mul(x, x, out=b)
        torch.addcmul(x, b, x, value=_GELU_K, out=s)  # u + 0.044715 u^3
        s.mul_(_GELU_C2)
        torch.sigmoid(s, out=s)  # S
        torch.mul(s, x, out=out[start:start + rows])
        if with_derivative:
            b.mul_(3.0 * _GELU_K * _GELU_C2).add_(_GELU_C2).mul_(x)  # u 2 sqrt(2/pi) (1 + 3 k u^2)
            torch.ops.aten.sigmoid_backward.grad_input(b, s, grad_input=b)  # ... S (1 - S)
            s.add_(b)
    return out, deriv


class _TanhGelu(torch.autograd.Function):
    """GPT-2's tanh GELU of ``h`` (plus a frozen ``bias`` when given). On the CPU in fp32 through
    ``_tanh_gelu_forward``, keeping the derivative for a backward that multiplies the incoming gradient by it;
    elsewhere PyTorch's kernels. Either way the backward writes into the incoming gradient. Safe here: that is the
    fresh ``dY @ W^T`` of the MLP's output projection, its only consumer."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if bias is not None and bias.requires_grad:
            raise ValueError("_TanhGelu adds a frozen bias only")
        ctx.kept_derivative = (h.device.type == "cpu" and h.dtype == torch.float32 and h.dim() == 2
                               and h.is_contiguous())
        if ctx.kept_derivative:
            out, deriv = _tanh_gelu_forward(h, with_derivative=ctx.needs_input_grad[0], bias=bias)
            if deriv is not None:
                ctx.save_for_backward(deriv)
            return out
        u = h if bias is None else h + bias  # elsewhere (GPU, autocast's half types): PyTorch's kernels
        ctx.save_for_backward(u)
        return F.gelu(u, approximate="tanh")

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (saved,) = ctx.saved_tensors
        in_place = grad.is_contiguous() and grad.shape == saved.shape and grad.dtype == saved.dtype
        if ctx.kept_derivative:
            return (grad.mul_(saved) if in_place else grad * saved), None
        if not in_place:
            return torch.ops.aten.gelu_backward(grad, saved, approximate="tanh"), None
        return torch.ops.aten.gelu_backward.grad_input(grad, saved, approximate="tanh", grad_input=grad), None
