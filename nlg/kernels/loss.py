"""The fast loss: ``FastMaskedLMLoss``, the reference ``nlg.loss.MaskedLMLoss`` on packed rows with a fused head.

Stock GPT-2 stacks (LoRA included) run packed, with no work on padding (nlg.kernels.packed); anything else goes
through ``model.transformer`` as the reference does. The head and the loss are computed together in a reused
buffer (fp32: nlg.kernels.head_loss; CPU bf16 autocast: nlg.kernels.head_loss_autocast) wherever one applies,
else by the reference formula. Same value and gradients up to float rounding (tests/test_train_kernels.py).
"""
from __future__ import annotations

import torch

from nlg.kernels.packed import packed_hidden, supports
from nlg.kernels.head_loss import LogitsBuffer, head_cross_entropy_sum
from nlg.kernels.head_loss_autocast import autocast_head_cross_entropy_sum, fused_autocast_head_applies
from nlg.loss import MASK_EPS, MaskedLMLoss, masked_lm_loss


def fused_head_applies(hidden: torch.Tensor, lm_head: torch.nn.Module) -> bool:
    """The fused head + loss (nlg.kernels.head_loss) serves a bias-free ``nn.Linear`` head outside autocast, same
    dtypes."""
    return (type(lm_head) is torch.nn.Linear and lm_head.bias is None and not lm_head._forward_hooks
            and not lm_head._forward_pre_hooks and hidden.dtype == lm_head.weight.dtype
            and not torch.is_autocast_enabled(hidden.device.type))


def fast_masked_lm_loss(hidden: torch.Tensor, lm_head: torch.nn.Module, targets: torch.Tensor, mask: torch.Tensor,
                        label_smooth: float = 0.0, buffer: LogitsBuffer | None = None,
                        fused: bool | None = None) -> torch.Tensor:
    """``nlg.loss.masked_lm_loss`` with the head and loss fused where one applies (``fused=None``: decide here;
    ``True``: the fp32 fused kernel; ``False``: the reference formula)."""
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
    return masked_lm_loss(hidden, lm_head, targets, mask, ls)


class FastMaskedLMLoss(MaskedLMLoss):
    """``packed``/``fused``: None decides (packed for stock GPT-2 stacks; fused head wherever one applies)."""

    def __init__(self, model: torch.nn.Module, packed: bool | None = None, fused: bool | None = None):
        super().__init__(model)
        self.fused = fused
        self.logits_buffer = LogitsBuffer()
        self.packed = supports(model) if packed is None else packed
        if self.packed and not supports(model):
            raise ValueError("packed=True needs a stock GPT-2 stack (see nlg.kernels.packed.supports)")

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
                lengths: torch.Tensor | None = None, label_smooth: float = 0.0) -> torch.Tensor:
        if self.packed:
            if lengths is None:
                raise ValueError("the packed forward needs each row's real length")
            hidden, flat = packed_hidden(self.model.transformer, input_ids, position_ids, lengths)
            sel = mask.reshape(-1).index_select(0, flat)
            return fast_masked_lm_loss(hidden, self.model.lm_head, targets.reshape(-1).index_select(0, flat), sel,
                                       label_smooth, self.logits_buffer, fused=self.fused)
        out = self.model.transformer(input_ids=input_ids, attention_mask=None, position_ids=position_ids,
                                     use_cache=False)
        return fast_masked_lm_loss(out.last_hidden_state, self.model.lm_head, targets, mask, label_smooth,
                                   self.logits_buffer, fused=self.fused)
