"""LoRA behind the method contract (nlg.methods.registry): the trainer, saver and decoder need nothing LoRA-specific."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from nlg.lora import (
    LoRAError,
    inject_lora,
    lora_modules,
    lora_state_dict,
    merge_lora,
    normalize_targets,
)
from nlg.methods.registry import Method


@dataclass(frozen=True)
class LoRA(Method):
    """Low-rank updates B A beside the frozen weights of ``cfg.lora_targets`` (paper Section 4)."""

    def apply(self, model: nn.Module, cfg) -> nn.Module:
        """Freeze the model and add LoRA with cfg.rank, cfg.lora_alpha, cfg.lora_dropout on cfg.lora_targets."""
        return inject_lora(model, rank=cfg.rank, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                           targets=cfg.lora_targets)

    def trainable_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The LoRA A and B tensors: all that a run saves and the optimizer updates."""
        return lora_state_dict(model)

    def load_state(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Copy saved A/B tensors into a model prepared by ``apply``; names and shapes must match exactly."""
        own = dict(lora_modules(model))
        if not own:
            raise LoRAError("the model has no LoRA layers: call apply() first")
        if any(m.merged for m in own.values()):
            raise LoRAError("the model's LoRA weights are merged: unmerge before loading a new state")
        expected = lora_state_dict(model)
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise LoRAError(
                f"LoRA state does not fit the model: missing {missing[:4]}{' …' if len(missing) > 4 else ''}, "
                f"unexpected {unexpected[:4]}{' …' if len(unexpected) > 4 else ''}"
            )
        for key, target in expected.items():
            value = state[key]
            if tuple(value.shape) != tuple(target.shape):
                raise LoRAError(f"tensor {key}: shape {tuple(value.shape)} does not fit the model's "
                                f"{tuple(target.shape)} (different rank, targets or model size?)")
        with torch.no_grad():
            for key, target in expected.items():
                target.copy_(state[key].to(device=target.device, dtype=target.dtype))

    def for_inference(self, model: nn.Module) -> nn.Module:
        """Merge B A into W: decoding runs on plain GPT-2 weights with no added latency."""
        return merge_lora(model).eval()

    def paper_param_count(self, cfg, model_config) -> int:
        """|Θ| = Σ over adapted matrices of r·(d_in + d_out); for the paper's square W_q, W_v:
        2 · L̂ · d_model · r (``wte``, once for the whole model: r·(vocab + d_model))."""
        d = model_config.n_embd
        inner = getattr(model_config, "n_inner", None) or 4 * d
        per_layer = {"q": (d, d), "k": (d, d), "v": (d, d), "o": (d, d), "c_fc": (d, inner), "c_proj": (inner, d)}
        targets = normalize_targets(cfg.lora_targets)
        embedding = cfg.rank * (model_config.vocab_size + d) if "wte" in targets else 0
        return model_config.n_layer * sum(cfg.rank * sum(per_layer[t]) for t in targets if t != "wte") + embedding


LORA = LoRA("lora", hyper_params=("rank", "lora_alpha", "lora_dropout", "lora_targets"))
