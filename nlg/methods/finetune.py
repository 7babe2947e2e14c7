"""Full fine-tuning (``ft``) and fine-tuning only the top two blocks (``ft-top2``), the paper's FT and FT^Top2.

FT trains every weight (the tied input/output embedding once); FT^Top2 (after Li & Liang 2021) trains the last
two transformer blocks and nothing else — not the final LayerNorm, not the embeddings. Both save the tensors
they changed; decoding runs the model as it is.
"""
from __future__ import annotations

import torch
from torch import nn

from nlg.methods._common import MethodError, block_params, check_state, copy_into, trainable_tensors

TOP_BLOCKS = 2


def _top_block_indices(n_layer: int) -> range:
    return range(max(0, n_layer - TOP_BLOCKS), n_layer)


def apply(model: nn.Module, cfg) -> nn.Module:
    """``ft``: everything trainable. ``ft-top2``: only ``transformer.h[-2:]`` trainable."""
    if cfg.method == "ft":
        model.requires_grad_(True)
    elif cfg.method == "ft-top2":
        model.requires_grad_(False)
        for i in _top_block_indices(len(model.transformer.h)):
            model.transformer.h[i].requires_grad_(True)
    else:
        raise MethodError(f"nlg.methods.finetune implements ft and ft-top2, not {cfg.method!r}")
    return model


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors the optimizer updates, which are the ones a run changes and saves."""
    state = trainable_tensors(model)
    if not state:
        raise MethodError("the model has no trainable tensors: call apply() first")
    return state


def load_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Overwrite the trainable tensors with saved ones (exact names and shapes)."""
    expected = trainable_state(model)
    check_state(expected, state, "fine-tuning")
    copy_into(expected, state)


def for_inference(model: nn.Module) -> nn.Module:
    """Nothing to fold: the fine-tuned weights are the model."""
    return model.eval()


def paper_param_count(cfg, model_config) -> int:
    """FT: every GPT-2 parameter (embeddings, L blocks, final LayerNorm). FT^Top2: two blocks."""
    d = model_config.n_embd
    inner = getattr(model_config, "n_inner", None) or 4 * d
    block = block_params(d, inner)
    if cfg.method == "ft-top2":
        return min(TOP_BLOCKS, model_config.n_layer) * block
    if cfg.method == "ft":
        embeddings = (model_config.vocab_size + model_config.n_positions) * d
        return embeddings + model_config.n_layer * block + 2 * d
    raise MethodError(f"nlg.methods.finetune implements ft and ft-top2, not {cfg.method!r}")
