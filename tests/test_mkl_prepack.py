"""MKL's packed GEMM on frozen weights (nlg.kernels.mkl_prepack) against torch.mm: values, gradients, stale packs, the
trainer's use of it."""
from __future__ import annotations

import gc

import pytest
import torch

from nlg.kernels import mkl_prepack
from nlg.kernels.mkl_prepack import frozen_mm, mm_out, pack_frozen
from tests.test_train_packed import _model, packed_and_padded
from tests.tolerance import assert_within, f64, gamma, mag, matmul_bound

pytestmark = pytest.mark.skipif(not mkl_prepack.available(),
                                reason="this torch build has no MKL packed GEMM (not an x86 MKL build)")


@pytest.fixture(autouse=True)
def _no_packs_left():
    yield
    assert not mkl_prepack._PACKS, "a test left packs registered"


class _Holder(torch.nn.Module):
    """The smallest thing ``pack_frozen`` looks into: ``transformer.h[i]`` Conv1D layers and an ``lm_head``."""

    def __init__(self, weight: torch.Tensor, head: torch.Tensor | None = None):
        super().__init__()
        from transformers.pytorch_utils import Conv1D

        conv = Conv1D(weight.shape[1], weight.shape[0])
        conv.weight = torch.nn.Parameter(weight, requires_grad=False)
        self.transformer = torch.nn.Module()
        self.transformer.h = torch.nn.ModuleList([torch.nn.Sequential(conv)])
        if head is not None:
            self.lm_head = torch.nn.Linear(head.shape[1], head.shape[0], bias=False)
            self.lm_head.weight = torch.nn.Parameter(head, requires_grad=False)


