"""The paper's baselines behind the method contract: what trains, how much, and that each forward is the intended one.

Small random GPT-2s (3 blocks, so "top two" differs from "all"); the real gpt2-medium/large shapes are built on the
meta device for the parameter counts.
"""
from __future__ import annotations

import copy
import functools

import pytest
import torch
from transformers import DynamicCache, GPT2LMHeadModel

from nlg.config import TrainConfig
from nlg.methods import get_method
from nlg.methods._common import MethodError
from nlg.methods.prefix import KV_KEY
from nlg.models import build_random, gpt2_config
from nlg.tokenizer import EOS_ID

SETTINGS = {
    "ft": {},
    "ft-top2": {},
    "adapter-h": {"adapter_dim": 8},
    "adapter-l": {"adapter_dim": 8},
    "prefix-layer": {"prefix_len": 5, "prefix_mid_dim": 32},
    "prefix-embed": {"prefix_len": 3, "infix_len": 2},
}
N_LAYER, D, HEADS = 3, 64, 4


@functools.lru_cache(maxsize=4)
def _small_prototype(seed: int) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(gpt2_config(N_LAYER, D, HEADS)).eval()


def small(seed: int = 0) -> GPT2LMHeadModel:
    """A fresh copy of the seeded 3-block GPT-2 (built once, copied: building is the slow part)."""
    return copy.deepcopy(_small_prototype(seed))


def prepared(method: str, seed: int = 0, init_seed: int = 1000, **over) -> tuple[GPT2LMHeadModel, TrainConfig]:
    """The small base of ``seed`` with ``method`` applied; ``init_seed`` draws the method's own initial tensors."""
    cfg = TrainConfig(method=method, model="tiny", **{**SETTINGS[method], **over})
    torch.manual_seed(init_seed)
    return get_method(method).apply(small(seed), cfg), cfg


