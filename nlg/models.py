"""GPT-2 model cards and loading: hub id, local Hugging Face folder, or the original ``pytorch_model.bin``.

The LoRA authors' GPT-2 (their ``model.py``) applies no dropout anywhere except on the LoRA input path, so every
model built here has ``embd_pdrop = resid_pdrop = attn_pdrop = 0``. ``tiny`` is a randomly initialised model with
the GPT-2 vocabulary for tests and the CPU demo; anything produced with it must be labelled as such.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from nlg.io_utils import host_reachable
from nlg.tokenizer import EOS_ID, VOCAB_SIZE


@dataclass(frozen=True)
class ModelCard:
    name: str
    n_layer: int
    n_embd: int
    n_head: int
    hub_id: str | None  # None: never loaded from anywhere, always random
    original_bin: str | None  # file name the authors' download script fetches


CARDS: dict[str, ModelCard] = {
    "tiny": ModelCard("tiny", 2, 64, 4, None, None),
    # pretrained here by nlg.pretrain (WebNLG 2017 + DART text, no E2E); ``--model mini`` loads that folder
    "mini": ModelCard("mini", 4, 256, 4, None, None),
    "gpt2": ModelCard("gpt2", 12, 768, 12, "gpt2", "gpt2-pytorch_model.bin"),
    "gpt2-medium": ModelCard("gpt2-medium", 24, 1024, 16, "gpt2-medium", "gpt2-medium-pytorch_model.bin"),
    "gpt2-large": ModelCard("gpt2-large", 36, 1280, 20, "gpt2-large", "gpt2-large-pytorch_model.bin"),
}
# Folders searched for the authors' downloaded .bin files (their script writes pretrained_checkpoints/).
CHECKPOINT_DIRS_ENV = "NLG_PRETRAINED_DIR"


class ModelLoadError(RuntimeError):
    """Weights could not be found or do not fit a GPT-2 model."""


def gpt2_config(n_layer: int, n_embd: int, n_head: int, n_positions: int = 1024) -> GPT2Config:
    """A GPT-2 config matching the authors' model: no dropout, tanh-GELU, eps 1e-5, BOS = EOS = 50256."""
    return GPT2Config(
        vocab_size=VOCAB_SIZE,
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        activation_function="gelu_new",
        layer_norm_epsilon=1e-5,
        embd_pdrop=0.0,
        resid_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=EOS_ID,
        eos_token_id=EOS_ID,
        tie_word_embeddings=True,
    )


def card_config(name: str) -> GPT2Config:
    if name not in CARDS:
        raise ModelLoadError(f"unknown model card {name!r}; expected one of {', '.join(CARDS)}")
    c = CARDS[name]
    return gpt2_config(c.n_layer, c.n_embd, c.n_head)


def build_random(name: str = "tiny", seed: int | None = 0, device: str | torch.device = "cpu") -> GPT2LMHeadModel:
    """A randomly initialised GPT-2 of a card's shape (``device="meta"`` builds without memory)."""
    cfg = card_config(name)
    if seed is not None:
        torch.manual_seed(seed)
    with torch.device(device):
        model = GPT2LMHeadModel(cfg)
    _zero_dropout(model)
    return model.eval()


def _zero_dropout(model: GPT2LMHeadModel) -> None:
    """Turn off GPT-2's own dropout (config and already-built modules); LoRA adds its own later."""
    model.config.embd_pdrop = model.config.resid_pdrop = model.config.attn_pdrop = 0.0
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def _strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        key = re.sub(r"^(module\.)+", "", key)
        out[key] = value
    return out


OPENAI_SIZES = ("gpt2", "gpt2-medium", "gpt2-large")  # the original .bin layout's own models: shapes known


def _head_count(path: Path, card: str | None, n_layer: int, n_embd: int) -> int:
    """Heads of an original-layout checkpoint: from a ``config.json`` beside it (``n_head`` or
    ``num_attention_heads``), else from its card (named, or one of OpenAI's sizes by layers x width); the
    weights alone do not say, so any other shape is refused rather than guessed."""
    config = path.parent / "config.json"
    if config.is_file():
        try:
            raw = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelLoadError(f"{config}: not a readable JSON config ({exc})") from None
        heads = raw.get("n_head", raw.get("num_attention_heads"))
        width, layers = raw.get("n_embd", raw.get("hidden_size")), raw.get("n_layer", raw.get("num_hidden_layers"))
        if not isinstance(heads, int) or heads < 1 or n_embd % heads:
            raise ModelLoadError(f"{config}: n_head must be a positive divisor of the width {n_embd}, got {heads!r}")
        if (width is not None and width != n_embd) or (layers is not None and layers != n_layer):
            raise ModelLoadError(f"{config}: says {layers} layers x {width} wide, but {path.name} holds "
                                 f"{n_layer} x {n_embd}")
        return heads
    if card in CARDS and (CARDS[card].n_layer, CARDS[card].n_embd) == (n_layer, n_embd):
        return CARDS[card].n_head
    for name in OPENAI_SIZES:
        if (CARDS[name].n_layer, CARDS[name].n_embd) == (n_layer, n_embd):
            return CARDS[name].n_head
    raise ModelLoadError(f"{path}: a {n_layer}-layer, {n_embd}-wide GPT-2 is none of OpenAI's sizes, and its "
                         f"weights do not say how many attention heads it has: put a config.json with n_head "
                         f"beside it, or load it as a Hugging Face folder")


