"""Training data: the authors' example layout and epoch order, batched without padding beyond the longest row.

What is kept from the authors' ``FT_Dataset`` + ``DistributedSampler`` + ``DataLoader(drop_last=True)``:

- an example is ``context + completion`` cut to ``seq_len``; the target is the same list shifted by one; the loss
  mask is off for the first ``len(context) - 1`` positions and on from the target of the last context token to
  the second-to-last real token (their ``FT_Dataset.__getitem__``);
- the dataset is stretched to ``ceil(N / batch) * batch`` items; an item past the real examples is replaced by
  ``random.Random(911).randint(0, N - 1)``, drawn in the order the items are fetched (one stream per process);
- each epoch ``e`` (counted from 1) shuffles with ``torch.randperm`` seeded ``seed + e``, pads the order to a
  multiple of the world size with its own head, gives rank ``r`` every ``world``-th item from ``r``, and drops the
  last incomplete batch.

What differs, with identical losses: a batch is padded (with 0, after the real tokens) only to its longest real
sequence instead of ``seq_len``. Causal attention means a pad never changes an earlier position, and the mask is
never on at a pad, so the loss and its gradients are those of the authors' 512-token rows. (``--kernels
reference`` pads to ``seq_len`` as theirs: LoRA's dropout masks are drawn on the padded rows, so their shape
decides which random numbers fall on which token; see ``loader_seed_draw`` for the rest of their stream.)
"""
from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from nlg.io_utils import InputFileError, iter_jsonl
from nlg.tokenizer import VOCAB_SIZE

PAD_RNG_SEED = 911  # the authors' FT_Dataset(...).rng = random.Random(911)


@dataclass(frozen=True)
class Example:
    """One row in the authors' layout, unpadded: ``input`` and ``target`` have the same length."""

    input: tuple[int, ...]
    target: tuple[int, ...]
    mask: tuple[int, ...]  # 1 where the target counts in the loss; len(mask) <= len(input)

    @property
    def n_loss(self) -> int:
        return sum(self.mask)


def build_example(context: Sequence[int], completion: Sequence[int], seq_len: int) -> Example:
    """``context + completion`` cut to ``seq_len`` with its shifted target and loss mask, as the authors build it."""
    ids = list(context) + list(completion)
    inp = ids[:seq_len]
    n = len(inp)
    target = ids[1:][:seq_len]
    mask = ([0] * (len(context) - 1) + [1] * (n - len(context)))[:seq_len]
    # The authors pad target and mask with 0 to seq_len; keep them as long as the input (pads count for nothing).
    target = target + [0] * (n - len(target))
    mask = (mask + [0] * n)[:n]
    return Example(tuple(inp), tuple(target), tuple(mask))


def read_encoded(path: str | os.PathLike, seq_len: int) -> list[Example]:
    """Read ``{"context": ids, "completion": ids}`` lines; bad records raise an error naming file and line."""
    path = Path(path)
    examples = []
    for lineno, rec in iter_jsonl(path):
        if not isinstance(rec, dict) or "context" not in rec or "completion" not in rec:
            raise InputFileError(path, 'expected an object with "context" and "completion" token-id lists', lineno)
        for key in ("context", "completion"):
            ids = rec[key]
            if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
                raise InputFileError(path, f'"{key}" must be a list of token ids (integers); was it encoded?', lineno)
            bad = next((i for i in ids if not 0 <= i < VOCAB_SIZE), None)
            if bad is not None:
                raise InputFileError(path, f'"{key}" holds token id {bad}, outside the vocabulary 0..{VOCAB_SIZE - 1}', lineno)
        if not rec["context"]:
            raise InputFileError(path, '"context" is empty (the encoder always ends it with 50256)', lineno)
        if not rec["completion"]:  # the authors' encoder makes an empty text [50256]: something else wrote this
            raise InputFileError(path, '"completion" is empty (the encoder always ends it with 50256, so even an '
                                 'empty text gives [50256])', lineno)
        examples.append(build_example(rec["context"], rec["completion"], seq_len))
    if not examples:
        raise InputFileError(path, "no records: the file is empty")
    return examples