def batch(seed: int = 0, rows: int = 2, n: int = 9):
    """Right-padded training-style rows: context ending in 50256, completion, pads (0) after."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 50000, (rows, n), generator=g)
    mask = torch.ones(rows, n, dtype=torch.long)
    ids[0, 3] = EOS_ID
    ids[1, 5] = EOS_ID
    ids[1, 7:] = 0
    mask[1, 7:] = 0
    pos = torch.arange(n).unsqueeze(0).expand(rows, n)
    return ids, mask, pos


def logits(model, ids, mask, pos):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, position_ids=pos).logits


def intended_names(method: str) -> set[str]:
    base = {n for n, _ in small().named_parameters()}
    if method == "ft":
        return base
    if method == "ft-top2":
        return {n for n in base if n.startswith((f"transformer.h.{N_LAYER - 2}.", f"transformer.h.{N_LAYER - 1}."))}
    if method == "adapter-h":
        return {f"transformer.h.{i}.{where}.adapter.{lin}.{p}" for i in range(N_LAYER) for where in ("attn", "mlp")
                for lin in ("down", "up") for p in ("weight", "bias")}
    if method == "adapter-l":
        return {f"transformer.h.{i}.adapter.{lin}.{p}" for i in range(N_LAYER) for lin in ("ln", "down", "up")
                for p in ("weight", "bias")}
    if method == "prefix-layer":
        return {f"transformer.prefix_tuning.{n}" for n in
                ("embedding.weight", "mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias")}
    return {"transformer.prefix_tuning.prefix_embeds", "transformer.prefix_tuning.infix_embeds"}


@pytest.mark.parametrize("method", list(SETTINGS))
def test_exactly_the_intended_tensors_train_and_are_saved(method):
    model, cfg = prepared(method)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == intended_names(method)
    assert set(get_method(method).trainable_state(model)) == trainable
    # Gradients reach those tensors and nothing else.
    ids, mask, pos = batch()
    model.train()
    model(input_ids=ids, attention_mask=mask, position_ids=pos).logits.float().pow(2).mean().backward()
    got_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert got_grad == trainable


@pytest.mark.parametrize("method", list(SETTINGS))
def test_small_model_counts_equal_the_paper_formula(method):
    model, cfg = prepared(method)
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    formula = get_method(method).paper_param_count(cfg, model.config)
    d, L = D, N_LAYER
    by_hand = {
        "ft": sum(p.numel() for p in small().parameters()),
        "ft-top2": 2 * (12 * d * d + 13 * d),
        "adapter-h": 2 * L * (2 * d * 8 + 8 + d),
        "adapter-l": L * (2 * d * 8 + 8 + d) + 2 * L * d,
        "prefix-layer": L * d * 5,
        "prefix-embed": d * (3 + 2),
    }[method]
    assert formula == by_hand
    if method == "prefix-layer":  # trained through the MLP; saved as 2·L·d·l_p keys and values
        assert n == 5 * d + (d * 32 + 32) + (32 * 2 * L * d + 2 * L * d)
        saved = get_method(method).export_state(model)
        assert {k: tuple(v.shape) for k, v in saved.items()} == {KV_KEY: (L, 2, HEADS, 5, d // HEADS)}
        assert saved[KV_KEY].numel() == 2 * formula
    else:
        assert n == formula


# Settings whose paper-formula counts land nearest the paper's Table 3 figures (README); exact values by hand.
REAL_SHAPES = [
    ("gpt2-medium", "ft", {}, 354_823_168),  # paper 354.92M
    ("gpt2-large", "ft", {}, 774_030_080),  # paper 774.03M
    ("gpt2-medium", "ft-top2", {}, 25_192_448),  # paper 25.19M
    ("gpt2-medium", "adapter-l", {"adapter_dim": 6}, 368_784),  # paper 0.37M
    ("gpt2-medium", "adapter-l", {"adapter_dim": 224}, 11_089_152),  # paper 11.09M
    ("gpt2-medium", "adapter-h", {"adapter_dim": 112}, 11_064_576),  # paper 11.09M
    ("gpt2-large", "adapter-l", {"adapter_dim": 8}, 875_808),  # paper 0.88M
    ("gpt2-large", "adapter-l", {"adapter_dim": 248}, 23_002_848),  # paper 23.00M
    ("gpt2-medium", "prefix-layer", {"prefix_len": 14}, 344_064),  # paper 0.35M
    ("gpt2-large", "prefix-layer", {"prefix_len": 17}, 783_360),  # paper 0.77M
    ("gpt2-medium", "prefix-embed", {"prefix_len": 256, "infix_len": 8}, 270_336),
]


@pytest.mark.parametrize("card,method,kw,expected", REAL_SHAPES)
def test_real_shape_counts(card, method, kw, expected):
    model = build_random(card, seed=None, device="meta")
    cfg = TrainConfig(method=method, model=card, **kw)
    mod = get_method(method)
    mod.apply(model, cfg)
    assert mod.paper_param_count(cfg, model.config) == expected
    if method == "prefix-layer":
        assert sum(v.numel() for v in mod.export_state(model).values()) == 2 * expected
    else:
        assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected


@pytest.mark.parametrize("method", ["ft", "ft-top2", "adapter-h", "adapter-l"])
def test_identity_at_initialisation(method):
    ids, mask, pos = batch()
    model, _ = prepared(method)
    assert torch.equal(logits(model, ids, mask, pos), logits(small(), ids, mask, pos))


def _hooked_reference(method: str, adapted: GPT2LMHeadModel) -> GPT2LMHeadModel:
    """The base model with the adapted model's adapter modules hooked where the papers place them."""
    ref = small()
    for i, block in enumerate(ref.transformer.h):
        own = adapted.transformer.h[i]
        if method == "adapter-h":
            block.attn.register_forward_hook(lambda m, a, out, ad=own.attn.adapter: (ad(out[0]),) + tuple(out[1:]))
            block.mlp.register_forward_hook(lambda m, a, out, ad=own.mlp.adapter: ad(out))
        else:
            block.register_forward_hook(lambda m, a, out, ad=own.adapter: ad(out))
    return ref


