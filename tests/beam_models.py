"""Seeded tiny GPT-2 models shaped so that beam search has real decisions to make (used by tests and fixtures).

A freshly initialised tiny model gives almost uniform next-token distributions, and with tied embeddings it
mostly predicts the token it just read, so a prompt ending in ``<|endoftext|>`` ends at once. ``shaped_tiny``
makes the search non-trivial: the tied embedding is scaled (sharper distributions, repeated n-grams that the ban
must remove), the end tokens' embeddings are replaced by a shared direction ``u`` (plus a fifth of their random
row), and the position embeddings get a ramp along ``u`` that is negative before position ``p0`` and grows after
it. End tokens then become likely only after a prompt-dependent number of steps, so hypotheses finish at many
different lengths (or not at all), and the length penalty and the finished-hypothesis bookkeeping decide the
outcome. The same recipe builds the authors'-code twin for the fixture (tests/fixtures/authors_beam/README.md),
so both sides decode with identical weights.
"""
from __future__ import annotations

import torch

from nlg.models import build_random

# name -> (seed, embedding scale, ramp slope, ramp zero position p0, {end token: weight along u})
VARIANTS = {
    "ends-50256": (11, 4.0, 8.0, 50, {628: 1.0, 50256: 1.0}),
    "ends-late": (12, 4.0, 6.0, 80, {628: 1.0, 50256: 1.2}),
    "ends-628": (13, 4.0, 8.0, 50, {628: 1.3, 50256: 1.0}),
}


@torch.no_grad()
def shaped_tiny(variant: str):
    """The tiny model of ``VARIANTS[variant]`` (a ``GPT2LMHeadModel``, eval mode, fp32)."""
    seed, scale, ramp, p0, ends = VARIANTS[variant]
    model = build_random("tiny", seed=seed)
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(model.config.n_embd, generator=gen)
    u /= u.norm()
    wte = model.transformer.wte.weight
    wpe = model.transformer.wpe.weight
    wte.mul_(scale)
    pos = torch.arange(wpe.shape[0], dtype=torch.float32)
    wpe.add_(((pos - p0) / 64.0 * ramp)[:, None] * u[None, :])
    for token, weight in ends.items():
        wte[token] = wte[token] * 0.2 + weight * u
    return model.eval()
