"""Float32 tolerances that follow from the arithmetic, not from what one CPU happened to produce.

The rule
--------
A float32 result is compared, element by element, with a float64 evaluation of the *exact* formula (float64's own
rounding is ~2**-53, some 1e-9 of every bound below: negligible), and may differ from it by at most a bound derived
from the float32 operations that produced it:

* Every float32 operation returns the exact result of its operands times ``(1 + d)``, ``|d| <= u = 2**-24`` (IEEE
  round to nearest). ``exp``/``log`` are allowed 2 ulp, i.e. ``4u`` relative (ATen's SLEEF u10 ones are <= 1 ulp),
  except the ``exp_u20`` of ATen's CPU flash attention: 20 ulp, ``40u``.
* A sum or dot product of ``n`` terms has error ``<= gamma_n * sum(|terms|)``, ``gamma_n = n*u / (1 - n*u)``
  (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., eq. 3.5). This holds for *every*
  summation order: serial, pairwise, blocked, 8- or 16-lane vectorised, with or without FMA, split over
  threads. That is exactly the freedom MKL and ATen use when they pick a different kernel on another CPU, so a
  matrix product ``A @ B`` with inner dimension ``n`` gets the elementwise bound ``gamma_n * (|A| @ |B|)``: the
  tolerance is scaled by the magnitudes summed (computed in float64), not a fixed ``atol``. ``k`` further
  roundings applied to the same terms (scalings, an accumulation into an existing tensor) make it
  ``gamma_(n+k)``.
* Errors already in the operands propagate to first order: ``|err(A_hat @ B)| <= |err A| @ |B| + gamma_n |A| @ |B|``;
  a softmax turns a logit error ``e`` into a relative error ``e_j - sum_k p_k e_k`` of ``p_j``
  (``softmax_bounds``, ``cross_entropy_bounds``). First-order bounds drop products of two errors, at most the
  bound times a relative error (< 1e-4 here); ``assert_within`` covers them with a factor ``1 + 2**-10``.

Why the deterministic ``gamma_n`` and not a probabilistic ``lambda * sqrt(n) * u`` bound: ``gamma_n`` holds for
any kernel any CPU may choose, so a test built on it cannot flake on new hardware; and at this suite's inner
dimensions (n <= ~100) a probabilistic bound is no tighter once its safety factor keeps flakes away
(``lambda ~= 7`` for 1e4 compared elements, and ``7 * sqrt(n) >= n`` for ``n <= 49``). What keeps the check sharp
is that it is elementwise and magnitude-scaled: where nothing cancels the bound is a few ``n*u`` of the value,
and it only widens where the terms cancel, which is exactly where a fixed ``atol`` was either too tight (the
failure on Zen 4 that issue 14 reports) or, for large values, far too loose. tests/test_tolerance.py checks
that results off by a relative 1e-3, or in one element, fail it.
"""
from __future__ import annotations

import math

import torch

U32 = 2.0 ** -24  # unit roundoff of float32 (round to nearest)
ULP_FN = 4 * U32  # ATen's exp/log (SLEEF's u10 variants, <= 1 ulp) allowed 2 ulp; an ulp is at most 2u of the value
EXP_U20 = 40 * U32  # Vectorized<float>::exp_u20, which ATen's CPU flash attention uses: "ULP=20" in its source
SECOND_ORDER = 1 + 2.0 ** -10  # covers the products of two errors that first-order bounds drop


def gamma(n: int, u: float = U32) -> float:
    """Higham's ``gamma_n = n u / (1 - n u)``: bound on the relative error of any ``n``-term float32 sum/dot."""
    if n * u >= 1:
        raise ValueError(f"gamma_{n} is undefined for u={u}")
    return n * u / (1 - n * u)


def mag(t: torch.Tensor) -> torch.Tensor:
    """``|t|`` in float64, detached."""
    return t.detach().to(torch.float64).abs()


def f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float64)