@pytest.mark.parametrize("method", ["adapter-h", "adapter-l"])
def test_adapters_sit_where_the_papers_put_them(method):
    model, _ = prepared(method)
    with torch.no_grad():
        for p in get_method(method).trainable_state(model).values():
            p.copy_(torch.randn_like(p) * 0.2)
    ids, mask, pos = batch()
    ours = logits(model, ids, mask, pos)
    assert not torch.allclose(ours, logits(small(), ids, mask, pos), atol=1e-3)  # the adapters now act
    torch.testing.assert_close(ours, logits(_hooked_reference(method, model), ids, mask, pos), rtol=0, atol=1e-5)
    adapter = model.transformer.h[0].mlp.adapter if method == "adapter-h" else model.transformer.h[0].adapter
    x = torch.randn(3, D)
    h = adapter.ln(x) if method == "adapter-l" else x
    act = torch.relu if method == "adapter-l" else (lambda t: torch.nn.functional.gelu(t, approximate="tanh"))
    torch.testing.assert_close(adapter(x), x + adapter.up(act(adapter.down(h))), rtol=0, atol=0)


def _set_prefix_to_real_tokens(model, prefix_tokens):
    """PreLayer: give the prefix exactly the keys/values that a base model computes for ``prefix_tokens``."""
    base = small()
    with torch.no_grad():
        out = base(input_ids=prefix_tokens.unsqueeze(0), position_ids=torch.arange(len(prefix_tokens)).unsqueeze(0),
                   use_cache=True)
    kv = torch.stack([torch.stack([layer.keys[0], layer.values[0]]) for layer in out.past_key_values.layers])
    get_method("prefix-layer").load_state(model, {KV_KEY: kv})


def test_prefix_layer_equals_real_tokens_in_front():
    """Prefixes holding a real token sequence's keys/values == those tokens placed before the input."""
    model, _ = prepared("prefix-layer")
    pre = torch.tensor([11, 2222, 333, 44, 5555])
    _set_prefix_to_real_tokens(model, pre)
    ids, mask, pos = batch()
    ours = logits(model, ids, mask, pos)
    full = torch.cat([pre.expand(2, -1), ids], 1)
    full_mask = torch.cat([torch.ones(2, 5, dtype=torch.long), mask], 1)
    ref = logits(small(), full, full_mask, torch.arange(full.shape[1]).expand(2, -1))[:, 5:]
    torch.testing.assert_close(ours, ref, rtol=0, atol=2e-5)


def test_prefix_embed_equals_special_tokens_in_the_input():
    """Prefix before the context, infix after its end-of-text, positions counted through them; outputs realigned."""
    model, _ = prepared("prefix-embed")
    spec = model.transformer.prefix_tuning
    wte = model.transformer.wte.weight
    pre, inf = torch.tensor([7, 77, 777]), torch.tensor([9, 99])
    with torch.no_grad():
        spec.prefix_embeds.copy_(wte[pre])
        spec.infix_embeds.copy_(wte[inf])
    ids, mask, pos = batch()
    ours = logits(model, ids, mask, pos)
    base = small()
    for row, end in ((0, 3), (1, 5)):  # the row's first 50256
        real = int(mask[row].sum())
        seq = torch.cat([pre, ids[row, :end + 1], inf, ids[row, end + 1:real]]).unsqueeze(0)
        ref = logits(base, seq, torch.ones_like(seq), torch.arange(seq.shape[1]).unsqueeze(0))[0]
        keep = list(range(3, 3 + end)) + [3 + end + 2] + list(range(3 + end + 3, seq.shape[1]))
        torch.testing.assert_close(ours[row, :real], ref[keep], rtol=0, atol=2e-5)


