"""Hugging Face ``generate`` beam search, offered beside the paper-faithful search (``--hf-generate``).

It is NOT the authors' search; it differs in ways that change outputs:

- the no-repeat-n-gram ban also covers the prompt tokens (the authors ban n-grams of the generated tokens only);
- a beam that ends is set aside and replaced, so ``beam`` live beams remain (the authors' ended beam takes a -inf
  score and only competes once, against one running best);
- finished hypotheses are kept in a ``beam``-sized pool and generation stops by transformers' own
  ``early_stopping`` rule; the length penalty divides by the generated length as here, but the pool decides;
- scores are ``log_softmax`` (the authors use ``log(softmax)``); ``min_length`` becomes ``min_new_tokens``.

It exists to compare against the de-facto standard implementation and to time it (scripts/bench_generate.py).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from tqdm import tqdm

from nlg.config import DecodeConfig
from nlg.tokenizer import EOS_ID


def hf_generate_kwargs(cfg: DecodeConfig) -> dict:
    """``model.generate`` arguments closest to ``cfg``."""
    return dict(
        num_beams=cfg.beam,
        num_return_sequences=1,
        do_sample=False,
        length_penalty=cfg.length_penalty,
        no_repeat_ngram_size=cfg.no_repeat_ngram_size,
        repetition_penalty=cfg.repetition_penalty,
        max_new_tokens=cfg.max_new_tokens,
        min_new_tokens=cfg.min_length or None,
        eos_token_id=list(cfg.eos_token_ids),
        pad_token_id=EOS_ID,
        early_stopping=False,
    )


@torch.inference_mode()
def hf_beam_search(
    model,
    prompts: Sequence[Sequence[int]],
    cfg: DecodeConfig,
    *,
    batch_size: int | None = None,
    progress: bool | Callable[[int], None] = False,
) -> list[list[int]]:
    """Generated ids per prompt (cut after the first end token) from ``model.generate(num_beams=...)``."""
    device = next(model.parameters()).device
    size = max(1, batch_size or cfg.batch_size)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    out: list[list[int] | None] = [None] * len(prompts)
    ends = set(cfg.eos_token_ids)
    bar = None
    if progress is True:
        bar = tqdm(total=len(prompts), unit="prompt", desc="hf generate", dynamic_ncols=True)
    kwargs = hf_generate_kwargs(cfg)
    try:
        for first in range(0, len(order), size):
            idx = order[first:first + size]
            width = max(len(prompts[i]) for i in idx)
            ids = torch.full((len(idx), width), EOS_ID, dtype=torch.long, device=device)
            mask = torch.zeros_like(ids)
            for row, i in enumerate(idx):
                p = list(prompts[i])
                ids[row, width - len(p):] = torch.tensor(p, device=device)
                mask[row, width - len(p):] = 1
            seqs = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
            for row, i in enumerate(idx):
                gen = seqs[row, width:].tolist()
                cut = next((j for j, t in enumerate(gen) if t in ends), None)
                out[i] = gen if cut is None else gen[: cut + 1]
            if bar is not None:
                bar.update(len(idx))
            elif callable(progress):
                progress(len(idx))
    finally:
        if bar is not None:
            bar.close()
    return out
