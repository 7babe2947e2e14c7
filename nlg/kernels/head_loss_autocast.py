"""The fused LM head + cross-entropy of nlg.kernels.head_loss for a step run under CPU autocast (bf16).

Under autocast the trainer's loss (nlg.loss.masked_lm_loss) cannot use nlg.kernels.head_loss (fp32 only) and falls back to
autograd: ``lm_head(hidden).float()`` and ``F.cross_entropy``. For a small model with GPT-2's 50,257-token
vocabulary that is most of a step: per batch of ``M`` loss rows it allocates (fresh, page-faulted) ``[M, V]``
bf16 logits, their fp32 copy, the fp32 log-softmax, the fp32 gradient and its bf16 cast, about 18 bytes per
logit (~1.8 GB at M = 2,032), and reads and writes them in half a dozen memory-bound passes.

Here the three matmuls are autocast's (bf16 operands, bf16 results: AMX/AVX512-BF16 GEMMs) and the softmax is
fp32, as under autocast, but:

- the bf16 logits are written once into a buffer that lives as long as the loss module (``LogitsBuffer``, 2 bytes
  per logit, reused every step: no page faults after the first);
- the softmax and its gradient ``softmax - (1 - ls) onehot - ls / V`` are computed row block by row block in a
  small fp32 scratch that stays in the core's cache (``log_softmax`` from the bf16 rows, ``exp_``, the one-hot
  update) and written back in place, as bf16, over the logits: the bf16 gradient autocast's backward would make;
- ``grad_h = dZ @ W`` and ``grad_W = dZ^T @ h`` are then one bf16 GEMM each over all rows (autocast's own
  numerics: one bf16 rounding of the full sums), cast to fp32 and kept for the backward pass, which only scales them.

The loss per row is ``(1 - ls) * nll + ls * mean_over_vocab(-log p)`` from the bf16-rounded logits, the value
autocast's unfused path computes (same formula as nlg.kernels.head_loss). Used by scripts/bench_pretrain.py's
``ours+fast`` variant; wiring it into nlg.loss is a proposed change (results/bench_pretrain.md).
"""
from __future__ import annotations

import torch

from nlg.kernels.head_loss import LogitsBuffer

CHUNK_ROWS = 512  # rows per fp32 softmax chunk: 512 x 50,257 x 4 B = 103 MB of scratch, reused every step.
# Few large element-wise ops on purpose: on a 2-core machine shared with other jobs every OpenMP region pays a
# scheduling delay, so 16-row cache-sized blocks measured 4-8x slower than whole-chunk ops here.


def fp32_scratch(buffer: LogitsBuffer, rows: int, cols: int) -> torch.Tensor:
    """The fp32 softmax scratch, kept next to the bf16 logits buffer so it too is allocated once."""
    scratch = getattr(buffer, "_fp32_scratch", None)
    if scratch is None or scratch.numel() < rows * cols:
        scratch = buffer._fp32_scratch = torch.empty(rows * cols, dtype=torch.float32)
    return scratch[: rows * cols].view(rows, cols)


def autocast_dtype(device_type: str = "cpu") -> torch.dtype | None:
    """The autocast dtype in force on ``device_type``, or None outside autocast."""
    if not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def fused_autocast_head_applies(hidden: torch.Tensor, lm_head: torch.nn.Module) -> bool:
    """A bias-free ``nn.Linear`` head (no hooks) on the CPU under bf16 autocast, fp32 hidden states and weight."""
    return (type(lm_head) is torch.nn.Linear and lm_head.bias is None and not lm_head._forward_hooks
            and not lm_head._forward_pre_hooks and hidden.device.type == "cpu"
            and autocast_dtype("cpu") == torch.bfloat16 and lm_head.weight.dtype == torch.float32
            and hidden.dtype in (torch.float32, torch.bfloat16))


class _AutocastHeadCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, label_smooth: float, denom, buffer: LogitsBuffer, chunk_rows: int,
                dtype: torch.dtype):
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        m, vocab = hidden.shape[0], weight.shape[0]
        ls = float(label_smooth)
        with torch.autocast("cpu", enabled=False):
            h = hidden.detach().to(dtype)
            w = weight.detach().to(dtype)
            z = buffer.get(m, vocab, h)  # [M, V] bf16: the logits, then (in place) their gradient
            torch.mm(h, w.t(), out=z)
            rows = min(chunk_rows, max(m, 1))
            p = fp32_scratch(buffer, rows, vocab)
            per_row = torch.empty(m, dtype=torch.float32)
            for start in range(0, m, rows):
                n = min(rows, m - start)
                zc, t, pc = z[start:start + n], targets[start:start + n], p[:n]
                pc.copy_(zc)  # fp32 logits (autocast's ``.float()``)
                z_t = pc.gather(1, t.unsqueeze(1)).squeeze(1)
                mean_z = pc.mean(1) if ls else None
                top = pc.amax(1)
                torch.softmax(pc, 1, out=pc)
                lse = top - pc.amax(1).log_()  # the softmax at the arg-max is >= 1 / V: no underflow
                nll = lse - z_t
                per_row[start:start + n] = (1.0 - ls) * nll + ls * (lse - mean_z) if ls else nll
                if want_h or want_w:
                    if ls:
                        pc.sub_(ls / vocab)
                    pc.view(-1).index_add_(0, torch.arange(n) * vocab + t,
                                           torch.full((n,), -(1.0 - ls), dtype=torch.float32))
                    zc.copy_(pc)  # the bf16 gradient wrt the logits (before 1 / denom), as autocast's backward
            loss = per_row.sum() / denom
            grad_h = torch.mm(z, w).to(torch.float32).div_(denom) if want_h else None
            grad_w = torch.mm(z.t(), h).to(torch.float32).div_(denom) if want_w else None
        ctx.save_for_backward(*(g for g in (grad_h, grad_w) if g is not None))
        ctx.wants = (want_h, want_w)
        ctx.hidden_dtype = hidden.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        saved = list(ctx.saved_tensors)
        want_h, want_w = ctx.wants
        grad_h = (saved.pop(0) * grad_loss).to(ctx.hidden_dtype) if want_h else None
        grad_w = saved.pop(0) * grad_loss if want_w else None
        return grad_h, grad_w, None, None, None, None, None, None


def autocast_head_cross_entropy_sum(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                                    label_smooth: float, denom: torch.Tensor | float,
                                    buffer: LogitsBuffer | None = None, dtype: torch.dtype = torch.bfloat16,
                                    chunk_rows: int = CHUNK_ROWS) -> torch.Tensor:
    """``sum_rows(cross_entropy(autocast(hidden @ weight^T).float(), targets, ls)) / denom`` with its gradients.

    ``hidden`` ``[M, d]``, ``weight`` ``[V, d]`` (fp32 master weights), ``targets`` ``[M]``; the loss is fp32.
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden {tuple(hidden.shape)} and head weight {tuple(weight.shape)} do not fit")
    if not torch.is_tensor(denom):
        denom = torch.tensor(float(denom))
    return _AutocastHeadCrossEntropy.apply(hidden, weight, targets, float(label_smooth), denom.float(),
                                           buffer or LogitsBuffer(), int(chunk_rows), dtype)
