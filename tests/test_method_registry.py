"""The method registry: a method added through ``register`` alone trains, saves, reloads and decodes like the
built-in ones, and what derives from the registry (names, adapter hyper-parameters, counts) follows it.

The toy method is bias-only fine-tuning (BitFit, Ben Zaken et al. 2022): every weight frozen, every bias trained.
It is declared here, in the test, and removed again afterwards, so the other tests see only the built-ins.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass

import pytest
import torch
from safetensors.torch import load_file

from nlg import config
from nlg.adapter_io import METHOD_FIELDS, load_adapter, load_for_decoding
from nlg.beam import beam_search
from nlg.config import DecodeConfig, TrainConfig, paper_train_config
from nlg.generate import generate
from nlg.io_utils import read_jsonl
from nlg.methods import HYPER_PARAMS, Method, get_method, names, register, unregister
from nlg.methods._common import MethodError, check_state, copy_into, trainable_tensors
from nlg.methods.counts import count_line
from nlg.models import build_random
from nlg.train import Trainer
from tests.conftest import FIXTURES

DATA = FIXTURES / "authors_train_step" / "train.jsonl"  # 13 invented examples
pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass(frozen=True)
class BiasOnly(Method):
    """Train the bias vectors (LayerNorm shifts, linear-layer biases), nothing else; decode the model as trained."""

    def apply(self, model, cfg):
        for name, p in model.named_parameters():
            p.requires_grad_(name.endswith(".bias"))
        return model

    def trainable_state(self, model):
        state = trainable_tensors(model)
        if not state:
            raise MethodError("no trainable biases: call apply() first")
        return state

    def load_state(self, model, state):
        expected = self.trainable_state(model)
        check_state(expected, state, self.name)
        copy_into(expected, state)

    def paper_param_count(self, cfg, model_config):
        """Per block: two LayerNorm shifts, qkv (3d), attention output, MLP in (inner) and out; plus ln_f."""
        d = model_config.n_embd
        inner = getattr(model_config, "n_inner", None) or 4 * d
        return model_config.n_layer * (7 * d + inner) + d


@pytest.fixture
def bias_only():
    method = register(BiasOnly("bias-only"))
    yield method
    unregister(method.name)


def test_registering_adds_the_name_everywhere_it_derives_and_unregistering_removes_it():
    builtins = ("lora", "ft", "ft-top2", "adapter-h", "adapter-l", "prefix-layer", "prefix-embed")
    assert config.METHODS == names() == builtins == tuple(METHOD_FIELDS)
    method = register(BiasOnly("bias-only"))
    try:
        assert get_method("bias-only") is method
        assert names() == builtins + ("bias-only",)
        assert HYPER_PARAMS["bias-only"] == METHOD_FIELDS["bias-only"] == ()
        assert config.METHODS == builtins  # the CLI lists the built-ins (declared in nlg.methods.registry)
        with pytest.raises(ValueError, match="already registered"):
            register(BiasOnly("bias-only"))
    finally:
        unregister("bias-only")
    assert names() == builtins and "bias-only" not in METHOD_FIELDS
    with pytest.raises(ValueError, match=r"unknown method 'bias-only'; expected one of lora, ft, ft-top2"):
        get_method("bias-only")


def test_the_registry_refuses_what_would_break_derived_tables():
    with pytest.raises(ValueError, match="already registered"):
        register(BiasOnly("lora"))
    with pytest.raises(ValueError, match="bias_lr are not TrainConfig fields"):
        register(BiasOnly("bias-lr", hyper_params=("bias_lr",)))
    assert "bias-lr" not in names()
    with pytest.raises(ValueError, match="built in"):
        unregister("ft")
    with pytest.raises(TypeError, match="Method"):
        register(object())


def test_each_variant_is_its_own_object():
    """ft / ft-top2, adapter-h / adapter-l, prefix-layer / prefix-embed: one object each, named as registered."""
    objects = {name: get_method(name) for name in names()}
    assert len({id(m) for m in objects.values()}) == len(objects)
    assert all(m.name == name and isinstance(m, Method) for name, m in objects.items())
    assert METHOD_FIELDS["lora"] == ("rank", "lora_alpha", "lora_dropout", "lora_targets")
    cfg = TrainConfig(method="prefix-layer", model="tiny", prefix_len=2, prefix_mid_dim=8)
    model = get_method("prefix-layer").apply(build_random("tiny", seed=0), cfg)
    with pytest.raises(MethodError, match="prefix-layer prefixes, not prefix-embed's"):
        get_method("prefix-embed").trainable_state(model)  # a sibling variant does not take the model for its own


def test_a_registered_method_trains_saves_reloads_and_decodes(bias_only, tmp_path):
    cfg = paper_train_config("e2e", model="tiny", method="bias-only", train_data=str(DATA), valid_data=str(DATA),
                             out_dir=str(tmp_path / "run"), seq_len=16, batch_size=4, warmup_steps=0, lr=1e-2,
                             max_steps=4, log_interval=1, save_interval=1000, label_smooth=0.0)
    trainer = Trainer(cfg, device="cpu", quiet=True)
    assert {n for n, p in trainer.model.named_parameters() if p.requires_grad} == {
        n for n, _ in trainer.model.named_parameters() if n.endswith(".bias")}
    before = {k: v.clone() for k, v in bias_only.trainable_state(trainer.model).items()}
    run = trainer.run()
    trained = {k: v.clone() for k, v in bias_only.trainable_state(trainer.model).items()}
    assert set(trained) == set(before) and any(not torch.equal(before[k], trained[k]) for k in before)

    # What the run wrote derives from the method object: counts, adapter tensors and hyper-parameters.
    recipe = json.loads((run / "recipe.json").read_text(encoding="utf-8"))
    n_trained = sum(v.numel() for v in trained.values())
    assert recipe["method"] == "bias-only"
    assert recipe["trainable_params"] == recipe["saved_params"] == recipe["paper_param_count"] == n_trained
    assert count_line(cfg, trainer.model) == (f"bias-only: trains {n_trained:,} parameters, saves {n_trained:,}; "
                                              f"paper formula {n_trained:,}")
    adapter_config = json.loads((run / "adapter" / "adapter_config.json").read_text(encoding="utf-8"))
    assert (adapter_config["method"], adapter_config["hyper_params"]) == ("bias-only", {})
    saved = load_file(run / "adapter" / "adapter.safetensors")
    assert set(saved) == set(trained) and all(torch.equal(saved[k], trained[k]) for k in trained)
    assert not (run / "peft_adapter").exists()  # PEFT has no bias-only adapter

    # Loading onto a fresh base gives back exactly the trained state.
    loaded, loaded_cfg = load_adapter(run)
    assert loaded_cfg.method == "bias-only"
    state = bias_only.trainable_state(loaded)
    assert set(state) == set(trained) and all(torch.equal(state[k], trained[k]) for k in trained)

    # Decoding: the reloaded adapter gives the in-memory model's beams, through beam_search and nlg.generate.
    prompts = [r["context"] for r in read_jsonl(DATA)[:2]]
    decode = DecodeConfig(beam=2, max_new_tokens=4, length_penalty=0.9, no_repeat_ngram_size=4)
    want = beam_search(bias_only.for_inference(copy.deepcopy(trainer.model)), prompts, decode, batch_size=2)
    assert beam_search(load_for_decoding(run), prompts, decode, batch_size=2) == want
    predictions = generate(run, data=DATA, cfg=decode, limit=2, device="cpu", quiet=True)
    assert [r["predict"] for r in read_jsonl(predictions)] == want
    assert all(len(t) > 0 for t in want)
