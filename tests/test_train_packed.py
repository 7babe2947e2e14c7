"""The packed forward (no work on padding) gives the padded forward's loss and gradients, and steps aside for
any model that is not a stock GPT-2 stack."""
from __future__ import annotations

import pytest
import torch

from nlg.kernels import packed
from nlg.batching import build_example, collate
from nlg.config import paper_train_config
from nlg.kernels.loss import FastMaskedLMLoss
from nlg.methods import get_method
from nlg.models import build_random


def _model(method="lora", **kw):
    model = build_random("tiny", seed=0)
    torch.manual_seed(3)
    get_method(method).apply(model, paper_train_config("e2e", model="tiny", method=method, lora_dropout=0.0, **kw))
    with torch.no_grad():  # B != 0 so every LoRA tensor gets a gradient
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    return model.train()


def _batch():
    g = torch.Generator().manual_seed(0)
    rows = []
    for ctx, comp in ((3, 2), (11, 9), (1, 1), (6, 14)):  # very different lengths: most of the grid is padding
        ids = torch.randint(0, 50256, (ctx + comp,), generator=g).tolist()
        rows.append(build_example(ids[:ctx], ids[ctx:], 512))
    return collate(rows)


def packed_and_padded(model, autocast: torch.dtype | None = None):
    """(loss, {name: gradient}) of ``_batch()`` through the packed forward, then through the padded one
    (optionally under CPU autocast to ``autocast``)."""
    b = _batch()
    results = []
    for use_packed in (True, False):
        model.zero_grad()
        with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
            loss = FastMaskedLMLoss(model, packed=use_packed)(b.input_ids, b.position_ids, b.targets, b.mask,
                                                              b.lengths, 0.1)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                        if p.requires_grad and p.grad is not None}))
    return results


def test_packed_equals_padded_loss_and_gradients():
    model = _model()
    assert packed.supports(model)
    (lp, gp), (lf, gf) = packed_and_padded(model)
    torch.testing.assert_close(lp, lf, rtol=1e-6, atol=0)
    assert gp.keys() == gf.keys() and len(gp) == 4
    for name in gp:
        assert gf[name].abs().max() > 0
        torch.testing.assert_close(gp[name], gf[name], rtol=1e-5, atol=1e-6 * gf[name].abs().max().item())


def test_packed_hidden_equals_full_forward_rows():
    model = _model().eval()
    b = _batch()
    with torch.no_grad():
        hidden, flat = packed.packed_hidden(model.transformer, b.input_ids, b.position_ids, b.lengths)
        full = model.transformer(input_ids=b.input_ids, position_ids=b.position_ids).last_hidden_state
    assert hidden.shape[0] == b.n_tokens == flat.numel()
    torch.testing.assert_close(hidden, full.reshape(-1, full.shape[-1])[flat], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method,kw", [("adapter-h", {"adapter_dim": 4}), ("prefix-layer", {"prefix_len": 2})])
def test_other_methods_fall_back_to_the_transformer(method, kw):
    model = _model(method, **kw)
    assert not packed.supports(model) and not FastMaskedLMLoss(model).packed
    with pytest.raises(ValueError, match="stock GPT-2"):
        FastMaskedLMLoss(model, packed=True)


def test_hooks_or_replaced_modules_disable_the_packed_path():
    model = _model()
    handle = model.transformer.h[1].mlp.register_forward_hook(lambda m, i, o: o * 2)
    assert not packed.supports(model)
    handle.remove()
    assert packed.supports(model)
    model.transformer.h[0].mlp.c_fc = torch.nn.Linear(64, 256)
    assert not packed.supports(model)
