"""The one method registry: every fine-tuning method is a ``Method`` object found here by its ``--method`` name.

Everything method-specific that the rest of the project needs derives from these objects: ``nlg.config.METHODS``
(the CLI's ``--method`` choices) from ``BUILTIN``, the adapter file's ``hyper_params`` from each object's
``hyper_params``, the trainer's, saver's and decoder's calls from its methods. This module imports nothing heavy
(no torch): ``nlg.config`` reads the built-in names from it, and the built-in objects are imported only when
first asked for. docs/methods.md ("Adding a method") says how to add one.
"""
from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Iterator, Mapping

# The built-in methods, in the order the CLI lists them: name -> "module:object" holding its Method.
BUILTIN: dict[str, str] = {
    "lora": "nlg.methods.lora:LORA",
    "ft": "nlg.methods.finetune:FT",
    "ft-top2": "nlg.methods.finetune:FT_TOP2",
    "adapter-h": "nlg.methods.adapter:ADAPTER_H",
    "adapter-l": "nlg.methods.adapter:ADAPTER_L",
    "prefix-layer": "nlg.methods.prefix:PREFIX_LAYER",
    "prefix-embed": "nlg.methods.prefix:PREFIX_EMBED",
}
BUILTIN_NAMES: tuple[str, ...] = tuple(BUILTIN)
# methods that --wte-rank (LoRA on the tied token embedding, nlg.methods.embedding) does not combine with, and why
WTE_REFUSED: dict[str, str] = {"lora": "add wte to --lora-targets instead",
                               "ft": "FT trains the token embedding already"}


@dataclasses.dataclass(frozen=True)
class Method:
    """One method variant behind the contract the trainer, saver and decoder rely on.

    Subclasses implement ``apply``, ``trainable_state`` and ``load_state``; the other hooks have defaults.
    Every method keeps ``model`` a ``GPT2LMHeadModel`` whose ``model.transformer(input_ids=, attention_mask=,
    position_ids=, past_key_values=, use_cache=)`` and ``model(...)`` work with explicit ``position_ids`` (the
    trainer and the beam search always pass them), so prefixes can live in the cache.
    """

    name: str  # the --method value
    hyper_params: tuple[str, ...] = ()  # the TrainConfig fields that are this method's settings (adapter files)

    def apply(self, model, cfg):
        """Freeze what the method does not train, add its modules; returns the model."""
        raise NotImplementedError

    def trainable_state(self, model) -> dict:
        """Exactly what the optimizer updates and a checkpoint holds (detached tensors, state_dict names)."""
        raise NotImplementedError

    def export_state(self, model) -> dict:
        """What the final adapter file holds; ``load_state`` accepts it (prefix-layer: the plain prefixes)."""
        return self.trainable_state(model)

    def load_state(self, model, state: dict) -> None:
        """Put a saved state (trainable or exported form) back onto a model that ``apply`` prepared."""
        raise NotImplementedError

    def for_inference(self, model):
        """What decoding runs (LoRA merges into W); by default the model as trained, in eval mode."""
        return model.eval()

    def paper_param_count(self, cfg, model_config) -> int | None:
        """The paper's formula for the trainable count (recipe.json, count lines); None when it has none."""
        return None


_registered: dict[str, Method] = {}  # built-ins once loaded, and every method added with register()


def _load_builtin(name: str) -> Method:
    module, _, attr = BUILTIN[name].partition(":")
    method = getattr(importlib.import_module(module), attr)
    if not isinstance(method, Method) or method.name != name:
        raise TypeError(f"{BUILTIN[name]} is not the Method named {name!r}")
    _check_fields(method)
    return method


def _check_fields(method: Method) -> None:
    from nlg.config import TrainConfig  # not at import time: nlg.config reads BUILTIN_NAMES from here

    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = [f for f in method.hyper_params if f not in known]
    if unknown:
        raise ValueError(f"method {method.name!r}: hyper-parameter(s) {', '.join(unknown)} are not TrainConfig "
                         "fields (add them to nlg/config.py)")


def names() -> tuple[str, ...]:
    """Every method name: the built-ins in CLI order, then those added with ``register`` in their order."""
    return BUILTIN_NAMES + tuple(n for n in _registered if n not in BUILTIN)


def get_method(name: str) -> Method:
    """The Method registered as ``name``."""
    if name not in _registered:
        if name not in BUILTIN:
            raise ValueError(f"unknown method {name!r}; expected one of {', '.join(names())}")
        _registered[name] = _load_builtin(name)
    return _registered[name]


def wte_rank_problem(cfg) -> str | None:
    """Why ``cfg.wte_rank`` cannot be used with ``cfg.method``, or None (the trainer's and the adapter reader's check)."""
    if cfg.wte_rank < 0:
        return f"must be >= 0 (0: no LoRA on the token embedding), got {cfg.wte_rank}"
    if cfg.wte_rank and cfg.method in WTE_REFUSED:
        return f"does not combine with method {cfg.method!r}: {WTE_REFUSED[cfg.method]}"
    return None


def method_for(cfg) -> Method:
    """The Method a TrainConfig runs: ``cfg.method``'s, with LoRA on the token embedding when ``cfg.wte_rank``
    (nlg.methods.embedding)."""
    method = get_method(cfg.method)
    if getattr(cfg, "wte_rank", 0):
        from nlg.methods.embedding import with_embedding_lora  # torch-heavy: only when asked for

        return with_embedding_lora(method)
    return method


def register(method: Method) -> Method:
    """Add a method under ``method.name`` (a new name); returns it, so it can decorate an assignment."""
    if not isinstance(method, Method):
        raise TypeError(f"register() takes a nlg.methods.Method, got {type(method).__name__}")
    if method.name in BUILTIN or method.name in _registered:
        raise ValueError(f"method {method.name!r} is already registered")
    _check_fields(method)
    _registered[method.name] = method
    return method


def unregister(name: str) -> None:
    """Remove a method added with ``register`` (built-ins stay)."""
    if name in BUILTIN:
        raise ValueError(f"method {name!r} is built in and cannot be unregistered")
    if name not in _registered:
        raise ValueError(f"method {name!r} is not registered")
    del _registered[name]


class _HyperParams(Mapping):
    """name -> that method's ``hyper_params``, over every registered method (a live view: ``register`` shows)."""

    def __getitem__(self, name: str) -> tuple[str, ...]:
        if name not in names():
            raise KeyError(name)
        return get_method(name).hyper_params

    def __iter__(self) -> Iterator[str]:
        return iter(names())

    def __len__(self) -> int:
        return len(names())


HYPER_PARAMS: Mapping[str, tuple[str, ...]] = _HyperParams()
