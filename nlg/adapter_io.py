"""Adapter files: save only what was trained, load it back onto a base model, export to PEFT, import the authors'.

Our adapter folder (any method, via the method contract's ``trainable_state``/``load_state``)::

    adapter.safetensors    the trained tensors, keyed like model.state_dict() (LoRA: ...attn.c_attn.lora_A / lora_B)
    adapter_config.json    {"format": "nlg-adapter", "format_version": 1, "method", "base_model",
                            "model_shape": {n_layer, n_embd, n_head, n_positions, vocab_size},
                            "hyper_params": {the method's own settings}, "train_config": {every TrainConfig field},
                            "random_model", "num_params", "tensors",
                            "checkpoint" (written by training: which weights these are, see nlg.train --select-by:
                            {"selected": "best" | "last", "step", "epoch", "valid_loss", "select_by", "last_step",
                             "best_step", "best_valid_loss"})}

The PEFT export writes ``adapter_config.json`` + ``adapter_model.safetensors`` for ``peft.PeftModel.from_pretrained``:
LoRA on q and v of the fused ``c_attn`` becomes one rank-2r LoRA on ``c_attn`` whose B has zero k rows (alpha
doubled so alpha/r is unchanged). The authors' checkpoints (``torch.save({"model_state_dict": ...})`` from their
``gpt2_ft.py``; keys ``[module.]transformer.h.<i>.attn.c_attn.lora_A`` 2r × d, ``lora_B`` 2d × r) use exactly our
q,v layout; they do not record alpha, so it is an argument (the paper's 32).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from nlg.config import TrainConfig, field_value
from nlg.io_utils import InputFileError, atomic_group, atomic_open, cli_error, json_text, read_json_object, saving
from nlg.lora import lora_settings, normalize_targets
from nlg.methods import HYPER_PARAMS, get_method, method_for
from nlg.methods.registry import wte_rank_problem
from nlg.methods.prefix import KV_KEY
from nlg.models import CARDS, is_random_model, load_model
from nlg.peft_import import is_peft_folder, read_peft_lora
from nlg.run_folder import ADAPTER, ADAPTER_WEIGHTS, PEFT_ADAPTER

FORMAT = "nlg-adapter"
FORMAT_VERSION = 1
ADAPTER_FILE = ADAPTER_WEIGHTS
CONFIG_FILE = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"
PAPER_ALPHA = 32.0
SHAPE_KEYS = ("n_layer", "n_embd", "n_head")
# TrainConfig fields that belong to each method (the rest is optimisation and bookkeeping): each Method's own
# hyper_params, read through the registry
METHOD_FIELDS = HYPER_PARAMS
_AUTHORS_KEY = re.compile(r"^h\.(\d+)\.attn\.c_attn\.lora_([AB])$")


def _model_shape(model) -> dict:
    c = model.config
    return {"n_layer": c.n_layer, "n_embd": c.n_embd, "n_head": c.n_head,
            "n_positions": c.n_positions, "vocab_size": c.vocab_size}


def _unwrap(model):
    """The model inside a DistributedDataParallel / DataParallel wrapper (their keys gain "module.")."""
    while isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
        model = model.module
    return model


def _to_cpu_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def _write_pair(folder: Path, weights_name: str, state: dict[str, torch.Tensor], metadata: dict[str, str],
                config: dict, what: str) -> None:
    """Weights and config of one adapter folder, renamed into place together or not at all: a full disk leaves
    the previous pair, never new tensors beside an old config. Errors are one line naming the folder."""
    data = st_save(_to_cpu_state(state), metadata=metadata)
    had = (folder / weights_name).is_file()
    kept = f"the previous {what} is kept" if had else f"no {what} was written"
    with saving(folder, f"the {what}", kept):
        folder.mkdir(parents=True, exist_ok=True)
        # (both layouts, ours and PEFT's, name their config adapter_config.json)
        with atomic_group([folder / weights_name, folder / CONFIG_FILE], mode="wb") as (weights, conf):
            weights.write(data)
            conf.write(json_text(config).encode("utf-8"))


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise InputFileError(path, "no such file")
    try:
        return st_load(path.read_bytes())
    except Exception as exc:  # safetensors raises its own error types
        raise InputFileError(path, f"not a readable safetensors file ({exc})") from exc


# --------------------------------------------------------------------------------------------- our format


def save_adapter(model, cfg: TrainConfig, folder: str | Path, checkpoint: dict | None = None) -> Path:
    """Write the method's trained tensors and a JSON config describing how to rebuild the model; returns folder.
    ``checkpoint`` (training's record of which step's weights these are) goes into the config as is."""
    model = _unwrap(model)
    method = method_for(cfg)
    # a Method's export_state (prefix-layer: the plain prefixes); duck-typed stand-ins without one save what they train
    state = getattr(method, "export_state", method.trainable_state)(model)
    return write_adapter_folder(state, cfg, _model_shape(model), folder, checkpoint=checkpoint)


def write_adapter_folder(state: dict[str, torch.Tensor], cfg: TrainConfig, model_shape: dict,
                         folder: str | Path, checkpoint: dict | None = None) -> Path:
    """``adapter.safetensors`` + ``adapter_config.json`` (each written atomically) for tensors of any method."""
    folder = Path(folder)
    shape = dict(model_shape)
    card = CARDS.get(cfg.model)
    if card is not None:  # complete a partial shape (authors' files) from the card
        for key in SHAPE_KEYS:
            shape.setdefault(key, getattr(card, key))
    hyper = {name: getattr(cfg, name) for name in METHOD_FIELDS.get(cfg.method, ())}
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "method": cfg.method,
        "base_model": cfg.model,
        "random_model": is_random_model(cfg.model),
        "model_shape": shape,
        "hyper_params": {k: list(v) if isinstance(v, tuple) else v for k, v in hyper.items()},
        "train_config": json.loads(cfg.to_json()),
        "num_params": int(sum(t.numel() for t in state.values())),
        "tensors": {k: list(v.shape) for k, v in sorted(state.items())},
    }
    if checkpoint is not None:
        config["checkpoint"] = dict(checkpoint)
    _write_pair(folder, ADAPTER_FILE, state, {"format": FORMAT, "method": cfg.method}, config, "adapter")
    return folder


def _resolve(path: Path) -> tuple[str, Path]:
    """("ours", folder) or ("authors", file) for a run folder, an adapter folder, a file in it, or a .pt file."""
    if path.is_file():
        if path.name in (ADAPTER_FILE, CONFIG_FILE):
            return "ours", path.parent
        return "authors", path
    if path.is_dir():
        for folder in (path, path / ADAPTER):
            if (folder / CONFIG_FILE).is_file() and (folder / ADAPTER_FILE).is_file():
                return "ours", folder
        for folder in (path, path / PEFT_ADAPTER):
            if is_peft_folder(folder):
                return "peft", folder
        raise InputFileError(path, f"no {CONFIG_FILE} + {ADAPTER_FILE} here nor in {path / ADAPTER}")
    raise InputFileError(path, "no such file or folder")


def _check_shape(model, expected: dict, where: Path) -> None:
    have = _model_shape(model)
    bad = {k: (expected[k], have[k]) for k in SHAPE_KEYS if k in expected and expected[k] != have[k]}
    if bad:
        detail = ", ".join(f"{k}={want} in the adapter but {got} in the model" for k, (want, got) in bad.items())
        raise InputFileError(where, f"adapter does not fit the base model: {detail}")


def _apply_and_load(model, cfg: TrainConfig, state: dict[str, torch.Tensor], where: Path, config_path: Path):
    method = method_for(cfg)
    try:
        method.apply(model, cfg)
    except ValueError as exc:  # settings that pass the checks yet do not fit this model
        raise InputFileError(config_path, str(exc)) from exc
    try:
        method.load_state(model, state)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise InputFileError(where, str(exc)) from exc
    return model


@dataclass
class StoredAdapter:
    """What an adapter file holds, before any model is built."""

    state: dict[str, torch.Tensor]
    cfg: TrainConfig
    model_shape: dict  # n_layer / n_embd (/ n_head ...) the tensors were made for
    config_path: Path  # the file to name for config or shape problems
    weights_path: Path  # the file to name for tensor problems


def read_adapter(path: str | Path, base_model: str | None = None, lora_alpha: float = PAPER_ALPHA,
                 need_base: bool = True) -> StoredAdapter:
    """Read a run folder, an adapter folder, a PEFT LoRA folder or an authors' ``.pt`` without building a model.

    An authors' file names no base: it is ``base_model``, else the GPT-2 card of its shape; with
    ``need_base=False`` (a model is supplied) an unknown shape is recorded as base "unknown"."""
    kind, where = _resolve(Path(path))
    if kind == "authors":
        ckpt = import_authors_checkpoint(where, lora_alpha=lora_alpha)
        card = next((c for c in CARDS.values() if (c.n_layer, c.n_embd) == (ckpt.n_layer, ckpt.n_embd)), None)
        base = base_model or (card.name if card else None)
        if base is None and need_base:
            raise InputFileError(where, f"no GPT-2 card has {ckpt.n_layer} layers of width {ckpt.n_embd}; "
                                        "pass base_model (--base-model)")
        cfg = TrainConfig(model=base or "unknown", method="lora", rank=ckpt.rank, lora_alpha=ckpt.lora_alpha, lora_dropout=0.0,
                          lora_targets=ckpt.targets)
        shape = {"n_layer": ckpt.n_layer, "n_embd": ckpt.n_embd}
        if card is not None:
            shape["n_head"] = card.n_head
        return StoredAdapter(ckpt.state, cfg, shape, where, where)

    if kind == "peft":  # a PEFT LoRA folder (trained elsewhere, or our own export): nlg.peft_import
        peft = read_peft_lora(where)
        base = base_model or peft.base_model
        if base is None and need_base:
            raise InputFileError(where / CONFIG_FILE, "the PEFT config names no base_model_name_or_path; pass "
                                                      "base_model (--model)")
        cfg = TrainConfig(model=base or "unknown", method="lora", rank=peft.rank, lora_alpha=peft.alpha,
                          lora_dropout=0.0, lora_targets=peft.targets)
        return StoredAdapter(peft.state, cfg, {"n_layer": peft.n_layer, "n_embd": peft.n_embd},
                             where / CONFIG_FILE, where)

    config_path, weights_path = where / CONFIG_FILE, where / ADAPTER_FILE
    config = read_json_object(config_path)
    if config.get("format") != FORMAT:
        raise InputFileError(config_path, f"not an {FORMAT} config (format={config.get('format')!r})")
    if not isinstance(config.get("format_version"), int) or config["format_version"] > FORMAT_VERSION:
        raise InputFileError(config_path, f"format_version {config.get('format_version')!r} is not one this code "
                                          f"reads (<= {FORMAT_VERSION})")
    cfg = _stored_train_config(config, config_path)
    if base_model is not None:
        cfg.model = base_model
    state = _read_safetensors(weights_path)
    return StoredAdapter(state, cfg, dict(config.get("model_shape") or {}), config_path, weights_path)


def _key_line(path: Path, key: str, within: str | None = "train_config") -> int | None:
    """The line of ``"key":`` (after ``"within":`` when given) in a JSON file written one key per line, or None."""
    text = path.read_text(encoding="utf-8")
    start = 0
    if within is not None:
        outer = re.compile(rf'"{re.escape(within)}"\s*:').search(text)
        if outer is None:
            return None
        start = outer.end()
    found = re.compile(rf'"{re.escape(key)}"\s*:').search(text, start)
    return text.count("\n", 0, found.start()) + 1 if found else None


def _hyper_problem(cfg: TrainConfig) -> tuple[str, str] | None:
    """(train_config key, why) for a method setting no model can be built with, or None: caught here, at the key's
    line, rather than as an unnamed error deep in model building."""
    if cfg.method not in METHOD_FIELDS:
        return "method", f"unknown method {cfg.method!r}; expected one of {', '.join(METHOD_FIELDS)}"
    if cfg.method == "lora":
        if cfg.rank < 1:
            return "rank", f"LoRA rank must be a positive integer, got {cfg.rank}"
        if not 0.0 <= cfg.lora_dropout < 1.0:
            return "lora_dropout", f"LoRA dropout must be in [0, 1), got {cfg.lora_dropout}"
        try:
            normalize_targets(cfg.lora_targets)
        except ValueError as exc:
            return "lora_targets", str(exc)
    wte_problem = wte_rank_problem(cfg)
    if wte_problem:
        return "wte_rank", f"wte_rank {wte_problem}"
    if cfg.method in ("adapter-h", "adapter-l") and cfg.adapter_dim < 1:
        return "adapter_dim", f"{cfg.method} needs adapter_dim >= 1, got {cfg.adapter_dim}"
    if cfg.method in ("prefix-layer", "prefix-embed"):
        try:
            get_method(cfg.method)._settings(cfg)
        except ValueError as exc:
            return ("infix_len" if cfg.infix_len and cfg.method == "prefix-layer" else "prefix_len"), str(exc)
    return None


def _stored_train_config(config: dict, config_path: Path) -> TrainConfig:
    """An adapter config's ``train_config`` as a TrainConfig: every value checked against its field's type, then
    the method's settings against the method's rules; a bad one is an error at its file and line."""
    raw = config.get("train_config")
    if not isinstance(raw, dict):
        raise InputFileError(config_path, "train_config is missing or not an object",
                             _key_line(config_path, "train_config", within=None))
    hints = typing.get_type_hints(TrainConfig)
    values = {}
    for f in dataclasses.fields(TrainConfig):  # keys this code does not know are a newer writer's: ignored
        if f.name in raw:
            try:
                values[f.name] = field_value(f.name, hints[f.name], raw[f.name])
            except ValueError as exc:
                raise InputFileError(config_path, f"train_config {exc}", _key_line(config_path, f.name)) from None
    cfg = TrainConfig(**values)
    problem = _hyper_problem(cfg)
    if problem is not None:
        key, why = problem
        raise InputFileError(config_path, f"train_config key {key!r}: {why}", _key_line(config_path, key))
    return cfg


def load_adapter(path: str | Path, model=None, base_model: str | None = None, device: str | torch.device = "cpu",
                 lora_alpha: float = PAPER_ALPHA):
    """Rebuild a trained model: ``path`` is a run folder, its ``adapter/`` folder, or an authors' ``.pt`` file.

    The base is ``model`` if given, else ``nlg.models.load_model(base_model or the adapter's base)``. Returns
    ``(model, cfg)``; ``lora_alpha`` is used only for the authors' files, which do not record it.
    """
    stored = read_adapter(path, base_model=base_model, lora_alpha=lora_alpha, need_base=model is None)
    if model is None:
        model = load_model(stored.cfg.model, device=device)
    _check_shape(model, stored.model_shape, stored.config_path)
    return _apply_and_load(model, stored.cfg, stored.state, stored.weights_path, stored.config_path), stored.cfg


def load_for_decoding(path: str | Path, base_model: str | None = None, device: str | torch.device = "cpu",
                      lora_alpha: float = PAPER_ALPHA, model=None):
    """``load_adapter`` then the method's ``for_inference`` (LoRA: merged into W), in eval mode on ``device``."""
    model, cfg = load_adapter(path, model=model, base_model=base_model, device=device, lora_alpha=lora_alpha)
    model = method_for(cfg).for_inference(model)
    return model.to(device).eval()


# --------------------------------------------------------------------------------------------- PEFT


PEFT_METHODS = ("lora", "prefix-layer")  # what PEFT holds exactly (docs/lora-and-adapters.md says why not the rest)


def peft_unexportable(cfg: TrainConfig) -> str | None:
    """Why a run's adapter has no exact PEFT equivalent, or None when it has one."""
    if cfg.method not in PEFT_METHODS:
        return f"PEFT export covers {' and '.join(PEFT_METHODS)}, not method {cfg.method!r}"
    if cfg.wte_rank:
        return "PEFT has no prefix with LoRA on GPT-2's tied embedding: a run with --wte-rank has no equal PEFT adapter"
    if cfg.method == "lora" and "wte" in normalize_targets(cfg.lora_targets):
        return ("PEFT's LoRA on an embedding adapts the lookup only, not GPT-2's tied LM head: "
                "a run with LoRA on wte has no equal PEFT adapter")
    return None


def export_peft(model, cfg: TrainConfig, folder: str | Path) -> Path:
    """Write a PEFT folder that ``PeftModel.from_pretrained(GPT2LMHeadModel, folder)`` loads to equal logits:
    LoRA as a PEFT LoRA, PreLayer as PEFT prefix tuning (its plain prefixes, no reparameterisation)."""
    why_not = peft_unexportable(cfg)
    if why_not:
        raise ValueError(why_not)
    model = _unwrap(model)
    if cfg.method == "prefix-layer":
        kv = get_method("prefix-layer").export_state(model)[KV_KEY]
        return write_peft_prefix_folder(kv, folder, base_model=cfg.model)
    s = lora_settings(model)
    return write_peft_folder(get_method("lora").trainable_state(model), s["rank"], s["alpha"], s["targets"],
                             folder, base_model=cfg.model, dropout=s["dropout"])


def write_peft_folder(state: dict[str, torch.Tensor], rank: int, alpha: float, targets, folder: str | Path,
                      base_model: str | None = None, dropout: float = 0.0) -> Path:
    """PEFT folder from our LoRA tensors. A fused c_attn LoRA on G of q,k,v becomes one rank-G·r LoRA whose B
    holds block g in the rows of slice s_g and zeros elsewhere; alpha is scaled by G so alpha / r is unchanged."""
    from peft import LoraConfig  # here, not at the top: peft takes seconds to import and only exports need it

    attn = [t for t in ("q", "k", "v") if t in targets]
    slices = [("q", "k", "v").index(t) for t in attn]
    groups = len(attn)
    out: dict[str, torch.Tensor] = {}
    kinds = set()
    for key, value in state.items():
        m = re.match(r"^(.*\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj))\.lora_([AB])$", key)
        if not m:
            raise ValueError(f"tensor {key}: not a GPT-2 LoRA tensor")
        module, kind, part = m.groups()
        kinds.add(kind)
        value = value.detach().float().cpu()
        if kind == "attn.c_attn" and part == "B":
            d = value.shape[0] // groups
            full = value.new_zeros(3 * d, groups * rank)
            for g, s in enumerate(slices):
                full[s * d:(s + 1) * d, g * rank:(g + 1) * rank] = value[g * d:(g + 1) * d]
            value = full
        out[f"base_model.model.{module}.lora_{part}.weight"] = value
    fused = "attn.c_attn" in kinds and groups > 1
    peft_cfg = LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=sorted(kinds), fan_in_fan_out=True,
        bias="none", task_type="CAUSAL_LM", base_model_name_or_path=base_model,
        rank_pattern={"attn.c_attn": groups * rank} if fused else {},
        alpha_pattern={"attn.c_attn": groups * alpha} if fused else {},
    )
    raw = {k: (sorted(v) if isinstance(v, set) else v) for k, v in peft_cfg.to_dict().items()}
    raw = json.loads(json.dumps(raw, default=str))
    folder = Path(folder)
    _write_pair(folder, PEFT_WEIGHTS, out, {"format": "pt"}, raw, "PEFT adapter")
    return folder


