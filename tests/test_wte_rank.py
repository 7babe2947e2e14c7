"""``--wte-rank``: LoRA on the tied token embedding beside a frozen-base method (nlg.methods.embedding).

What it must do: add exactly A (r × vocab) and B (d × r) to the method's own trainable tensors, change nothing
until trained (A starts at zero), save and reload both, merge ΔW into the one tied matrix for decoding, and be
refused where it makes no sense (lora spells it as a target, ft trains the matrix already).
"""
from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

from nlg.adapter_io import load_for_decoding, peft_unexportable
from nlg.beam import beam_search
from nlg.config import DecodeConfig, TrainConfig
from nlg.io_utils import read_jsonl
from nlg.methods import get_method, method_for
from nlg.methods._common import MethodError
from nlg.train import Trainer, TrainError, check_config
from tests.test_methods import SETTINGS, batch, logits, small
from tests.test_methods_e2e import e2e_data  # noqa: F401  (the module-scoped fixture)

RANK = 4
FROZEN_BASE = ("adapter-h", "adapter-l", "prefix-layer", "prefix-embed", "ft-top2")
WTE_KEYS = {"transformer.wte.lora_A", "transformer.wte.lora_B"}


def prepared(method: str, wte_rank: int = RANK, init_seed: int = 1000):
    cfg = TrainConfig(method=method, model="tiny", wte_rank=wte_rank, **SETTINGS[method])
    torch.manual_seed(init_seed)
    return method_for(cfg).apply(small(0), cfg), cfg


@pytest.mark.parametrize("method", FROZEN_BASE)
def test_adds_exactly_the_embedding_update_and_changes_nothing_untrained(method):
    plain, plain_cfg = prepared(method, wte_rank=0)
    model, cfg = prepared(method)
    vocab, d = model.config.vocab_size, model.config.n_embd
    base_trainable = {n for n, p in plain.named_parameters() if p.requires_grad}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == base_trainable | WTE_KEYS
    assert model.transformer.wte.lora_A.shape == (RANK, vocab) and model.transformer.wte.lora_B.shape == (d, RANK)
    assert not model.transformer.wte.weight.requires_grad  # the base matrix stays frozen
    assert set(method_for(cfg).trainable_state(model)) == set(get_method(method).trainable_state(plain)) | WTE_KEYS
    formula = get_method(method).paper_param_count(plain_cfg, plain.config) + RANK * (vocab + d)
    assert method_for(cfg).paper_param_count(cfg, model.config) == formula
    # the method's own initial tensors are drawn before A and B, so both models start from the same ones; A = 0
    assert torch.equal(logits(model, *batch()), logits(plain, *batch()))


@pytest.mark.parametrize("method", FROZEN_BASE)
def test_saved_state_reloads_and_merging_folds_the_update_into_the_tied_matrix(method):
    model, cfg = prepared(method)
    m = method_for(cfg)
    with torch.no_grad():  # as if trained: every trainable tensor moved
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    want = logits(model, *batch())
    fresh, _ = prepared(method, init_seed=7)
    m.load_state(fresh, {k: v.clone() for k, v in m.export_state(model).items()})
    assert torch.equal(logits(fresh, *batch()), want)

    emb = model.transformer.wte
    merged_weight = emb.weight.detach().clone().add_(emb.delta_weight())
    decoding = m.for_inference(copy.deepcopy(model))
    assert decoding.transformer.wte.merged and torch.equal(decoding.transformer.wte.weight, merged_weight)
    assert decoding.lm_head.weight is decoding.transformer.wte.weight  # still one tied matrix
    # merged and unmerged compute the same function (to float rounding: the update is added before vs after)
    assert (logits(decoding, *batch()) - want).abs().max() < 1e-3 * want.abs().max()


@pytest.mark.parametrize("method", ["lora", "ft"])
def test_refused_where_it_makes_no_sense(method):
    cfg = TrainConfig(method=method, model="tiny", wte_rank=RANK)
    with pytest.raises(TrainError, match="--wte-rank does not combine"):
        check_config(cfg)
    with pytest.raises(MethodError, match="does not combine"):
        method_for(cfg).apply(small(0), cfg)


def test_negative_rank_and_peft_export_refused():
    with pytest.raises(TrainError, match="--wte-rank must be >= 0"):
        check_config(TrainConfig(method="adapter-h", adapter_dim=8, wte_rank=-1))
    assert "wte-rank" in peft_unexportable(TrainConfig(method="prefix-layer", prefix_len=4, wte_rank=RANK))
    assert peft_unexportable(TrainConfig(method="prefix-layer", prefix_len=4)) is None


@pytest.mark.parametrize("method,lr", [("adapter-h", 1e-2), ("prefix-embed", 1e-2)])
def test_trains_saves_and_decodes_through_the_pipeline(method, lr, e2e_data, tmp_path):  # noqa: F811
    train, valid, prompts = e2e_data
    cfg = TrainConfig(dataset="e2e", model="tiny", method=method, wte_rank=RANK, train_data=str(train),
                      valid_data=str(valid), out_dir=str(tmp_path / "run"), max_steps=8, batch_size=4,
                      valid_batch_size=4, lr=lr, warmup_steps=0, label_smooth=0.0, seq_len=128, log_interval=1,
                      save_interval=1000, **SETTINGS[method])
    trainer = Trainer(cfg, device="cpu", quiet=True)
    a_before = trainer.model.transformer.wte.lora_A.detach().clone()
    valid_before = trainer.validate()
    run = trainer.run()
    assert trainer.progress.last_valid_loss < valid_before - 0.02
    assert not torch.equal(trainer.model.transformer.wte.lora_A, a_before)  # the embedding update trained
    saved = load_file(run / "adapter" / "adapter.safetensors")
    assert WTE_KEYS <= set(saved)
    recipe = json.loads((run / "recipe.json").read_text(encoding="utf-8"))
    assert recipe["wte_rank"] == RANK and recipe["saved_params"] == sum(v.numel() for v in saved.values())

    decode = DecodeConfig(beam=3, max_new_tokens=6, length_penalty=0.9, no_repeat_ngram_size=4)
    want = beam_search(method_for(cfg).for_inference(copy.deepcopy(trainer.model)), prompts, decode, batch_size=4)
    reloaded = load_for_decoding(run)
    assert reloaded.transformer.wte.merged
    assert beam_search(reloaded, prompts, decode, batch_size=4) == want
