"""Prefix tuning: ``prefix-layer`` (PreLayer, Li & Liang 2021) and ``prefix-embed`` (PreEmbed), the paper's
prefix baselines.

- PreLayer: trainable key/value activations of ``--prefix-len`` l_p positions at every layer, which every real
  token attends to. Trained, as Li & Liang do, through a reparameterisation (an embedding of l_p rows ->
  Linear(d, mid) -> tanh -> Linear(mid, 2·L·d)); ``for_inference`` / ``export_state`` drop the MLP and keep the
  plain prefixes (L × 2 × heads × l_p × head_dim). Infix activations are not offered: the paper's GPT-2 PreLayer
  rows (Li & Liang's prefix-only runs) use none, and key/value-only infix positions would have no output to
  predict the first completion token from.
- PreEmbed: trainable embeddings of l_p special tokens inserted before the context and ``--infix-len`` l_i
  special tokens inserted after it (the LoRA authors' data loader layout: prefix, context, infix, completion).

Both keep the model a ``GPT2LMHeadModel``: ``model.transformer`` becomes a ``GPT2Model`` subclass whose forward
(1) on the first call (no cache, or an empty one) places the prefix in the KV cache (PreLayer) or in the input
(PreEmbed), (2) always prepends l_p ones (and appends l_i ones on later calls) to the caller's attention mask,
which covers only real tokens, and (3) shifts the caller's explicit position ids as if the special tokens were
real ones: real tokens start at position l_p (Li & Liang's code, which lets GPT-2 count the prefix in the cache;
the LoRA authors' loader for PreEmbed), and tokens after the infix move on by l_i. PreEmbed returns hidden states
aligned with the caller's input: position i holds the state that predicts input i + 1 (for the context's last
token that is the last infix token's state), so the trainer's loss mask and the beam search's "last position"
need no change. The context ends at the first attended end-of-text id (50256, which the encoder appends to every
context); decoding prompts must be left-padded (as the beam search does) so that the infix lands at their end.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache
from transformers.models.gpt2.modeling_gpt2 import GPT2Model

from nlg.methods._common import MethodError, check_state, copy_into, model_device_dtype
from nlg.methods.registry import Method
from nlg.tokenizer import EOS_ID

DEFAULT_MID_DIM = 512  # Li & Liang's --mid_dim for table-to-text
KV_KEY = "transformer.prefix_tuning.key_values"


class PrefixLayerEncoder(nn.Module):
    """Li & Liang's reparameterisation: rows of an embedding -> MLP -> every layer's keys and values."""

    def __init__(self, n_layer: int, n_head: int, d: int, prefix_len: int, mid_dim: int, device=None, dtype=None):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.n_layer, self.n_head, self.d, self.prefix_len = n_layer, n_head, d, prefix_len
        self.embedding = nn.Embedding(prefix_len, d, **kw)
        self.mlp = nn.Sequential(nn.Linear(d, mid_dim, **kw), nn.Tanh(), nn.Linear(mid_dim, 2 * n_layer * d, **kw))

    def key_values(self) -> torch.Tensor:
        """(L, 2, heads, l_p, head_dim): index [l, 0] is layer l's keys, [l, 1] its values."""
        out = self.mlp(self.embedding.weight)  # (l_p, 2·L·d), laid out per layer as (key, value)
        out = out.view(self.prefix_len, self.n_layer, 2, self.n_head, self.d // self.n_head)
        return out.permute(1, 2, 3, 0, 4)


class PlainPrefix(nn.Module):
    """The prefixes themselves, as saved after training and used for decoding."""

    def __init__(self, key_values: torch.Tensor):
        super().__init__()
        self.register_buffer("key_values", key_values)


class PrefixEmbeddings(nn.Module):
    """Trainable input embeddings of l_p prefix and l_i infix special tokens."""

    def __init__(self, wte: nn.Embedding, prefix_len: int, infix_len: int):
        super().__init__()
        # Start from the embeddings of randomly drawn vocabulary tokens, so the special tokens begin inside the
        # distribution the frozen model has seen (Li & Liang found real-word initialisation helps).
        n = prefix_len + infix_len
        ids = torch.randint(0, wte.num_embeddings, (n,))
        rows = wte.weight.detach()[ids.to(wte.weight.device)].clone()
        self.prefix_embeds = nn.Parameter(rows[:prefix_len])
        self.infix_embeds = nn.Parameter(rows[prefix_len:]) if infix_len else None


class PrefixGPT2Model(GPT2Model):
    """GPT-2 with prefixes in the cache (PreLayer) or special tokens in the input (PreEmbed); see the module doc."""

    prefix_tuning: nn.Module
    prefix_kind: str  # "layer" | "embed"
    prefix_len: int
    infix_len: int
    prefix_mid_dim: int

    def _kv_for_cache(self, dtype: torch.dtype) -> torch.Tensor:
        spec = self.prefix_tuning
        kv = spec.key_values() if isinstance(spec, PrefixLayerEncoder) else spec.key_values
        return kv.to(dtype)

    def _compute_dtype(self, device: torch.device) -> torch.dtype:
        if torch.is_autocast_enabled(device.type):
            return torch.get_autocast_dtype(device.type)
        return self.wte.weight.dtype

    def forward(self, input_ids=None, past_key_values=None, attention_mask=None, token_type_ids=None,
                position_ids=None, inputs_embeds=None, use_cache=None, **kwargs):
        if token_type_ids is not None or kwargs.get("encoder_hidden_states") is not None:
            raise MethodError("prefix tuning supports neither token_type_ids nor cross-attention inputs")
        embeds = inputs_embeds if inputs_embeds is not None else self.wte(input_ids)
        batch, n = embeds.shape[:2]
        device = embeds.device
        l_p, l_i = self.prefix_len, self.infix_len
        past_len = past_key_values.get_seq_length() if past_key_values is not None else 0
        out_index = None
        if past_len == 0:
            cache = past_key_values if past_key_values is not None else DynamicCache(config=self.config)
            mask = attention_mask if attention_mask is not None else torch.ones(batch, n, dtype=torch.long, device=device)
            pos = position_ids if position_ids is not None else torch.arange(n, device=device).unsqueeze(0)
            pos = pos.expand(batch, n)
            if self.prefix_kind == "layer":
                kv = self._kv_for_cache(self._compute_dtype(device))
                for layer in range(kv.shape[0]):
                    keys = kv[layer, 0].unsqueeze(0).expand(batch, -1, -1, -1)
                    values = kv[layer, 1].unsqueeze(0).expand(batch, -1, -1, -1)
                    cache.update(keys, values, layer)
                mask = torch.cat([mask.new_ones(batch, l_p), mask], dim=1)
                pos = pos + l_p
            else:
                embeds, mask, pos, out_index = insert_special_tokens(
                    self.prefix_tuning, embeds, mask, pos, input_ids, l_p, l_i)
        else:
            cache = past_key_values
            if attention_mask is None:
                mask = torch.ones(batch, past_len + n, dtype=torch.long, device=device)
            else:
                mask = torch.cat([attention_mask.new_ones(batch, l_p), attention_mask,
                                  attention_mask.new_ones(batch, l_i)], dim=1)
            if position_ids is None:
                pos = (past_len + torch.arange(n, device=device)).unsqueeze(0).expand(batch, n)
            else:
                pos = position_ids.expand(batch, n) + l_p + l_i
        out = super().forward(inputs_embeds=embeds, past_key_values=cache, attention_mask=mask,
                              position_ids=pos, use_cache=use_cache, **kwargs)
        if out_index is not None:
            hidden = out.last_hidden_state
            out.last_hidden_state = hidden.gather(1, out_index.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        return out


def context_end(input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per row, the index of the first attended end-of-text id (the context's end), else the last attended token."""
    attended = mask.bool()
    is_eos = (input_ids == EOS_ID) & attended
    n = input_ids.shape[1]
    last = n - 1 - attended.flip(1).int().argmax(1)
    return torch.where(is_eos.any(1), is_eos.int().argmax(1), last)


def insert_special_tokens(spec: PrefixEmbeddings, embeds, mask, pos, input_ids, l_p: int, l_i: int):
    """[prefix, x[:b+1], infix, x[b+1:]] with its mask and positions, and the gather index that re-aligns outputs."""
    batch, n, d = embeds.shape
    device = embeds.device
    if l_i:
        if input_ids is None:
            raise MethodError("prefix-embed with an infix needs input_ids to find where each context ends")
        b = context_end(input_ids, mask)
    else:
        b = torch.full((batch,), n - 1, device=device)
    b = b.unsqueeze(1)  # (B, 1)
    j = torch.arange(l_p + n + l_i, device=device).unsqueeze(0)  # slot in the expanded sequence
    k = j - l_p  # slot counted from the first real token
    in_prefix = j < l_p
    in_infix = (k > b) & (k <= b + l_i)
    src_x = torch.where(k <= b, k, k - l_i).clamp(0, n - 1)
    index = torch.where(in_prefix, n + j, torch.where(in_infix, n + l_p + (k - b - 1), src_x))
    parts = [embeds, spec.prefix_embeds.to(embeds.dtype).unsqueeze(0).expand(batch, -1, -1)]
    if l_i:
        parts.append(spec.infix_embeds.to(embeds.dtype).unsqueeze(0).expand(batch, -1, -1))
    bank = torch.cat(parts, dim=1)
    new_embeds = bank.gather(1, index.unsqueeze(-1).expand(-1, -1, d))
    new_mask = torch.cat([mask, mask.new_ones(batch, l_p + l_i)], dim=1).gather(1, index)
    pos_x = pos.gather(1, src_x) + l_p + l_i * (k > b)
    pos_b = pos.gather(1, b)
    new_pos = torch.where(in_prefix, j, torch.where(in_infix, pos_b + l_p + (k - b), pos_x))
    i = torch.arange(n, device=device).unsqueeze(0)
    out_index = l_p + i + l_i * (i >= b)
    return new_embeds, new_mask, new_pos, out_index


@dataclass(frozen=True)
class PrefixTuning(Method):
    """PreLayer (``kind`` "layer": prefixes in every layer's cache) or PreEmbed ("embed": special input tokens)."""

    kind: str = "layer"

    def _settings(self, cfg) -> tuple[int, int, int]:
        l_p, l_i = int(cfg.prefix_len), int(cfg.infix_len)
        mid = int(getattr(cfg, "prefix_mid_dim", DEFAULT_MID_DIM) or DEFAULT_MID_DIM)
        if l_p < 0 or l_i < 0:
            raise MethodError(f"--prefix-len and --infix-len must be >= 0, got {l_p} and {l_i}")
        if self.kind == "layer":
            if l_p <= 0:
                raise MethodError("prefix-layer needs --prefix-len > 0")
            if l_i:
                raise MethodError("prefix-layer takes no --infix-len: key/value-only infix positions would have no "
                                  "output to predict the first completion token from (the paper's GPT-2 PreLayer "
                                  "uses prefixes only); use prefix-embed for an infix")
        elif l_p + l_i <= 0:
            raise MethodError("prefix-embed needs --prefix-len + --infix-len > 0")
        return l_p, l_i, mid

    def _transformer(self, model: nn.Module) -> PrefixGPT2Model:
        t = model.transformer
        if not isinstance(t, PrefixGPT2Model):
            raise MethodError("the model has no prefixes: call apply() first")
        if t.prefix_kind != self.kind:
            raise MethodError(f"the model has prefix-{t.prefix_kind} prefixes, not {self.name}'s")
        return t

    def apply(self, model: nn.Module, cfg) -> nn.Module:
        """Freeze GPT-2 and add the prefix parameters (``--prefix-len``, ``--infix-len``, ``--prefix-mid-dim``)."""
        l_p, l_i, mid = self._settings(cfg)
        t = model.transformer
        if isinstance(t, PrefixGPT2Model):
            raise MethodError("the model already has prefixes: apply() was called twice")
        model.requires_grad_(False)
        device, dtype = model_device_dtype(model)
        c = model.config
        t.__class__ = PrefixGPT2Model
        t.prefix_len, t.infix_len, t.prefix_mid_dim = l_p, l_i, mid
        t.prefix_kind = self.kind
        if self.kind == "layer":
            t.prefix_tuning = PrefixLayerEncoder(c.n_layer, c.n_head, c.n_embd, l_p, mid, device, dtype)
        else:
            t.prefix_tuning = PrefixEmbeddings(t.wte, l_p, l_i)
        return model

    def trainable_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """What the optimizer updates and a checkpoint must hold to resume: PreLayer's embedding + MLP (or its plain
        prefixes once collapsed), PreEmbed's special-token embeddings."""
        t = self._transformer(model)
        if isinstance(t.prefix_tuning, PlainPrefix):
            return {KV_KEY: t.prefix_tuning.key_values.detach()}
        return {f"transformer.prefix_tuning.{k}": v.detach() for k, v in t.prefix_tuning.named_parameters()}

    def export_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """What the final adapter file holds: PreLayer's plain prefixes (the MLP is dropped), else
        ``trainable_state``."""
        t = self._transformer(model)
        if self.kind == "layer":
            with torch.no_grad():
                return {KV_KEY: t._kv_for_cache(t.wte.weight.dtype).detach().contiguous()}
        return self.trainable_state(model)

    def load_state(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Load a training-form state (PreLayer MLP) or plain prefixes; plain prefixes switch the model to decoding
        form."""
        t = self._transformer(model)
        c = model.config
        device, dtype = model_device_dtype(model)
        if self.kind == "layer" and KV_KEY in state:
            shape = (c.n_layer, 2, c.n_head, t.prefix_len, c.n_embd // c.n_head)
            check_state({KV_KEY: torch.empty(shape, device="meta")}, state, "prefix-layer")
            t.prefix_tuning = PlainPrefix(state[KV_KEY].detach().to(device=device, dtype=dtype).clone())
            return
        if isinstance(t.prefix_tuning, PlainPrefix):  # back to the training form, then load its tensors
            t.prefix_tuning = PrefixLayerEncoder(c.n_layer, c.n_head, c.n_embd, t.prefix_len, t.prefix_mid_dim,
                                                 device, dtype).requires_grad_(True)
        expected = {f"transformer.prefix_tuning.{k}": v for k, v in t.prefix_tuning.named_parameters()}
        check_state(expected, state, self.name)
        copy_into(expected, state)

    def for_inference(self, model: nn.Module) -> nn.Module:
        """PreLayer: replace the MLP by the plain prefixes it produces. PreEmbed: unchanged. Both stay in the cache."""
        t = self._transformer(model)
        if self.kind == "layer" and isinstance(t.prefix_tuning, PrefixLayerEncoder):
            t.prefix_tuning = PlainPrefix(self.export_state(model)[KV_KEY])
        return model.eval()

    def paper_param_count(self, cfg, model_config) -> int:
        """PreLayer: L · d · (l_p + l_i); PreEmbed: d · (l_p + l_i) (paper Section 5.1). The PreLayer formula counts
        one d-vector per layer and position; the saved key/value prefixes hold two (2 · L · d · l_p)."""
        n = int(cfg.prefix_len) + int(cfg.infix_len)
        layers = model_config.n_layer if self.kind == "layer" else 1
        return layers * model_config.n_embd * n


PREFIX_LAYER = PrefixTuning("prefix-layer", hyper_params=("prefix_len", "infix_len"), kind="layer")
PREFIX_EMBED = PrefixTuning("prefix-embed", hyper_params=("prefix_len", "infix_len"), kind="embed")