def write_peft_prefix_folder(key_values: torch.Tensor, folder: str | Path, base_model: str | None = None) -> Path:
    """PEFT prefix tuning (``prefix_projection=False``) from PreLayer's prefixes ``(L, 2, heads, l_p, head_dim)``.

    PEFT keeps ``prompt_embeddings`` ``[l_p, L·2·d]`` and views each row as (layer, key|value, head, head_dim):
    the same order as ours, so the rows are our prefixes transposed. Both place them in the cache ahead of the real
    tokens, give them attention-mask ones and start the real tokens' positions at l_p (GPT-2 counts the cache)."""
    from peft import PrefixTuningConfig  # (see write_peft_folder)

    n_layer, two, heads, l_p, head_dim = key_values.shape
    if two != 2:
        raise ValueError(f"prefix key/values of shape {tuple(key_values.shape)}: expected (L, 2, heads, l_p, dh)")
    d = heads * head_dim
    rows = key_values.detach().float().cpu().permute(3, 0, 1, 2, 4).reshape(l_p, n_layer * 2 * d).contiguous()
    peft_cfg = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=l_p, token_dim=d, num_layers=n_layer,
                                  num_attention_heads=heads, num_transformer_submodules=1, encoder_hidden_size=d,
                                  prefix_projection=False, base_model_name_or_path=base_model)
    raw = json.loads(json.dumps(peft_cfg.to_dict(), default=str))
    folder = Path(folder)
    _write_pair(folder, PEFT_WEIGHTS, {"prompt_embeddings": rows}, {"format": "pt"}, raw, "PEFT adapter")
    return folder


