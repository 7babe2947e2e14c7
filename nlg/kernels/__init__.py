"""The fast kernels: every speed-up the trainer adds to the plain modules, installed on a model in one call.

Outside this package the code is the reference a reader follows: LoRA as loralib writes it (``nn.Dropout``),
transformers' GPT-2 blocks and GELU, ``F.cross_entropy(label_smoothing=)`` on padded rows (``nlg.loss``).
``install(model, device, precision)`` (the trainer's ``--kernels fast``, the default) changes a model to:

- every ``LoRAConv1D`` to ``FastLoRAConv1D`` (nlg.kernels.lora_fast: one matmul for all slices' A, bias and B
  added in one in-place matmul; on the CPU dropout masks from 31-bit integer draws, another random stream);
- transformers' seven-op tanh GELU to PyTorch's fused ``nn.GELU(approximate="tanh")`` (equal to 1 ulp);
- on the CPU in fp32, the frozen weights pre-packed for MKL's GEMM (nlg.kernels.mkl_prepack);

and ``loss_module(model)`` is the loss on packed rows (no work on padding; CPU attention per sequence,
nlg.kernels.varlen_attention / equal_length_attention; a chunked GELU that keeps its derivative) with the LM head
and loss fused (nlg.kernels.head_loss, head_loss_autocast). ``remove(model, installed)`` undoes ``install``.
What fast changes in numbers: float rounding only (MKL's summation order, fused bias, fused softmax), except
that LoRA dropout on the CPU draws other masks than ``nn.Dropout`` (docs/training.md).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from transformers.activations import NewGELUActivation

from nlg.kernels.packed import supports
from nlg.kernels.loss import FastMaskedLMLoss
from nlg.kernels.lora_fast import FastLoRAConv1D
from nlg.kernels.mkl_prepack import Packs, pack_frozen
from nlg.lora import LoRAConv1D


@dataclass
class Installed:
    """What ``install`` changed on one model, so ``remove`` can put it back."""

    lora_layers: list[nn.Module] = field(default_factory=list)
    gelus: list[tuple[nn.Module, nn.Module]] = field(default_factory=list)  # (owner, the activation it had)
    packs: Packs | None = None

    def release_packs(self) -> None:
        """Free the pre-packed weights (the trainer does it when a run ends)."""
        if self.packs is not None:
            self.packs.release()
            self.packs = None


def fuse_gelu(model: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """GPT-2's tanh GELU through PyTorch's fused kernel instead of transformers' seven-op Python formula: the same
    function (the authors' ``gelu`` too), equal to float rounding (|diff| <= 1 ulp). Returns (owner, old act)."""
    swapped = []
    for module in model.modules():
        act = getattr(module, "act", None)
        if isinstance(act, NewGELUActivation):
            module.act = nn.GELU(approximate="tanh")
            swapped.append((module, act))
    return swapped


def install(model: nn.Module, device: torch.device | str = "cpu", precision: str = "fp32",
            prepack: bool = True) -> Installed:
    """Switch ``model`` (already on ``device``, its method applied) to the fast kernels; see the module doc."""
    done = Installed()
    for module in model.modules():
        if type(module) is LoRAConv1D:
            module.__class__ = FastLoRAConv1D
            done.lora_layers.append(module)
    done.gelus = fuse_gelu(model)
    if prepack and torch.device(device).type == "cpu" and precision == "fp32" and supports(model):
        done.packs = pack_frozen(model)  # used by the packed forward (and FastLoRAConv1D) while the weights hold
    return done


def remove(model: nn.Module, installed: Installed) -> nn.Module:
    """Back to the reference kernels: LoRA layers, GELUs, no pre-packed weights."""
    for module in installed.lora_layers:
        module.__class__ = LoRAConv1D
    for owner, act in installed.gelus:
        owner.act = act
    installed.release_packs()
    installed.lora_layers, installed.gelus = [], []
    return model


def loss_module(model: nn.Module) -> FastMaskedLMLoss:
    """The fast loss for ``model``: packed rows when it is a stock GPT-2 stack, the fused head wherever it applies."""
    return FastMaskedLMLoss(model)


__all__ = ["FastLoRAConv1D", "FastMaskedLMLoss", "Installed", "fuse_gelu", "install", "loss_module", "remove"]