def matmul_bound(a: torch.Tensor, b: torch.Tensor, extra: int = 0) -> torch.Tensor:
    """Elementwise bound on the rounding error of float32 ``a @ b`` from exact operands, any kernel:
    ``gamma_(n + extra) * (|a| @ |b|)``, ``n`` the inner dimension, ``extra`` further roundings of the terms."""
    return gamma(a.shape[-1] + extra) * (mag(a) @ mag(b))


def excess(actual: torch.Tensor, reference: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
    """``|actual - reference| / bound`` elementwise (inf where the bound is 0 and they differ, nan → inf)."""
    if actual.shape != reference.shape or actual.shape != bound.shape:
        raise ValueError(f"shapes differ: {tuple(actual.shape)}, {tuple(reference.shape)}, {tuple(bound.shape)}")
    diff = (f64(actual) - f64(reference)).abs()
    ratio = diff / (f64(bound) * SECOND_ORDER)
    ratio = torch.where(diff == 0, torch.zeros_like(ratio), ratio)  # exact agreement passes even a zero bound
    return torch.nan_to_num(ratio, nan=math.inf, posinf=math.inf)


def within(actual: torch.Tensor, reference: torch.Tensor, bound: torch.Tensor) -> bool:
    return bool((excess(actual, reference, bound) <= 1).all())


def assert_within(actual: torch.Tensor, reference: torch.Tensor, bound: torch.Tensor, what: str = "result") -> None:
    """Fail unless every element of ``actual`` lies within ``bound`` of the float64 ``reference``."""
    ratio = excess(actual, reference, bound)
    if not bool((ratio <= 1).all()):
        flat = ratio.reshape(-1)
        i = int(flat.argmax())
        bad = int((flat > 1).sum())
        a, r, b = (f64(t).reshape(-1)[i].item() for t in (actual, reference, bound))
        raise AssertionError(f"{what}: {bad} of {flat.numel()} elements outside the rounding-error bound; worst at "
                             f"flat index {i}: got {a!r}, float64 reference {r!r}, |diff| {abs(a - r):.3g} > "
                             f"bound {b:.3g} ({flat[i].item():.3g}x)")


def softmax_bounds(logits: torch.Tensor, logit_err: torch.Tensor, exp_err: float = ULP_FN):
    """Exact (float64) ``softmax`` over the last dimension and a bound on the *relative* error of every
    float32 evaluation of it, given a bound ``logit_err`` on the error of the float32 logits it starts from.

    Covers ``exp(z - max) / sum`` (one division, or a reciprocal and a product), log-softmax's
    ``exp(z - max - log S)`` (one or two subtractions) and a flash kernel's ``exp(z - lse)`` over a single block
    of keys (ATen's CPU kernel takes up to 512 at once, so no online rescaling), each with ``exp`` accurate to
    ``exp_err`` (pass ``EXP_U20`` for ATen's flash attention). ``-inf`` logits (masked) give probability 0
    exactly. Returns ``(p, rel_err, lse)``.
    """
    z, e = f64(logits), f64(logit_err)
    live = torch.isfinite(z)
    e = torch.where(live, e, torch.zeros_like(e))
    n = z.shape[-1]
    lse = torch.logsumexp(z, -1, keepdim=True)
    top = z.amax(-1, keepdim=True)
    log_s = lse - top  # log of the shifted sum, in [0, log n]
    q = torch.where(live, z - lse, torch.zeros_like(z))  # log p where p > 0
    p = torch.where(live, q.exp(), torch.zeros_like(z))
    entropy = -(p * q).sum(-1, keepdim=True)  # sum_k p_k |q_k|
    pe = (p * e).sum(-1, keepdim=True)
    u = U32
    # - logit errors: dp_j / p_j = e_j - sum_k p_k e_k
    # - exp's argument rounded: z_j - max, z_j - max - log S or z_j - lse: <= u(|lse| + 2|q_j|); the same for the
    #   sum's terms, weighted by p_k: u H (H the entropy)
    # - exp of the numerator and, weighted by p_k, of the sum's terms: 2 exp_err; the n-term sum: gamma_n;
    #   log S (log-softmax, lse): 4u log S; the division, or a reciprocal and a product: 2u
    rel = e + pe + gamma(n) + u * (2 * q.abs() + lse.abs() + entropy + 4 * log_s + 2) + 2 * exp_err
    return p, torch.where(live, rel, torch.zeros_like(rel)), lse


def cross_entropy_bounds(logits: torch.Tensor, logit_err: torch.Tensor, targets: torch.Tensor, ls: float):
    """Per-row label-smoothed cross-entropy and its gradient, exact (float64), with bounds on what float32 makes
    of them.

    ``logits`` ``[m, V]`` exact, ``logit_err`` ``[m, V]`` a bound on the error of the float32 logits actually
    used. Covers both the log-softmax route (``F.cross_entropy``: ``z - top - log S``, ``exp`` of it in the
    backward) and the fused one (nlg.kernels.head_loss: ``exp(z - top) / S``, ``lse - z_t``, ``lse - mean z``).
    Returns ``(loss_rows, loss_rows_err, grad, grad_err)``: the loss per row
    ``(1 - ls) * (lse - z_t) + ls * (lse - mean z)`` (>= 0), its dlogits ``p - ls/V - (1 - ls) onehot``, and
    elementwise error bounds (the gradient's for one upstream unit; scalar factors applied to it are the
    caller's, as extra roundings of its matmul).
    """
    z, e = f64(logits), f64(logit_err)
    vocab = z.shape[1]
    p, rho, lse = softmax_bounds(z, e)
    q = torch.log_softmax(z, -1)  # log p <= 0
    log_s = lse - z.amax(-1, keepdim=True)
    entropy = -(p * q).sum(-1, keepdim=True)
    onehot = torch.zeros_like(z).scatter_(1, targets.view(-1, 1), 1.0)
    u, g_v = U32, gamma(vocab)
    pe = (p * e).sum(-1, keepdim=True)  # sum_k p_k e_k: the logit errors' effect on lse
    # lse: logit errors (pe); shifted sum S: its terms' arguments z_k - top rounded (u|q_k|, weighted: uH), exp
    # (4u), the V-term sum (gamma_V); log S (4u log S); fused route adds top back (u|lse|)
    lse_err = pe + g_v + u * (entropy + 4 * log_s + lse.abs()) + ULP_FN
    grad = p - ls / vocab - (1.0 - ls) * onehot
    parts = p + ls / vocab + (1.0 - ls) * onehot  # the magnitudes combined into grad
    # p's error, sum_k g_k in log-softmax's backward (gamma_V, times p_j), and <= 5 roundings of the parts
    # (constants to float32, the scaling of g, the subtractions)
    grad_err = p * (rho + g_v) + 5 * u * parts
    nll = -q.gather(1, targets.view(-1, 1))
    smooth = -q.mean(-1, keepdim=True)
    # -q_t: lse's error, z_t's, the subtraction(s) (<= 2u|q_t|, lse's own rounding already in lse_err)
    nll_err = lse_err + e.gather(1, targets.view(-1, 1)) + 2 * u * nll
    # -mean q: lse's error, mean logit error, the V-term mean of q (ref) or of z (fused), one division, one
    # subtraction
    smooth_err = (lse_err + e.mean(-1, keepdim=True) + gamma(vocab + 2) * (q.abs().mean(-1, keepdim=True)
                  + z.abs().mean(-1, keepdim=True)) + u * smooth)
    loss_rows = (1.0 - ls) * nll + ls * smooth
    # combining: two products, one sum, the constants to float32 (<= 5u of the non-negative parts)
    loss_err = (1.0 - ls) * nll_err + ls * smooth_err + 5 * u * loss_rows
    return loss_rows.squeeze(1), loss_err.squeeze(1), grad, grad_err
