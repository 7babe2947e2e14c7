"""Helpers the baseline methods share: checked state loading and parameter bookkeeping.

Kept apart from the method modules so that ft, adapters and prefixes load saved tensors with the same
strictness (exact names and shapes, errors that name the tensor) as LoRA does.
"""
from __future__ import annotations

import torch
from torch import nn


class MethodError(ValueError):
    """A method's settings or saved state do not fit the model."""


def trainable_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters that receive gradients, detached, keyed like ``model.state_dict()`` (tied weights once)."""
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def _listing(keys: list[str]) -> str:
    return ", ".join(keys[:4]) + (" …" if len(keys) > 4 else "") if keys else "none"


def check_state(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], what: str) -> None:
    """Raise ``MethodError`` naming the tensors when ``state`` does not have exactly ``expected``'s names and shapes."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise MethodError(
            f"{what} state does not fit the model: missing {_listing(missing)}; unexpected {_listing(unexpected)} "
            "(saved for another method, model size or setting?)"
        )
    for key, target in expected.items():
        if tuple(state[key].shape) != tuple(target.shape):
            raise MethodError(
                f"{what} tensor {key}: saved shape {tuple(state[key].shape)} does not fit the model's "
                f"{tuple(target.shape)} (different size setting or model?)"
            )


def copy_into(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> None:
    """Copy checked tensors into the model's own tensors (``expected`` holds views of them)."""
    with torch.no_grad():
        for key, target in expected.items():
            target.copy_(state[key].to(device=target.device, dtype=target.dtype))


def model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Where new modules must live so that they follow the base model (``meta`` included)."""
    weight = model.transformer.wte.weight
    return weight.device, weight.dtype


def block_params(d: int, inner: int) -> int:
    """Parameters of one GPT-2 block: two LayerNorms, fused qkv, attention output, MLP."""
    return 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * inner + inner) + (inner * d + d)
