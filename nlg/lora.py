"""LoRA (Hu et al., 2022) for transformers' ``GPT2LMHeadModel``, written here rather than taken from peft/loralib.

GPT-2 stores its projections as ``Conv1D`` (``y = x @ W + b`` with ``W`` of shape in × out); the attention's
``c_attn`` fuses q, k and v into one in × 3d matrix. ``LoRAConv1D`` replaces such a module in place, keeps its
``weight``/``bias`` Parameters (same names, frozen) and adds ``h = x W + b + (alpha / r) · B A dropout(x)`` on a
chosen subset of the equal output slices. The layout is the authors' ``MergedLinear`` (enable_lora over the
slices): ``lora_A`` is (G·r) × in, one r-row block per adapted slice, ``lora_B`` is (G·out_slice) × r, one block per
slice, and slice g's update is ``B_g @ A_g``. For the paper's q,v that is ``lora_A`` 2r × d and ``lora_B`` 2d × r,
exactly the authors' checkpoint tensors. The forward pass computes ``dropout(x) @ A^T`` for all slices in one
matmul, then ``x W``, onto which one thin in-place matmul adds the B blocks (in the q and v columns) together with
the bias: no per-slice work and a single pass over the output for bias and update.

Targets: ``q``, ``k``, ``v`` (slices of ``attn.c_attn``), ``o`` (``attn.c_proj``), ``c_fc`` and ``c_proj`` (the
MLP's; aliases ``fc``, ``mlp.c_fc``, ``mlp_proj``, ``mlp.c_proj``), and ``wte``: the token embedding, with loralib's
``Embedding`` update (``LoRAEmbedding``). GPT-2 ties its LM head to that matrix, so the head reads the same
``W + ΔW`` (``LoRATiedHead``) and merging folds ΔW into the one shared matrix. The paper adapts attention only;
``wte`` is for a base model that never saw a task's words (one pretrained here on a small corpus).

Initialisation follows the authors' code: A Kaiming-uniform (a = sqrt 5, fan-in = in features, as for
``nn.Linear``), B = 0. Their ``GPT2Model`` deep-copies one block into every layer, so every layer starts from the
*same* A; ``same_init_across_layers=True`` (the default) reproduces that, ``False`` draws A per layer.
"""
from __future__ import annotations

import math
from typing import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

ATTN_SLICES = {"q": 0, "k": 1, "v": 2}
TARGET_ORDER = ("q", "k", "v", "o", "c_fc", "c_proj", "wte")
_ALIASES = {
    "query": "q", "key": "k", "value": "v", "attn.c_proj": "o", "out": "o",
    "fc": "c_fc", "mlp.c_fc": "c_fc", "mlp_proj": "c_proj", "mlp.c_proj": "c_proj",
    "embedding": "wte", "transformer.wte": "wte",
}


class LoRAError(ValueError):
    """A LoRA request that does not fit the model (bad rank, unknown target, shape mismatch)."""


def normalize_targets(targets: Iterable[str] | str) -> tuple[str, ...]:
    """Canonical, ordered, de-duplicated target names; accepts "q,v" or an iterable, and the aliases above."""
    if isinstance(targets, str):
        targets = [t for t in targets.split(",")]
    out = set()
    for raw in targets:
        name = raw.strip().lower()
        if not name:
            continue
        name = _ALIASES.get(name, name)
        if name not in TARGET_ORDER:
            raise LoRAError(f"unknown LoRA target {raw!r}; expected any of {', '.join(TARGET_ORDER)}")
        out.add(name)
    if not out:
        raise LoRAError(f"no LoRA target given (expected any of {','.join(TARGET_ORDER)})")
    return tuple(t for t in TARGET_ORDER if t in out)


