"""The rounding-error bounds of tests/tolerance.py hold for float32 results and still catch wrong ones: a result
scaled by 1 + 1e-3, any single element moved by 1e-4 of the largest, a 1% change of the label smoothing."""
from __future__ import annotations

import math

import pytest
import torch

from nlg.kernels.head_loss import LogitsBuffer, head_cross_entropy_sum
from nlg.loss import MASK_EPS
from tests.test_train_kernels import causal_attention_bounds, head_loss_bounds
from tests.tolerance import U32, assert_within, excess, f64, gamma, matmul_bound, within


def test_gamma_and_the_checks_semantics():
    assert gamma(1) == pytest.approx(U32) and gamma(100) == pytest.approx(100 * U32 / (1 - 100 * U32))
    with pytest.raises(ValueError):
        gamma(2 ** 24)
    ref = torch.tensor([1.0, 0.0, -2.0], dtype=torch.float64)
    zero = torch.zeros(3, dtype=torch.float64)
    assert within(ref.float(), ref, zero)  # exact agreement passes even a zero bound
    assert not within(torch.tensor([1.0, 1e-30, -2.0]), ref, zero)
    assert not within(torch.tensor([1.0, math.nan, -2.0]), ref, torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="shapes"):
        excess(ref.float(), ref[:2], zero)
    with pytest.raises(AssertionError, match="1 of 3 elements"):
        assert_within(torch.tensor([1.0, 0.5, -2.0]), ref, torch.full((3,), 0.1, dtype=torch.float64), "x")


@pytest.mark.parametrize("n", [1, 16, 97, 1000])
def test_matmul_bound_holds_and_catches_errors(n):
    g = torch.Generator().manual_seed(n)
    a, b = torch.randn(33, n, generator=g), torch.randn(n, 21, generator=g)
    if n > 1:  # a row of large terms that cancel: a near-zero result, where a fixed atol is the wrong scale
        a0, b0 = f64(a[0]) * 1e3, f64(b[:, 0])
        a[0] = (a0 - (a0 @ b0) / (b0 @ b0) * b0).float()
    ref, bound = f64(a) @ f64(b), matmul_bound(a, b)
    for product in (a @ b, torch.mm(a.t().contiguous().t(), b), (b.t() @ a.t()).t()):  # other kernels, layouts
        assert_within(product, ref, bound, f"n={n}")
    assert not within((a @ b) * (1 + 1e-3), ref, bound)
    # every element on its own, moved by 1e-4 of the magnitudes it sums, is outside the bound
    moved = f64(a @ b) + 1e-4 * (f64(a).abs() @ f64(b).abs())
    assert bool((excess(moved, ref, bound) > 1).all())


def _head_case():
    """The configuration that failed on Zen 4 with a fixed atol: 7-row chunks, weight gradient, ls = 0.1."""
    g = torch.Generator().manual_seed(1)
    m, d, vocab = 30, 16, 97
    hidden = torch.randn(m, d, generator=g) * 2
    weight = torch.randn(vocab, d, generator=g)
    targets = torch.randint(0, vocab, (m,), generator=g)
    return hidden, weight, targets, torch.tensor(m + MASK_EPS)


def _fused(hidden, weight, targets, ls, denom, upstream=1.7):
    h, w = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    loss = head_cross_entropy_sum(h, w, targets, ls, denom, LogitsBuffer(), chunk_rows=7)
    (loss * upstream).backward()
    return loss.detach(), h.grad, w.grad


def test_head_loss_bounds_catch_wrong_losses_and_gradients():
    hidden, weight, targets, denom = _head_case()
    (loss64, loss_err), (gh64, gh_err), (gw64, gw_err) = head_loss_bounds(hidden, weight, targets, 0.1, denom, 1.7)
    loss, gh, gw = _fused(hidden, weight, targets, 0.1, denom)
    assert within(loss, loss64, loss_err) and within(gh, gh64, gh_err) and within(gw, gw64, gw_err)
    # scaled by 1 + 1e-3 (the loss by 1 + 1e-4): fails
    assert not within(loss * (1 + 1e-4), loss64, loss_err)
    assert not within(gh * (1 + 1e-3), gh64, gh_err)
    assert not within(gw * (1 + 1e-3), gw64, gw_err)
    # any one element moved by 1e-4 of the largest gradient: each element is checked on its own, so moving all
    # of them at once and finding every one outside its bound shows it for each position
    for grad, ref, err in ((gh, gh64, gh_err), (gw, gw64, gw_err)):
        step = 1e-4 * ref.abs().max()
        for sign in (1, -1):
            assert bool((excess(f64(grad) + sign * step, ref, err) > 1).all())
    # a real bug's size: the label smoothing off by 1%
    _, gh_bad, gw_bad = _fused(hidden, weight, targets, 0.101, denom)
    assert not within(gh_bad, gh64, gh_err) and not within(gw_bad, gw64, gw_err)


def test_attention_bounds_catch_wrong_outputs():
    from nlg.kernels.varlen_attention import varlen_causal_attention

    heads, dh, lengths = 4, 8, [5, 1, 12, 3]
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(sum(lengths), 3 * heads * dh, generator=g)
    ends = torch.tensor(lengths).cumsum(0).tolist()
    bounds = tuple((e - k, e) for e, k in zip(ends, lengths))
    upstream = torch.randn(qkv.shape[0], heads * dh, generator=g)
    x = qkv.clone().requires_grad_(True)
    out = varlen_causal_attention(x, bounds, heads, 0.3)
    out.backward(upstream)
    (out64, out_err), (grad64, grad_err) = causal_attention_bounds(qkv, bounds, heads, 0.3, upstream,
                                                                   flash=lambda length: False)
    assert within(out, out64, out_err) and within(x.grad, grad64, grad_err)
    assert not within(out * (1 + 1e-3), out64, out_err) and not within(x.grad * (1 + 1e-3), grad64, grad_err)
    for got, ref, err in ((out, out64, out_err), (x.grad, grad64, grad_err)):
        assert bool((excess(f64(got) + 1e-4 * ref.abs().max(), ref, err) > 1).all())
    # a scale off by 1e-3 in the scores
    wrong = varlen_causal_attention(qkv, bounds, heads, 0.3 * (1 + 1e-3))
    assert not within(wrong, out64, out_err)
