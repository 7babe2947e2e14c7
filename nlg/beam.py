"""Paper-faithful beam search: the LoRA authors' ``gpt2_beam.py`` rules, made fast without changing a token.

The rules (each one reproduces a detail of their search; tests compare token for token with their code):

- scores are ``log(softmax(logits))`` in fp32 (computed exactly that way, not ``log_softmax``, so the numbers match);
- before the softmax: repetition penalty on the *generated* tokens (CTRL rule), end tokens banned while fewer than
  ``min_length`` tokens exist, and no-repeat-n-gram bans computed on the generated tokens only (not the context);
- the first step expands beam 0 only; every later step takes the top ``beam`` of beam x vocabulary per prompt;
- whenever a beam's last token is an end token, ``score / generated_len ** length_penalty`` competes for the best
  finished hypothesis (a candidate replaces the best only if strictly greater; the first beam wins ties) and that
  beam's score becomes -inf; after the last step every beam competes the same way.

What makes it fast, with identical output: prompts are batched (left-padded, with an attention mask and explicit
position ids), the prompt is run once per prompt instead of once per beam, a KV cache is reordered for the beams,
identical prompts are decoded once, and a prompt stops as soon as no live beam can still beat its best finished
hypothesis: a live beam's score can only fall, so ``score / max(len ** lp)`` over the lengths still possible bounds
anything it can produce. Settled prompts leave the batch at once.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from transformers.activations import NewGELUActivation
from transformers.cache_utils import DynamicCache, DynamicLayer

from nlg.config import DecodeConfig

PAD_ID = 0  # the value put under masked (padding) positions; never attended to


class PromptError(ValueError):
    """A prompt the search cannot decode (empty, bad ids, or longer than the context window)."""


@dataclass
class SearchStats:
    """What a search did, for the progress line and the benchmark."""

    prompts: int = 0
    unique_prompts: int = 0
    steps: int = 0  # decoding steps summed over batches
    row_steps: int = 0  # rows (prompt x beam) run through the model, summed over steps
    stopped_early: int = 0  # prompts settled before the last step
    seconds: float = 0.0
    per_batch: list = field(default_factory=list)


def context_window(model, cfg: DecodeConfig) -> int:
    """Longest prompt the search accepts: the authors' ``seq_len - eval_len``, capped by the model's positions."""
    n_positions = getattr(model.config, "n_positions", None) or cfg.seq_len
    return min(cfg.seq_len, n_positions) - cfg.max_new_tokens


def check_prompt(prompt: Sequence[int], window: int, vocab_size: int) -> str | None:
    """Why ``prompt`` cannot be decoded, or None when it can."""
    if len(prompt) == 0:
        return "empty context: nothing to condition on"
    if len(prompt) > window:
        return (
            f"context of {len(prompt)} tokens is longer than the context window of {window} tokens "
            f"(seq_len - max_new_tokens); the authors' code silently keeps only the last {window} tokens: "
            "pass truncate/--truncate-left to do the same"
        )
    bad = next((t for t in prompt if not isinstance(t, int) or t < 0 or t >= vocab_size), None)
    if bad is not None:
        return f"token id {bad!r} is not in the vocabulary (0..{vocab_size - 1})"
    return None


# ----------------------------------------------------------------------------------- score post-processing
def apply_repetition_penalty(logits: torch.Tensor, history: torch.Tensor, penalty: float) -> None:
    """CTRL penalty on every token already generated in the row: negative logits times p, others divided by p."""
    if penalty == 1.0 or history.shape[1] == 0:
        return
    picked = logits.gather(1, history)
    logits.scatter_(1, history, torch.where(picked < 0, picked * penalty, picked / penalty))


def ban_repeated_ngrams(logits: torch.Tensor, history: torch.Tensor, n: int) -> None:
    """Set -inf on every token that would repeat an n-gram already present in the row's generated tokens."""
    rows, length = history.shape
    if n <= 0 or length + 1 < n:
        return
    if n == 1:
        logits.scatter_(1, history, -math.inf)
        return
    starts = length - n + 1  # n-grams fully inside the history: their (n-1)-prefix starts at 0..starts-1
    if starts <= 0:
        return
    prefixes = history.unfold(1, n - 1, 1)[:, :starts]  # rows, starts, n-1
    suffix = history[:, length - n + 1:]  # the last n-1 tokens
    match = (prefixes == suffix[:, None, :]).all(-1)  # rows, starts
    r, c = match.nonzero(as_tuple=True)
    if r.numel():
        logits[r, history[:, n - 1:][r, c]] = -math.inf