def _left_padded_prompts():
    prompts = [[5, 6, 7, 8, EOS_ID], [15, 16, EOS_ID]]
    n = max(map(len, prompts))
    ids = torch.tensor([[0] * (n - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (n - len(p)) + [1] * len(p) for p in prompts])
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    return ids, mask, pos


@pytest.mark.parametrize("method", ["prefix-layer", "prefix-embed"])
def test_cached_decoding_equals_the_full_sequence(method):
    """Prompt once, then one token at a time through the cache (as the beam search does) == one full forward."""
    model, _ = prepared(method)
    get_method(method).for_inference(model)
    ids, mask, pos = _left_padded_prompts()
    steps = torch.tensor([[101, 102, 103], [201, 202, 203]])
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        cached = [out.logits[:, -1]]
        cache, cur_mask, cur_pos = out.past_key_values, mask, pos[:, -1:]
        for t in range(steps.shape[1] - 1):
            cur_mask = torch.cat([cur_mask, torch.ones(2, 1, dtype=torch.long)], 1)
            cur_pos = cur_pos + 1
            out = model(input_ids=steps[:, t:t + 1], attention_mask=cur_mask, position_ids=cur_pos,
                        past_key_values=cache, use_cache=True)
            cached.append(out.logits[:, -1])
            cache = out.past_key_values
        full_ids = torch.cat([ids, steps[:, :-1]], 1)
        full_mask = torch.cat([mask, torch.ones(2, 2, dtype=torch.long)], 1)
        full_pos = torch.cat([pos, pos[:, -1:] + torch.tensor([[1, 2]])], 1)
        full = model(input_ids=full_ids, attention_mask=full_mask, position_ids=full_pos).logits
    n = ids.shape[1]
    for t, step_logits in enumerate(cached):
        torch.testing.assert_close(step_logits, full[:, n - 1 + t], rtol=0, atol=2e-5)


def test_cache_reorders_like_a_beam_search():
    """Reordering the cache (prefix included) by beam index == decoding the reordered rows from scratch."""
    model, _ = prepared("prefix-layer")
    ids, mask, pos = _left_padded_prompts()
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        cache = out.past_key_values
        order = torch.tensor([1, 1])
        cache.reorder_cache(order)
        nxt = torch.tensor([[42], [43]])
        step = model(input_ids=nxt, attention_mask=torch.cat([mask[order], torch.ones(2, 1, dtype=torch.long)], 1),
                     position_ids=pos[order][:, -1:] + 1, past_key_values=cache, use_cache=True).logits[:, -1]
        fresh = model(input_ids=torch.cat([ids[order], nxt], 1),
                      attention_mask=torch.cat([mask[order], torch.ones(2, 1, dtype=torch.long)], 1),
                      position_ids=torch.cat([pos[order], pos[order][:, -1:] + 1], 1)).logits[:, -1]
    torch.testing.assert_close(step, fresh, rtol=0, atol=2e-5)


def test_an_empty_cache_object_counts_as_the_first_call():
    model, _ = prepared("prefix-layer")
    ids, mask, pos = _left_padded_prompts()
    with torch.no_grad():
        a = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        b = model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=DynamicCache(), use_cache=True)
    assert torch.equal(a.logits, b.logits)
    assert b.past_key_values.get_seq_length() == 5 + ids.shape[1]


@pytest.mark.parametrize("method", list(SETTINGS))
def test_state_round_trip(method):
    """trainable_state -> load_state into a fresh model (other random init) gives the same outputs."""
    mod = get_method(method)
    model, _ = prepared(method, seed=0)
    with torch.no_grad():
        for p in (p for p in model.parameters() if p.requires_grad):
            p.add_(torch.randn_like(p) * 0.05)
    state = {k: v.clone() for k, v in mod.trainable_state(model).items()}
    other, _ = prepared(method, seed=0, init_seed=7)  # same frozen base, other initial method tensors
    ids, mask, pos = batch()
    before = logits(other, ids, mask, pos)
    mod.load_state(other, state)
    after = logits(other, ids, mask, pos)
    want = logits(model, ids, mask, pos)
    assert not torch.equal(before, want)
    torch.testing.assert_close(after, want, rtol=0, atol=0)
    # Decoding form gives the same outputs too.
    torch.testing.assert_close(logits(mod.for_inference(other), ids, mask, pos), want, rtol=0, atol=1e-5)


def test_prefix_layer_saves_plain_prefixes_and_decodes_from_them():
    mod = get_method("prefix-layer")
    model, _ = prepared("prefix-layer")
    ids, mask, pos = batch()
    want = logits(model, ids, mask, pos)
    exported = mod.export_state(model)
    assert set(exported) == {KV_KEY}
    fresh, _ = prepared("prefix-layer", init_seed=3)
    mod.load_state(fresh, exported)
    assert not any(p.requires_grad for p in fresh.parameters())
    assert set(mod.trainable_state(fresh)) == {KV_KEY}
    torch.testing.assert_close(logits(fresh, ids, mask, pos), want, rtol=0, atol=1e-5)
    mod.for_inference(model)  # collapses the MLP in place
    assert [n for n, _ in model.named_parameters() if "prefix" in n] == []
    torch.testing.assert_close(logits(model, ids, mask, pos), want, rtol=0, atol=1e-5)


