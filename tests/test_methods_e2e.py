"""Every baseline through the real pipeline: train on E2E data with falling loss, save, reload, decode the same tokens.

E2E records come from ``../shared`` (the first records of the dev split) when present, else from the project's own
synthetic sample; the model is the tiny random GPT-2, a few updates each, so the whole file stays fast.
"""
from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

from nlg.adapter_io import load_for_decoding
from nlg.beam import beam_search
from nlg.config import DecodeConfig, TrainConfig
from nlg.io_utils import read_jsonl
from nlg.methods import get_method
from nlg.methods.prefix import KV_KEY
from nlg.train import Trainer
from tests.conftest import SHARED_DATA

# Per method: its size flags and a learning rate at which a few updates of the tiny model visibly lower the loss.
RUNS = {
    "ft": ({}, 1e-3),
    "ft-top2": ({}, 2e-3),
    "adapter-h": ({"adapter_dim": 8}, 1e-2),
    "adapter-l": ({"adapter_dim": 8}, 1e-2),
    "prefix-layer": ({"prefix_len": 4, "prefix_mid_dim": 32}, 3e-2),
    "prefix-embed": ({"prefix_len": 3, "infix_len": 2}, 1e-1),
}
STEPS = 8


@pytest.fixture(scope="module")
def e2e_data(tmp_path_factory):
    """Encoded E2E train/valid files: 16 + 4 records of the shared dev split, else of the synthetic sample (a small
    training set, so that a few updates revisit the same examples and the loss is comparable across epochs)."""
    from data.e2e.prepare import prepare

    root = tmp_path_factory.mktemp("e2e")
    shared = SHARED_DATA / "e2e"
    if (shared / "valid.txt").is_file():
        out = prepare(raw_dir=shared, out_dir=root / "data", splits=("valid",), limit=32)
        records = read_jsonl(out["valid"][1])
    else:
        from data.synthetic import write_synthetic_e2e

        raw = write_synthetic_e2e(root / "raw", seed=0, n_train=32, n_valid=4, n_test=4)
        out = prepare(raw_dir=raw, out_dir=root / "data", splits=("train",), limit=32)
        records = read_jsonl(out["train"][1])
    train, valid = root / "train.jsonl", root / "valid.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in records[:16]), encoding="utf-8")
    valid.write_text("".join(json.dumps(r) + "\n" for r in records[24:28]), encoding="utf-8")
    prompts = [r["context"] for r in records[24:28]]
    return train, valid, prompts


@pytest.mark.parametrize("method", list(RUNS))
def test_trains_saves_reloads_and_decodes_the_same(method, e2e_data, tmp_path):
    train, valid, prompts = e2e_data
    size, lr = RUNS[method]
    cfg = TrainConfig(dataset="e2e", model="tiny", method=method, train_data=str(train), valid_data=str(valid),
                      out_dir=str(tmp_path / "run"), max_steps=STEPS, batch_size=4, valid_batch_size=4, lr=lr,
                      warmup_steps=0, label_smooth=0.0, seq_len=128, log_interval=1, save_interval=1000, **size)
    trainer = Trainer(cfg, device="cpu", quiet=True)
    before = {k: v.clone() for k, v in get_method(method).trainable_state(trainer.model).items()}
    valid_before = trainer.validate()
    run = trainer.run()

    losses = [r["loss"] for r in read_jsonl(run / "log.jsonl") if "loss" in r]
    assert len(losses) == STEPS
    # Training is deterministic (no dropout), so any fall on the same records is the updates' doing; an epoch is
    # 4 batches of the same 16 records. The random tiny model gives 5 special tokens little leverage, hence 0.02.
    assert sum(losses[4:]) / 4 < sum(losses[:4]) / 4 - 0.02, losses
    assert trainer.progress.last_valid_loss < valid_before - 0.02, (valid_before, trainer.progress.last_valid_loss)
    after = get_method(method).trainable_state(trainer.model)
    assert all(not torch.equal(before[k], after[k]) for k in before)  # every trained tensor moved

    recipe = json.loads((run / "recipe.json").read_text(encoding="utf-8"))
    assert recipe["paper_param_count"] == get_method(method).paper_param_count(cfg, trainer.model.config)
    saved = load_file(run / "adapter" / "adapter.safetensors")
    if method == "prefix-layer":  # trained through the MLP, saved as the plain prefixes
        c = trainer.model.config
        assert {k: tuple(v.shape) for k, v in saved.items()} == {KV_KEY: (c.n_layer, 2, c.n_head, 4, c.n_embd // c.n_head)}
    else:
        assert set(saved) == set(after)
    assert recipe["saved_params"] == sum(v.numel() for v in saved.values())

    decode = DecodeConfig(beam=3, max_new_tokens=6, length_penalty=0.9, no_repeat_ngram_size=4)
    trained = get_method(method).for_inference(copy.deepcopy(trainer.model))
    want = beam_search(trained, prompts, decode, batch_size=4)
    reloaded = load_for_decoding(run)
    assert beam_search(reloaded, prompts, decode, batch_size=4) == want
    if method.startswith("prefix"):  # left padding moves the prefix/infix bookkeeping: batch 1 must agree
        assert beam_search(reloaded, prompts, decode, batch_size=1) == want
    assert all(len(t) > 0 for t in want)