def step_log_probs(logits: torch.Tensor, history: torch.Tensor | None, step: int, cfg: DecodeConfig) -> torch.Tensor:
    """The authors' per-step scores: penalties and bans on the logits, then ``log(softmax(.))`` in fp32."""
    logits = logits.float()
    if history is not None:
        apply_repetition_penalty(logits, history, cfg.repetition_penalty)
    if step < cfg.min_length:
        logits[:, list(cfg.eos_token_ids)] = -math.inf
    if history is not None:
        ban_repeated_ngrams(logits, history, cfg.no_repeat_ngram_size)
    return torch.log(torch.softmax(logits, dim=-1))


# ----------------------------------------------------------------------------------- exact speed-ups
class _BeamLayer(DynamicLayer):
    """One layer's keys/values in a preallocated buffer: a new token is written in place instead of concatenated,
    and reordering beams moves only the generated columns (the prompt columns are equal for all beams of a prompt).
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, rows: torch.Tensor, extra: int,
                 scratch: torch.Tensor):
        super().__init__()
        n, heads, length, dim = keys.shape
        self.scratch = scratch  # rows x heads x extra x dim, shared by all layers (used one at a time)
        self.kbuf = keys.new_empty((rows.numel(), heads, length + extra, dim))
        self.vbuf = values.new_empty((rows.numel(), heads, length + extra, values.shape[-1]))
        self.kbuf[:, :, :length] = keys[rows]
        self.vbuf[:, :, :length] = values[rows]
        self.fixed = self.length = length
        self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True
        self._expose()

    def _expose(self) -> None:
        self.keys = self.kbuf[:, :, : self.length]
        self.values = self.vbuf[:, :, : self.length]

    def update(self, key_states, value_states, *args, **kwargs):
        end = self.length + key_states.shape[-2]
        self.kbuf[:, :, self.length:end] = key_states
        self.vbuf[:, :, self.length:end] = value_states
        self.length = end
        self._expose()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def reorder_beams(self, parent: torch.Tensor) -> None:
        """Permute rows among the beams of each prompt (only the generated columns differ): gather them into the
        shared scratch buffer, then copy back (several times faster than an indexed assignment on CPU)."""
        if self.length > self.fixed:
            span = slice(self.fixed, self.length)
            tmp = self.scratch[: parent.numel(), :, : self.length - self.fixed]
            for buf in (self.kbuf, self.vbuf):
                torch.index_select(buf[:, :, span], 0, parent, out=tmp)
                buf[:, :, span].copy_(tmp)

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep (and reorder) arbitrary rows: used when settled prompts leave the batch."""
        self.kbuf = self.kbuf[rows]
        self.vbuf = self.vbuf[rows]
        self._expose()


def _plain_dynamic(cache) -> bool:
    return type(cache) is DynamicCache and all(type(layer) is DynamicLayer for layer in cache.layers)


def _to_beam_cache(cache, rows: torch.Tensor, extra: int) -> bool:
    """Swap a plain DynamicCache's layers for ``_BeamLayer`` buffers holding ``rows``; False if not plain."""
    if not _plain_dynamic(cache) or not cache.layers:
        return False
    shapes = {(layer.keys.shape[1], layer.keys.shape[3], layer.values.shape[3]) for layer in cache.layers}
    if len(shapes) != 1 or shapes.pop()[1] != cache.layers[0].values.shape[3]:
        return False
    first = cache.layers[0].keys
    scratch = first.new_empty((rows.numel(), first.shape[1], extra, first.shape[3]))
    cache.layers = [_BeamLayer(layer.keys, layer.values, rows, extra, scratch) for layer in cache.layers]
    return True