def test_bad_settings_and_states_are_clear_errors():
    with pytest.raises(MethodError, match="--adapter-dim"):
        prepared("adapter-h", adapter_dim=0)
    with pytest.raises(MethodError, match="infix"):
        prepared("prefix-layer", infix_len=2)
    with pytest.raises(MethodError, match="--prefix-len"):
        prepared("prefix-layer", prefix_len=0)
    with pytest.raises(MethodError, match="apply\\(\\) was called twice"):
        model, cfg = prepared("adapter-l")
        get_method("adapter-l").apply(model, cfg)
    model, _ = prepared("adapter-l")
    other, _ = prepared("adapter-l", adapter_dim=4)
    with pytest.raises(MethodError, match=r"transformer\.h\.0\.adapter\.down\.weight: saved shape \(4, 64\)"):
        get_method("adapter-l").load_state(model, get_method("adapter-l").trainable_state(other))
    with pytest.raises(MethodError, match="missing"):
        get_method("adapter-h").load_state(prepared("adapter-h")[0], get_method("adapter-l").trainable_state(model))
    with pytest.raises(MethodError, match=KV_KEY.replace(".", r"\.")):
        get_method("prefix-layer").load_state(prepared("prefix-layer")[0], {KV_KEY: torch.zeros(3, 2, 4, 4, 16)})
    with pytest.raises(MethodError, match="call apply"):
        get_method("prefix-embed").trainable_state(small())


def test_count_line_reports_trained_saved_formula_and_paper_figure():
    from nlg.methods.counts import count_line, nearest_paper_figure

    model, cfg = prepared("prefix-layer")
    line = count_line(cfg, model)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert line == f"prefix-layer: trains {trained:,} parameters, saves {2 * N_LAYER * D * 5:,}; paper formula {N_LAYER * D * 5:,}"
    assert nearest_paper_figure("gpt2-medium", "adapter-l", 368_784) == 0.37e6
    assert nearest_paper_figure("gpt2-medium", "adapter-l", 11_089_152) == 11.09e6
    assert nearest_paper_figure("gpt2-medium", "prefix-embed", 4096) is None


def test_latency_benchmark_variants_share_but_never_change_the_base(tmp_path):
    """The benchmark's models: the right methods, decoding form, base weights shared and left untouched."""
    import importlib.util
    import sys

    from tests.conftest import REPO

    spec = importlib.util.spec_from_file_location("bench_latency", REPO / "scripts" / "bench_latency.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # its dataclass looks itself up there
    spec.loader.exec_module(bench)
    reference = build_random("tiny", seed=0)
    variants = bench.build_variants("tiny", adapter_l_dim=6, adapter_h_dim=8, prefix_len=3, lora_rank=2)
    by_name = {v.name: v.model for v in variants}
    assert list(by_name) == ["base", "base (again)", "LoRA merged", "LoRA unmerged", "Adapter^L", "Adapter^H",
                             "PreLayer"]
    for name, weight in reference.state_dict().items():  # merging LoRA wrote into a private copy only
        assert torch.equal(by_name["base"].state_dict()[name], weight), name
    base_wte = by_name["base"].transformer.wte.weight
    assert all(m.transformer.wte.weight is base_wte for m in by_name.values())
    from nlg.lora import lora_modules

    assert all(m.merged for _, m in lora_modules(by_name["LoRA merged"]))
    assert not any(m.merged for _, m in lora_modules(by_name["LoRA unmerged"]))
    assert type(by_name["PreLayer"].transformer.prefix_tuning).__name__ == "PlainPrefix"
    times = bench.time_variants(variants, seq_len=4, batch=1, repeats=2, warmup=0)
    assert {k: len(v) for k, v in times.items()} == {v.name: 2 for v in variants}
    summary = bench.summarise(times)
    assert summary["base"]["ratio"] == 1.0
    ids = torch.tensor([[5, 6, 7, 8]])
    merged_vs_unmerged = [logits(by_name[n], ids, torch.ones_like(ids), torch.arange(4)[None])
                          for n in ("LoRA merged", "LoRA unmerged")]
    torch.testing.assert_close(merged_vs_unmerged[0], merged_vs_unmerged[1], rtol=0, atol=1e-4)
