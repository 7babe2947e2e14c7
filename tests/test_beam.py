"""nlg.beam: token-for-token equal to the authors' gpt2_beam.py, and the speed-ups change nothing."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from nlg.beam import (
    PromptError,
    SearchStats,
    apply_repetition_penalty,
    ban_repeated_ngrams,
    beam_search,
    step_log_probs,
)
from nlg.config import DecodeConfig, paper_decode_config
from nlg.tokenizer import encode
from tests.beam_models import VARIANTS, shaped_tiny
from tests.conftest import FIXTURES

AUTHORS = FIXTURES / "authors_beam"
SETS = ["e2e", "webnlg", "dart", "e2e-penalties"]


def _fixture(name: str) -> tuple[DecodeConfig, list[dict]]:
    raw = json.loads((AUTHORS / f"{name}.json").read_text())
    d = dict(raw["decode"])
    d["eos_token_ids"] = tuple(d["eos_token_ids"])
    return DecodeConfig(**d), raw["cases"]


def _authors_hypothesis(predict: list[int], ends) -> list[int]:
    """Their "predict" row is the best hypothesis, then zeros or leftovers of an earlier, longer best: cut after
    the first end token (a live, full-length best has none)."""
    cut = next((i for i, t in enumerate(predict) if t in ends), None)
    return predict if cut is None else predict[: cut + 1]


@pytest.fixture(scope="module")
def models():
    return {v: shaped_tiny(v) for v in VARIANTS}


# ------------------------------------------------------------------------------------------------ the authors
@pytest.mark.parametrize("name", SETS)
def test_equal_to_the_authors_beam_search(name, models):
    cfg, cases = _fixture(name)
    assert cfg == paper_decode_config(name.split("-")[0], **(
        {"repetition_penalty": 1.3, "min_length": 25} if name == "e2e-penalties" else {}))
    if name != "e2e-penalties":
        assert len(cases) >= 20
    for case in cases:  # the stored prompts are our own invented contexts, encoded as the preparers do
        assert case["prompt"] == encode(case["context"]) + [50256]
        assert len(case["predict"]) == cfg.max_new_tokens
    for variant, model in models.items():
        mine = [c for c in cases if c["variant"] == variant]
        got = beam_search(model, [c["prompt"] for c in mine], cfg, batch_size=8)
        want = [_authors_hypothesis(c["predict"], cfg.eos_token_ids) for c in mine]
        assert got == want, variant


def test_the_fixture_exercises_every_rule():
    """Ends of both kinds at many lengths, unfinished hypotheses, and the n-gram ban and length penalty matter."""
    ends, lengths, unfinished = set(), set(), 0
    for name in SETS:
        cfg, cases = _fixture(name)
        for c in cases:
            hyp = _authors_hypothesis(c["predict"], cfg.eos_token_ids)
            lengths.add(len(hyp))
            if hyp[-1] in cfg.eos_token_ids:
                ends.add(hyp[-1])
            else:
                unfinished += 1
    assert ends == {50256, 628}
    assert unfinished >= 5 and len(lengths) >= 15


@pytest.mark.parametrize("change", [{"no_repeat_ngram_size": 0}, {"length_penalty": 0.5}])
def test_the_rules_change_the_fixture_outputs(change, models):
    cfg, cases = _fixture("e2e")
    mine = [c for c in cases if c["variant"] == "ends-628"][:6]
    base = beam_search(models["ends-628"], [c["prompt"] for c in mine], cfg)
    other = beam_search(models["ends-628"], [c["prompt"] for c in mine], dataclasses.replace(cfg, **change))
    assert sum(a != b for a, b in zip(base, other)) >= 3


# ------------------------------------------------------------------------------------------------ invariances
@pytest.fixture(scope="module")
def late_case(models):
    cfg, cases = _fixture("e2e")
    prompts = [c["prompt"] for c in cases if c["variant"] == "ends-late"]
    stats = SearchStats()
    out = beam_search(models["ends-late"], prompts, cfg, batch_size=8, stats=stats)
    return cfg, prompts, out, stats


def test_batch_of_one_equals_batch_of_eight(late_case, models):
    cfg, prompts, batched, _ = late_case
    assert len(prompts) == 8
    single = beam_search(models["ends-late"], prompts, cfg, batch_size=1)
    assert single == batched
    assert len({len(p) for p in prompts}) > 1  # the batch really was padded


def test_early_stop_equals_running_every_step(late_case, models):
    cfg, prompts, early, stats = late_case
    full_stats = SearchStats()
    full = beam_search(models["ends-late"], prompts, cfg, batch_size=8, early_stop=False, stats=full_stats)
    assert full == early
    assert full_stats.steps == cfg.max_new_tokens and full_stats.stopped_early == 0
    assert stats.stopped_early >= 1 and stats.row_steps < full_stats.row_steps


def test_identical_prompts_are_decoded_once(late_case, models):
    cfg, prompts, out, _ = late_case
    stats = SearchStats()
    again = beam_search(models["ends-late"], [prompts[1], prompts[0], prompts[1]], cfg, stats=stats)
    assert again == [out[1], out[0], out[1]]
    assert (stats.prompts, stats.unique_prompts) == (3, 2)


def test_shared_prefix_path_equals_the_generic_cache_path(late_case, models, monkeypatch):
    """The shared-prefix attention, the sparse beam reorder and the reused buffers against the plain path
    (transformers' cache expanded per beam, its own attention): same outputs, with prompts of several lengths,
    prompts leaving early, and batches of different sizes sharing one buffer pool."""
    import nlg.beam as beam

    cfg, prompts, fast, stats = late_case
    assert stats.stopped_early >= 1
    used = []
    real = beam._to_shared_prefix_cache
    monkeypatch.setattr(beam, "_to_shared_prefix_cache", lambda *a: used.append(real(*a)) or used[-1])
    fast_small = beam_search(models["ends-late"], prompts, cfg, batch_size=3)
    assert len(used) == 3 and all(used)  # every batch took the shared-prefix path
    monkeypatch.setattr(beam, "_to_shared_prefix_cache", lambda *a: False)
    generic = beam_search(models["ends-late"], prompts, cfg, batch_size=8)
    assert fast == generic == fast_small


def test_shared_prefix_attention_equals_plain_attention():
    """Prompt part once per prompt + generated part per row == softmax attention over the concatenation."""
    import nlg.beam as beam

    gen = torch.Generator().manual_seed(0)
    prompts, beams, heads, length, dim, steps = 3, 4, 2, 5, 8, 6
    keys = torch.randn(prompts, heads, length, dim, generator=gen)
    values = torch.randn(prompts, heads, length, dim, generator=gen)
    pad = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1], [0, 1, 1, 1, 1]])
    bias = torch.zeros(prompts, 1, 1, length).masked_fill(pad[:, None, None, :] == 0, -math.inf)
    layer = beam._SharedPrefixLayer(0, keys, values, bias, beams, steps, beam._BufferPool())
    rows = prompts * beams
    gk, gv = [], []
    for _ in range(steps):
        k, v = torch.randn(rows, heads, 1, dim, generator=gen), torch.randn(rows, heads, 1, dim, generator=gen)
        layer.update(k, v)
        gk.append(k)
        gv.append(v)
    query = torch.randn(rows, heads, 1, dim, generator=gen)

    class Module:
        _nlg_beam_layer = layer

    got, _ = beam._shared_prefix_attention(Module(), query, None, None, None, scaling=0.3)
    full_k = torch.cat((keys.repeat_interleave(beams, 0), *gk), dim=2)
    full_v = torch.cat((values.repeat_interleave(beams, 0), *gv), dim=2)
    mask = torch.cat((pad.repeat_interleave(beams, 0), torch.ones(rows, steps, dtype=torch.long)), 1).bool()
    want = torch.nn.functional.scaled_dot_product_attention(query, full_k, full_v, attn_mask=mask[:, None, None, :],
                                                             scale=0.3)
    assert got.shape == (rows, 1, heads, dim)
    torch.testing.assert_close(got, want.transpose(1, 2), rtol=1e-5, atol=1e-6)


def test_sparse_reorder_gives_every_row_its_parents_history():
    """After reorders (and a shrink), each row holds exactly the vectors of its own ancestry."""
    import nlg.beam as beam

    gen = torch.Generator().manual_seed(1)
    rows, steps, heads, dim = 6, 5, 1, 2
    keys = torch.zeros(2, heads, 1, dim)
    layer = beam._SharedPrefixLayer(0, keys, keys.clone(), torch.zeros(2, 1, 1, 1), 3, steps, beam._BufferPool())
    origins = beam._BeamOrigins(steps, rows, "cpu")
    history = [[] for _ in range(rows)]  # the expected vectors per row
    for step in range(steps - 1):
        new = torch.randn(rows, heads, 1, dim, generator=gen)
        layer.update(new, new)
        origins.written(step)
        for r in range(rows):
            history[r].append(new[r, :, 0])
        parent = torch.randint(0, 3, (rows,), generator=gen)
        parent = parent + torch.arange(rows) // 3 * 3  # parents stay within their prompt
        shrink = step == 2
        if shrink:  # the second prompt leaves
            parent = parent[:3]
            layer.select_prompts(torch.tensor([0]))
        src, dst = origins.reorder(parent, layer.generated, same_rows=not shrink)
        layer.move_rows(src, dst, parent.numel())
        history = [list(history[int(p)]) for p in parent]
        got_k, got_v = layer.generated_kv()
        for r in range(parent.numel()):
            want = torch.stack(history[r])
            assert torch.equal(got_k[:, r], want) and torch.equal(got_v[:, r], want)
        rows = parent.numel()


def test_search_leaves_the_model_as_it_was(models):
    model = models["ends-late"]
    ids = torch.tensor([encode("name : Alimentum | area : city centre")])
    before = model(ids).logits
    beam_search(model, [ids[0].tolist()], paper_decode_config("e2e", max_new_tokens=4))
    assert all(block.attn.config is model.config and not hasattr(block.attn, "_nlg_beam_layer")
               for block in model.transformer.h)
    assert torch.equal(model(ids).logits, before)


def test_merged_lora_decodes_like_unmerged(models):
    from nlg.lora import inject_lora, merge_lora, unmerge_lora

    cfg, cases = _fixture("webnlg")
    cfg = dataclasses.replace(cfg, max_new_tokens=24)
    prompts = [c["prompt"] for c in cases[:6]]
    model = shaped_tiny("ends-628")
    base = beam_search(model, prompts, cfg)
    inject_lora(model, rank=4, alpha=32, dropout=0.0, targets=("q", "v"))
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    unmerged = beam_search(model, prompts, cfg)
    merge_lora(model)
    merged = beam_search(model, prompts, cfg)
    assert merged == unmerged
    assert sum(a != b for a, b in zip(base, merged)) >= 3  # the adapter does change the outputs
    unmerge_lora(model)
    assert beam_search(model, prompts, cfg) == unmerged


# ------------------------------------------------------------------------------------------------ rules, unit
def test_ngram_ban_uses_the_generated_tokens_only():
    logits = torch.zeros(3, 10)
    history = torch.tensor([[1, 2, 3, 1, 2], [4, 5, 6, 7, 8], [5, 5, 5, 5, 5]])
    ban_repeated_ngrams(logits, history, 3)
    assert torch.isinf(logits).nonzero().tolist() == [[0, 3], [2, 5]]
    logits = torch.zeros(1, 10)
    ban_repeated_ngrams(logits, torch.tensor([[7, 8]]), 3)  # too short for a 3-gram: nothing banned
    assert not torch.isinf(logits).any()
    ban_repeated_ngrams(logits, torch.tensor([[7, 8, 7]]), 2)
    assert torch.isinf(logits).nonzero().tolist() == [[0, 8]]
    logits = torch.zeros(1, 10)
    ban_repeated_ngrams(logits, torch.tensor([[2, 4]]), 1)
    assert torch.isinf(logits).nonzero().tolist() == [[0, 2], [0, 4]]


def test_repetition_penalty_and_min_length():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    apply_repetition_penalty(logits, torch.tensor([[0, 1, 1]]), 2.0)
    assert logits.tolist() == [[1.0, -2.0, 0.5, 3.0]]
    cfg = DecodeConfig(min_length=2, eos_token_ids=(3,), no_repeat_ngram_size=0)
    lp = step_log_probs(torch.tensor([[0.0, 1.0, 2.0, 9.0]]), None, 1, cfg)
    assert lp[0, 3] == -math.inf
    assert torch.equal(lp[0, :3], torch.log(torch.softmax(torch.tensor([0.0, 1.0, 2.0, -math.inf]), -1))[:3])
    free = step_log_probs(torch.tensor([[0.0, 1.0, 2.0, 9.0]]), None, 2, cfg)  # min_length reached: allowed
    assert torch.equal(free, torch.log(torch.softmax(torch.tensor([[0.0, 1.0, 2.0, 9.0]]), -1)))


# ------------------------------------------------------------------------------------------------ errors
def test_bad_prompts_raise_clear_errors(models):
    cfg = paper_decode_config("e2e")
    model = models["ends-late"]
    with pytest.raises(PromptError, match=r"prompt 1: context of 449 tokens is longer than the context window of 448"):
        beam_search(model, [[5, 6], [7] * 449], cfg)
    with pytest.raises(PromptError, match="prompt 0: empty context"):
        beam_search(model, [[]], cfg)
    with pytest.raises(PromptError, match="token id 50257 is not in the vocabulary"):
        beam_search(model, [[1, 50257]], cfg)
    short = dataclasses.replace(cfg, max_new_tokens=3)
    long_prompt = list(range(100, 100 + 600))
    got = beam_search(model, [long_prompt], short, truncate=True)
    assert got == beam_search(model, [long_prompt[-509:]], short)
    assert beam_search(model, [], cfg) == []
