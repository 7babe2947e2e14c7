"""Bottleneck adapters: ``adapter-h`` (Houlsby et al. 2019) and ``adapter-l`` (Lin et al. 2020), the paper's
Adapter^H and Adapter^L baselines.

- Adapter^H: two adapters per block, one on the attention output (after its projection, before the residual add)
  and one on the MLP output (before its residual add); each is x + up(GELU(down(x))).
- Adapter^L: one adapter per block on the block's output (after the MLP and its residual add), with its own
  LayerNorm: x + up(ReLU(down(LN(x)))).

The up-projection starts at zero, so an adapted model computes exactly what the base model computes until
training moves it (the analogue of LoRA's B = 0). Adapters are extra sequential modules that cannot be folded into
the base weights; that is the inference-latency point of the paper's Table 1 (see ``scripts/bench_latency.py``).
The modules are attached by switching the class of the adapted GPT-2 submodule to a subclass whose forward adds
the adapter, so the base weights keep their ``state_dict`` names and the model stays a ``GPT2LMHeadModel``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.models.gpt2.modeling_gpt2 import GPT2Attention, GPT2Block, GPT2MLP

from nlg.methods._common import MethodError, check_state, copy_into, model_device_dtype, trainable_tensors
from nlg.methods.registry import Method


class Adapter(nn.Module):
    """x + up(act(down(norm(x)))) with a zero up-projection at initialisation."""

    def __init__(self, d: int, r: int, activation: str, layer_norm: bool, eps: float = 1e-5,
                 device=None, dtype=None):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.ln = nn.LayerNorm(d, eps=eps, **kw) if layer_norm else None
        self.down = nn.Linear(d, r, **kw)  # nn.Linear's own init (Kaiming-uniform), like LoRA's A
        self.act = nn.ReLU() if activation == "relu" else nn.GELU(approximate="tanh")
        self.up = nn.Linear(r, d, **kw)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln(x) if self.ln is not None else x
        return x + self.up(self.act(self.down(h)))


class AdaptedAttention(GPT2Attention):
    """GPT-2 attention whose output (after ``c_proj``) passes through ``self.adapter`` (Houlsby)."""

    def forward(self, *args, **kwargs):
        out, weights = super().forward(*args, **kwargs)
        return self.adapter(out), weights


class AdaptedMLP(GPT2MLP):
    """GPT-2 MLP whose output passes through ``self.adapter`` before the residual add (Houlsby)."""

    def forward(self, hidden_states):
        return self.adapter(super().forward(hidden_states))


class AdaptedBlock(GPT2Block):
    """GPT-2 block whose output (after the MLP's residual add) passes through ``self.adapter`` (Lin et al.)."""

    def forward(self, *args, **kwargs):
        return self.adapter(super().forward(*args, **kwargs))


def _attach(module: nn.Module, cls: type, adapter: Adapter) -> None:
    if type(module) is cls:
        raise MethodError("the model already has adapters: apply() was called twice")
    module.__class__ = cls
    module.adapter = adapter


@dataclass(frozen=True)
class BottleneckAdapters(Method):
    """Adapters of bottleneck ``--adapter-dim`` r, placed as Houlsby et al. (``houlsby``) or Lin et al. do.

    Decoding runs them as they are (the default ``for_inference``): they sit after non-linear steps and cannot be
    merged into W."""

    houlsby: bool = True

    def apply(self, model: nn.Module, cfg) -> nn.Module:
        """Freeze the model and add adapters of bottleneck ``cfg.adapter_dim`` (``--adapter-dim``)."""
        r = int(cfg.adapter_dim)
        if r <= 0:
            raise MethodError(f"{self.name} needs --adapter-dim > 0 (the bottleneck width r), got {cfg.adapter_dim}")
        model.requires_grad_(False)
        device, dtype = model_device_dtype(model)
        d = model.config.n_embd
        eps = model.config.layer_norm_epsilon
        for block in model.transformer.h:
            if self.houlsby:
                _attach(block.attn, AdaptedAttention, Adapter(d, r, "gelu", False, eps, device, dtype))
                _attach(block.mlp, AdaptedMLP, Adapter(d, r, "gelu", False, eps, device, dtype))
            else:
                _attach(block, AdaptedBlock, Adapter(d, r, "relu", True, eps, device, dtype))
        return model

    def trainable_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Adapter weights (and Adapter^L's LayerNorms): everything a run trains and saves."""
        state = {k: v for k, v in trainable_tensors(model).items() if ".adapter." in k}
        if not state:
            raise MethodError("the model has no adapters: call apply() first")
        return state

    def load_state(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Copy saved adapter tensors into a model prepared by ``apply`` (exact names and shapes)."""
        expected = self.trainable_state(model)
        check_state(expected, state, "adapter")
        copy_into(expected, state)

    def paper_param_count(self, cfg, model_config) -> int:
        """|Θ| = L̂_Adpt · (2 · d · r + r + d) + 2 · L̂_LN · d (paper Section 5.1)."""
        d, r, n_layer = model_config.n_embd, int(cfg.adapter_dim), model_config.n_layer
        n_adapters, n_ln = (2 * n_layer, 0) if self.houlsby else (n_layer, n_layer)
        return n_adapters * (2 * d * r + r + d) + 2 * n_ln * d


ADAPTER_H = BottleneckAdapters("adapter-h", hyper_params=("adapter_dim",), houlsby=True)
ADAPTER_L = BottleneckAdapters("adapter-l", hyper_params=("adapter_dim",), houlsby=False)
