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

from nlg.head_loss import LogitsBuffer, head_cross_entropy_sum
from nlg.head_loss_autocast import autocast_head_cross_entropy_sum, fused_autocast_head_applies

MASK_EPS = 1e-4  # the authors' ``loss.sum() / (lm_mask.sum() + 0.0001)``


def fused_head_applies(hidden: torch.Tensor, lm_head: torch.nn.Module) -> bool:
    """The fused head + loss (nlg.head_loss) serves a bias-free ``nn.Linear`` head outside autocast, same dtypes."""
    return (type(lm_head) is torch.nn.Linear and lm_head.bias is None and not lm_head._forward_hooks
            and not lm_head._forward_pre_hooks and hidden.dtype == lm_head.weight.dtype
            and not torch.is_autocast_enabled(hidden.device.type))


def masked_lm_loss(hidden: torch.Tensor, lm_head: torch.nn.Module, targets: torch.Tensor, mask: torch.Tensor,
                   label_smooth: float = 0.0, buffer: LogitsBuffer | None = None,
                   fused: bool | None = None) -> torch.Tensor:
    """Mean loss over the masked positions of the whole batch (``hidden``: ``[..., d]``, the rest ``[...]``).

    ``fused`` (default: whenever one applies, fp32 (nlg.head_loss) or CPU bf16 autocast (nlg.head_loss_autocast))
    computes head and loss together in a reused buffer; ``False`` is the plain autograd formulation, kept as the
    reference.
    """
    ls = float(label_smooth) if label_smooth > 0.0001 else 0.0  # their threshold for the smoothing branch
    sel = mask.bool()
    auto = fused is None
    if fused is None:
        fused = fused_head_applies(hidden, lm_head)
    if fused:
        denom = sel.sum().to(hidden.dtype) + MASK_EPS
        return head_cross_entropy_sum(hidden[sel], lm_head.weight, targets[sel], ls, denom, buffer)
    if auto and fused_autocast_head_applies(hidden, lm_head):  # CPU bf16 autocast: autocast's numerics, fused
        denom = sel.sum().to(torch.float32) + MASK_EPS
        return autocast_head_cross_entropy_sum(hidden[sel], lm_head.weight, targets[sel], ls, denom, buffer)
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

    Stock GPT-2 stacks (LoRA included) run packed, with no work on padding (nlg.packed); anything else goes
    through ``model.transformer`` with explicit ``position_ids`` and no attention mask (pads sit after the real
    tokens and attention is causal). Either way the LM head runs only at masked positions.
    """

    def __init__(self, model: torch.nn.Module, packed: bool | None = None, fused: bool | None = None):
        super().__init__()
        from nlg import packed as packed_mod

        self.model = model
        self.fused = fused  # None: the fused head + loss wherever one applies; False: F.cross_entropy on logits
        self.logits_buffer = LogitsBuffer()
        self.packed = packed_mod.supports(model) if packed is None else packed
        if self.packed and not packed_mod.supports(model):
            raise ValueError("packed=True needs a stock GPT-2 stack (see nlg.packed.supports)")

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
                lengths: torch.Tensor | None = None, label_smooth: float = 0.0) -> torch.Tensor:
        if self.packed:
            from nlg.packed import packed_hidden

            if lengths is None:
                raise ValueError("the packed forward needs each row's real length")
            hidden, flat = packed_hidden(self.model.transformer, input_ids, position_ids, lengths)
            sel = mask.reshape(-1).index_select(0, flat)
            return masked_lm_loss(hidden, self.model.lm_head, targets.reshape(-1).index_select(0, flat), sel,
                                  label_smooth, self.logits_buffer, fused=self.fused)
        out = self.model.transformer(input_ids=input_ids, attention_mask=None, position_ids=position_ids,
                                     use_cache=False)
        return masked_lm_loss(out.last_hidden_state, self.model.lm_head, targets, mask, label_smooth,
                              self.logits_buffer, fused=self.fused)
