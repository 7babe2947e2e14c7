"""python -m nlg.generate: adapter merged then decoded, predictions file, errors, torchrun sharding, --hf-generate."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from nlg import generate
from nlg.adapter_io import load_for_decoding, save_adapter
from nlg.beam import beam_search
from nlg.beam_hf import hf_beam_search, hf_generate_kwargs
from nlg.config import TrainConfig, paper_decode_config
from nlg.decode import hypothesis_text
from nlg.lora import LoRAConv1D
from nlg.methods import get_method
from nlg.models import load_model
from nlg.tokenizer import encode
from tests.beam_models import shaped_tiny
from tests.conftest import REPO

CONTEXTS = [
    "name : The Tin Compass | Type : pub | area : riverside",
    "name : Juniper Yard | food : Korean",
    "name : The Tin Compass | Type : pub | area : riverside",  # a repeated context, as in E2E
    "name : Cobalt Kitchen | Type : restaurant | price : cheap | near : Lark Hall | family friendly : no",
    "name : Saffron Quay",
]
SHORT = ["--max-new-tokens", "12", "--quiet"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A LoRA run on the tiny model: recipe.json, adapter/ with non-zero B, and an encoded split."""
    run = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(dataset="e2e", model="tiny", method="lora", rank=4, lora_alpha=32.0, lora_dropout=0.0)
    model = get_method("lora").apply(load_model("tiny"), cfg)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.copy_(torch.randn(p.shape, generator=gen))
    save_adapter(model, cfg, run / "adapter")
    (run / "recipe.json").write_text(json.dumps({**json.loads(cfg.to_json()), "random_model": True}))
    # contexts without the trailing 50256: a tied random model mostly repeats its last token, so it would end at once
    (run / "test.jsonl").write_text("".join(json.dumps({"context": encode(c), "completion": [50256]}) + "\n"
                                            for c in CONTEXTS))
    return run


def test_generate_writes_the_merged_adapters_beam_search(run_dir):
    assert generate.main(["--run-dir", str(run_dir), "--data", str(run_dir / "test.jsonl"), "--batch-size", "2",
                          *SHORT]) == 0
    rows = [json.loads(line) for line in (run_dir / "predictions.test.jsonl").read_text().splitlines()]
    cfg = paper_decode_config("e2e", max_new_tokens=12)
    merged = load_for_decoding(run_dir)
    lora_layers = [m for m in merged.modules() if isinstance(m, LoRAConv1D)]
    assert lora_layers and all(m.merged for m in lora_layers)  # decoding runs on merged weights
    want = beam_search(merged, [encode(c) for c in CONTEXTS], cfg, batch_size=1, dedup=False)
    assert [r["id"] for r in rows] == list(range(len(CONTEXTS)))
    assert [r["predict"] for r in rows] == want
    assert [r["text"] for r in rows] == [hypothesis_text(w) for w in want]
    assert rows[0]["predict"] == rows[2]["predict"] and len(set(map(tuple, want))) >= 3
    base = beam_search(load_model("tiny"), [encode(c) for c in CONTEXTS], cfg)
    assert base != want  # the adapter was applied
    summary = json.loads((run_dir / "generate.test.json").read_text())
    assert summary["records"] == 5 and summary["distinct_prompts"] == 4 and summary["search"] == "paper"
    assert summary["decode"]["length_penalty"] == 0.9 and summary["random_model"] is True


def test_authors_checkpoint_decodes_like_our_adapter_folder(run_dir, tmp_path):
    """An authors'-format .pt (their gpt2_ft.py layout) given as --adapter: same predictions as RUN/adapter."""
    from nlg.adapter_io import export_authors_checkpoint, load_adapter

    model, _ = load_adapter(run_dir)
    pt = export_authors_checkpoint(model, tmp_path / "model.10.pt")
    ours, theirs = tmp_path / "ours.jsonl", tmp_path / "theirs.jsonl"
    common = ["--dataset", "e2e", "--data", str(run_dir / "test.jsonl"), *SHORT]
    assert generate.main(["--run-dir", str(run_dir), *common, "--output", str(ours)]) == 0
    assert generate.main(["--run-dir", str(tmp_path / "authors-run"), "--adapter", str(pt), "--model", "tiny",
                          *common, "--output", str(theirs)]) == 0
    assert theirs.read_text() == ours.read_text()


