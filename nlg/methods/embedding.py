"""``--wte-rank``: any frozen-base method plus LoRA on GPT-2's tied token embedding.

A base model pretrained on a small corpus may never have seen a task's words (the CPU Table 3's ``mini`` never
saw " coffee", " shop", " rating"): their rows of the tied input/output matrix are untrained, and a method that
only adds modules inside the frozen blocks cannot write them. ``WithEmbeddingLoRA`` adds loralib's ``Embedding``
update on that matrix (``nlg.lora.LoRAEmbedding``, read by the tied head too) to a method's own parameters, so the
comparison of methods is not decided by the embedding. The paper adapts no embedding: 0 (the default) leaves
every method as the paper has it. LoRA itself spells it ``--lora-targets ...,wte``; FT trains the matrix already.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from nlg.lora import LoRAEmbedding, inject_embedding_lora, lora_state_dict, merge_lora
from nlg.methods._common import MethodError, check_state, copy_into
from nlg.methods.registry import Method, wte_rank_problem


@dataclass(frozen=True)
class WithEmbeddingLoRA(Method):
    """``base``'s modules plus LoRA of rank ``cfg.wte_rank`` (scaling ``cfg.lora_alpha / rank``) on ``wte``."""

    base: Method | None = None

    def apply(self, model: nn.Module, cfg) -> nn.Module:
        """The base method first (it freezes the model), then the embedding's A and B, trainable (LoRAEmbedding
        checks the rank)."""
        problem = wte_rank_problem(cfg)
        if problem:
            raise MethodError(f"--wte-rank {problem}")
        return inject_embedding_lora(self.base.apply(model, cfg), cfg.wte_rank, cfg.lora_alpha)

    def _embedding_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        state = lora_state_dict(model)
        if not state or not isinstance(model.transformer.wte, LoRAEmbedding):
            raise MethodError("the model has no LoRA on its token embedding: call apply() first")
        return state

    def trainable_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {**self.base.trainable_state(model), **self._embedding_state(model)}

    def export_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {**self.base.export_state(model), **self._embedding_state(model)}

    def load_state(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        """The embedding's A and B, then the rest through the base method (which also gets A and B where its own
        state lists every trainable tensor, as ft-top2's does)."""
        own = self._embedding_state(model)
        check_state(own, {k: v for k, v in state.items() if k in own}, "token-embedding LoRA")
        copy_into(own, state)
        base_keys = set(self.base.trainable_state(model))
        self.base.load_state(model, {k: v for k, v in state.items() if k not in own or k in base_keys})

    def for_inference(self, model: nn.Module) -> nn.Module:
        """The base method's decoding form with ΔW merged into the tied matrix (no lookup or head overhead)."""
        return merge_lora(self.base.for_inference(model)).eval()

    def paper_param_count(self, cfg, model_config) -> int | None:
        """The base method's count plus r · (vocab + d) for the embedding's A and B."""
        base = self.base.paper_param_count(cfg, model_config)
        return None if base is None else base + cfg.wte_rank * (model_config.vocab_size + model_config.n_embd)


def with_embedding_lora(base: Method) -> WithEmbeddingLoRA:
    return WithEmbeddingLoRA(base.name, hyper_params=(*base.hyper_params, "wte_rank", "lora_alpha"), base=base)