def epoch_order(n_items: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> list[int]:
    """The item order ``torch.utils.data.DistributedSampler(shuffle=True, seed=seed)`` yields after ``set_epoch``."""
    g = torch.Generator()
    g.manual_seed(seed + epoch)
    order = torch.randperm(n_items, generator=g).tolist()
    per_rank = math.ceil(n_items / world)
    total = per_rank * world
    extra = total - n_items
    if extra:
        order += (order * math.ceil(extra / n_items))[:extra]
    return order[rank:total:world]


def num_batches(n_examples: int, batch_size: int) -> int:
    """The authors' ``FT_Dataset.num_batches``: batches per epoch on one process."""
    return (n_examples + batch_size - 1) // batch_size


def total_steps(n_examples: int, batch_size: int, epochs: int, grad_acc: int = 1, world: int = 1,
                max_steps: int | None = None) -> int:
    """Optimizer updates of a run: the authors' ``max_step`` (counted in batches per process) over ``grad_acc``.

    Their formula is ``(epochs * num_batches + world - 1) // world``; ``--max-steps`` replaces it.
    """
    if max_steps is not None:
        return int(max_steps)
    micro = (epochs * num_batches(n_examples, batch_size) + world - 1) // world
    return micro // grad_acc


class EpochPlan:
    """The batches (lists of example indices) one process trains on in one epoch, deterministic and resumable.

    ``pad_rng`` is the process's ``random.Random(911)`` stream; it is advanced exactly as the authors' dataset
    advances it (one draw per stretched item, in fetch order). ``bucket`` sorts each window of ``bucket``
    batches by length and shuffles the batches (an option that changes the order, never the paper default).
    """

    def __init__(self, examples: list[Example], batch_size: int, seed: int, epoch: int, rank: int, world: int,
                 pad_rng: random.Random, bucket: int = 0):
        n = len(examples)
        stretched = num_batches(n, batch_size) * batch_size
        order = epoch_order(stretched, seed, epoch, rank, world)
        resolved = [i if i < n else pad_rng.randint(0, n - 1) for i in order]
        usable = len(resolved) // batch_size * batch_size  # DataLoader(drop_last=True)
        batches = [resolved[i:i + batch_size] for i in range(0, usable, batch_size)]
        if bucket > 1:
            batches = _bucketed(batches, examples, batch_size, bucket, seed, epoch, rank)
        self.batches = batches
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.batches)


def _bucketed(batches, examples, batch_size, window, seed, epoch, rank):
    """Sort each window of ``window`` batches by length, re-cut, then shuffle the batch order (seeded)."""
    out = []
    for start in range(0, len(batches), window):
        items = [i for b in batches[start:start + window] for i in b]
        items.sort(key=lambda i: len(examples[i].input))
        out += [items[j:j + batch_size] for j in range(0, len(items), batch_size)]
    g = torch.Generator()
    g.manual_seed((seed + 7919 * epoch + 104729 * rank) % (2**63))
    perm = torch.randperm(len(out), generator=g).tolist()
    return [out[p] for p in perm]


def loader_seed_draw() -> None:
    """The one draw a ``torch.utils.data.DataLoader`` makes from torch's global generator whenever an iterator is
    made (its workers' ``_base_seed``, an int64, drawn even with ``num_workers=0``). The authors' loop makes a new
    iterator at each training epoch and at each ``evaluate``, so these draws sit between their LoRA dropout masks;
    ``--kernels reference`` makes them at the same points to draw the same masks."""
    torch.empty((), dtype=torch.int64).random_()


@dataclass
class Batch:
    """A collated batch; every tensor is ``[B, T]`` with ``T`` the longest real row (or ``collate``'s ``pad_to``)."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor  # bool
    lengths: torch.Tensor  # [B] real tokens per row (they come first)
    n_tokens: int  # real (non-pad) input tokens
    n_loss: int

    def to(self, device) -> "Batch":
        return Batch(self.input_ids.to(device), self.position_ids.to(device), self.targets.to(device),
                     self.mask.to(device), self.lengths.to(device), self.n_tokens, self.n_loss)


def collate(examples: Sequence[Example], pad_to: int | None = None) -> Batch:
    """Pad with 0 to the longest row (or ``pad_to``, e.g. the authors' ``seq_len``) after the real tokens."""
    width = max(len(e.input) for e in examples)
    if pad_to is not None:
        width = max(width, pad_to)
    b = len(examples)
    inp = torch.zeros(b, width, dtype=torch.long)
    tgt = torch.zeros(b, width, dtype=torch.long)
    msk = torch.zeros(b, width, dtype=torch.bool)
    for row, e in enumerate(examples):
        n = len(e.input)
        inp[row, :n] = torch.tensor(e.input, dtype=torch.long)
        tgt[row, :n] = torch.tensor(e.target, dtype=torch.long)
        msk[row, :n] = torch.tensor(e.mask, dtype=torch.bool)
    pos = torch.arange(width, dtype=torch.long).unsqueeze(0).expand(b, width).contiguous()
    lengths = torch.tensor([len(e.input) for e in examples], dtype=torch.long)
    return Batch(inp, pos, tgt, msk, lengths, int(lengths.sum()), int(msk.sum()))


def valid_batches(examples: list[Example], batch_size: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """Validation: file order, batches of ``batch_size`` (the last may be short), batch ``i`` on rank ``i % world``."""
    all_batches = [list(range(i, min(i + batch_size, len(examples)))) for i in range(0, len(examples), batch_size)]
    return all_batches[rank::world]
