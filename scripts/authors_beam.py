"""Run the LoRA authors' unmodified ``gpt2_beam.py`` search in-process on CPU, on a model holding our weights.

Used to record the test fixture (tests/fixtures/authors_beam/make_fixture.py) and by scripts/bench_generate.py.
Nothing of the authors' code is copied here: their modules are imported from a clone (``--ref``), their two
torch.distributed helpers are replaced by single-process equivalents (gather = add a world dimension of 1,
sync = nothing), and their ``beam()`` is called with the arguments their CLI would build.
"""
from __future__ import annotations

import contextlib
import io
import json
import sys
import tempfile
import types
from pathlib import Path

import torch

from nlg.config import DecodeConfig


def authors_modules(ref: str | Path):
    """Their ``gpt2_beam``, ``model`` and ``data_utils`` modules from a clone of github.com/microsoft/LoRA."""
    ref = Path(ref)
    src = ref / "examples" / "NLG" / "src"
    if not (src / "gpt2_beam.py").is_file():
        raise FileNotFoundError(f"{src / 'gpt2_beam.py'}: not a clone of github.com/microsoft/LoRA")
    for path in (str(src), str(ref)):  # their src folder and their loralib package
        if path not in sys.path:
            sys.path.insert(0, path)
    import data_utils
    import gpt2_beam
    import model as their_model

    gpt2_beam.distributed_gather = lambda args, tensor: tensor.unsqueeze(0)
    gpt2_beam.distributed_sync = lambda args: None
    return gpt2_beam, their_model, data_utils


def their_twin(their_model, ours):
    """Their ``GPT2LMModel`` (no LoRA) holding exactly the weights of our ``GPT2LMHeadModel``."""
    cfg = ours.config
    net = their_model.GPT2LMModel(
        their_model.GPT2Config(n_embd=cfg.n_embd, n_layer=cfg.n_layer, n_head=cfg.n_head, lora_attn_dim=0)
    )
    state = {k: v for k, v in ours.transformer.state_dict().items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    missing, unexpected = net.transformer.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith(".attn.bias")]
    if missing or unexpected:
        raise RuntimeError(f"weights do not map onto the authors' model: missing {missing}, unexpected {unexpected}")
    net.set_tied()
    return net.eval()


def run_authors_beam(modules, net, prompts: list[list[int]], decode: DecodeConfig, batch_size: int = 1,
                     seq_len: int | None = None) -> list[list[int]]:
    """Their "predict" rows (``max_new_tokens`` ids each) for ``prompts``, in order.

    ``seq_len`` is their ``--seq_len`` (default ``decode.seq_len``, 512): it only sets how far each query is padded
    and truncates longer contexts, so any value >= the longest prompt + ``max_new_tokens`` gives the same search.
    """
    gpt2_beam, _, data_utils = modules
    seq_len = seq_len or decode.seq_len
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        data_file = workdir / "prompts.jsonl"
        data_file.write_text("".join(json.dumps({"context": p, "completion": [50256]}) + "\n" for p in prompts))
        dataset = data_utils.FT_Dataset(str(data_file), batch_size, seq_len, decode.max_new_tokens)
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
        args = types.SimpleNamespace(
            eval_len=decode.max_new_tokens, beam=decode.beam, length_penalty=decode.length_penalty,
            no_repeat_ngram_size=decode.no_repeat_ngram_size, repetition_penalty=decode.repetition_penalty,
            min_length=decode.min_length, eos_token_id=list(decode.eos_token_ids), device="cpu", rank=0,
            world_size=1, work_dir=str(workdir), output_file="predict.jsonl",
        )
        gpt2_beam.args = args  # their _add_beam_candidate reads the module-level args
        with contextlib.redirect_stdout(io.StringIO()):  # their repetition-penalty path prints per row and step
            gpt2_beam.beam(net, loader, args)
        out = {}
        for line in (workdir / "predict.jsonl").read_text().splitlines():
            rec = json.loads(line)
            out[rec["id"]] = rec["predict"]
    return [out[i] for i in range(len(prompts))]


def authors_hypothesis(predict: list[int], ends) -> list[int]:
    """Their row is the best hypothesis followed by zeros or leftovers of an earlier, longer best: cut after the
    first end token (a live, full-length best has none)."""
    cut = next((i for i, t in enumerate(predict) if t in ends), None)
    return predict if cut is None else predict[: cut + 1]