def _weight(k=48, o=80, seed=0):
    return torch.randn(k, o, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("rows", [1, 5, 64, 203])
def test_packed_matmul_equals_torch_mm_for_any_row_count(rows):
    w = _weight()
    holder = _Holder(w)
    packs = pack_frozen(holder)
    try:
        assert len(packs) == 1 and mkl_prepack.has_pack(holder.transformer.h[0][0].weight)
        x = torch.randn(rows, 48, generator=torch.Generator().manual_seed(rows))
        # both products within float32's rounding-error bound of the float64 one (tests/tolerance.py)
        assert_within(frozen_mm(x, holder.transformer.h[0][0].weight), f64(x) @ f64(w), matmul_bound(x, w), "pack")
        assert_within(x @ w, f64(x) @ f64(w), matmul_bound(x, w), "torch.mm")
        # a row-strided input (a slice of a wider matrix) and accumulation onto an existing tensor
        wide = torch.randn(rows, 60)
        acc = torch.randn(rows, 80)
        expected = f64(acc) + f64(wide[:, :48]) @ f64(w)
        bound = gamma(48 + 1) * (mag(acc) + mag(wide[:, :48]) @ mag(w))  # the addition is one more rounding
        out = frozen_mm(wide[:, :48], holder.transformer.h[0][0].weight, acc=acc)
        assert out.data_ptr() == acc.data_ptr()
        assert_within(out, expected, bound, "pack, accumulated")
    finally:
        packs.release()


def test_gradients_equal_torch_mm_and_addmm():
    w = _weight()
    holder = _Holder(w)
    weight = holder.transformer.h[0][0].weight
    packs = pack_frozen(holder)
    try:
        g = torch.Generator().manual_seed(1)
        x0, r0, up = torch.randn(9, 48, generator=g), torch.randn(9, 80, generator=g), torch.randn(9, 80, generator=g)
        grads = []
        for use_pack in (True, False):
            x, r = x0.clone().requires_grad_(), r0.clone().requires_grad_()
            acc = torch.add(r, 1.0)  # a fresh non-leaf, as the packed GPT-2 forward passes (residual + bias)
            if use_pack:
                y = frozen_mm(x, weight, acc=acc) + frozen_mm(x, weight)
            else:
                y = acc.addmm_(x, w) + x @ w
            (y * up).sum().backward()
            grads.append((y.detach(), x.grad, r.grad))
        (yp, xp, rp), (yr, xr, rr) = grads
        # y = (r + 1) + 2 x@w: r + 1, the accumulating product, the second product and the sum round (48 + 3);
        # dx = 2 up@w^T: two 80-term products and their sum (80 + 1); dr = up exactly
        xw, up_wt = mag(x0) @ mag(w), mag(up) @ mag(w).t()
        y64, y_err = f64(r0) + 1 + 2 * (f64(x0) @ f64(w)), gamma(48 + 3) * (mag(r0) + 1 + 2 * xw)
        x64, x_err = 2 * (f64(up) @ f64(w).t()), gamma(80 + 1) * 2 * up_wt
        for route, (yg, xg) in (("pack", (yp, xp)), ("torch", (yr, xr))):
            assert_within(yg, y64, y_err, f"{route} output")
            assert_within(xg, x64, x_err, f"{route} input gradient")
        assert torch.equal(rp, rr) and torch.equal(rp, up)
    finally:
        packs.release()


def test_a_changed_or_trainable_weight_never_uses_a_stale_pack():
    w = _weight()
    holder = _Holder(w.clone())
    weight = holder.transformer.h[0][0].weight
    packs = pack_frozen(holder)
    try:
        x = torch.randn(7, 48)
        with torch.no_grad():
            weight.mul_(2.0)  # as merge_lora or load_state_dict would: the version counter moves
        assert torch.equal(frozen_mm(x, weight), x @ weight)  # torch.mm itself, not the old pack
        assert not torch.allclose(frozen_mm(x, weight), x @ w)
        weight.requires_grad_(True)
        y = frozen_mm(x, weight)
        y.sum().backward()
        assert weight.grad is not None  # a trainable weight goes through autograd's own matmul
    finally:
        packs.release()


def test_head_orientations_and_release():
    head = torch.randn(97, 48, generator=torch.Generator().manual_seed(3))
    holder = _Holder(_weight(), head=head)
    packs = pack_frozen(holder)
    assert len(packs) == 3  # the block's x @ W, the head's h @ W^T and g @ W
    weight = holder.lm_head.weight
    assert mkl_prepack.has_pack(weight, transpose=True) and mkl_prepack.has_pack(weight)
    h, z = torch.randn(11, 48), torch.randn(11, 97)
    assert_within(mm_out(h, weight, torch.empty(11, 97), transpose=True), f64(h) @ f64(head).t(),
                  matmul_bound(h, head.t()), "h @ W^T")
    assert_within(mm_out(z, weight, torch.empty(11, 48)), f64(z) @ f64(head), matmul_bound(z, head), "g @ W")
    assert pack_frozen(holder).ids == []  # packing twice does not duplicate
    packs.release()
    assert not mkl_prepack.has_pack(weight) and len(packs) == 0
    # without a pack it is torch.mm exactly
    assert torch.equal(mm_out(h, weight, torch.empty(11, 97), transpose=True), torch.mm(h, head.t()))


def test_packs_die_with_their_weights():
    holder = _Holder(_weight())
    packs = pack_frozen(holder)
    assert len(mkl_prepack._PACKS) == 1
    del holder
    gc.collect()
    assert not mkl_prepack._PACKS
    packs.release()  # nothing left to free: harmless


def test_packed_gpt2_forward_with_packs_equals_without():
    """The packed GPT-2 forward (LoRA q,v, label smoothing) through packed weights: same loss and LoRA gradients."""
    model = _model()
    reference = packed_and_padded(model)[0]
    packs = pack_frozen(model)
    try:
        n_layer = model.config.n_layer
        assert len(packs) == 4 * n_layer + 2  # c_attn, attn c_proj, c_fc, mlp c_proj per block; the head twice
        (lp, gp), (lf, gf) = packed_and_padded(model)
    finally:
        packs.release()
    torch.testing.assert_close(lp, reference[0], rtol=1e-6, atol=0)
    torch.testing.assert_close(lp, lf, rtol=1e-6, atol=0)
    assert gp.keys() == reference[1].keys() and len(gp) == 4
    for name in gp:
        scale = reference[1][name].abs().max().item()
        assert scale > 0
        torch.testing.assert_close(gp[name], reference[1][name], rtol=1e-5, atol=1e-6 * scale)
