"""The authors' training loss, computed only where it counts.

Their ``GPT2LMModel.forward`` (label smoothing ``ls``) takes, per position,
``(1 - ls) * nll + ls * mean_over_vocab(-log p)``, multiplies by the 0/1 mask and divides the batch sum by
``mask.sum() + 0.0001``. ``F.cross_entropy(label_smoothing=ls)`` is that same per-position formula, so we apply the
LM head and the softmax to the masked positions only (typically a tenth of the real tokens) and divide by the same
denominator: same value, same gradients, a fraction of the LM-head work and memory.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

MASK_EPS = 1e-4  # the authors' ``loss.sum() / (lm_mask.sum() + 0.0001)``


def masked_lm_loss(hidden: torch.Tensor, lm_head: torch.nn.Module, targets: torch.Tensor, mask: torch.Tensor,
                   label_smooth: float = 0.0) -> torch.Tensor:
    """Mean loss over the masked positions of the whole batch (``hidden``: ``[..., d]``, the rest ``[...]``): the
    head on those positions, ``F.cross_entropy(label_smoothing=)``, the authors' denominator."""
    ls = float(label_smooth) if label_smooth > 0.0001 else 0.0  # their threshold for the smoothing branch
    sel = mask.bool()
    logits = lm_head(hidden[sel])
    if logits.dtype in (torch.float16, torch.bfloat16):  # softmax in fp32 (float64 stays float64)
        logits = logits.float()
    per_token = F.cross_entropy(logits, targets[sel], reduction="none", label_smoothing=ls)
    return per_token.sum() / (sel.sum().to(per_token.dtype) + MASK_EPS)


def full_lm_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, label_smooth: float = 0.0) -> torch.Tensor:
    """The authors' formula written out on full ``[B, T, V]`` logits (reference for tests and benchmarks)."""
    logprobs = F.log_softmax(logits.float().reshape(-1, logits.size(-1)), dim=-1)
    nll = -logprobs.gather(-1, targets.reshape(-1, 1)).squeeze(1)
    if label_smooth > 0.0001:  # their threshold for taking the smoothing branch
        loss = (1.0 - label_smooth) * nll + label_smooth * (-logprobs.mean(-1))
    else:
        loss = nll
    m = mask.float().reshape(-1)
    return (loss * m).sum() / (m.sum() + MASK_EPS)


class MaskedLMLoss(torch.nn.Module):
    """One forward pass from token ids to the batch loss, so ``DistributedDataParallel`` can wrap the whole step.

    The reference kernels: ``model.transformer`` on the padded rows with explicit ``position_ids`` and no
    attention mask (pads sit after the real tokens and attention is causal), then ``masked_lm_loss``.
    ``nlg.kernels.FastMaskedLMLoss`` is the same loss on packed rows with a fused head.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
                lengths: torch.Tensor | None = None, label_smooth: float = 0.0) -> torch.Tensor:
        out = self.model.transformer(input_ids=input_ids, attention_mask=None, position_ids=position_ids,
                                     use_cache=False)
        return masked_lm_loss(out.last_hidden_state, self.model.lm_head, targets, mask, label_smooth)