def load_original_bin(path: str | os.PathLike, card: str | None = None) -> GPT2LMHeadModel:
    """Load the original OpenAI-layout ``gpt2*-pytorch_model.bin`` (keys ``wte.weight``, ``h.0.attn...``)."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelLoadError(f"{path}: not a readable PyTorch state dict ({exc})") from exc
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    state = _strip_prefix(state)
    state = {k[len("transformer."):] if k.startswith("transformer.") else k: v for k, v in state.items()}
    if "wte.weight" not in state:
        raise ModelLoadError(f"{path}: no 'wte.weight' key: not a GPT-2 checkpoint")
    n_embd = state["wte.weight"].shape[1]
    layers = {int(m.group(1)) for k in state if (m := re.match(r"h\.(\d+)\.", k))}
    n_layer = max(layers) + 1 if layers else 0
    n_head = _head_count(path, card, n_layer, n_embd)
    n_positions = state["wpe.weight"].shape[0] if "wpe.weight" in state else 1024
    model = GPT2LMHeadModel(gpt2_config(n_layer, n_embd, n_head, n_positions))
    weights = {k: v for k, v in state.items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    weights.pop("lm_head.weight", None)  # tied to wte
    missing, unexpected = model.transformer.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not k.endswith((".attn.bias", ".attn.masked_bias"))]
    if missing or unexpected:
        raise ModelLoadError(f"{path}: does not fit GPT-2 (missing {missing[:5]}, unexpected {unexpected[:5]})")
    model.tie_weights()
    return model.eval()


def _find_original_bin(card: ModelCard) -> Path | None:
    dirs = [os.environ.get(CHECKPOINT_DIRS_ENV), "pretrained_checkpoints"]
    for d in filter(None, dirs):
        candidate = Path(d) / card.original_bin
        if candidate.is_file():
            return candidate
    return None


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    return host_reachable(host, timeout=timeout)


def _from_hub(hub_id: str) -> GPT2LMHeadModel:
    """The local Hugging Face cache first; the hub only when it answers (no minute of retries offline)."""
    try:
        return GPT2LMHeadModel.from_pretrained(hub_id, local_files_only=True)
    except Exception:
        if not _hub_reachable():
            raise OSError(f"{hub_id!r} is not in the local Hugging Face cache and the hub is unreachable")
        return GPT2LMHeadModel.from_pretrained(hub_id)


def load_model(name_or_path: str, device: str | torch.device = "cpu", seed: int | None = 0) -> GPT2LMHeadModel:
    """Load GPT-2 weights from a card name, hub id, local Hugging Face folder or original ``.bin`` file.

    ``tiny`` builds a random model. Any other card needs real weights: a silent random model is never returned.
    """
    if name_or_path == "tiny":
        return build_random("tiny", seed=seed).to(device)
    if name_or_path.startswith(RANDOM_PREFIX):
        return build_random(name_or_path[len(RANDOM_PREFIX):], seed=seed).to(device)
    if name_or_path in PRETRAINED_HERE:
        from nlg.pretrain import default_model_dir  # the pretraining cache (nlg.pretrain imports this module)

        folder = default_model_dir(name_or_path)
        if folder is None:
            raise ModelLoadError(f"--model {name_or_path}: no pretrained {name_or_path} model in the cache yet; "
                                 f"make it with `python -m nlg.pretrain --card {name_or_path}` (or pass its folder)")
        name_or_path = str(folder)
    path = Path(name_or_path)
    if path.is_file():
        model = load_original_bin(path, card=None)
    elif path.is_dir():
        try:
            model = GPT2LMHeadModel.from_pretrained(str(path))
        except Exception as exc:
            raise ModelLoadError(f"{path}: not a Hugging Face GPT-2 folder ({exc})") from exc
    else:
        card = CARDS.get(name_or_path)
        local = _find_original_bin(card) if card else None
        if local is not None:
            model = load_original_bin(local, card=card.name)
        else:
            hub_id = card.hub_id if card else name_or_path
            try:
                model = _from_hub(hub_id)
            except Exception as exc:
                raise ModelLoadError(
                    f"could not load {name_or_path!r}: the hub is unreachable or has no such model ({type(exc).__name__}). "
                    "Point --model at local weights: a Hugging Face folder (config.json + model.safetensors), "
                    f"or the original .bin file (e.g. pretrained_checkpoints/{card.original_bin if card else 'gpt2-medium-pytorch_model.bin'}), "
                    f"or set {CHECKPOINT_DIRS_ENV} to the folder holding it. Use --model tiny for a random test model."
                ) from exc
    _zero_dropout(model)
    model.config.bos_token_id = model.config.eos_token_id = EOS_ID
    return model.to(device).eval()


RANDOM_PREFIX = "random:"  # ``random:<card>``: that card's shape, randomly initialised (pretraining, controls)
PRETRAINED_HERE = ("mini",)  # cards whose weights come from nlg.pretrain's cache, never from a hub


def is_random_model(name_or_path: str) -> bool:
    """True for a randomly initialised model (``tiny``, ``random:<card>``): reports must say so."""
    return name_or_path == "tiny" or name_or_path.startswith(RANDOM_PREFIX)
