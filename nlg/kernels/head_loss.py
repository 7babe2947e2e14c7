"""The LM head and the label-smoothed cross-entropy in one pass over a reused logits buffer.

Autograd's version of ``cross_entropy(hidden @ W^T, label_smoothing=ls)`` keeps the ``[M, V]`` logits, writes a
fresh ``[M, V]`` log-softmax, and in the backward pass allocates and sums two more ``[M, V]`` gradients (one from
the target term, one from the smoothing term) before the ``[M, V] @ [V, d]`` matmul. With GPT-2's 50,257-token
vocabulary each of those is ~50 MB per 250 rows, so on a CPU the loss costs half again as much as its two matmuls.

Here the forward pass computes, chunk by chunk of rows, the logits into one buffer that lives as long as the loss
module, turns them in place into the gradient of the loss with respect to the logits
(``softmax - (1 - ls) * onehot(target) - ls / V``) and multiplies that by ``W`` at once; the backward pass only
scales the stored ``[M, d]`` result. The loss per row is the same formula as ``F.cross_entropy``'s
(``(1 - ls) * (lse - z_t) + ls * (lse - mean(z))``, i.e. ``(1 - ls) * nll + ls * mean_over_vocab(-log p)``);
tests/test_train_kernels.py checks loss and gradients against it.
"""
from __future__ import annotations

import torch

from nlg.kernels.mkl_prepack import mm_out

CHUNK_ROWS = 256  # rows of logits per chunk: 256 × 50,257 fp32 ≈ 51 MB of buffer, and matmuls that stay efficient


class LogitsBuffer:
    """One flat buffer reused for every chunk and every step (fresh 50-100 MB tensors cost page faults each time)."""

    def __init__(self) -> None:
        self._flat: torch.Tensor | None = None

    def get(self, rows: int, cols: int, like: torch.Tensor) -> torch.Tensor:
        n = rows * cols
        flat = self._flat
        if flat is None or flat.numel() < n or flat.dtype != like.dtype or flat.device != like.device:
            flat = self._flat = torch.empty(n, dtype=like.dtype, device=like.device)
        return flat[:n].view(rows, cols)


class _HeadCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, label_smooth: float, denom, buffer: LogitsBuffer, chunk_rows: int):
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        m, vocab = hidden.shape[0], weight.shape[0]
        ls = float(label_smooth)
        total = hidden.new_zeros(())
        grad_h = torch.empty_like(hidden) if want_h else None
        grad_w = torch.zeros_like(weight) if want_w else None
        for start in range(0, m, chunk_rows):
            h = hidden[start:start + chunk_rows]
            t = targets[start:start + chunk_rows]
            z = buffer.get(h.shape[0], vocab, hidden)
            mm_out(h, weight, z, transpose=True)
            z_t = z.gather(1, t.unsqueeze(1)).squeeze(1)
            mean_z = z.mean(1) if ls else None
            top = z.amax(1, keepdim=True)
            z.sub_(top).exp_()
            sum_exp = z.sum(1, keepdim=True)
            lse = (top + sum_exp.log()).squeeze(1)
            per_row = lse - z_t
            if ls:
                per_row = (1.0 - ls) * per_row + ls * (lse - mean_z)
            total += per_row.sum()
            if want_h or want_w:
                z.div_(sum_exp)  # softmax
                if ls:
                    z.sub_(ls / vocab)
                rows = torch.arange(z.shape[0], device=z.device)
                z[rows, t] -= 1.0 - ls
                if want_h:
                    mm_out(z, weight, grad_h[start:start + chunk_rows])
                if want_w:
                    grad_w.addmm_(z.t(), h)
        loss = total / denom
        if want_h:
            grad_h.div_(denom)
        if want_w:
            grad_w.div_(denom)
        ctx.save_for_backward(*(g for g in (grad_h, grad_w) if g is not None))
        ctx.wants = (want_h, want_w)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        saved = list(ctx.saved_tensors)
        want_h, want_w = ctx.wants
        grad_h = saved.pop(0) * grad_loss if want_h else None
        grad_w = saved.pop(0) * grad_loss if want_w else None
        return grad_h, grad_w, None, None, None, None, None


def head_cross_entropy_sum(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, label_smooth: float,
                           denom: torch.Tensor | float, buffer: LogitsBuffer | None = None,
                           chunk_rows: int = CHUNK_ROWS) -> torch.Tensor:
    """``sum_rows(cross_entropy(hidden @ weight^T, targets, label_smoothing)) / denom`` with its gradients.

    ``hidden`` ``[M, d]``, ``weight`` ``[V, d]`` (an ``nn.Linear`` head without bias), ``targets`` ``[M]``.
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden {tuple(hidden.shape)} and head weight {tuple(weight.shape)} do not fit")
    return _HeadCrossEntropy.apply(hidden, weight, targets, float(label_smooth), denom, buffer or LogitsBuffer(),
                                   int(chunk_rows))
