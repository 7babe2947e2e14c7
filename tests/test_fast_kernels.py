"""The kernels that make pretraining and decoding fast, against the plain formulations they replace:
batched attention for equal-length packed blocks (nlg.kernels.equal_length_attention), the fused LM head + loss under
CPU bf16 autocast (nlg.kernels.head_loss_autocast, chosen by nlg.kernels.loss.fast_masked_lm_loss), and the two-stage top-k of the
beam search (nlg.beam.row_topk)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nlg.kernels import loss as loss_mod
from nlg.beam import row_topk
from nlg.kernels.equal_length_attention import causal_attention, equal_length
from nlg.kernels.head_loss import LogitsBuffer
from nlg.kernels.head_loss_autocast import autocast_head_cross_entropy_sum, fused_autocast_head_applies
from nlg.kernels.varlen_attention import varlen_causal_attention
from tests.test_train_kernels import causal_attention_bounds
from tests.tolerance import assert_within, f64

pytestmark = pytest.mark.usefixtures("one_thread")
BF16_U = 2.0 ** -8  # unit roundoff of bfloat16 (8 significant bits)


def _blocks(batch: int, length: int, heads: int, dh: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(batch * length, 3 * heads * dh, generator=g)
    bounds = tuple((i * length, (i + 1) * length) for i in range(batch))
    return qkv, bounds


def test_equal_length_detects_only_tiling_blocks():
    assert equal_length(((0, 4), (4, 8), (8, 12)), 12) == 4
    assert equal_length(((0, 4), (4, 8)), 12) is None  # rows left over
    assert equal_length(((0, 4), (4, 9)), 9) is None  # two lengths
    assert equal_length(((0, 4), (5, 9)), 9) is None  # a gap
    assert equal_length((), 0) is None


def test_batched_attention_for_equal_lengths_within_fp32_bounds():
    heads, dh = 4, 8
    qkv, bounds = _blocks(3, 16, heads, dh)
    upstream = torch.randn(qkv.shape[0], heads * dh, generator=torch.Generator().manual_seed(1))
    x = qkv.clone().requires_grad_(True)
    out = causal_attention(x, bounds, heads, 0.3)
    out.backward(upstream)
    (out64, out_err), (grad64, grad_err) = causal_attention_bounds(qkv, bounds, heads, 0.3, upstream)
    assert_within(out, out64, out_err, "batched output")
    assert_within(x.grad, grad64, grad_err, "batched qkv gradient")
    # blocks do not see each other: changing the last one leaves the others' outputs bitwise equal
    other = qkv.clone()
    other[bounds[-1][0]:] += 1.0
    with torch.no_grad():
        changed = causal_attention(other, bounds, heads, 0.3)
    assert torch.equal(changed[:bounds[-1][0]], out.detach()[:bounds[-1][0]])


def test_mixed_lengths_fall_back_to_the_per_sequence_kernel_bitwise():
    heads, dh = 2, 8
    qkv = torch.randn(20, 3 * heads * dh, generator=torch.Generator().manual_seed(2))
    bounds = ((0, 5), (5, 17), (17, 20))
    assert torch.equal(causal_attention(qkv, bounds, heads, 0.25), varlen_causal_attention(qkv, bounds, heads, 0.25))


def test_batched_attention_under_bf16_within_bf16_rounding():
    # bf16 operands are exact inputs; the kernel rounds P (relative 2^-8) and the output (2^-8), sums in fp32:
    # |out - exact| <= (2 u_bf16 + fp32 terms) * (P @ |V|) <= 4 u_bf16 * max |v| with a 2x margin
    heads, dh = 4, 16
    qkv, bounds = _blocks(4, 32, heads, dh, seed=3)
    qkv = qkv.to(torch.bfloat16)
    out = causal_attention(qkv, bounds, heads, dh ** -0.5)
    ref, _ = causal_attention_bounds(qkv.float(), bounds, heads, dh ** -0.5, torch.zeros(qkv.shape[0], heads * dh))
    vmax = f64(qkv).view(qkv.shape[0], 3, heads, dh)[:, 2].abs().amax()
    assert out.dtype == torch.bfloat16
    assert float((f64(out) - ref[0]).abs().max()) <= 4 * BF16_U * float(vmax)


def _head_case(m=96, d=32, vocab=700, seed=4):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(m, d, generator=g)
    weight = torch.randn(vocab, d, generator=g) * 0.5
    targets = torch.randint(0, vocab, (m,), generator=g)
    return hidden, weight, targets


def _exact_on_rounded(hidden, weight, targets, ls, denom):
    """Float64 loss and gradients of the cross-entropy on the bf16-rounded operands (what both bf16 routes
    compute from)."""
    h = hidden.to(torch.bfloat16).double().requires_grad_(True)
    w = weight.to(torch.bfloat16).double().requires_grad_(True)
    loss = F.cross_entropy(h @ w.t(), targets, reduction="sum", label_smoothing=ls) / denom
    loss.backward()
    return loss.detach(), h.grad, w.grad


def _rel(a, b):
    return float((f64(a) - f64(b)).norm() / f64(b).norm())


@pytest.mark.parametrize("ls", [0.0, 0.1])
def test_autocast_head_loss_as_accurate_as_autocasts_own_path(ls):
    hidden, weight, targets = _head_case()
    denom = float(hidden.shape[0]) + loss_mod.MASK_EPS
    loss64, gh64, gw64 = _exact_on_rounded(hidden, weight, targets, ls, denom)
    routes = {}
    for name in ("fused", "autograd"):
        h = hidden.clone().requires_grad_(True)
        w = torch.nn.Parameter(weight.clone())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if name == "fused":
                loss = autocast_head_cross_entropy_sum(h, w, targets, ls, denom, LogitsBuffer(), chunk_rows=40)
            else:
                loss = F.cross_entropy((h @ w.t()).float(), targets, reduction="sum", label_smoothing=ls) / denom
        loss.backward()
        routes[name] = (loss.detach(), h.grad, w.grad)
    fused, plain = routes["fused"], routes["autograd"]
    # both round the logits to bf16 (relative 2^-8) before an fp32 softmax: the loss moves by at most that much
    # of the logits' spread; the gradients carry bf16 roundings of dZ and of each GEMM's result (~3 u_bf16)
    assert abs(float(fused[0]) - float(loss64)) <= 4 * BF16_U * float(loss64)
    assert abs(float(fused[0]) - float(plain[0])) <= 1e-5 * float(loss64)  # the same bf16 logits, fp32 softmax
    for i, exact in ((1, gh64), (2, gw64)):
        assert _rel(fused[i], exact) <= 3 * BF16_U
        assert _rel(fused[i], exact) <= 1.5 * _rel(plain[i], exact) + 1e-6


def test_masked_lm_loss_takes_the_fused_autocast_head(monkeypatch):
    hidden, weight, targets = _head_case(m=30, vocab=300)
    head = torch.nn.Linear(hidden.shape[1], weight.shape[0], bias=False)
    head.weight = torch.nn.Parameter(weight.clone())
    mask = torch.ones(30, dtype=torch.bool)
    mask[::3] = False
    calls = []
    real = loss_mod.autocast_head_cross_entropy_sum
    monkeypatch.setattr(loss_mod, "autocast_head_cross_entropy_sum",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fused_autocast_head_applies(hidden, head)
        fused = loss_mod.fast_masked_lm_loss(hidden, head, targets, mask, 0.1)
        plain = loss_mod.fast_masked_lm_loss(hidden, head, targets, mask, 0.1, fused=False)
    assert calls == [1]  # fused=False is the autograd reference, never the kernel
    assert abs(float(fused.detach()) - float(plain.detach())) <= 1e-5 * float(plain.detach())
    assert not fused_autocast_head_applies(hidden, head)  # outside autocast: nlg.kernels.head_loss's fp32 route instead


@pytest.mark.parametrize("rows,width,k", [(7, 50257, 10), (3, 1000, 4), (5, 640, 10), (2, 300, 10), (4, 97, 3)])
def test_row_topk_equals_torch_topk(rows, width, k):
    g = torch.Generator().manual_seed(width)
    x = torch.softmax(torch.randn(rows, width, generator=g) * 3, -1)  # distinct values almost surely
    x[0, -1] = 2.0  # the winner in the tail past the last whole block
    x[1, :5] = 0.0  # banned tokens
    values, index = row_topk(x, k)
    ref = torch.topk(x, k, dim=1, largest=True, sorted=True)
    assert torch.equal(values, ref.values) and torch.equal(index, ref.indices)


def test_row_topk_with_ties_keeps_the_values():
    x = torch.zeros(2, 2000)
    x[:, 100:300] = 1.0  # 200 equal maxima over several blocks
    values, index = row_topk(x, 10)
    assert torch.equal(values, torch.ones(2, 10))
    assert bool((x.gather(1, index) == 1.0).all()) and all(len(set(r.tolist())) == 10 for r in index)
