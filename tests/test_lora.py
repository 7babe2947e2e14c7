"""LoRA layers: exact math against a slice-by-slice reference, merge/unmerge, freezing, parameter counts."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from transformers.pytorch_utils import Conv1D

from nlg.config import TrainConfig
from nlg.lora import (
    LoRAConv1D,
    LoRAError,
    count_trainable,
    inject_lora,
    lora_modules,
    lora_settings,
    lora_state_dict,
    merge_lora,
    normalize_targets,
    strip_lora,
    unmerge_lora,
)
from nlg.kernels.lora_fast import FastLoRAConv1D, cpu_dropout
from nlg.methods import get_method
from nlg.models import build_random

ALL = ("q", "k", "v", "o", "c_fc", "c_proj")


def _inputs(batch=2, length=9, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 50257, (batch, length), generator=g)
    pos = torch.arange(length).expand(batch, length)
    return ids, pos


def _logits(model, ids, pos):
    with torch.no_grad():
        return model(input_ids=ids, position_ids=pos).logits


def _randomise_b(model, std=0.3, seed=5):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in lora_modules(model):
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * std)


def _reference_update(x, layer: LoRAConv1D):
    """Slice-by-slice reference: out[:, slice s] += (alpha/r) * x A_g^T B_g^T, written independently of the module."""
    r, d = layer.rank, layer.slice_size
    out = x @ layer.weight + layer.bias
    pieces = list(out.split(d, dim=-1))
    for g, s in enumerate(layer.slices):
        a_g = layer.lora_A[g * r:(g + 1) * r]  # r × in
        b_g = layer.lora_B[g * d:(g + 1) * d]  # d × r
        pieces[s] = pieces[s] + (layer.alpha / layer.rank) * (x @ a_g.T @ b_g.T)
    return torch.cat(pieces, dim=-1)


def test_lora_model_equals_base_at_init_even_with_dropout(tiny_model):
    ids, pos = _inputs()
    base = _logits(tiny_model, ids, pos)
    inject_lora(tiny_model, rank=4, alpha=32, dropout=0.5, targets=ALL)
    tiny_model.train()
    assert torch.equal(_logits(tiny_model, ids, pos), base)
    for _, m in lora_modules(tiny_model):
        assert torch.count_nonzero(m.lora_B) == 0
        bound = 1 / math.sqrt(m.nx)  # kaiming_uniform(a=sqrt 5) on fan_in = in features
        assert m.lora_A.abs().max() <= bound and m.lora_A.abs().max() > 0.5 * bound


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("targets", [("q", "v"), ("k",), ("q", "k", "v"), ("v",), ("o", "c_fc", "c_proj")])
def test_layer_matches_slice_reference(targets, fast):
    torch.manual_seed(0)
    model = build_random("tiny", seed=3)
    inject_lora(model, rank=3, alpha=12, targets=targets)
    _randomise_b(model)
    for name, layer in lora_modules(model):
        if fast and isinstance(layer, LoRAConv1D):
            layer.__class__ = FastLoRAConv1D
        inp = torch.randn(2, 5, layer.nx)
        got = layer(inp)
        assert torch.allclose(got, _reference_update(inp, layer), atol=1e-5), name
        # the un-adapted slices are bit-identical to the plain Conv1D
        plain = inp @ layer.weight + layer.bias
        for s in set(range(layer.n_slices)) - set(layer.slices):
            d = layer.slice_size
            assert torch.allclose(got[..., s * d:(s + 1) * d], plain[..., s * d:(s + 1) * d], atol=1e-6, rtol=0)


def test_qv_layout_is_the_authors_merged_linear():
    """q,v on c_attn: lora_A is 2r × d, lora_B 2d × r and the update equals their grouped conv1d, zero on k."""
    model = build_random("tiny", seed=0)
    inject_lora(model, rank=4, alpha=32, targets="q,v")
    _randomise_b(model)
    layer = model.transformer.h[1].attn.c_attn
    d, r = 64, 4
    assert layer.lora_A.shape == (2 * r, d) and layer.lora_B.shape == (2 * d, r)
    # their merge: conv1d(A[None], B[..., None], groups=2) gives the 2d × d update of q and v (out × in)
    grouped = F.conv1d(layer.lora_A.detach()[None], layer.lora_B.detach()[..., None], groups=2)[0]
    expected = torch.zeros(3 * d, d)
    expected[:d], expected[2 * d:] = grouped[:d], grouped[d:]
    assert torch.allclose(layer.delta_weight(), (32 / 4) * expected.T, atol=1e-6)
    assert torch.count_nonzero(layer.delta_weight()[:, d:2 * d]) == 0


def test_same_initial_a_in_every_layer_like_the_authors_deepcopy():
    shared = inject_lora(build_random("tiny", seed=0), targets=ALL)
    for kind in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
        a0, a1 = (dict(lora_modules(shared))[f"transformer.h.{i}.{kind}"].lora_A for i in (0, 1))
        assert torch.equal(a0, a1)
    own = inject_lora(build_random("tiny", seed=0), targets=("q", "v"), same_init_across_layers=False)
    assert not torch.equal(own.transformer.h[0].attn.c_attn.lora_A, own.transformer.h[1].attn.c_attn.lora_A)


def test_training_merge_unmerge_frozen_and_gradients(tiny_model):
    ids, pos = _inputs(length=12)
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    base_logits = _logits(tiny_model, ids, pos)
    inject_lora(tiny_model, rank=4, alpha=32, dropout=0.1, targets=("q", "v"))
    lora_names = {n for n, _ in tiny_model.named_parameters() if "lora_" in n}
    assert {n for n, p in tiny_model.named_parameters() if p.requires_grad} == lora_names
    assert set(tiny_model.state_dict()) == set(before) | lora_names  # base names unchanged
    opt = torch.optim.AdamW([p for p in tiny_model.parameters() if p.requires_grad], lr=1e-2)
    tiny_model.train()
    torch.manual_seed(0)
    for step in range(4):
        out = tiny_model(input_ids=ids, position_ids=pos, labels=ids)
        opt.zero_grad()
        out.loss.backward()
        for n, p in tiny_model.named_parameters():
            assert (p.grad is not None) == (n in lora_names), n
            if step > 0 and n in lora_names:  # B = 0 gives A no gradient on the very first step
                assert torch.count_nonzero(p.grad) > 0, n
        opt.step()
    tiny_model.eval()
    for k, v in before.items():
        assert torch.equal(tiny_model.state_dict()[k], v), f"frozen {k} changed"
    unmerged = _logits(tiny_model, ids, pos)
    assert (unmerged - base_logits).abs().max() > 1e-3  # training did change the function
    merge_lora(tiny_model)
    assert not torch.equal(tiny_model.transformer.h[0].attn.c_attn.weight, before["transformer.h.0.attn.c_attn.weight"])
    assert torch.allclose(_logits(tiny_model, ids, pos), unmerged, atol=1e-5)
    unmerge_lora(tiny_model)
    for k, v in before.items():
        assert torch.allclose(tiny_model.state_dict()[k], v, atol=1e-6, rtol=0), k
    assert torch.allclose(_logits(tiny_model, ids, pos), unmerged, atol=1e-5)


def test_merge_equals_unmerged_for_every_target(tiny_model):
    ids, pos = _inputs()
    inject_lora(tiny_model, rank=2, alpha=8, targets=ALL)
    _randomise_b(tiny_model, std=0.05)
    unmerged = _logits(tiny_model, ids, pos)
    merge_lora(tiny_model)
    assert torch.allclose(_logits(tiny_model, ids, pos), unmerged, atol=1e-5)
    merge_lora(tiny_model)  # idempotent
    assert torch.allclose(_logits(tiny_model, ids, pos), unmerged, atol=1e-5)


def test_strip_lora_leaves_plain_gpt2_with_same_outputs(tiny_model):
    ids, pos = _inputs()
    inject_lora(tiny_model, targets=("q", "v"))
    _randomise_b(tiny_model)
    expected = _logits(tiny_model, ids, pos)
    strip_lora(tiny_model)
    assert not list(lora_modules(tiny_model))
    assert type(tiny_model.transformer.h[0].attn.c_attn) is Conv1D
    assert torch.allclose(_logits(tiny_model, ids, pos), expected, atol=1e-5)


@pytest.mark.parametrize("fast", [False, True])
def test_dropout_only_on_the_lora_input_path(fast):
    torch.manual_seed(0)
    base = Conv1D(12, 8)
    layer = LoRAConv1D(base, rank=2, alpha=4, dropout=0.5, n_slices=3, slices=(0, 2))
    if fast:
        layer.__class__ = FastLoRAConv1D  # what nlg.kernels.install does
    torch.nn.init.normal_(layer.lora_B)
    x = torch.randn(3, 8)
    torch.manual_seed(7)
    got = layer.train()(x)
    torch.manual_seed(7)
    # the same draws: the reference's nn.Dropout (loralib's), the fast kernel's cpu_dropout on the CPU
    dropped = cpu_dropout(x, 0.5) if fast else torch.nn.functional.dropout(x, 0.5, training=True)
    assert 0 < int((dropped == 0).sum()) < dropped.numel()
    expected = x @ base.weight + base.bias
    upd = (4 / 2) * (dropped @ layer.lora_A.T)  # both slices share one dropout mask, as in the authors' layer
    expected[:, 0:4] += upd[:, 0:2] @ layer.lora_B[0:4].T
    expected[:, 8:12] += upd[:, 2:4] @ layer.lora_B[4:8].T
    assert torch.allclose(got, expected, atol=1e-6)


def test_cpu_dropout_is_inverted_dropout_with_keep_probability_one_minus_p():
    x = torch.rand(1000, 1000) + 0.5  # no zeros of its own
    torch.manual_seed(3)
    y = cpu_dropout(x, 0.1)
    kept = y != 0
    # 10^6 Bernoulli(0.9) draws: the kept fraction is within 5 standard deviations (0.0003 each) of 0.9
    assert abs(kept.float().mean().item() - 0.9) < 5 * 3e-4
    torch.testing.assert_close(y[kept], x[kept] / 0.9, rtol=1e-6, atol=0)
    torch.manual_seed(3)
    assert torch.equal(cpu_dropout(x, 0.1), y)  # torch's generator drives it: seeds reproduce it
    assert cpu_dropout(x, 0.0) is x
    xg = x[:4, :5].clone().requires_grad_(True)
    out = cpu_dropout(xg, 0.5)
    out.sum().backward()
    torch.testing.assert_close(xg.grad, (out != 0).float() * 2.0)


def test_training_a_merged_model_is_refused(tiny_model):
    ids, pos = _inputs()
    inject_lora(tiny_model)
    merge_lora(tiny_model).train()
    with pytest.raises(RuntimeError, match="unmerge_lora"):
        tiny_model(input_ids=ids, position_ids=pos)


@pytest.mark.parametrize("card,expected", [("gpt2-medium", 393_216), ("gpt2-large", 737_280)])
def test_trainable_parameters_for_real_shapes_on_meta(card, expected):
    model = build_random(card, seed=None, device="meta")
    cfg = TrainConfig(model=card)
    method = get_method("lora")
    method.apply(model, cfg)
    assert count_trainable(model) == expected
    assert method.paper_param_count(cfg, model.config) == expected
    assert sum(t.numel() for t in method.trainable_state(model).values()) == expected


def test_param_count_formula_for_all_targets(tiny_model):
    cfg = TrainConfig(model="tiny", rank=2, lora_targets=ALL)
    get_method("lora").apply(tiny_model, cfg)
    d = 64  # q,k,v,o: 2·d·r each; c_fc, c_proj: r·(d + 4d)
    assert count_trainable(tiny_model) == 2 * (4 * 2 * d * 2 + 2 * 2 * 5 * d)
    assert get_method("lora").paper_param_count(cfg, tiny_model.config) == count_trainable(tiny_model)
    assert lora_settings(tiny_model) == {"rank": 2, "alpha": 32.0, "dropout": 0.1, "targets": ALL}


def test_method_load_state_round_trip_and_errors(tiny_model):
    method = get_method("lora")
    src = build_random("tiny", seed=0)
    method.apply(src, TrainConfig(model="tiny"))
    _randomise_b(src)
    state = {k: v.clone() for k, v in method.trainable_state(src).items()}
    assert sorted(state) == [f"transformer.h.{i}.attn.c_attn.lora_{p}" for i in (0, 1) for p in "AB"]
    method.apply(tiny_model, TrainConfig(model="tiny"))
    method.load_state(tiny_model, state)
    ids, pos = _inputs()
    assert torch.equal(_logits(tiny_model, ids, pos), _logits(src, ids, pos))
    bad = dict(state)
    bad["transformer.h.0.attn.c_attn.lora_A"] = torch.zeros(16, 64)
    with pytest.raises(LoRAError, match=r"transformer\.h\.0\.attn\.c_attn\.lora_A: shape \(16, 64\)"):
        method.load_state(tiny_model, bad)
    with pytest.raises(LoRAError, match="missing"):
        method.load_state(tiny_model, {k: v for k, v in state.items() if "h.1" not in k})
    merged = method.for_inference(tiny_model)
    assert not merged.training and all(m.merged for _, m in lora_modules(merged))


def test_bad_requests_are_refused(tiny_model):
    with pytest.raises(LoRAError, match="unknown LoRA target 'x'"):
        normalize_targets("q,x")
    assert normalize_targets(["v", "q", "fc", "mlp.c_proj", "attn.c_proj"]) == ("q", "v", "o", "c_fc", "c_proj")
    with pytest.raises(LoRAError, match="positive integer"):
        inject_lora(tiny_model, rank=0)
    inject_lora(tiny_model)
    with pytest.raises(LoRAError, match="already has LoRA"):
        inject_lora(tiny_model)
    assert len(lora_state_dict(tiny_model)) == 4


def test_bf16_autocast_forward_and_backward(tiny_model):
    """The trainer's --precision bf16 path: LoRA stays fp32, the matmuls run in bf16, gradients reach A and B."""
    ids, pos = _inputs()
    inject_lora(tiny_model, targets=("q", "v"))
    _randomise_b(tiny_model)
    full = _logits(tiny_model, ids, pos)
    tiny_model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = tiny_model(input_ids=ids, position_ids=pos).logits
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), full, atol=0.1)
    out.float().pow(2).mean().backward()
    layer = tiny_model.transformer.h[0].attn.c_attn
    assert layer.lora_A.dtype == torch.float32 and layer.lora_A.grad.dtype == torch.float32
    assert torch.count_nonzero(layer.lora_A.grad) > 0 and torch.count_nonzero(layer.lora_B.grad) > 0