# --------------------------------------------------------------------------------------------- authors' format


@dataclass
class AuthorsCheckpoint:
    """LoRA tensors from an authors' checkpoint, renamed to our keys, with what the file implies."""

    state: dict[str, torch.Tensor]
    rank: int
    n_layer: int
    n_embd: int
    lora_alpha: float = PAPER_ALPHA
    targets: tuple[str, ...] = ("q", "v")
    ignored: list[str] = field(default_factory=list)  # non-LoRA keys (full checkpoints also hold the base)


def import_authors_checkpoint(path: str | Path, lora_alpha: float = PAPER_ALPHA) -> AuthorsCheckpoint:
    """Read an authors' GPT-2 LoRA ``.pt`` (``{"model_state_dict": ...}``, keys possibly ``module.``-prefixed)."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "no such file")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputFileError(path, f"not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})") from exc
    if isinstance(raw, dict) and isinstance(raw.get("model_state_dict"), dict):
        raw = raw["model_state_dict"]
    if not isinstance(raw, dict):
        raise InputFileError(path, "expected a state dict (or {'model_state_dict': state dict})")
    found: dict[int, dict[str, torch.Tensor]] = {}
    ignored = []
    for key, value in raw.items():
        short = re.sub(r"^(module\.)*(transformer\.)?", "", key)
        m = _AUTHORS_KEY.match(short)
        if m:
            found.setdefault(int(m.group(1)), {})[m.group(2)] = value
        elif "lora_" in key:
            raise InputFileError(path, f"tensor {key}: LoRA outside attn.c_attn is not in the authors' GPT-2 code")
        else:
            ignored.append(key)
    if not found:
        raise InputFileError(path, "no '...h.<i>.attn.c_attn.lora_A/lora_B' tensors: not an authors' LoRA checkpoint")
    n_layer = max(found) + 1
    rank = n_embd = None
    state = {}
    for i in range(n_layer):
        pair = found.get(i, {})
        for part in "AB":
            if part not in pair:
                raise InputFileError(path, f"layer {i} has no lora_{part} (layers 0..{n_layer - 1} expected)")
        a, b = pair["A"], pair["B"]
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] % 2:
            raise InputFileError(path, f"layer {i}: lora_A {tuple(a.shape)} / lora_B {tuple(b.shape)} are not "
                                       "2r × d / 2d × r")
        r, d = a.shape[0] // 2, a.shape[1]
        if tuple(b.shape) != (2 * d, r):
            raise InputFileError(path, f"layer {i}: lora_B is {tuple(b.shape)}, expected {(2 * d, r)} for lora_A "
                                       f"{tuple(a.shape)}")
        if rank is not None and (r, d) != (rank, n_embd):
            raise InputFileError(path, f"layer {i}: rank {r} / width {d} differ from layer 0's {rank} / {n_embd}")
        rank, n_embd = r, d
        state[f"transformer.h.{i}.attn.c_attn.lora_A"] = a.float()
        state[f"transformer.h.{i}.attn.c_attn.lora_B"] = b.float()
    return AuthorsCheckpoint(state, rank, n_layer, n_embd, float(lora_alpha), ("q", "v"), ignored)


def export_authors_checkpoint(model, path: str | Path) -> Path:
    """Write q,v LoRA tensors as the authors' ``gpt2_ft.py`` saves them, so their ``gpt2_beam.py`` can load them."""
    model = _unwrap(model)
    settings = lora_settings(model)
    if settings["targets"] != ("q", "v"):
        raise ValueError(f"the authors' format holds LoRA on q,v only, not {','.join(settings['targets'])}")
    state = {f"module.{k}": v.detach().cpu().clone() for k, v in get_method("lora").trainable_state(model).items()}
    path = Path(path)
    kept = "the previous file is kept" if path.is_file() else "nothing was written"
    with saving(path, "the authors' checkpoint", kept), atomic_open(path, "wb") as handle:
        torch.save({"model_state_dict": state}, handle)
    return path