class _InplaceNewGELU(torch.nn.Module):
    """transformers' ``NewGELUActivation`` (= the authors' ``gelu``) evaluated in place: the same operations on the
    same values (commuted products, and the final x 0.5 is exact), so bit-identical results with less memory
    traffic. Inference only."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.pow(x, 3.0)
        y.mul_(0.044715).add_(x).mul_(math.sqrt(2.0 / math.pi)).tanh_().add_(1.0).mul_(x).mul_(0.5)
        return y


@contextlib.contextmanager
def _fast_gelu(model):
    """Use ``_InplaceNewGELU`` inside the GPT-2 blocks for the duration of the search."""
    swapped = []
    for block in getattr(getattr(model, "transformer", None), "h", []):
        mlp = getattr(block, "mlp", None)
        if mlp is not None and type(getattr(mlp, "act", None)) is NewGELUActivation:
            swapped.append((mlp, mlp.act))
            mlp.act = _InplaceNewGELU()
    try:
        yield
    finally:
        for mlp, act in swapped:
            mlp.act = act


# ----------------------------------------------------------------------------------- the search
def _model_step(model, input_ids, attention_mask, position_ids, cache):
    """One forward pass; only the last position goes through the LM head."""
    out = model.transformer(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        past_key_values=cache,
        use_cache=True,
    )
    hidden = out.last_hidden_state[:, -1]
    return model.lm_head(hidden), out.past_key_values


class _Best:
    """Best finished hypothesis per prompt, updated exactly like the authors' ``_add_beam_candidate``."""

    def __init__(self, n: int):
        self.score: list[float | None] = [None] * n
        self.tokens: list[list[int] | None] = [None] * n

    def offer(self, prompt: int, score: float, tokens: list[int]) -> None:
        if self.score[prompt] is None or self.score[prompt] < score:
            self.score[prompt] = score
            self.tokens[prompt] = tokens