def test_errors_are_clear(run_dir, tmp_path, capsys):
    long_data = tmp_path / "long.jsonl"
    long_data.write_text(json.dumps({"context": [5, 6]}) + "\n" + json.dumps({"context": [7] * 501}) + "\n")
    assert generate.main(["--run-dir", str(run_dir), "--data", str(long_data), "--output", str(tmp_path / "p"),
                          *SHORT]) == 2
    err = capsys.readouterr().err
    assert "long.jsonl:2: context of 501 tokens is longer than the context window of 500 tokens" in err
    assert not (tmp_path / "p").exists()
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert generate.main(["--run-dir", str(run_dir), "--data", str(empty), *SHORT]) == 2
    assert "empty.jsonl: no records: the split is empty" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"context": "text, not ids"}) + "\n")
    assert generate.main(["--run-dir", str(run_dir), "--data", str(bad), *SHORT]) == 2
    assert "bad.jsonl:1: expected an object whose 'context' is a list of token ids" in capsys.readouterr().err


def _copy_run(run_dir, tmp_path):
    import shutil

    dst = tmp_path / "run"
    shutil.copytree(run_dir, dst)
    return dst


def test_adapter_that_does_not_fit_the_model(run_dir, tmp_path, capsys):
    run = _copy_run(run_dir, tmp_path)
    cfg_path = run / "adapter" / "adapter_config.json"
    config = json.loads(cfg_path.read_text())
    config["model_shape"]["n_embd"] = 128
    cfg_path.write_text(json.dumps(config))
    assert generate.main(["--run-dir", str(run), "--data", str(run / "test.jsonl"), *SHORT]) == 2
    err = capsys.readouterr().err
    assert "adapter_config.json: adapter does not fit the base model: n_embd=128 in the adapter but 64" in err

    run = _copy_run(run_dir, tmp_path / "r2")
    weights = run / "adapter" / "adapter.safetensors"
    state = load_file(weights)
    state = {k: (v[:4] if k.endswith("lora_A") else v) for k, v in state.items()}  # rank 2, config says 4
    save_file(state, weights)
    assert generate.main(["--run-dir", str(run), "--data", str(run / "test.jsonl"), *SHORT]) == 2
    err = capsys.readouterr().err
    assert "adapter.safetensors" in err and "lora_A: shape (4, 64) does not fit the model's (8, 64)" in err


@pytest.mark.slow
def test_hf_generate_is_transformers_semantics():
    from tests.test_beam import _fixture

    cfg, cases = _fixture("e2e-penalties")
    cfg = paper_decode_config("e2e")
    model = shaped_tiny("ends-628")
    prompts = [cases[0]["prompt"], cases[2]["prompt"]]
    got = hf_beam_search(model, prompts, cfg, batch_size=2)
    for p, g in zip(prompts, got):  # batched and padded == one prompt at a time through model.generate
        ids = torch.tensor([p])
        seq = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **hf_generate_kwargs(cfg))
        gen = seq[0, len(p):].tolist()
        cut = next((i for i, t in enumerate(gen) if t in cfg.eos_token_ids), None)
        assert g == (gen if cut is None else gen[: cut + 1])
    paper = beam_search(model, prompts, cfg)
    assert all(a != b for a, b in zip(got, paper))  # not the paper's search: both hypotheses differ


@pytest.mark.slow
def test_torchrun_two_ranks_match_one_process(run_dir, tmp_path):
    one = tmp_path / "one.jsonl"
    two = tmp_path / "two.jsonl"
    common = ["--run-dir", str(run_dir), "--data", str(run_dir / "test.jsonl"), "--batch-size", "2", *SHORT]
    assert generate.main([*common, "--output", str(one), "--device", "cpu"]) == 0
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "nlg.generate",
           *common, "--output", str(two), "--device", "cpu"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert two.read_text() == one.read_text()
    summary = json.loads((tmp_path / "generate.test.json").read_text())
    assert summary["world_size"] == 2
