"""The original OpenAI-layout ``pytorch_model.bin``: the head count is read from a config beside it or known from
OpenAI's sizes, never guessed from the width (issue: a 96-wide 4-head model loaded with 1 head)."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import GPT2LMHeadModel

from nlg.models import ModelLoadError, gpt2_config, load_model, load_original_bin


def _save_original(folder, n_layer=3, n_embd=96, n_head=4, seed=0):
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(gpt2_config(n_layer, n_embd, n_head, n_positions=64)).eval()
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.transformer.state_dict(), folder / "pytorch_model.bin")  # keys wte.weight, h.0.attn...
    return model


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_a_non_standard_shape_without_config_is_refused(tmp_path):
    _save_original(tmp_path)
    with pytest.raises(ModelLoadError, match="3-layer, 96-wide .* config.json with n_head"):
        load_original_bin(tmp_path / "pytorch_model.bin")


def test_config_beside_the_file_gives_the_head_count(tmp_path):
    ref = _save_original(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"n_head": 4, "n_embd": 96, "n_layer": 3}))
    model = load_model(str(tmp_path / "pytorch_model.bin"))
    assert model.config.n_head == 4
    ids = torch.tensor([[50256, 464, 3290, 318, 257]])
    assert torch.equal(_logits(model, ids), _logits(ref, ids))  # same weights, same heads: the same function


@pytest.mark.parametrize("config,message", [
    ({"n_head": 5}, "positive divisor of the width 96"),
    ({"n_head": 4, "n_layer": 2}, "says 2 layers x None wide"),
])
def test_a_config_that_does_not_fit_is_refused(tmp_path, config, message):
    _save_original(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=message):
        load_original_bin(tmp_path / "pytorch_model.bin")
