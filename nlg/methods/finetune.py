"""Full fine-tuning (``ft``) and fine-tuning only the top two blocks (``ft-top2``), the paper's FT and FT^Top2.

FT trains every weight (the tied input/output embedding once); FT^Top2 (after Li & Liang 2021) trains the last
two transformer blocks and nothing else — not the final LayerNorm, not the embeddings. Both save the tensors
they changed; decoding runs the model as it is.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from nlg.methods._common import MethodError, block_params, check_state, copy_into, trainable_tensors
from nlg.methods.registry import Method


@dataclass(frozen=True)
class FineTune(Method):
    """Train whole transformer blocks: every weight (``top_blocks`` None) or only the last ``top_blocks``."""

    top_blocks: int | None = None

    def apply(self, model: nn.Module, cfg) -> nn.Module:
        """Everything trainable, or only ``transformer.h[-top_blocks:]``."""
        if self.top_blocks is None:
            return model.requires_grad_(True)
        model.requires_grad_(False)
        for block in model.transformer.h[-self.top_blocks:]:
            block.requires_grad_(True)
        return model

    def trainable_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The tensors the optimizer updates, which are the ones a run changes and saves."""
        state = trainable_tensors(model)
        if not state:
            raise MethodError("the model has no trainable tensors: call apply() first")
        return state

    def load_state(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Overwrite the trainable tensors with saved ones (exact names and shapes)."""
        expected = self.trainable_state(model)
        check_state(expected, state, "fine-tuning")
        copy_into(expected, state)

    def paper_param_count(self, cfg, model_config) -> int:
        """FT: every GPT-2 parameter (embeddings, L blocks, final LayerNorm). FT^Top2: two blocks."""
        d = model_config.n_embd
        inner = getattr(model_config, "n_inner", None) or 4 * d
        block = block_params(d, inner)
        if self.top_blocks is not None:
            return min(self.top_blocks, model_config.n_layer) * block
        embeddings = (model_config.vocab_size + model_config.n_positions) * d
        return embeddings + model_config.n_layer * block + 2 * d


FT = FineTune("ft")
FT_TOP2 = FineTune("ft-top2", top_blocks=2)
