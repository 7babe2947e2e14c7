"""Does a language model copy from its context? ``python -m eval.copy_probe MODEL [MODEL ...]``.

E2E's sentences repeat the names and values of the meaning representation before them ("name : Blue Spice" ->
"Blue Spice is a coffee shop"); a frozen base that cannot copy from its context leaves an adapter or a prefix
nothing to steer towards that. The probe (the repeated-random-tokens test of induction-head studies): sequences
of ``length`` random BPE tokens, each followed by itself; a model that copies predicts the second copy far
better than the first. The figure is the mean next-token loss (nats) on each copy and their difference, the
copy gain; a model that cannot copy has a gain near 0, a perfect copier one near the first copy's loss.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nlg.tokenizer import EOS_ID

TOKEN_RANGE = (1000, 30000)  # ordinary word pieces: no byte tokens, no rare long merges


@dataclass(frozen=True)
class CopyScore:
    first_copy_nats: float
    second_copy_nats: float

    @property
    def gain_nats(self) -> float:
        return self.first_copy_nats - self.second_copy_nats

    def __str__(self) -> str:
        return (f"copy gain {self.gain_nats:.2f} nats (loss {self.first_copy_nats:.2f} on random tokens, "
                f"{self.second_copy_nats:.2f} on their repeat)")


def probe_ids(sequences: int = 64, length: int = 24, seed: int = 0) -> torch.Tensor:
    """``[50256, x_1..x_L, x_1..x_L]`` rows, ``x`` uniform in :data:`TOKEN_RANGE` (fixed by ``seed``)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(*TOKEN_RANGE, (sequences, length), generator=gen)
    return torch.cat([torch.full((sequences, 1), EOS_ID), x, x], dim=1)


@torch.no_grad()
def copy_score(model, sequences: int = 64, length: int = 24, seed: int = 0) -> CopyScore:
    """Mean next-token loss of ``model`` on the first and on the repeated half of :func:`probe_ids`.

    The first token of the repeat is left out of both: nothing in the context says where the repeat starts."""
    ids = probe_ids(sequences, length, seed).to(next(model.parameters()).device)
    was_training = model.training
    model.eval()
    logits = model(ids).logits[:, :-1].float()
    model.train(was_training)
    nll = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")  # (sequences, 2 * length)
    return CopyScore(float(nll[:, :length].mean()), float(nll[:, length + 1:].mean()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", help="model folders or names (--model's forms: mini, a folder, a hub id)")
    p.add_argument("--sequences", type=int, default=64)
    p.add_argument("--length", type=int, default=24)
    a = p.parse_args(argv)
    from nlg.models import load_model
    for name in a.models:
        print(f"{name}: {copy_score(load_model(name), a.sequences, a.length)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
