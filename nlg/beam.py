"""Paper-faithful beam search: the LoRA authors' ``gpt2_beam.py`` rules, made fast without changing a token.

The rules (each one reproduces a detail of their search; tests compare token for token with their code):

- scores are ``log(softmax(logits))`` in fp32 (computed exactly that way, not ``log_softmax``, so the numbers match);
- before the softmax: repetition penalty on the *generated* tokens (CTRL rule), end tokens banned while fewer than
  ``min_length`` tokens exist, and no-repeat-n-gram bans computed on the generated tokens only (not the context);
- the first step expands beam 0 only; every later step takes the top ``beam`` of beam x vocabulary per prompt;
- whenever a beam's last token is an end token, ``score / generated_len ** length_penalty`` competes for the best
  finished hypothesis (a candidate replaces the best only if strictly greater; the first beam wins ties) and that
  beam's score becomes -inf; after the last step every beam competes the same way.

Layout: ``_paper_search`` is these rules for one batch, written over a :class:`BeamCache` (start the prompts,
reorder the beams, feed one token per beam). :class:`PlainCache` implements it with transformers' DynamicCache,
``index_select`` reorders and the model's own attention; :class:`SharedPrefixCache` (the default of
``beam_search(cache=...)``) gives the same token ids faster: a prompt's keys/values are kept once per prompt, not
copied into each beam (the beams' attention, ``_shared_prefix_attention``, reads them from there), generated
keys/values sit in step-major buffers that a reorder rewrites only where a row's ancestry changed, buffers are
reused across batches (fresh memory costs page faults) and GELU runs in place. Both share what lies in the rules
function and is exact by construction: prompts batched (left-padded, explicit position ids) and each run through
the model once (not once per beam), each beam's best
tokens selected in two stages (block maxima, then the best blocks: ``row_topk``), the log and the sum with the beam
scores taken for the k best tokens of each beam only (no other token can be among a prompt's k winners),
identical prompts decoded once, and a prompt stopping as soon as no live beam can still beat its best finished
hypothesis: a live beam's score can only fall, so ``score / max(len ** lp)`` over the lengths still possible bounds
anything it can produce. Settled prompts leave the batch at once. (Floating-point sums in the shared-prefix
attention run in another order than transformers' kernel, as any two attention kernels do; the search's outputs
are checked token for token against the authors' code and between the two caches.) The attention function is
registered with transformers by the first search that uses it, not at import.
"""
from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import torch
from transformers import AttentionInterface
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


def step_probs(logits: torch.Tensor, history: torch.Tensor | None, step: int, cfg: DecodeConfig,
               out: torch.Tensor | None = None) -> torch.Tensor:
    """The authors' per-step distribution: penalties and bans on the logits (in place), then ``softmax`` in fp32
    (into ``out`` when given)."""
    logits = logits.float()
    if history is not None:
        apply_repetition_penalty(logits, history, cfg.repetition_penalty)
    if step < cfg.min_length:
        logits[:, list(cfg.eos_token_ids)] = -math.inf
    if history is not None:
        ban_repeated_ngrams(logits, history, cfg.no_repeat_ngram_size)
    if out is not None and out.shape == logits.shape and out.dtype == logits.dtype:
        return torch.softmax(logits, dim=-1, out=out)
    return torch.softmax(logits, dim=-1)


def step_log_probs(logits: torch.Tensor, history: torch.Tensor | None, step: int, cfg: DecodeConfig) -> torch.Tensor:
    """The authors' per-step scores, ``log(softmax(.))`` in fp32 (the search takes the log of the few
    candidates it can pick only: see ``_expand``)."""
    return torch.log(step_probs(logits, history, step, cfg))


