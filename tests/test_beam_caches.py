"""nlg.beam's two BeamCache implementations give the same token ids, and transformers is touched only on first use.

``PlainCache`` (transformers' DynamicCache, ``index_select`` reorders, the model's attention) is the reference a
reader can follow; ``SharedPrefixCache`` is the fast default. The rules (``_paper_search``) are shared, so any
difference would come from the cache: the outputs must be equal, not close.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import sys

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

import nlg.beam as beam
from nlg.beam import SearchStats, beam_search
from nlg.config import DecodeConfig
from tests.beam_models import shaped_tiny
from tests.conftest import FIXTURES, REPO

VOCAB = 97


@pytest.fixture(scope="module")
def small_model():
    """A seeded random GPT-2 with a small vocabulary and a scaled tied embedding: sharp distributions that repeat
    n-grams (the ban must act) and end tokens (3, 7) that some hypotheses reach at different lengths."""
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=VOCAB, n_positions=96, n_embd=32, n_layer=2, n_head=4, embd_pdrop=0.0,
                        resid_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=3)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        model.transformer.wte.weight.mul_(6.0)
    return model


@pytest.fixture(scope="module")
def small_case():
    rng = random.Random(0)
    prompts = [[rng.randrange(VOCAB) for _ in range(n)] for n in (1, 3, 7, 12, 20, 5)]
    cfg = DecodeConfig(beam=4, length_penalty=0.7, no_repeat_ngram_size=3, max_new_tokens=24, eos_token_ids=(3, 7),
                       seq_len=96, batch_size=4)
    return prompts, cfg


def _spy(monkeypatch) -> list[bool]:
    """Record whether each batch's shared-prefix conversion happened."""
    used: list[bool] = []
    real = beam._to_shared_prefix_cache
    monkeypatch.setattr(beam, "_to_shared_prefix_cache", lambda *a: used.append(real(*a)) or used[-1])
    return used


def test_plain_and_shared_prefix_give_the_same_ids(small_model, small_case, monkeypatch):
    prompts, cfg = small_case
    used = _spy(monkeypatch)
    stats = SearchStats()
    fast = beam_search(small_model, prompts, cfg, stats=stats)
    assert used == [True, True]  # two batches (4 + 2 prompts), both on the shared-prefix layers
    plain = beam_search(small_model, prompts, cfg, cache="plain")
    assert used == [True, True]  # the plain cache never converts
    assert fast == plain
    assert beam_search(small_model, prompts, cfg, cache="plain", batch_size=1) == plain
    # the case exercises the rules: ends at several lengths, prompts leaving early, the ban and the penalty matter
    ended = {len(t) for t in fast if t[-1] in cfg.eos_token_ids}
    assert len(ended) >= 2 and any(len(t) == cfg.max_new_tokens for t in fast)
    assert stats.stopped_early >= 1
    for change in ({"no_repeat_ngram_size": 0}, {"length_penalty": 1.0}):
        assert beam_search(small_model, prompts, dataclasses.replace(cfg, **change)) != fast


def test_caches_agree_on_the_authors_fixture_model():
    """A full-vocabulary model shaped to end hypotheses late, the paper's E2E settings, prompts of several lengths
    in batches of 3 (padding, prompts leaving the batch)."""
    raw = json.loads((FIXTURES / "authors_beam" / "e2e.json").read_text())
    d = dict(raw["decode"], eos_token_ids=tuple(raw["decode"]["eos_token_ids"]))
    cfg = DecodeConfig(**d)
    assert cfg.beam > 1 and cfg.no_repeat_ngram_size > 0 and cfg.length_penalty != 1.0
    prompts = [c["prompt"] for c in raw["cases"] if c["variant"] == "ends-late"][:5]
    assert len({len(p) for p in prompts}) > 1
    model = shaped_tiny("ends-late")
    fast = beam_search(model, prompts, cfg, batch_size=3)
    assert beam_search(model, prompts, cfg, batch_size=3, cache="plain") == fast


def test_unknown_cache_is_refused(small_model, small_case):
    prompts, cfg = small_case
    with pytest.raises(ValueError, match="cache must be one of"):
        beam_search(small_model, prompts, cfg, cache="paged")


def test_import_registers_nothing_until_a_search_needs_it():
    """Importing nlg.beam leaves transformers' attention registry alone; a plain-cache search does too; the first
    shared-prefix search registers the attention function (a fresh interpreter: other tests may have searched)."""
    code = """
import json
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
import nlg.beam as beam
from nlg.config import DecodeConfig
from nlg.models import build_random
seen = [beam.ATTENTION_NAME in ALL_ATTENTION_FUNCTIONS]
model = build_random("tiny", seed=0)
cfg = DecodeConfig(beam=2, max_new_tokens=2)
beam.beam_search(model, [[1, 2, 3]], cfg, cache="plain")
seen.append(beam.ATTENTION_NAME in ALL_ATTENTION_FUNCTIONS)
beam.beam_search(model, [[1, 2, 3]], cfg)
seen.append(beam.ATTENTION_NAME in ALL_ATTENTION_FUNCTIONS)
print(json.dumps(seen))
"""
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [False, False, True]