@torch.inference_mode()
def _search_batch(model, prompts: list[list[int]], cfg: DecodeConfig, early_stop: bool, stats: SearchStats):
    device = next(model.parameters()).device
    k, lp, max_len = cfg.beam, cfg.length_penalty, cfg.max_new_tokens
    eos = torch.tensor(sorted(set(cfg.eos_token_ids)), device=device)
    n = len(prompts)
    lens = torch.tensor([len(p) for p in prompts], device=device)
    width = int(lens.max())
    ids = torch.full((n, width), PAD_ID, dtype=torch.long, device=device)
    mask = torch.zeros((n, width), dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p, device=device)
        mask[i, width - len(p):] = 1
    positions = (torch.arange(width, device=device)[None, :] - (width - lens)[:, None]).clamp(min=0)

    logits, cache = _model_step(model, ids, mask, positions, None)
    best = _Best(n)
    active = list(range(n))  # original prompt index of each prompt still in the batch
    history = None
    beam_scores = None
    row_lens = lens
    row_mask = mask
    steps = 0
    for step in range(max_len):
        steps += 1
        stats.row_steps += logits.shape[0]
        b = len(active)
        logp = step_log_probs(logits, history, step, cfg)
        vocab = logp.shape[-1]
        if step == 0:
            scores, flat = torch.topk(logp, k, dim=1, largest=True, sorted=True)  # beam 0 only
            parent = torch.arange(b, device=device).repeat_interleave(k)  # prefill rows are one per prompt
        else:
            total = (beam_scores.unsqueeze(-1) + logp.view(b, k, vocab)).view(b, k * vocab)
            scores, flat = torch.topk(total, k, dim=1, largest=True, sorted=True)
            parent = ((flat // vocab) + torch.arange(b, device=device)[:, None] * k).view(-1)
        tokens = (flat % vocab).view(-1)
        history = tokens[:, None] if history is None else torch.cat((history[parent], tokens[:, None]), dim=1)
        beam_scores = scores
        cur_len = step + 1

        # finished hypotheses (the authors check every beam's last token after every step)
        ended = torch.isin(tokens, eos).view(b, k)
        last = cur_len == max_len
        if bool(ended.any()) or last:
            normed = (beam_scores / (cur_len ** lp)).tolist()
            ended_list = ended.tolist()
            hist_rows = None
            for j in range(b):
                for beam in range(k):
                    if ended_list[j][beam]:
                        if hist_rows is None:
                            hist_rows = history.tolist()
                        best.offer(active[j], normed[j][beam], hist_rows[j * k + beam])
            beam_scores = beam_scores.masked_fill(ended, -math.inf)
            if last:  # after the last step every remaining beam competes (finished ones are -inf by now)
                normed = (beam_scores / (cur_len ** lp)).tolist()
                hist_rows = history.tolist()
                for j in range(b):
                    for beam in range(k):
                        best.offer(active[j], normed[j][beam], hist_rows[j * k + beam])
                break

        # settled prompts: no live beam can beat the best finished hypothesis any more
        keep = list(range(b))
        b_before = b
        if early_stop:
            denom = max((cur_len + 1) ** lp, max_len ** lp)
            bound = (beam_scores / denom).tolist()
            keep = [
                j for j in range(b)
                if best.score[active[j]] is None or any(s > best.score[active[j]] for s in bound[j])
            ]
            stats.stopped_early += b - len(keep)
            if not keep:
                break
        if len(keep) < b:
            sel = torch.tensor(keep, device=device)
            rows = (sel[:, None] * k + torch.arange(k, device=device)[None, :]).view(-1)
            active = [active[j] for j in keep]
            beam_scores = beam_scores[sel]
            history = history[rows]
            parent = parent[rows]
            tokens = tokens[rows]
            b = len(keep)
        # row_lens / row_mask are indexed by the parent rows of the cache (prompt rows at step 0)
        if step == 0:
            fast = _to_beam_cache(cache, parent, max_len)
            if not fast:
                cache.reorder_cache(parent)
        elif not fast:
            cache.reorder_cache(parent)
        elif len(keep) < b_before:
            for layer in cache.layers:
                layer.select_rows(parent)
        else:
            for layer in cache.layers:
                layer.reorder_beams(parent)
        row_lens = row_lens[parent]
        row_mask = torch.cat((row_mask[parent], torch.ones((parent.numel(), 1), dtype=row_mask.dtype, device=device)), 1)
        logits, cache = _model_step(model, tokens[:, None], row_mask, (row_lens + step)[:, None], cache)
    stats.steps += steps
    return [best.tokens[i] if best.tokens[i] is not None else [] for i in range(n)]


def beam_search(
    model,
    prompts: Sequence[Sequence[int]],
    cfg: DecodeConfig,
    *,
    batch_size: int | None = None,
    early_stop: bool = True,
    dedup: bool = True,
    truncate: bool = False,
    progress: bool | Callable[[int], None] = False,
    stats: SearchStats | None = None,
) -> list[list[int]]:
    """Decode every prompt with the authors' beam search; returns the generated ids (end token included).

    ``batch_size`` prompts run together (default ``cfg.batch_size``); ``early_stop`` and ``dedup`` never change
    the output. ``truncate`` keeps the last tokens of a too-long prompt, as the authors' data loader silently does;
    without it such a prompt raises :class:`PromptError`.
    """
    if cfg.beam < 1:
        raise ValueError(f"beam must be >= 1, got {cfg.beam}")
    if cfg.max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {cfg.max_new_tokens}")
    stats = stats if stats is not None else SearchStats()
    start = time.perf_counter()
    window = context_window(model, cfg)
    if window < 1:
        raise PromptError(f"seq_len {cfg.seq_len} leaves no room for a prompt and {cfg.max_new_tokens} new tokens")
    vocab_size = model.config.vocab_size
    clean: list[tuple[int, ...]] = []
    for i, p in enumerate(prompts):
        p = list(p)
        if truncate and len(p) > window:
            p = p[-window:]
        problem = check_prompt(p, window, vocab_size)
        if problem:
            raise PromptError(f"prompt {i}: {problem}")
        clean.append(tuple(p))

    if dedup:
        unique = list(dict.fromkeys(clean))
    else:
        unique = clean
    stats.prompts += len(clean)
    stats.unique_prompts += len(unique)
    # longest first: batches of similar length waste little on padding, and a memory error shows up at once
    order = sorted(range(len(unique)), key=lambda i: -len(unique[i]))
    size = max(1, batch_size or cfg.batch_size)
    results: list[list[int] | None] = [None] * len(unique)
    bar = None
    if progress is True:
        from tqdm import tqdm

        bar = tqdm(total=len(clean), unit="prompt", desc="beam search", dynamic_ncols=True)
    weight = {}  # how many input prompts each unique prompt stands for (for the progress count)
    for p in clean:
        weight[p] = weight.get(p, 0) + 1
    was_training = model.training
    model.eval()
    try:
        for first in range(0, len(order), size):
            idx = order[first:first + size]
            t0 = time.perf_counter()
            with _fast_gelu(model):
                outs = _search_batch(model, [list(unique[i]) for i in idx], cfg, early_stop, stats)
            stats.per_batch.append({"prompts": len(idx), "seconds": time.perf_counter() - t0})
            for i, out in zip(idx, outs):
                results[i] = out
            done = sum(weight[unique[i]] for i in idx) if dedup else len(idx)
            if bar is not None:
                bar.update(done)
            elif callable(progress):
                progress(done)
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)
    stats.seconds += time.perf_counter() - start
    if dedup:
        by_prompt = dict(zip(unique, results))
        return [list(by_prompt[p]) for p in clean]
    return [list(r) for r in results]