# ----------------------------------------------------------------------------------- the rules
class BeamCache(Protocol):
    """What the search asks of the model and its keys/values; everything else in a search is the authors' rules.

    Rows are (prompt, beam) pairs, prompt-major: before the first reorder there is one row per prompt, after it
    ``beam`` rows per prompt still in the batch. Implementations: :class:`PlainCache` (transformers' own cache and
    attention, easy to follow) and :class:`SharedPrefixCache` (the same numbers stored and read without copies)."""

    def start(self, prompts: list[list[int]]) -> torch.Tensor:
        """Run the prompts (one row each); the next-token logits after each prompt, ``[prompts, vocab]``."""

    def reorder(self, parent: torch.Tensor, kept: torch.Tensor | None) -> None:
        """Make row r continue the history of current row ``parent[r]``; ``kept``: the prompts (positions in the
        batch) still decoding when some left, else None (``parent`` then only names rows of kept prompts)."""

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append one token per row (after :meth:`reorder`); the next-token logits, ``[rows, vocab]``."""

    def scratch(self, shape: tuple[int, ...]) -> torch.Tensor | None:
        """A float32 buffer the search may overwrite at every step, or None to let it allocate one."""


class _Best:
    """Best finished hypothesis per prompt, updated exactly like the authors' ``_add_beam_candidate``."""

    def __init__(self, n: int):
        self.score: list[float | None] = [None] * n
        self.tokens: list[list[int] | None] = [None] * n

    def offer(self, prompt: int, score: float, tokens: list[int]) -> None:
        """A candidate replaces the best only if strictly greater, so among equals the first offered stays."""
        if self.score[prompt] is None or self.score[prompt] < score:
            self.score[prompt] = score
            self.tokens[prompt] = tokens


