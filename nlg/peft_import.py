"""A PEFT LoRA folder trained elsewhere on GPT-2 -> this project's LoRA tensors, so the paper's beam search can
decode it (``nlg.generate --adapter PEFT_FOLDER``).

PEFT adapts GPT-2's ``Conv1D`` modules (``fan_in_fan_out``) with ``lora_A.weight`` (r × in) and ``lora_B.weight``
(out × r) at scale ``alpha / r`` (``alpha / sqrt(r)`` with rsLoRA), per module (``rank_pattern``,
``alpha_pattern``). Ours (nlg.lora) holds one rank and alpha for every adapted module, and on the fused ``c_attn``
one block per adapted slice of q, k, v (A_g: r × d, B_g: d × r). A PEFT ``c_attn`` update is written in that layout
exactly:

- *block form*: when B is zero outside the slices it adapts and each adapted slice uses its own r columns (what
  nlg.adapter_io's export writes: q,v as one rank-2r LoRA), A_g and B_g are those blocks and alpha is divided by
  the number of slices (so ``alpha / r`` is unchanged): ours -> PEFT -> ours gives back the same tensors;
- *general form*: otherwise every slice of q, k, v gets the whole A and its rows of B (rank r on each).

Other modules (``attn.c_proj`` -> o, ``mlp.c_fc`` -> c_fc, ``mlp.c_proj`` -> c_proj) map one to one. Ranks that
differ between modules are padded with zero rows/columns (the product is unchanged) and scales that differ are
folded into B (one extra multiplication: equal to float rounding, not bit for bit); a module adapted in only some
layers gets B = 0 in the others. What cannot be written this way is refused with the reason: DoRA, trained biases,
``modules_to_save``, LoRA on the embedding or the head, and anything that is not GPT-2.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from nlg.io_utils import InputFileError

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
MODULES = {"attn.c_attn": "qkv", "attn.c_proj": "o", "mlp.c_fc": "c_fc", "mlp.c_proj": "c_proj"}
_KEY = re.compile(r"^(?:base_model\.model\.)?(?:transformer\.)?h\.(\d+)\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|"
                  r"mlp\.c_proj)\.lora_([AB])(?:\.default)?\.weight$")


@dataclass
class PeftLoRA:
    """What a PEFT folder holds, in this project's terms."""

    state: dict[str, torch.Tensor]  # our keys: transformer.h.<i>.<module>.lora_A / lora_B
    rank: int
    alpha: float
    targets: tuple[str, ...]
    dropout: float
    base_model: str | None
    n_layer: int
    n_embd: int
    exact: bool  # True when no scale had to be folded into B


def is_peft_folder(folder: Path) -> bool:
    return (folder / PEFT_CONFIG).is_file() and any((folder / w).is_file() for w in PEFT_WEIGHTS)


