"""The authors'-checkpoint fixture: a deterministic small GPT-2 base, and the script that made the fixture files.

The base weights come from a seeded ``torch.Generator`` (stable across torch versions, unlike module init order),
so the test and the generator build the identical base without committing any weights. Regenerate with

    cp -r /work/ref/microsoft+LoRA /tmp/authors-lora      # the authors' repo (github:microsoft/LoRA)
    python -m tests._lora_fixture --authors-repo /tmp/authors-lora

which runs *their* ``examples/NLG/src/model.py`` + ``loralib`` (imported from that path, never copied here).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

FIXTURE_DIR = Path(__file__).resolve().parent / "fixtures" / "authors_lora"
SHAPE = {"vocab_size": 50, "n_positions": 16, "n_embd": 32, "n_layer": 2, "n_head": 2}
RANK, ALPHA = 2, 32.0
INPUT_IDS = [[7, 3, 49, 0, 12, 5, 33, 8], [1, 2, 3, 4, 5, 6, 7, 8]]


def _fill(shape, gen, std=0.02, mean=0.0):
    return torch.randn(shape, generator=gen) * std + mean


def base_state(seed: int = 1234) -> dict[str, torch.Tensor]:
    """Transformer weights in GPT-2 naming (``wte.weight``, ``h.0.attn.c_attn.weight`` in × out, ...)."""
    gen = torch.Generator().manual_seed(seed)
    d, v, p = SHAPE["n_embd"], SHAPE["vocab_size"], SHAPE["n_positions"]
    state = {"wte.weight": _fill((v, d), gen, 0.1), "wpe.weight": _fill((p, d), gen, 0.05)}
    for i in range(SHAPE["n_layer"]):
        for name, shape in (("attn.c_attn", (d, 3 * d)), ("attn.c_proj", (d, d)), ("mlp.c_fc", (d, 4 * d)),
                            ("mlp.c_proj", (4 * d, d))):
            state[f"h.{i}.{name}.weight"] = _fill(shape, gen, 0.1)
            state[f"h.{i}.{name}.bias"] = _fill(shape[1:], gen, 0.02)
        for ln in ("ln_1", "ln_2"):
            state[f"h.{i}.{ln}.weight"] = _fill((d,), gen, 0.1, 1.0)
            state[f"h.{i}.{ln}.bias"] = _fill((d,), gen, 0.05)
    state["ln_f.weight"] = _fill((d,), gen, 0.1, 1.0)
    state["ln_f.bias"] = _fill((d,), gen, 0.05)
    return state


def our_base_model():
    """The same base as a transformers ``GPT2LMHeadModel`` (dropout off, like nlg.models)."""
    from transformers import GPT2LMHeadModel

    from nlg.models import gpt2_config

    cfg = gpt2_config(SHAPE["n_layer"], SHAPE["n_embd"], SHAPE["n_head"], SHAPE["n_positions"])
    cfg.vocab_size = SHAPE["vocab_size"]
    model = GPT2LMHeadModel(cfg)
    missing, unexpected = model.transformer.load_state_dict(base_state(), strict=False)
    assert not unexpected and not [k for k in missing if not k.endswith(".attn.bias")], (missing, unexpected)
    model.tie_weights()
    return model.eval()


def lora_values(seed: int = 99) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Stand-ins for trained values: per layer (lora_A 2r × d, lora_B 2d × r)."""
    gen = torch.Generator().manual_seed(seed)
    d = SHAPE["n_embd"]
    return {i: (_fill((2 * RANK, d), gen, 0.2), _fill((2 * d, RANK), gen, 0.05)) for i in range(SHAPE["n_layer"])}


def make_fixture(authors_repo: Path, out_dir: Path = FIXTURE_DIR) -> None:
    """Run the authors' GPT2LMModel on the deterministic base + LoRA values; save their checkpoint and logits."""
    sys.path[:0] = [str(authors_repo), str(authors_repo / "examples" / "NLG" / "src")]
    import loralib  # noqa: E402  (the authors' package, from authors_repo)
    from model import GPT2Config, GPT2LMModel  # noqa: E402  (the authors' model.py)

    config = GPT2Config(vocab_size_or_config_json_file=SHAPE["vocab_size"], n_positions=SHAPE["n_positions"],
                        n_ctx=SHAPE["n_positions"], n_embd=SHAPE["n_embd"], n_layer=SHAPE["n_layer"],
                        n_head=SHAPE["n_head"], lora_attn_dim=RANK, lora_attn_alpha=ALPHA, lora_dropout=0.0)
    torch.manual_seed(0)
    net = GPT2LMModel(config)
    net.load_weight(base_state())
    with torch.no_grad():
        for i, (a, b) in lora_values().items():
            net.transformer.h[i].attn.c_attn.lora_A.copy_(a)
            net.transformer.h[i].attn.c_attn.lora_B.copy_(b)
    net.eval()
    with torch.no_grad():
        logits, _ = net(torch.tensor(INPUT_IDS))
    wrapped = torch.nn.DataParallel(net)  # what their gpt2_ft.py saves through: keys get "module."
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"model_state_dict": loralib.lora_state_dict(wrapped)}, out_dir / "authors_lora_tiny.pt")
    (out_dir / "authors_logits.json").write_text(json.dumps({
        "shape": SHAPE, "rank": RANK, "lora_alpha": ALPHA, "input_ids": INPUT_IDS,
        "logits": [[[float(x) for x in row] for row in seq] for seq in logits.tolist()],
    }) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--authors-repo", type=Path, required=True, help="a checkout of github:microsoft/LoRA")
    parser.add_argument("--out-dir", type=Path, default=FIXTURE_DIR)
    args = parser.parse_args()
    make_fixture(args.authors_repo, args.out_dir)
    print(f"wrote {args.out_dir}")