# ---------------------------------------------------------------- LoRA on the tied token embedding (target wte)


def _randomise_embedding_a(model, std=0.05, seed=7):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        a = model.transformer.wte.lora_A
        a.copy_(torch.randn(a.shape, generator=g, dtype=a.dtype) * std)


def test_wte_lora_is_loralib_embedding_read_by_both_ends_of_the_tied_matrix(tiny_model):
    """Lookup and LM head both use W + (B A)^T α/r, checked in float64 (no float32 kernel freedom to bound)."""
    model = tiny_model.double()
    inject_lora(model, rank=3, alpha=12, targets=("q", "v", "wte"))
    emb, head = model.transformer.wte, model.lm_head
    assert emb.lora_A.shape == (3, 50257) and emb.lora_B.shape == (64, 3)  # loralib's Embedding layout
    assert torch.count_nonzero(emb.lora_A) == 0 and emb.lora_B.std() > 0.5  # A = 0, B ~ N(0, 1): starts at W
    _randomise_embedding_a(model)
    adapted = emb.weight + (emb.lora_B @ emb.lora_A).T * (12 / 3)
    ids, _ = _inputs()
    assert torch.allclose(emb(ids), adapted[ids], rtol=0, atol=1e-12)
    hidden = torch.randn(5, 64, dtype=torch.float64)
    assert torch.allclose(head(hidden), hidden @ adapted.T, rtol=0, atol=1e-12)
    assert [n for n, p in model.named_parameters() if p.requires_grad][:2] == ["transformer.wte.lora_A",
                                                                              "transformer.wte.lora_B"]
    assert lora_settings(model)["targets"] == ("q", "v", "wte")