def _pattern_value(patterns: dict, module: str, default):
    """PEFT's rank_pattern / alpha_pattern lookup: a key matches a module name ending in it."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?{key}$", module):
            return value
    return default


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    path = folder / PEFT_WEIGHTS[0]
    if path.is_file():
        return load_file(str(path))
    return torch.load(folder / PEFT_WEIGHTS[1], map_location="cpu", weights_only=True)


def read_peft_lora(folder: str | Path) -> PeftLoRA:
    folder = Path(folder)
    config_path = folder / PEFT_CONFIG
    try:
        cfg = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputFileError(config_path, f"not a readable PEFT config ({exc})") from None
    refuse = lambda why: InputFileError(config_path, f"this PEFT adapter cannot be represented here: {why}")  # noqa: E731
    if cfg.get("peft_type") != "LORA":
        raise refuse(f"peft_type {cfg.get('peft_type')!r} (only LoRA is read)")
    if cfg.get("use_dora"):
        raise refuse("DoRA rescales the weight's columns, which a low-rank update cannot express")
    if cfg.get("bias", "none") != "none":
        raise refuse(f"bias={cfg['bias']!r}: trained biases are not LoRA tensors")
    if cfg.get("modules_to_save"):
        raise refuse(f"modules_to_save {cfg['modules_to_save']} (fully trained modules)")
    weights = _read_weights(folder)
    parts: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, value in weights.items():
        m = _KEY.match(key)
        if not m:
            raise refuse(f"tensor {key!r} is not a LoRA tensor of a GPT-2 block (embedding, head or another model)")
        parts.setdefault((int(m.group(1)), m.group(2)), {})[m.group(3)] = value.detach().float()
    if not parts:
        raise refuse("no LoRA tensor in the weights file")
    layers = max(i for i, _ in parts) + 1
    rslora = bool(cfg.get("use_rslora"))
    default_alpha = float(cfg.get("lora_alpha", 8))

    def scale_of(module: str, rank: int) -> float:
        alpha = float(_pattern_value(cfg.get("alpha_pattern"), module, default_alpha))
        return alpha / math.sqrt(rank) if rslora else alpha / rank

    blocks: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor, float]] = {}  # (layer, target) -> A, B, scale
    n_embd = None
    qkv_forms = []
    for (layer, module), ab in sorted(parts.items()):
        if set(ab) != {"A", "B"}:
            raise refuse(f"layer {layer} {module}: lora_A and lora_B must both be present")
        a, b = ab["A"], ab["B"]
        rank = a.shape[0]
        if b.shape[1] != rank or rank != int(_pattern_value(cfg.get("rank_pattern"), module, rank)):
            raise refuse(f"layer {layer} {module}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} do not pair")
        scale = scale_of(module, rank)
        if module == "attn.c_attn":
            d = b.shape[0] // 3
            n_embd = d
            qkv_forms.append((layer, a, b.view(3, d, rank), scale))
        else:
            blocks[(layer, MODULES[module])] = (a, b, scale)
    if n_embd is None:
        n_embd = next(a.shape[1] for (_, mod), (a, _, _) in blocks.items() if mod != "c_proj")
    # c_attn: block form when it holds for every layer (see the module docstring), else the general form
    adapted = sorted({s for _, _, b, _ in qkv_forms for s in range(3) if bool(b[s].any())})
    block = bool(adapted) and all(b.shape[2] % len(adapted) == 0 for _, _, b, _ in qkv_forms)
    if block:
        for _, _, b, _ in qkv_forms:
            r = b.shape[2] // len(adapted)
            for s in range(3):
                if s not in adapted:
                    block &= not bool(b[s].any())
                    continue
                own = adapted.index(s)
                block &= all(not bool(b[s][:, c * r:(c + 1) * r].any()) for c in range(len(adapted)) if c != own)
    for layer, a, b, scale in qkv_forms:
        rank = b.shape[2]
        if block:
            r = rank // len(adapted)
            for g, s in enumerate(adapted):
                t = "qkv"[s]
                blocks[(layer, t)] = (a[g * r:(g + 1) * r], b[s][:, g * r:(g + 1) * r], scale)
        else:
            for s in range(3):
                blocks[(layer, "qkv"[s])] = (a, b[s], scale)
    targets = tuple(t for t in ("q", "k", "v", "o", "c_fc", "c_proj") if any(k[1] == t for k in blocks))
    rank = max(a.shape[0] for a, _, _ in blocks.values())
    first = next(iter(blocks.values()))
    scale = first[2]
    exact = all(math.isclose(s, scale, rel_tol=0, abs_tol=0) for _, _, s in blocks.values())
    state: dict[str, torch.Tensor] = {}
    attn_targets = [t for t in ("q", "k", "v") if t in targets]
    for layer in range(layers):
        qkv_a, qkv_b = [], []
        for t in targets:
            a, b, s = blocks.get((layer, t), (None, None, scale))
            if a is None:  # not adapted in this layer: B = 0 gives no update
                ref_a, ref_b, _ = next(v for k, v in blocks.items() if k[1] == t)
                a, b = torch.zeros(rank, ref_a.shape[1]), torch.zeros(ref_b.shape[0], rank)
            pad = rank - a.shape[0]
            if pad:  # zero rows of A / columns of B: the same product at the common rank
                a = torch.cat((a, a.new_zeros(pad, a.shape[1])))
                b = torch.cat((b, b.new_zeros(b.shape[0], pad)), 1)
            if s != scale:
                b = b * (s / scale)
            if t in attn_targets:
                qkv_a.append(a)
                qkv_b.append(b)
            else:
                module = {"o": "attn.c_proj", "c_fc": "mlp.c_fc", "c_proj": "mlp.c_proj"}[t]
                state[f"transformer.h.{layer}.{module}.lora_A"] = a.contiguous()
                state[f"transformer.h.{layer}.{module}.lora_B"] = b.contiguous()
        if qkv_a:
            state[f"transformer.h.{layer}.attn.c_attn.lora_A"] = torch.cat(qkv_a).contiguous()
            state[f"transformer.h.{layer}.attn.c_attn.lora_B"] = torch.cat(qkv_b).contiguous()
    return PeftLoRA(state=state, rank=rank, alpha=scale * rank, targets=targets,
                    dropout=float(cfg.get("lora_dropout", 0.0)), base_model=cfg.get("base_model_name_or_path"),
                    n_layer=layers, n_embd=n_embd, exact=exact)
