"""The trainer's hand-written pieces against the plain PyTorch formulations they replace: the fused LM head +
label-smoothed cross-entropy (nlg.kernels.head_loss), per-sequence causal attention on packed rows
(nlg.kernels.varlen_attention), and LoRA's single-pass bias + update."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nlg.kernels import packed
from nlg.kernels.head_loss import LogitsBuffer, head_cross_entropy_sum
from nlg.kernels.loss import FastMaskedLMLoss, fused_head_applies
from nlg.kernels.loss import fast_masked_lm_loss as masked_lm_loss
from nlg.loss import MASK_EPS
from nlg.lora import LoRAConv1D
from nlg.kernels.varlen_attention import varlen_causal_attention
from tests.test_train_packed import _batch, _model, packed_and_padded
from tests.tolerance import (EXP_U20, U32, ULP_FN, assert_within, cross_entropy_bounds, f64, gamma, mag, matmul_bound,
                             softmax_bounds)
from transformers.pytorch_utils import Conv1D


def _reference_loss(hidden, weight, targets, ls, denom):
    return F.cross_entropy(hidden @ weight.t(), targets, reduction="sum", label_smoothing=ls) / denom


def head_loss_bounds(hidden, weight, targets, ls, denom, upstream=1.0):
    """Float64 ``sum_rows(cross_entropy(hidden @ weight^T, ls)) / denom`` and its gradients times ``upstream``,
    each with the bound on what any float32 evaluation (the fused one or autograd's) may make of it
    (tests/tolerance.py): ``(loss, loss_err), (grad_h, grad_h_err), (grad_w, grad_w_err)``."""
    h, w = f64(hidden), f64(weight)
    m, vocab = h.shape[0], w.shape[0]
    rows, rows_err, g, g_err = cross_entropy_bounds(h @ w.t(), matmul_bound(hidden, weight.t()), targets, ls)
    den = float(denom)  # the float32 denominator both routes divide by
    loss = rows.sum() / den
    loss_err = (rows_err.sum() + gamma(m + 2) * rows.sum()) / den  # the m-row sum, the division (rows >= 0)
    s = upstream / den  # up to 4 roundings of the scalar factors (upstream and 1/denom, applied before or after)
    grad_h = s * (g @ w), s * (g_err @ mag(weight) + gamma(vocab + 4) * (g.abs() @ mag(weight)))
    grad_w = s * (g.t() @ h), s * (g_err.t() @ mag(hidden) + gamma(m + 4) * (g.abs().t() @ mag(hidden)))
    return (loss, loss_err), grad_h, grad_w


@pytest.mark.parametrize("ls", [0.0, 0.1])
@pytest.mark.parametrize("weight_grad", [False, True])
@pytest.mark.parametrize("chunk_rows", [512, 7])
def test_fused_head_loss_equals_cross_entropy(ls, weight_grad, chunk_rows):
    """Fused and autograd's loss and gradients, each within the float32 rounding-error bound of the float64 values
    (an elementwise bound scaled by the magnitudes summed: MKL picks other kernels on other CPUs)."""
    g = torch.Generator().manual_seed(1)
    m, d, vocab = 30, 16, 97
    hidden = torch.randn(m, d, generator=g) * 2
    weight = torch.randn(vocab, d, generator=g)
    targets = torch.randint(0, vocab, (m,), generator=g)
    denom = torch.tensor(m + MASK_EPS)
    upstream = 1.7  # the backward scales by the incoming gradient
    (loss64, loss_err), (gh64, gh_err), (gw64, gw_err) = head_loss_bounds(hidden, weight, targets, ls, denom,
                                                                          upstream)
    for fused in (True, False):
        h = hidden.clone().requires_grad_(True)
        w = weight.clone().requires_grad_(weight_grad)
        if fused:
            loss = head_cross_entropy_sum(h, w, targets, ls, denom, LogitsBuffer(), chunk_rows=chunk_rows)
        else:
            loss = _reference_loss(h, w, targets, ls, denom)
        (loss * upstream).backward()
        route = "fused" if fused else "autograd"
        assert_within(loss.detach(), loss64, loss_err, f"{route} loss")
        assert_within(h.grad, gh64, gh_err, f"{route} hidden gradient")
        if weight_grad:
            assert_within(w.grad, gw64, gw_err, f"{route} weight gradient")
        else:
            assert w.grad is None


def test_fused_head_loss_without_grad_and_buffer_reuse():
    g = torch.Generator().manual_seed(2)
    weight = torch.randn(50, 8, generator=g)
    buffer = LogitsBuffer()
    for m in (9, 4, 20):  # grows, shrinks, grows again: the values never depend on the buffer's past
        hidden = torch.randn(m, 8, generator=g)
        targets = torch.randint(0, 50, (m,), generator=g)
        with torch.no_grad():
            loss = head_cross_entropy_sum(hidden, weight, targets, 0.1, float(m), buffer, chunk_rows=6)
        loss64, loss_err = head_loss_bounds(hidden, weight, targets, 0.1, float(m))[0]
        assert_within(loss, loss64, loss_err, f"fused loss, {m} rows")
        assert_within(_reference_loss(hidden, weight, targets, 0.1, float(m)), loss64, loss_err, f"loss, {m} rows")
    empty = head_cross_entropy_sum(torch.zeros(0, 8, requires_grad=True), weight, torch.zeros(0, dtype=torch.long),
                                   0.1, MASK_EPS, buffer)
    assert empty.item() == 0.0


def test_masked_loss_fused_and_plain_agree_and_fallbacks():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50, bias=False)
    hidden = torch.randn(2, 5, 8, requires_grad=True)
    targets = torch.randint(0, 50, (2, 5))
    mask = torch.tensor([[0, 1, 1, 0, 0], [0, 0, 1, 1, 1]])
    assert fused_head_applies(hidden, head)
    sel = mask.bool()
    denom = sel.sum().to(torch.float32) + MASK_EPS  # float32, as both routes compute it
    (loss64, loss_err), (gh64, gh_err), _ = head_loss_bounds(hidden[sel], head.weight, targets[sel], 0.1, denom)
    grad64, grad_err = torch.zeros(hidden.shape, dtype=torch.float64), torch.zeros(hidden.shape, dtype=torch.float64)
    grad64[sel], grad_err[sel] = gh64, gh_err  # unmasked positions: exactly zero
    for fused in (True, False):
        hidden.grad = None
        loss = masked_lm_loss(hidden, head, targets, mask, 0.1, fused=fused)
        loss.backward()
        assert_within(loss.detach(), loss64, loss_err, f"loss, fused={fused}")
        assert_within(hidden.grad, grad64, grad_err, f"hidden gradient, fused={fused}")
        assert hidden.grad[0, 0].abs().max() == 0  # unmasked positions get no gradient
    biased = torch.nn.Linear(8, 50, bias=True)
    assert not fused_head_applies(hidden, biased)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not fused_head_applies(hidden, head)


def _packed_qkv(lengths, heads=4, dh=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = sum(lengths)
    qkv = torch.randn(n, 3 * heads * dh, generator=g)
    ends = torch.tensor(lengths).cumsum(0).tolist()
    bounds = tuple((e - k, e) for e, k in zip(ends, lengths))
    return qkv, bounds


def causal_attention_bounds(qkv, bounds, heads, scale, upstream, flash=lambda length: True):
    """Float64 per-sequence causal attention of packed ``qkv`` and its gradient for ``upstream``, each with the
    bound on what a float32 evaluation may make of it (tests/tolerance.py): by matmuls and ATen's softmax (ours;
    SDPA's math route, with the scale's root applied to q and k), or, where ``flash(length)``, possibly by ATen's
    CPU flash kernel (exp_u20, rowsum(dO * O) in the backward). Returns ``(out, out_err), (grad, grad_err)``,
    packed."""
    n, dh = qkv.shape[0], qkv.shape[1] // 3 // heads
    x, g = f64(qkv).view(n, 3, heads, dh), f64(upstream).view(n, heads, dh)
    out, out_err = torch.zeros(n, heads, dh, dtype=torch.float64), torch.zeros(n, heads, dh, dtype=torch.float64)
    grad, grad_err = torch.zeros(n, 3, heads, dh, dtype=torch.float64), torch.zeros(n, 3, heads, dh,
                                                                                     dtype=torch.float64)
    u = U32
    for start, end in bounds:
        length = end - start
        q, k, v = (x[start:end, i].transpose(0, 1) for i in range(3))  # [H, L, dh]
        go = g[start:end].transpose(0, 1)
        causal = torch.ones(length, length, dtype=torch.bool).tril()
        # scores: the dh-term products, the scale (or its root, twice) and its rounding to float32
        s_exact = (scale * q @ k.transpose(1, 2)).masked_fill(~causal, float("-inf"))
        s_err = gamma(dh + 4) * scale * (q.abs() @ k.abs().transpose(1, 2))
        p, rel, _ = softmax_bounds(s_exact, s_err, exp_err=EXP_U20 if flash(length) else ULP_FN)
        p_err = p * rel
        o = p @ v
        o_err = gamma(length) * (p @ v.abs()) + p_err @ v.abs()
        # backward: dV = P^T dO, dP = dO V^T, D = rowsum(P * dP) or rowsum(dO * O), dS = P (dP - D) scale
        dp = go @ v.transpose(1, 2)
        dp_err = gamma(dh) * (go.abs() @ v.abs().transpose(1, 2))
        d = (p * dp).sum(-1, keepdim=True)
        d_err = torch.maximum(gamma(length) * (p * dp.abs()).sum(-1, keepdim=True)
                              + (p_err * dp.abs() + p * dp_err).sum(-1, keepdim=True),
                              gamma(dh) * (go.abs() * o.abs()).sum(-1, keepdim=True)
                              + (go.abs() * o_err).sum(-1, keepdim=True))
        ds = p * (dp - d)
        # the subtraction and the product (2u of the parts), the scale and its float32 rounding (2u)
        ds_err = p_err * (dp - d).abs() + p * (dp_err + d_err) + 4 * u * p * (dp.abs() + d.abs())
        dq = scale * ds @ k
        dk = scale * ds.transpose(1, 2) @ q
        dv = p.transpose(1, 2) @ go
        # the L-term products and up to 4 roundings by the scale (its root rounded, applied to k or q and to the
        # product)
        dq_err = scale * (gamma(length + 4) * (ds.abs() @ k.abs()) + ds_err @ k.abs())
        dk_err = scale * (gamma(length + 4) * (ds.abs().transpose(1, 2) @ q.abs())
                          + ds_err.transpose(1, 2) @ q.abs())
        dv_err = gamma(length) * (p.transpose(1, 2) @ go.abs()) + p_err.transpose(1, 2) @ go.abs()
        out[start:end], out_err[start:end] = o.transpose(0, 1), o_err.transpose(0, 1)
        for i, (gi, ei) in enumerate(((dq, dq_err), (dk, dk_err), (dv, dv_err))):
            grad[start:end, i], grad_err[start:end, i] = gi.transpose(0, 1), ei.transpose(0, 1)
    return (out.view(n, -1), out_err.view(n, -1)), (grad.view(n, -1), grad_err.view(n, -1))


@pytest.mark.parametrize("math_max_len", [128, 4, 0])  # all by matmuls, mixed, all by the flash kernel
def test_varlen_attention_equals_sdpa_per_sequence(math_max_len, monkeypatch):
    from nlg.kernels import varlen_attention

    monkeypatch.setattr(varlen_attention, "MATH_MAX_LEN", math_max_len)
    heads, dh = 4, 8
    lengths = [5, 1, 12, 3]
    qkv, bounds = _packed_qkv(lengths, heads, dh)
    upstream = torch.randn(qkv.shape[0], heads * dh, generator=torch.Generator().manual_seed(5))
    x = qkv.clone().requires_grad_(True)
    out = varlen_causal_attention(x, bounds, heads, 0.3)
    out.backward(upstream)
    ref_x = qkv.clone().requires_grad_(True)
    ref_parts = []
    for start, end in bounds:
        q, k, v = ref_x[start:end].view(end - start, 3, heads, dh).permute(1, 2, 0, 3).unbind(0)  # [H, L, dh]
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.3)
        ref_parts.append(o.transpose(0, 1).reshape(end - start, heads * dh))
    ref = torch.cat(ref_parts)
    ref.backward(upstream)
    # ours: the flash kernel beyond MATH_MAX_LEN, matmuls up to it; SDPA's reference: either, as it chooses
    for route, (o, gr), flash in (("varlen", (out, x.grad), lambda length: length > math_max_len),
                                  ("SDPA", (ref, ref_x.grad), lambda length: True)):
        (out64, out_err), (grad64, grad_err) = causal_attention_bounds(qkv, bounds, heads, 0.3, upstream, flash)
        assert_within(o, out64, out_err, f"{route} output")
        assert_within(gr, grad64, grad_err, f"{route} qkv gradient")
    # sequences do not see each other: changing the last sequence leaves the others' outputs bitwise equal
    other = qkv.clone()
    other[bounds[-1][0]:] += 1.0
    with torch.no_grad():
        changed = varlen_causal_attention(other, bounds, heads, 0.3)
    assert torch.equal(changed[:bounds[-1][0]], out.detach()[:bounds[-1][0]])
    assert not torch.equal(changed[bounds[-1][0]:], out.detach()[bounds[-1][0]:])


def test_packed_varlen_equals_packed_grid():
    model = _model()
    b = _batch()
    results = []
    for varlen in (True, False):
        model.zero_grad()
        hidden, flat = packed.packed_hidden(model.transformer, b.input_ids, b.position_ids, b.lengths, varlen=varlen)
        hidden.pow(2).mean().backward()
        results.append((hidden.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
    for name, grad in results[1][1].items():
        assert grad.abs().max() > 0
        torch.testing.assert_close(results[0][1][name], grad, rtol=1e-5, atol=2e-5 * grad.abs().max().item())


def test_masked_loss_module_reuses_one_logits_buffer():
    model = _model()
    module = FastMaskedLMLoss(model)
    b = _batch()
    first = module(b.input_ids, b.position_ids, b.targets, b.mask, b.lengths, 0.1)
    buffer = module.logits_buffer._flat
    second = module(b.input_ids, b.position_ids, b.targets, b.mask, b.lengths, 0.1)
    assert module.logits_buffer._flat is buffer and buffer.numel() == int(b.mask.sum()) * model.config.vocab_size
    assert torch.equal(first, second)


@pytest.mark.parametrize("slices", [(0, 2), (1,), (0, 1, 2)])
def test_lora_single_pass_forward_equals_the_formula(slices):
    torch.manual_seed(0)
    base = Conv1D(3 * 6, 5)
    torch.nn.init.normal_(base.bias)
    layer = LoRAConv1D(base, rank=2, alpha=4.0, n_slices=3, slices=slices)
    torch.nn.init.normal_(layer.lora_B)
    x = torch.randn(7, 5, requires_grad=True)
    out = layer(x)
    delta = torch.zeros(5, 18)
    for g, s in enumerate(slices):
        a = layer.lora_A[g * 2:(g + 1) * 2]  # r × in
        bm = layer.lora_B[g * 6:(g + 1) * 6]  # out_slice × r
        delta[:, s * 6:(s + 1) * 6] = (bm @ a).t() * 2.0
    ref = x @ (base.weight + delta) + base.bias
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the autocast branch computes the same function
        torch.testing.assert_close(layer(x).float(), ref, rtol=5e-2, atol=5e-2)
    out.sum().backward()
    assert layer.lora_A.grad is not None and layer.lora_B.grad.abs().max() > 0 and x.grad is not None


@pytest.mark.parametrize("method,kw", [
    ("ft", {}),  # every weight trains: the in-place residual matmuls must also give weight gradients
    ("lora", {"lora_targets": "q,v,o,c_fc,c_proj"}),  # LoRA on the projections: those go the module's own way
])
def test_packed_equals_padded_for_trainable_projections(method, kw):
    model = _model(method, **kw)
    assert packed.supports(model)
    (lp, gp), (lf, gf) = packed_and_padded(model)
    torch.testing.assert_close(lp, lf, rtol=1e-6, atol=0)
    assert gp.keys() == gf.keys()
    assert any("mlp.c_fc" in n for n in gp) and any("attn.c_proj" in n for n in gp)
    for name in gp:
        torch.testing.assert_close(gp[name], gf[name], rtol=1e-5, atol=2e-5 * gf[name].abs().max().item() + 1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_packed_path_under_autocast_matches_the_padded_one(dtype):
    """--precision bf16/fp16: the packed forward's in-place and fused pieces step aside for autocast's dtypes."""
    (lp, gp), (lf, gf) = packed_and_padded(_model(), autocast=dtype)
    torch.testing.assert_close(lp.float(), lf.float(), rtol=2e-2, atol=0)
    assert gp.keys() == gf.keys() and len(gp) == 4
    for name in gp:
        a, r = gp[name].float(), gf[name].float()
        assert torch.isfinite(a).all() and a.abs().max() > 0
        assert (a - r).norm() <= 0.1 * r.norm()


@pytest.mark.parametrize("shape", [(37, 4096), (3, 50), (1, 70000)])
def test_tanh_gelu_and_its_kept_derivative_equal_pytorch(shape):
    """packed._TanhGelu: h * sigmoid(2z) by chunks of rows, derivative kept from the forward, vs F.gelu(tanh)."""
    g = torch.Generator().manual_seed(4)
    h0 = torch.randn(*shape, generator=g) * 3
    h0.view(-1)[: 5] = torch.tensor([0.0, -12.0, 12.0, -30.0, 1e-6])  # zero, saturated tails, a tiny value
    up = torch.randn(*shape, generator=g)
    results = []
    for ours in (True, False):
        h = h0.clone().requires_grad_(True)
        y = packed._TanhGelu.apply(h, None) if ours else F.gelu(h, approximate="tanh")
        y.backward(up.clone())  # ours multiplies the incoming gradient in place
        results.append((y.detach(), h.grad))
    (yo, go), (yr, gr) = results
    torch.testing.assert_close(yo, yr, rtol=2e-6, atol=1e-6)
    torch.testing.assert_close(go, gr, rtol=2e-5, atol=1e-5)
    with torch.no_grad():  # no derivative kept without grad, same values
        assert torch.equal(packed._TanhGelu.apply(h0, None), yo)
    # a non-contiguous input takes PyTorch's kernels, forward and backward
    t = torch.cat([h0, h0], dim=1)[:, ::2].requires_grad_(True)
    assert not t.is_contiguous()
    y = packed._TanhGelu.apply(t, None)
    assert torch.equal(y, F.gelu(t, approximate="tanh"))
    y.backward(up.clone())
    assert torch.equal(t.grad, torch.ops.aten.gelu_backward(up, t.detach(), approximate="tanh"))


def test_tanh_gelu_with_a_frozen_bias_equals_gelu_of_the_sum():
    g = torch.Generator().manual_seed(5)
    h0, bias, up = torch.randn(41, 4096, generator=g), torch.randn(4096, generator=g), torch.randn(41, 4096, generator=g)
    results = []
    for ours in (True, False):
        h = h0.clone().requires_grad_(True)
        y = packed._TanhGelu.apply(h, bias) if ours else F.gelu(h + bias, approximate="tanh")
        y.backward(up.clone())
        results.append((y.detach(), h.grad))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=2e-6, atol=1e-6)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=2e-5, atol=1e-5)
    with pytest.raises(ValueError, match="frozen bias"):
        packed._TanhGelu.apply(h0, bias.clone().requires_grad_(True))