# --------------------------------------------------------------------------------------------- CLI


def refuse_to_replace(out: Path, overwrite: bool) -> None:
    """``--out`` must not already hold an adapter (a trained run's ``adapter/``, say) unless ``--overwrite``."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: exists and is not a folder")
    held = [name for name in dict.fromkeys((ADAPTER_FILE, CONFIG_FILE, PEFT_WEIGHTS, PEFT_CONFIG)) if (out / name).exists()]
    if held and not overwrite:
        raise ValueError(f"{out}: already holds {', '.join(held)} (a trained adapter?); pass --overwrite to "
                         "replace it, or choose another --out")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nlg.adapter_io",
                                     description="Convert and inspect adapter files (no base weights needed).")
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name, text in (("import-authors", "convert an authors' .pt checkpoint into our adapter folder"),
                       ("export-peft", "write a PEFT adapter folder from a LoRA run/adapter folder or authors' .pt"),
                       ("info", "print what an adapter holds")):
        p = sub.add_parser(name, help=text)
        p.add_argument("adapter", help="run folder, adapter folder, or authors' .pt")
        if name != "info":
            p.add_argument("--out", required=True, help="folder to write")
            p.add_argument("--overwrite", action="store_true", help="replace what --out already holds")
        p.add_argument("--base-model", default=None, help="base model to record (default: the adapter's own, or "
                                                          "the GPT-2 card of an authors' checkpoint's shape)")
        p.add_argument("--lora-alpha", type=float, default=PAPER_ALPHA,
                       help="alpha for authors' checkpoints, which do not store it (paper: 32)")
    args = parser.parse_args(argv)
    try:
        if args.cmd != "info":
            refuse_to_replace(Path(args.out), args.overwrite)
        stored = read_adapter(args.adapter, base_model=args.base_model, lora_alpha=args.lora_alpha,
                              need_base=args.cmd != "info")
        cfg = stored.cfg
        if args.cmd == "info":
            info = {"method": cfg.method, "base_model": cfg.model, "model_shape": stored.model_shape,
                    "hyper_params": {k: getattr(cfg, k) for k in METHOD_FIELDS.get(cfg.method, ())},
                    "num_params": sum(t.numel() for t in stored.state.values()), "tensors": len(stored.state)}
            print(json.dumps(info, indent=2, default=list))
        elif args.cmd == "import-authors":
            print(write_adapter_folder(stored.state, cfg, stored.model_shape, args.out))
        else:
            why_not = peft_unexportable(cfg)
            if why_not:
                raise ValueError(why_not)
            if cfg.method == "prefix-layer":
                print(write_peft_prefix_folder(stored.state[KV_KEY], args.out, base_model=cfg.model))
            else:
                print(write_peft_folder(stored.state, cfg.rank, cfg.lora_alpha, cfg.lora_targets, args.out,
                                        base_model=cfg.model, dropout=cfg.lora_dropout))
        return 0
    except (InputFileError, ValueError, OSError) as exc:
        return cli_error(exc)


if __name__ == "__main__":
    raise SystemExit(main())