def _expand(probs: torch.Tensor, scores: torch.Tensor | None, k: int):
    """The step's ``k`` best (score, token, parent row) per prompt, best first, flattened prompt-major.

    The first step (``scores`` None) expands beam 0 only: one row per prompt. Later steps take the top k of
    beam x vocabulary. ``log`` is increasing, so a row's best children by probability are its best by score, and
    no row gives more than k of its prompt's k winners: the log and the sum are needed for each row's k most
    probable tokens only (the same values the full beam x vocabulary table would hold)."""
    if scores is None:
        top_p, top_tok = row_topk(probs, k)
        parent = torch.arange(probs.shape[0], device=probs.device).repeat_interleave(k)
        return torch.log(top_p), top_tok.view(-1), parent
    b, kk = scores.shape[0], min(k, probs.shape[-1])
    top_p, top_tok = row_topk(probs, kk)
    total = (scores.unsqueeze(-1) + torch.log(top_p).view(b, k, kk)).view(b, k * kk)
    best, flat = torch.topk(total, k, dim=1, largest=True, sorted=True)
    parent = ((flat // kk) + torch.arange(b, device=probs.device)[:, None] * k).view(-1)
    return best, top_tok.view(b, k * kk).gather(1, flat).view(-1), parent


def _offer(best: _Best, active: list[int], normed: torch.Tensor, history: torch.Tensor,
           ended: torch.Tensor | None = None) -> None:
    """Let the beams (those ``ended`` only, when given) compete for their prompt's best finished hypothesis, in
    beam order as the authors' loop does (the order decides ties)."""
    k = normed.shape[1]
    normed_rows, rows = normed.tolist(), history.tolist()
    flags = ended.tolist() if ended is not None else [[True] * k] * len(active)
    for j, prompt in enumerate(active):
        for beam in range(k):
            if flags[j][beam]:
                best.offer(prompt, normed_rows[j][beam], rows[j * k + beam])


def _unsettled(best: _Best, active: list[int], scores: torch.Tensor, length: int, max_len: int,
               lp: float) -> list[int]:
    """Batch positions of the prompts where a live beam may still beat the best finished hypothesis. A live
    beam's score can only fall, so ``score / max(len ** lp)`` over the lengths still possible bounds anything it
    can produce; the others are settled and may stop without changing the output."""
    bound = (scores / max((length + 1) ** lp, max_len ** lp)).tolist()
    return [j for j, p in enumerate(active)
            if best.score[p] is None or any(s > best.score[p] for s in bound[j])]


def _paper_search(cache: BeamCache, prompts: list[list[int]], cfg: DecodeConfig, early_stop: bool,
                  stats: SearchStats) -> list[list[int]]:
    """The authors' beam search over one batch of prompts; the best finished hypothesis of each (end token kept).

    Per step: the scores (penalties and bans on the generated tokens, ``log(softmax)``) and the expansion (beam 0
    only at first); any beam whose last token is an end token competes with ``score / len ** lp`` and dies
    (-inf); after the last step every beam competes. With ``early_stop``, settled prompts leave the batch (never
    changes the output). How the model's keys/values are kept is the cache's business."""
    k, lp, max_len = cfg.beam, cfg.length_penalty, cfg.max_new_tokens
    logits = cache.start(prompts)
    device = logits.device
    eos = torch.tensor(sorted(set(cfg.eos_token_ids)), device=device)
    best, active = _Best(len(prompts)), list(range(len(prompts)))  # active: original index per prompt in the batch
    history = scores = None
    for step in range(max_len):
        stats.steps += 1
        stats.row_steps += logits.shape[0]
        probs = step_probs(logits, history, step, cfg, cache.scratch(tuple(logits.shape)))
        scores, tokens, parent = _expand(probs, scores, k)
        history = tokens[:, None] if history is None else torch.cat((history[parent], tokens[:, None]), dim=1)
        length = step + 1
        ended = torch.isin(tokens, eos).view(-1, k)
        if bool(ended.any()):
            _offer(best, active, scores / length ** lp, history, ended)
            scores = scores.masked_fill(ended, -math.inf)
        if length == max_len:  # every beam competes (the finished ones are -inf by now)
            _offer(best, active, scores / length ** lp, history)
            break
        keep = _unsettled(best, active, scores, length, max_len, lp) if early_stop else range(len(active))
        stats.stopped_early += len(active) - len(keep)
        if not keep:
            break
        kept = None
        if len(keep) < len(active):
            kept = torch.tensor(keep, device=device)
            rows = (kept[:, None] * k + torch.arange(k, device=device)[None, :]).view(-1)
            active = [active[j] for j in keep]
            scores, history, parent, tokens = scores[kept], history[rows], parent[rows], tokens[rows]
        cache.reorder(parent, kept)
        logits = cache.step(tokens)
    return [t if t is not None else [] for t in best.tokens]


# ----------------------------------------------------------------------------------- the plain cache
def _left_padded(prompts: list[list[int]], device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, mask, position ids, lengths) of the prompts left-padded to one width: every prompt's next token is
    then in the last column, and explicit positions keep padding from shifting a prompt's positions."""
    lens = torch.tensor([len(p) for p in prompts], device=device)
    width = int(lens.max())
    ids = torch.full((len(prompts), width), PAD_ID, dtype=torch.long, device=device)
    mask = torch.zeros((len(prompts), width), dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p, device=device)
        mask[i, width - len(p):] = 1
    positions = (torch.arange(width, device=device)[None, :] - (width - lens)[:, None]).clamp(min=0)
    return ids, mask, positions, lens


def _model_step(model, input_ids, attention_mask, position_ids, cache, pool: _BufferPool | None = None):
    """One forward pass; only the last position goes through the LM head (into a reused buffer when a pool is
    given and the head is a plain bias-free linear layer: a fresh rows x vocabulary tensor each step costs page
    faults)."""
    out = model.transformer(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        past_key_values=cache,
        use_cache=True,
    )
    hidden = out.last_hidden_state[:, -1]
    head = model.lm_head
    if pool is not None and type(head) is torch.nn.Linear and head.bias is None and hidden.dim() == 2:
        logits = pool.get(("logits",), (hidden.shape[0], head.weight.shape[0]), hidden)
        return torch.mm(hidden, head.weight.t(), out=logits), out.past_key_values
    return head(hidden), out.past_key_values


class PlainCache:
    """The straightforward :class:`BeamCache`: transformers' DynamicCache with one row per beam (the prompt's
    keys/values copied into each of its beams), reordered with ``index_select``, read by the model's own attention
    under an attention mask. Works for any model the search accepts (prefix tuning included). ``pool`` is accepted
    so that both caches are built alike, and unused."""

    pool: _BufferPool | None = None  # logits buffer (SharedPrefixCache's fallback uses one)

    def __init__(self, model, cfg: DecodeConfig, pool: _BufferPool | None = None):
        self.model, self.cfg = model, cfg
        self.device = next(model.parameters()).device
        self.kv = None
        self.fed = 0  # tokens appended per row since the prompt

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def start(self, prompts: list[list[int]]) -> torch.Tensor:
        ids, self.mask, positions, self.lens = _left_padded(prompts, self.device)
        logits, self.kv = _model_step(self.model, ids, self.mask, positions, None)
        return logits

    def reorder(self, parent: torch.Tensor, kept: torch.Tensor | None) -> None:
        """Copy every row's keys/values from its parent (``kept`` is implied by ``parent``)."""
        self.kv.reorder_cache(parent)
        self.lens, self.mask = self.lens[parent], self.mask[parent]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """The new token is attended by its row: the mask grows by one column; positions continue each prompt's."""
        self.mask = torch.cat((self.mask, self.mask.new_ones((tokens.numel(), 1))), 1)
        positions = (self.lens + self.fed)[:, None]
        logits, self.kv = _model_step(self.model, tokens[:, None], self.mask, positions, self.kv, self.pool)
        self.fed += 1
        return logits

    def scratch(self, shape: tuple[int, ...]) -> torch.Tensor | None:
        """No reused memory: each step allocates its probabilities."""
        return None
# ----------------------------------------------------------------------------------- the shared-prefix cache
ATTENTION_NAME = "nlg_shared_prefix"
TOPK_CHUNK = 64  # columns per block of the two-stage top-k over the vocabulary


def row_topk(x: torch.Tensor, k: int, chunk: int = TOPK_CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.topk(x, k, dim=1, sorted=True)`` for a wide ``[rows, V]`` matrix, in two stages.

    A row's k largest values lie in the blocks of ``chunk`` columns whose maxima are among the row's k largest
    block maxima (any other block's maximum is below k values of the row), so the top k of those k blocks (plus
    the columns past the last whole block) are the row's top k: the same values in the same order. One pass of
    block maxima replaces torch's full-row selection. Among exactly equal values the index returned may differ
    from torch.topk's, whose order for ties is unspecified too.
    """
    rows, v = x.shape
    blocks = v // chunk
    if blocks <= k or x.device.type != "cpu":
        return torch.topk(x, k, dim=1, largest=True, sorted=True)
    grid = x[:, : blocks * chunk].view(rows, blocks, chunk)
    _, block = torch.topk(grid.amax(-1), k, dim=1, largest=True, sorted=False)
    cand = grid.gather(1, block[:, :, None].expand(-1, -1, chunk)).view(rows, k * chunk)
    cand_idx = (block[:, :, None] * chunk + torch.arange(chunk, device=x.device)).view(rows, k * chunk)
    if blocks * chunk < v:  # the tail past the last whole block always competes
        cand = torch.cat((cand, x[:, blocks * chunk:]), 1)
        tail = torch.arange(blocks * chunk, v, device=x.device).expand(rows, -1)
        cand_idx = torch.cat((cand_idx, tail), 1)
    values, pos = torch.topk(cand, k, dim=1, largest=True, sorted=True)
    return values, cand_idx.gather(1, pos)


class _BufferPool:
    """Large buffers that outlive a step and a batch (generated keys/values, logits, probabilities, scratch): a
    search reuses the memory of its previous steps and batches, so the operating system maps (and zeroes) those
    pages once per call instead of at every allocation."""

    def __init__(self):
        self.flat: dict[tuple, torch.Tensor] = {}

    def get(self, key: tuple, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """A contiguous tensor of ``shape`` on the storage kept under ``key`` (grown when too small)."""
        numel = math.prod(shape)
        buf = self.flat.get(key)
        if buf is None or buf.numel() < numel or buf.dtype != like.dtype or buf.device != like.device:
            buf = self.flat[key] = like.new_empty(numel)
        return buf[:numel].view(shape)


class _SharedPrefixLayer(DynamicLayer):
    """One layer's keys/values for beam search, stored so that nothing is copied per beam.

    The prompt's keys/values are kept once per prompt (all beams of a prompt share them); the generated ones live
    in a step-major buffer (step, row, head, dim) written in place. Reordering the beams rewrites only the
    (step, row) vectors whose source changes (beams share most of their history, so that is a small part), and
    :func:`_shared_prefix_attention` reads the two parts.
    """

    def __init__(self, index: int, keys: torch.Tensor, values: torch.Tensor, prompt_bias: torch.Tensor, beams: int,
                 extra: int, pool: _BufferPool):
        super().__init__()
        n, heads, length, _ = keys.shape
        self.index, self.pool = index, pool
        self.prefix_keys, self.prefix_values = keys, values  # prompts x heads x length x dim
        self.prompt_bias = prompt_bias  # prompts x 1 x 1 x length: 0, or -inf on left padding
        self.beams, self.extra, self.fixed, self.generated = beams, extra, length, 0
        self.rows = n * beams
        self.gen_keys, self.gen_values = self._buffer(0), self._buffer(1)
        self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True

    def _buffer(self, kind: int) -> torch.Tensor:
        like = self.prefix_keys if kind == 0 else self.prefix_values
        return self.pool.get((self.index, kind), (self.extra, self.rows, like.shape[1], like.shape[3]), like)

    @property
    def keys(self) -> torch.Tensor:  # what generic cache code may inspect: shape and dtype
        return self.prefix_keys

    @keys.setter
    def keys(self, value) -> None:  # DynamicLayer.__init__ assigns it
        pass

    @property
    def values(self) -> torch.Tensor:
        return self.prefix_values

    @values.setter
    def values(self, value) -> None:
        pass

    def update(self, key_states, value_states, *args, **kwargs):
        """Store the new token's key/value (one position per row) at the next step."""
        if key_states.shape[-2] != 1:
            raise RuntimeError("the shared-prefix beam cache takes one new position per step")
        s = self.generated
        self.gen_keys[s].copy_(key_states[:, :, 0])
        self.gen_values[s].copy_(value_states[:, :, 0])
        self.generated = s + 1
        return key_states, value_states

    def generated_kv(self) -> tuple[torch.Tensor, torch.Tensor]:
        """steps x rows x heads x dim views of the generated keys and values."""
        return self.gen_keys[: self.generated], self.gen_values[: self.generated]

    def get_seq_length(self) -> int:
        return self.fixed + self.generated

    def move_rows(self, src: torch.Tensor, dst: torch.Tensor | None, rows: int) -> None:
        """Rewrite generated vectors, the buffer seen as a (step x row) matrix of head x dim vectors.

        With ``dst``: vector ``dst[i]`` becomes the current vector ``src[i]`` (all sources are read first).
        Without: the buffer becomes ``rows`` rows whose vectors are ``src`` in (step, row) order (a full gather,
        used when settled prompts leave)."""
        old_rows = self.rows
        bufs = [self.gen_keys, self.gen_values]
        for kind, buf in enumerate(bufs):
            width = buf.shape[2] * buf.shape[3]
            matrix = buf.view(self.extra * old_rows, width)
            moved = self.pool.get(("scratch",), (src.numel(), width), buf)
            torch.index_select(matrix, 0, src, out=moved)
            if dst is not None:
                matrix.index_copy_(0, dst, moved)
            else:
                self.rows = rows
                bufs[kind] = self._buffer(kind)
                bufs[kind].view(self.extra * rows, width)[: src.numel()].copy_(moved)
        self.gen_keys, self.gen_values = bufs

    def select_prompts(self, prompts: torch.Tensor) -> None:
        """Keep the given prompts' keys/values (settled prompts leave the batch)."""
        self.prefix_keys, self.prefix_values = self.prefix_keys[prompts], self.prefix_values[prompts]
        self.prompt_bias = self.prompt_bias[prompts]


class _BeamOrigins:
    """Which (step, row) slot each generated vector of each row was first written to: two rows hold the same
    vector at a step exactly when their origins there are equal, so a reorder need only move the others."""

    def __init__(self, steps: int, rows: int, device):
        self.origin = torch.empty((steps, rows), dtype=torch.long, device=device)

    def written(self, step: int) -> None:
        self.origin[step] = torch.arange(self.origin.shape[1], device=self.origin.device)

    def reorder(self, parent: torch.Tensor, steps: int, same_rows: bool):
        """(src, dst) for :meth:`_SharedPrefixLayer.move_rows` that give row r the history of row parent[r]."""
        rows = self.origin.shape[1]
        new = self.origin[:steps, parent]
        if not same_rows:
            self.origin = torch.cat((new, self.origin.new_empty((self.origin.shape[0] - steps, parent.numel()))))
            src = (torch.arange(steps, device=parent.device)[:, None] * rows + parent[None, :]).view(-1)
            return src, None
        s_idx, r_idx = (new != self.origin[:steps]).nonzero(as_tuple=True)
        self.origin[:steps] = new
        return s_idx * rows + parent[r_idx], s_idx * rows + r_idx


def _shared_prefix_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Attention of one new position per row over its prompt (shared by the prompt's beams) and its own
    generated positions: softmax(q K^T * scaling) V over both parts at once, as the plain attention computes it.

    Registered under ``ATTENTION_NAME`` by the first search that needs it; used only while a search swaps it in
    (see ``_shared_prefix``)."""
    layer: _SharedPrefixLayer = module._nlg_beam_layer
    rows, heads, _, dim = query.shape
    beams = layer.beams
    prompts = rows // beams
    if scaling is None:
        scaling = dim ** -0.5
    q = query.reshape(prompts, beams, heads, dim).transpose(1, 2)  # prompts x heads x beams x dim
    scores_p = torch.matmul(q, layer.prefix_keys.transpose(-1, -2))  # prompts x heads x beams x length
    gen_k, gen_v = layer.generated_kv()  # steps x rows x heads x dim
    t = gen_k.shape[0]
    scores_g = torch.matmul(query, gen_k.permute(1, 2, 3, 0))  # rows x heads x 1 x steps
    scores_g = scores_g.view(prompts, beams, heads, t).transpose(1, 2)
    scores = torch.cat((scores_p, scores_g), dim=-1).mul_(scaling)
    scores[..., : layer.fixed] += layer.prompt_bias
    if scores.dtype in (torch.float16, torch.bfloat16):  # half-precision models: normalise in fp32, as SDPA does
        probs = torch.softmax(scores.float(), dim=-1).to(scores.dtype)
    else:
        probs = torch.softmax(scores, dim=-1)
    out = torch.matmul(probs[..., : layer.fixed], layer.prefix_values)  # prompts x heads x beams x dim
    probs_g = probs[..., layer.fixed:].transpose(1, 2).reshape(rows, heads, 1, t)
    out_g = torch.matmul(probs_g, gen_v.permute(1, 2, 0, 3))  # rows x heads x 1 x dim
    out = out.transpose(1, 2).reshape(rows, heads, dim) + out_g.view(rows, heads, dim)
    return out.unsqueeze(1), None  # rows x 1 x heads x dim, like the other attention functions


_registered = False


def _register_attention() -> None:
    """Make ``ATTENTION_NAME`` known to transformers, once, when a search first needs it: importing this module
    changes nothing in transformers."""
    global _registered
    if not _registered:
        AttentionInterface.register(ATTENTION_NAME, _shared_prefix_attention)
        _registered = True


@contextlib.contextmanager
def _shared_prefix(model, cache):
    """While decoding steps run: every attention module reads its ``_SharedPrefixLayer`` through
    ``_shared_prefix_attention`` (a private copy of the config names it; the model's own config is untouched)."""
    _register_attention()
    blocks = list(getattr(getattr(model, "transformer", None), "h", []))
    attns = [block.attn for block in blocks]
    config = copy.copy(attns[0].config)
    config._attn_implementation = ATTENTION_NAME
    saved = [(attn, attn.config) for attn in attns]
    try:
        for attn, layer in zip(attns, cache.layers):
            attn.config = config
            attn._nlg_beam_layer = layer
        yield
    finally:
        for attn, old in saved:
            attn.config = old
            attn.__dict__.pop("_nlg_beam_layer", None)


def _plain_dynamic(cache) -> bool:
    return type(cache) is DynamicCache and all(type(layer) is DynamicLayer for layer in cache.layers)


def _to_shared_prefix_cache(model, cache, prompt_mask: torch.Tensor, beams: int, extra: int,
                            pool: _BufferPool) -> bool:
    """Swap a plain DynamicCache's layers (one row per prompt) for ``_SharedPrefixLayer`` buffers; False when the
    cache or the model is not the plain GPT-2 layout this handles (the caller then falls back to the generic path).
    """
    blocks = list(getattr(getattr(model, "transformer", None), "h", []))
    if not _plain_dynamic(cache) or not cache.layers or len(blocks) != len(cache.layers):
        return False
    if any(getattr(block.attn, "layer_idx", None) != i or getattr(block.attn, "is_cross_attention", False)
           or getattr(block.attn, "reorder_and_upcast_attn", False) for i, block in enumerate(blocks)):
        return False
    if any(layer.keys.shape[-2] != prompt_mask.shape[1] for layer in cache.layers):
        return False
    first = cache.layers[0].keys
    bias = torch.zeros(prompt_mask.shape, dtype=first.dtype, device=first.device)
    bias.masked_fill_(prompt_mask == 0, -math.inf)
    bias = bias[:, None, None, :]
    cache.layers = [_SharedPrefixLayer(i, layer.keys, layer.values, bias, beams, extra, pool)
                    for i, layer in enumerate(cache.layers)]
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


class SharedPrefixCache(PlainCache):
    """The fast :class:`BeamCache`, the same numbers as :class:`PlainCache` (same token ids): the prompt's
    keys/values are kept once per prompt and read by ``_shared_prefix_attention``, generated ones sit in pooled
    step-major buffers that a reorder rewrites only where a row's ancestry changed (``_BeamOrigins``), logits and
    probabilities reuse pooled memory, and GELU runs in place. A model whose cache is not the plain GPT-2 layout
    (e.g. prefix tuning) keeps the plain cache, with the pooled buffers and the in-place GELU."""

    def __init__(self, model, cfg: DecodeConfig, pool: _BufferPool | None = None):
        super().__init__(model, cfg)
        self.pool = pool if pool is not None else _BufferPool()
        self.stack = contextlib.ExitStack()
        self.shared = False  # whether the shared-prefix layers replaced the plain ones
        self.origins: _BeamOrigins | None = None

    def __enter__(self):
        self.stack.enter_context(_fast_gelu(self.model))
        return self

    def __exit__(self, *exc) -> None:
        self.stack.close()

    def start(self, prompts: list[list[int]]) -> torch.Tensor:
        """The plain prefill, then its layers swapped for shared-prefix ones (when the model's layout allows)."""
        logits = super().start(prompts)
        self.shared = _to_shared_prefix_cache(self.model, self.kv, self.mask, self.cfg.beam, self.cfg.max_new_tokens,
                                              self.pool)
        if self.shared:
            self.stack.enter_context(_shared_prefix(self.model, self.kv))
        return logits

    def reorder(self, parent: torch.Tensor, kept: torch.Tensor | None) -> None:
        """Move only the generated vectors whose ancestry changed; the prompt part is per prompt, so it follows
        ``kept`` alone."""
        if not self.shared:
            return super().reorder(parent, kept)
        self.lens = self.lens[parent]
        if self.origins is None:  # first reorder: nothing generated yet, only settled prompts may leave
            self.origins = _BeamOrigins(self.cfg.max_new_tokens, parent.numel(), parent.device)
            if kept is None:
                return
            src, dst = parent[:0], None
        else:
            src, dst = self.origins.reorder(parent, self.kv.layers[0].generated, same_rows=kept is None)
        for layer in self.kv.layers:
            if kept is not None:
                layer.select_prompts(kept)
            layer.move_rows(src, dst, parent.numel())

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """No mask: the shared-prefix attention knows the prompts' padding and reads every generated position."""
        if not self.shared:
            return super().step(tokens)
        positions = (self.lens + self.fed)[:, None]
        logits, self.kv = _model_step(self.model, tokens[:, None], None, positions, self.kv, self.pool)
        self.fed += 1
        self.origins.written(self.kv.layers[0].generated - 1)
        return logits

    def scratch(self, shape: tuple[int, ...]) -> torch.Tensor:
        """Pooled memory: a fresh rows x vocabulary tensor each step would cost page faults."""
        return self.pool.get(("probs",), shape, torch.empty((), dtype=torch.float32, device=self.device))


CACHES = {"shared-prefix": SharedPrefixCache, "plain": PlainCache}


@torch.inference_mode()
def _search_batch(model, prompts: list[list[int]], cfg: DecodeConfig, early_stop: bool, stats: SearchStats,
                  pool: _BufferPool | None = None, cache: str = "shared-prefix") -> list[list[int]]:
    """One batch: the rules (``_paper_search``) over a fresh cache of the kind asked for."""
    with CACHES[cache](model, cfg, pool) as kv:
        return _paper_search(kv, prompts, cfg, early_stop, stats)


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
    cache: str = "shared-prefix",
) -> list[list[int]]:
    """Decode every prompt with the authors' beam search; returns the generated ids (end token included).

    ``batch_size`` prompts run together (default ``cfg.batch_size``); ``early_stop`` and ``dedup`` never change
    the output, nor does ``cache``: ``"shared-prefix"`` (:class:`SharedPrefixCache`, fast) or ``"plain"``
    (:class:`PlainCache`, transformers' own cache and attention). ``truncate`` keeps the last tokens of a too-long
    prompt, as the authors' data loader silently does; without it such a prompt raises :class:`PromptError`.
    """
    if cache not in CACHES:
        raise ValueError(f"cache must be one of {sorted(CACHES)}, got {cache!r}")
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
    pool = _BufferPool()  # generated keys/values, reused by every batch of this call
    was_training = model.training
    model.eval()
    try:
        for first in range(0, len(order), size):
            idx = order[first:first + size]
            t0 = time.perf_counter()
            outs = _search_batch(model, [list(unique[i]) for i in idx], cfg, early_stop, stats, pool, cache)
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