def test_wte_lora_merge_unmerge_strip_keep_outputs_and_the_tie(tiny_model):
    model = tiny_model.double()
    ids, pos = _inputs()
    inject_lora(model, rank=2, alpha=8, targets=ALL + ("wte",))
    _randomise_b(model, std=0.05)
    _randomise_embedding_a(model)
    model.eval()
    unmerged = _logits(model, ids, pos)
    base_w = model.transformer.wte.weight.detach().clone()
    merge_lora(model)
    assert torch.allclose(_logits(model, ids, pos), unmerged, rtol=0, atol=1e-10)
    unmerge_lora(model)
    assert torch.allclose(model.transformer.wte.weight, base_w, rtol=0, atol=1e-14)
    strip_lora(model)
    assert type(model.transformer.wte) is torch.nn.Embedding and type(model.lm_head) is torch.nn.Linear
    assert model.lm_head.weight is model.transformer.wte.weight
    assert torch.allclose(_logits(model, ids, pos), unmerged, rtol=0, atol=1e-10)


def test_wte_lora_trains_through_the_packed_loss_and_counts_r_times_vocab_plus_d(tiny_model):
    from nlg.kernels.loss import FastMaskedLMLoss

    cfg = TrainConfig(model="tiny", rank=2, lora_targets=("q", "v", "wte"))
    get_method("lora").apply(tiny_model, cfg)
    assert count_trainable(tiny_model) == 2 * (2 * 2 * 64 * 2) + 2 * (50257 + 64)
    assert get_method("lora").paper_param_count(cfg, tiny_model.config) == count_trainable(tiny_model)
    ids, pos = _inputs()
    loss_fn = FastMaskedLMLoss(tiny_model)
    assert loss_fn.packed  # the stock stack still runs packed; the head takes the plain (unfused) path
    loss = loss_fn(ids, pos, ids, torch.ones(ids.shape), lengths=torch.tensor([ids.shape[1]] * ids.shape[0]))
    loss.backward()
    emb = tiny_model.transformer.wte
    assert emb.lora_A.grad.abs().sum() > 0 and emb.weight.grad is None
    assert set(lora_state_dict(tiny_model)) >= {"transformer.wte.lora_A", "transformer.wte.lora_B"}


def test_wte_lora_needs_a_tied_head_and_has_no_peft_export(tiny_model):
    from nlg.adapter_io import export_peft, peft_unexportable

    untied = build_random("tiny", seed=0)
    untied.lm_head.weight = torch.nn.Parameter(untied.lm_head.weight.detach().clone())
    with pytest.raises(LoRAError, match="tied"):
        inject_lora(untied, targets=("wte",))
    cfg = TrainConfig(model="tiny", lora_targets=("q", "v", "wte"))
    assert "tied LM head" in peft_unexportable(cfg)
    assert peft_unexportable(TrainConfig(model="tiny")) is None
    get_method("lora").apply(tiny_model, cfg)
    with pytest.raises(ValueError, match="no equal PEFT adapter"):
        export_peft(tiny_model, cfg, "unused")
