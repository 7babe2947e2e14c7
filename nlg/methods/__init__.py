"""Parameter-efficient methods behind one contract, so the trainer, saver and decoder treat them alike.

Each method module exposes:

- ``apply(model, cfg) -> model``: freeze what the method does not train, add its modules, return the model;
- ``trainable_state(model) -> dict[str, Tensor]``: exactly what a run saves (and what the optimizer updates);
- ``load_state(model, state) -> None``: put a saved state back onto a model that ``apply`` prepared;
- ``for_inference(model) -> model``: what decoding runs (LoRA merges into W; adapters and prefixes stay);
- ``paper_param_count(cfg, model_config) -> int | None``: the paper's formula for the trainable count.
- optional ``export_state(model) -> dict[str, Tensor]``: what the final adapter file holds when it differs from
  ``trainable_state`` (prefix-layer trains through an MLP but saves the plain prefixes); ``load_state`` accepts it.

Every method keeps ``model`` a ``GPT2LMHeadModel`` whose ``model.transformer(input_ids=, attention_mask=,
position_ids=, past_key_values=, use_cache=)`` and ``model(...)`` work with explicit ``position_ids``
(the trainer and the beam search always pass them), so prefixes can live in the cache.
"""
from __future__ import annotations

import importlib
from types import ModuleType

METHOD_MODULES = {
    "lora": "nlg.methods.lora",
    "ft": "nlg.methods.finetune",
    "ft-top2": "nlg.methods.finetune",
    "adapter-h": "nlg.methods.adapter",
    "adapter-l": "nlg.methods.adapter",
    "prefix-layer": "nlg.methods.prefix",
    "prefix-embed": "nlg.methods.prefix",
}


def get_method(name: str) -> ModuleType:
    """The module implementing ``name`` (see the contract above)."""
    if name not in METHOD_MODULES:
        raise ValueError(f"unknown method {name!r}; expected one of {', '.join(METHOD_MODULES)}")
    return importlib.import_module(METHOD_MODULES[name])