class _Mergeable:
    """``merge``/``unmerge`` for a LoRA layer whose ``delta_weight()`` is laid out like its ``weight``."""

    @torch.no_grad()
    def merge(self) -> None:
        """W += ΔW; the forward pass is then the plain module's (for wte: the matrix the tied head shares too)."""
        if not self.merged:
            self.weight.add_(self.delta_weight().to(self.weight.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W -= ΔW: back to the frozen base weights (up to float rounding)."""
        if self.merged:
            self.weight.sub_(self.delta_weight().to(self.weight.dtype))
            self.merged = False


class LoRAConv1D(_Mergeable, Conv1D):
    """A GPT-2 ``Conv1D`` plus a low-rank update on some of its ``n_slices`` equal output slices.

    It *is* a Conv1D (same ``weight``/``bias`` Parameters and names, ``nf``/``nx``), so the rest of the model and
    its state dict keep their shape; ``lora_A``/``lora_B`` are the only new parameters.
    """

    def __init__(
        self,
        base: Conv1D,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        n_slices: int = 1,
        slices: Iterable[int] = (0,),
    ):
        nn.Module.__init__(self)
        if not isinstance(rank, int) or rank <= 0:
            raise LoRAError(f"LoRA rank must be a positive integer, got {rank!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise LoRAError(f"LoRA dropout must be in [0, 1), got {dropout!r}")
        self.nf, self.nx = base.nf, base.nx
        self.weight = base.weight
        self.bias = base.bias
        slices = tuple(sorted(set(int(s) for s in slices)))
        if self.nf % n_slices or not slices or slices[0] < 0 or slices[-1] >= n_slices:
            raise LoRAError(f"bad LoRA slices {slices} for {n_slices} slices of {self.nf} outputs")
        self.n_slices, self.slices = n_slices, slices
        self.slice_size = self.nf // n_slices
        # adapted slices always form an arithmetic progression when n_slices <= 3, so a strided view reaches them
        step = slices[1] - slices[0] if len(slices) > 1 else 1
        if any(b - a != step for a, b in zip(slices, slices[1:])):
            raise LoRAError(f"LoRA slices {slices} are not evenly spaced")
        self._slice_view = slice(slices[0], slices[-1] + 1, step)
        self.rank, self.alpha = rank, float(alpha)
        self.scaling = self.alpha / rank
        groups = len(slices)
        self.lora_A = nn.Parameter(self.weight.new_empty(groups * rank, self.nx))
        self.lora_B = nn.Parameter(self.weight.new_zeros(groups * self.slice_size, rank))
        self.lora_dropout = nn.Dropout(p=float(dropout)) if dropout > 0 else nn.Identity()
        self.merged = False
        self.reset_lora_parameters()

    @property
    def groups(self) -> int:
        return len(self.slices)

    def reset_lora_parameters(self) -> None:
        """A like ``nn.Linear``'s weight (Kaiming-uniform, a = sqrt 5), B = 0: the model starts unchanged."""
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    def __repr__(self) -> str:
        return (f"LoRAConv1D(nf={self.nf}, nx={self.nx}, rank={self.rank}, alpha={self.alpha:g}, "
                f"slices={self.slices}/{self.n_slices}, merged={self.merged})")

    def delta_weight(self) -> torch.Tensor:
        """scaling · (B A) laid out like ``weight`` (in × out), zero outside the adapted slices."""
        g, r, d = self.groups, self.rank, self.slice_size
        a = self.lora_A.view(g, r, self.nx)
        b = self.lora_B.view(g, d, r)
        per_slice = torch.bmm(a.transpose(1, 2), b.transpose(1, 2)) * self.scaling  # (g, nx, d) = A_g^T B_g^T
        delta = self.weight.new_zeros(self.nx, self.n_slices, d)
        delta[:, self._slice_view, :] = per_slice.transpose(0, 1).to(delta.dtype)
        return delta.view(self.nx, self.nf)

    def _b_full(self) -> torch.Tensor:
        """B^T laid out over all output columns: (G·r) × nf, block g in slice s_g's columns, zero elsewhere."""
        g, d = self.groups, self.slice_size
        bt = self.lora_B.view(g, d, self.rank).transpose(1, 2)  # (G, r, d)
        if self.n_slices == 1:
            return bt[0]
        cols = torch.block_diag(*bt.unbind(0)).split(d, dim=1)  # G column blocks of (G·r) × d
        zero = bt.new_zeros(g * self.rank, d)
        return torch.cat([cols[self.slices.index(s)] if s in self.slices else zero for s in range(self.n_slices)],
                         dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """loralib's ``MergedLinear``: ``x W + b + (dropout(x) A^T) B^T · alpha / r`` (nlg.kernels has the fast one)."""
        if self.merged and self.training and torch.is_grad_enabled() and self.lora_A.requires_grad:
            raise RuntimeError("LoRA weights are merged into W: call nlg.lora.unmerge_lora(model) before training")
        size_out = x.shape[:-1] + (self.nf,)
        x2 = x.reshape(-1, self.nx)
        result = torch.addmm(self.bias, x2, self.weight)
        if self.merged:
            return result.view(size_out)
        update = (self.lora_dropout(x2) @ self.lora_A.t()) @ self._b_full()
        return (result + update * self.scaling).view(size_out)

    def to_conv1d(self) -> Conv1D:
        """A plain Conv1D sharing this module's weight and bias (merge first to keep the update)."""
        with torch.device("meta"):
            conv = Conv1D(self.nf, self.nx)
        conv.weight, conv.bias = self.weight, self.bias
        return conv


class LoRAEmbedding(_Mergeable, nn.Embedding):
    """GPT-2's token embedding plus loralib's ``Embedding`` update: ``ΔW = (B A)^T · alpha / r`` (vocab × d), with
    ``lora_A`` r × vocab (zeros) and ``lora_B`` d × r (standard normal), as loralib initialises them. A lookup
    adds row ``ΔW[id]``; no dropout on ids (loralib has none there either). It keeps the base ``weight``
    Parameter (frozen, same name), so the tied LM head still shares it."""

    def __init__(self, base: nn.Embedding, rank: int, alpha: float):
        nn.Module.__init__(self)
        if not isinstance(rank, int) or rank <= 0:
            raise LoRAError(f"LoRA rank must be a positive integer, got {rank!r}")
        self.num_embeddings, self.embedding_dim = base.num_embeddings, base.embedding_dim
        self.padding_idx, self.max_norm, self.norm_type = base.padding_idx, base.max_norm, base.norm_type
        self.scale_grad_by_freq, self.sparse = base.scale_grad_by_freq, base.sparse
        self.weight = base.weight
        self.rank, self.alpha = rank, float(alpha)
        self.scaling = self.alpha / rank
        self.lora_A = nn.Parameter(self.weight.new_zeros(rank, self.num_embeddings))
        self.lora_B = nn.Parameter(self.weight.new_empty(self.embedding_dim, rank))
        nn.init.normal_(self.lora_B)
        self.merged = False

    def __repr__(self) -> str:
        return (f"LoRAEmbedding({self.num_embeddings}, {self.embedding_dim}, rank={self.rank}, "
                f"alpha={self.alpha:g}, merged={self.merged})")

    def delta_weight(self) -> torch.Tensor:
        """scaling · (B A)^T, laid out like ``weight`` (vocab × d)."""
        return (self.lora_B @ self.lora_A).t() * self.scaling

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = F.embedding(ids, self.weight)
        if self.merged:
            return out
        return out + (F.embedding(ids, self.lora_A.t()) @ self.lora_B.t()) * self.scaling

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits against the adapted tied matrix: ``h (W + ΔW)^T = h W^T + scaling · (h B) A``."""
        logits = F.linear(hidden, self.weight)
        if self.merged:
            return logits
        return logits + ((hidden @ self.lora_B) @ self.lora_A) * self.scaling

    def to_embedding(self) -> nn.Embedding:
        """A plain ``nn.Embedding`` sharing this module's weight (merge first to keep the update)."""
        with torch.device("meta"):
            plain = nn.Embedding(self.num_embeddings, self.embedding_dim, padding_idx=self.padding_idx)
        plain.weight = self.weight
        return plain


class LoRATiedHead(nn.Linear):
    """GPT-2's LM head (tied to ``wte``) reading the adapted matrix of a ``LoRAEmbedding``; it owns no tensors."""

    def __init__(self, base: nn.Linear, embedding: LoRAEmbedding):
        nn.Module.__init__(self)
        if base.weight is not embedding.weight or base.bias is not None:
            raise LoRAError("LoRA on wte needs GPT-2's tied, bias-free LM head (lm_head.weight is wte.weight)")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, None
        self.__dict__["embedding"] = embedding  # not a submodule: its tensors are transformer.wte's

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.embedding.head(hidden)

    def to_linear(self) -> nn.Linear:
        with torch.device("meta"):
            plain = nn.Linear(self.in_features, self.out_features, bias=False)
        plain.weight = self.weight
        return plain


LORA_LAYERS = (LoRAConv1D, LoRAEmbedding)


def _layer_sites(block: nn.Module, targets: tuple[str, ...]) -> list[tuple[nn.Module, str, int, tuple[int, ...]]]:
    """(parent, attribute, n_slices, slices) for each module of one GPT-2 block that the targets adapt."""
    sites = []
    attn_slices = tuple(ATTN_SLICES[t] for t in targets if t in ATTN_SLICES)
    if attn_slices:
        sites.append((block.attn, "c_attn", 3, attn_slices))
    if "o" in targets:
        sites.append((block.attn, "c_proj", 1, (0,)))
    if "c_fc" in targets:
        sites.append((block.mlp, "c_fc", 1, (0,)))
    if "c_proj" in targets:
        sites.append((block.mlp, "c_proj", 1, (0,)))
    return sites


def inject_lora(
    model: nn.Module,
    rank: int = 4,
    alpha: float = 32.0,
    dropout: float = 0.0,
    targets: Iterable[str] | str = ("q", "v"),
    same_init_across_layers: bool = True,
) -> nn.Module:
    """Freeze every parameter of a ``GPT2LMHeadModel`` and add LoRA to ``targets`` in every layer; returns it.

    With ``same_init_across_layers`` every layer's A starts equal to layer 0's, as in the authors' deep-copied blocks.
    """
    targets = normalize_targets(targets)
    if not isinstance(rank, int) or isinstance(rank, bool) or rank <= 0:
        raise LoRAError(f"LoRA rank must be a positive integer, got {rank!r}")
    if any(isinstance(m, LORA_LAYERS) for m in model.modules()):
        raise LoRAError("the model already has LoRA layers")
    for p in model.parameters():
        p.requires_grad_(False)
    first: dict[tuple[str, str], LoRAConv1D] = {}
    for block in model.transformer.h:
        for parent, attr, n_slices, slices in _layer_sites(block, targets):
            base = getattr(parent, attr)
            if not isinstance(base, Conv1D):
                raise LoRAError(f"{type(parent).__name__}.{attr} is {type(base).__name__}, not a GPT-2 Conv1D")
            layer = LoRAConv1D(base, rank, alpha, dropout, n_slices, slices).train(base.training)
            key = (type(parent).__name__, attr)
            if same_init_across_layers:
                if key in first:
                    with torch.no_grad():
                        layer.lora_A.copy_(first[key].lora_A)
                else:
                    first[key] = layer
            setattr(parent, attr, layer)
    if "wte" in targets:
        inject_embedding_lora(model, rank, alpha)
    return model


def inject_embedding_lora(model: nn.Module, rank: int, alpha: float) -> nn.Module:
    """LoRA on the tied token embedding only, leaving every other parameter's ``requires_grad`` as it is (so a
    method that trains its own modules can add it: ``--wte-rank``); returns the model."""
    tr = model.transformer
    if isinstance(tr.wte, LoRAEmbedding):
        raise LoRAError("the model's token embedding already has LoRA")
    if model.lm_head.weight is not tr.wte.weight:
        raise LoRAError("LoRA on wte needs GPT-2's tied LM head (lm_head.weight is transformer.wte.weight)")
    tr.wte = LoRAEmbedding(tr.wte, rank, alpha)
    model.lm_head = LoRATiedHead(model.lm_head, tr.wte)
    return model


def lora_modules(model: nn.Module) -> Iterator[tuple[str, LoRAConv1D | LoRAEmbedding]]:
    """(qualified name, module) for every LoRA layer, in model order."""
    for name, module in model.named_modules():
        if isinstance(module, LORA_LAYERS):
            yield name, module


def lora_settings(model: nn.Module) -> dict:
    """rank, alpha, dropout and targets of an injected model (checked to be uniform)."""
    found = list(lora_modules(model))
    if not found:
        raise LoRAError("the model has no LoRA layers")
    targets: set[str] = set()
    for name, m in found:
        if name.endswith("attn.c_attn"):
            targets.update(t for t, s in ATTN_SLICES.items() if s in m.slices)
        elif name.endswith("attn.c_proj"):
            targets.add("o")
        elif name.endswith("mlp.c_fc"):
            targets.add("c_fc")
        elif name.endswith("mlp.c_proj"):
            targets.add("c_proj")
        elif isinstance(m, LoRAEmbedding):
            targets.add("wte")
    ranks = {m.rank for _, m in found}
    alphas = {m.alpha for _, m in found}
    if len(ranks) != 1 or len(alphas) != 1:
        raise LoRAError(f"LoRA layers have mixed ranks {sorted(ranks)} / alphas {sorted(alphas)}")
    drop = next((m.lora_dropout for _, m in found if isinstance(m, LoRAConv1D)), None)
    return {
        "rank": ranks.pop(),
        "alpha": alphas.pop(),
        "dropout": drop.p if isinstance(drop, nn.Dropout) else 0.0,
        "targets": tuple(t for t in TARGET_ORDER if t in targets),
    }


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA update into its base weight (no output change, no added latency); returns the model."""
    for _, m in lora_modules(model):
        m.merge()
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Undo ``merge_lora``; returns the model."""
    for _, m in lora_modules(model):
        m.unmerge()
    return model


def strip_lora(model: nn.Module) -> nn.Module:
    """Merge, then put plain Conv1D modules back: a vanilla GPT-2 carrying the adapted weights."""
    merge_lora(model)
    for name, m in list(lora_modules(model)):
        parent_name, _, attr = name.rpartition(".")
        plain = m.to_embedding() if isinstance(m, LoRAEmbedding) else m.to_conv1d()
        setattr(model.get_submodule(parent_name), attr, plain)
    if isinstance(getattr(model, "lm_head", None), LoRATiedHead):
        model.lm_head = model.lm_head.to_linear()
    return model


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the LoRA tensors (``...c_attn.lora_A`` / ``lora_B``), detached, keyed like ``model.state_dict()``."""
    return {
        f"{name}.{p}": getattr(m, p).detach()
        for name, m in lora_modules(model)
        for p in ("lora_A", "lora_B")
    }


def count_trainable(model: nn.Module) -> int:
    """Number of parameters that receive gradients (shared tensors counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
