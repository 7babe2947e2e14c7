"""eval.copy_probe: the repeated-random-tokens copy test, on a model that copies by construction and on one that
cannot (a random tiny GPT-2)."""
from __future__ import annotations

import math
from types import SimpleNamespace

import torch

from eval.copy_probe import TOKEN_RANGE, copy_score, probe_ids
from nlg.models import build_random
from nlg.tokenizer import EOS_ID

VOCAB = 50257


class Copier(torch.nn.Module):
    """Uniform logits on the first copy; from the repeat on, a logit of 50 on the token ``length`` places back."""

    def __init__(self, length: int):
        super().__init__()
        self.length = length
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, ids):
        logits = torch.zeros(*ids.shape, VOCAB)
        for j in range(self.length, ids.size(1)):
            logits[torch.arange(ids.size(0)), j, ids[:, j + 1 - self.length]] = 50.0
        return SimpleNamespace(logits=logits)


def test_probe_rows_are_a_random_sequence_and_its_repeat():
    ids = probe_ids(sequences=3, length=5, seed=1)
    assert ids.shape == (3, 11) and (ids[:, 0] == EOS_ID).all()
    assert torch.equal(ids[:, 1:6], ids[:, 6:]) and ids[:, 1:].min() >= TOKEN_RANGE[0]
    assert torch.equal(ids, probe_ids(sequences=3, length=5, seed=1))  # fixed by the seed


def test_a_copier_gains_the_whole_first_copy_loss():
    score = copy_score(Copier(length=6), sequences=4, length=6)
    assert math.isclose(score.first_copy_nats, math.log(VOCAB), rel_tol=1e-5)  # uniform over the vocabulary
    assert score.second_copy_nats < 1e-6  # log(1 + (V-1) e^-50)
    assert math.isclose(score.gain_nats, math.log(VOCAB), rel_tol=1e-5)
    assert str(score).startswith("copy gain 10.82 nats")


def test_a_random_model_does_not_copy():
    score = copy_score(build_random("tiny", seed=0), sequences=16, length=12)
    # a random 64-wide model's logits barely depend on the context: each copy's loss is near log(V) and the gain is
    # a small fraction of a nat
    assert abs(score.first_copy_nats - math.log(VOCAB)) < 0.5 and abs(score.gain_nats) < 0.1
