"""Adapter files: our folder round trip (method-generic), PEFT export loaded by peft, the authors' checkpoints."""
from __future__ import annotations

import json
import types

import pytest
import torch
from safetensors.torch import load_file

from nlg import adapter_io
from nlg.adapter_io import (
    export_authors_checkpoint,
    export_peft,
    import_authors_checkpoint,
    load_adapter,
    load_for_decoding,
    save_adapter,
    write_adapter_folder,
)
from nlg.config import TrainConfig
from nlg.io_utils import InputFileError
from nlg.lora import lora_modules
from nlg.methods import get_method
from nlg.models import build_random
from tests import _lora_fixture as fx

AUTHORS_PT = fx.FIXTURE_DIR / "authors_lora_tiny.pt"
AUTHORS_LOGITS = fx.FIXTURE_DIR / "authors_logits.json"
ALL = ("q", "k", "v", "o", "c_fc", "c_proj")


def _inputs(batch=2, length=8):
    ids = torch.randint(0, 50257, (batch, length), generator=torch.Generator().manual_seed(3))
    return ids, torch.arange(length).expand(batch, length)


def _logits(model, ids, pos):
    with torch.no_grad():
        return model(input_ids=ids, position_ids=pos).logits


def _trained_lora(cfg: TrainConfig, seed=0):
    model = build_random("tiny", seed=seed)
    get_method(cfg.method).apply(model, cfg)
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for _, m in lora_modules(model):
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=gen) * 0.2)
    return model


# ------------------------------------------------------------------------------------------------ our folder


def test_save_load_round_trip_from_run_folder_adapter_folder_and_file(tmp_path):
    cfg = TrainConfig(model="tiny", rank=4, lora_alpha=32, lora_dropout=0.1)
    model = _trained_lora(cfg)
    ids, pos = _inputs()
    expected = _logits(model, ids, pos)
    folder = save_adapter(model, cfg, tmp_path / "run" / "adapter")
    assert sorted(p.name for p in folder.iterdir()) == ["adapter.safetensors", "adapter_config.json"]
    tensors = load_file(folder / "adapter.safetensors")
    assert sorted(tensors) == [f"transformer.h.{i}.attn.c_attn.lora_{p}" for i in (0, 1) for p in "AB"]
    for k, v in get_method("lora").trainable_state(model).items():
        assert torch.equal(tensors[k], v)
    config = json.loads((folder / "adapter_config.json").read_text())
    assert {k: config[k] for k in ("format", "format_version", "method", "base_model", "random_model", "num_params")} \
        == {"format": "nlg-adapter", "format_version": 1, "method": "lora", "base_model": "tiny",
            "random_model": True, "num_params": 2 * (8 * 64 + 128 * 4)}
    assert config["model_shape"] == {"n_layer": 2, "n_embd": 64, "n_head": 4, "n_positions": 1024, "vocab_size": 50257}
    assert config["hyper_params"] == {"rank": 4, "lora_alpha": 32, "lora_dropout": 0.1, "lora_targets": ["q", "v"]}
    assert TrainConfig.from_json(json.dumps(config["train_config"])) == cfg
    for path in (tmp_path / "run", folder, folder / "adapter.safetensors"):
        loaded, loaded_cfg = load_adapter(path)  # base rebuilt from the recorded "tiny" card (seed 0)
        assert loaded_cfg == cfg
        assert torch.equal(_logits(loaded, ids, pos), expected)
        assert not any(m.merged for _, m in lora_modules(loaded))
    decoding = load_for_decoding(tmp_path / "run")
    assert not decoding.training and all(m.merged for _, m in lora_modules(decoding))
    assert torch.allclose(_logits(decoding, ids, pos), expected, atol=1e-5)


def test_medium_r4_adapter_is_about_one_and_a_half_megabytes(tmp_path):
    model = build_random("gpt2-medium", seed=None, device="meta")
    cfg = TrainConfig(model="gpt2-medium")
    get_method("lora").apply(model, cfg)
    state = {k: torch.zeros(v.shape) for k, v in get_method("lora").trainable_state(model).items()}
    folder = write_adapter_folder(state, cfg, {"n_layer": 24, "n_embd": 1024, "n_head": 16}, tmp_path / "a")
    size = (folder / "adapter.safetensors").stat().st_size
    assert 393_216 * 4 <= size < 393_216 * 4 + 20_000  # 1.57 MB: the tensors plus a small header


def test_saver_is_generic_over_methods(tmp_path, monkeypatch):
    """A method that trains only ln_f goes through the same save/load code as LoRA."""
    def apply(model, cfg):
        for n, p in model.named_parameters():
            p.requires_grad_(n.startswith("transformer.ln_f."))
        return model

    def trainable_state(model):
        return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}

    def load_state(model, state):
        own = trainable_state(model)
        if set(own) != set(state):
            raise ValueError(f"keys {sorted(state)} != {sorted(own)}")
        with torch.no_grad():
            for k, v in state.items():
                own[k].copy_(v)

    fake = types.SimpleNamespace(apply=apply, trainable_state=trainable_state, load_state=load_state,
                                 for_inference=lambda m: m.eval())
    monkeypatch.setattr(adapter_io, "method_for", lambda cfg: fake)
    cfg = TrainConfig(model="tiny", method="ft")
    model = apply(build_random("tiny", seed=0), cfg)
    with torch.no_grad():
        model.transformer.ln_f.weight.mul_(1.5)
        model.transformer.ln_f.bias.add_(0.1)
    folder = save_adapter(model, cfg, tmp_path / "ft")
    assert sorted(load_file(folder / "adapter.safetensors")) == ["transformer.ln_f.bias", "transformer.ln_f.weight"]
    assert json.loads((folder / "adapter_config.json").read_text())["hyper_params"] == {}
    ids, pos = _inputs()
    loaded = load_for_decoding(folder)
    assert torch.equal(_logits(loaded, ids, pos), _logits(model, ids, pos))


def test_clear_errors_name_the_file_and_tensor(tmp_path):
    cfg = TrainConfig(model="tiny")
    folder = save_adapter(_trained_lora(cfg), cfg, tmp_path / "a")
    # a recorded rank that does not fit the stored tensors
    config_path = folder / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["train_config"]["rank"] = 8
    config_path.write_text(json.dumps(config))
    with pytest.raises(InputFileError, match=r"adapter\.safetensors: tensor transformer\.h\.0\.attn\.c_attn\.lora_A: "
                                             r"shape \(8, 64\) does not fit the model's \(16, 64\)"):
        load_adapter(folder)
    # a base model of another shape
    config["train_config"]["rank"] = 4
    config["model_shape"]["n_embd"] = 1024
    config_path.write_text(json.dumps(config))
    with pytest.raises(InputFileError, match=r"adapter_config\.json: adapter does not fit the base model: "
                                             r"n_embd=1024 in the adapter but 64 in the model"):
        load_adapter(folder)
    config_path.write_text('{"format": "nlg-adapter",\n  "format_version": 1,\n  oops}')
    with pytest.raises(InputFileError, match=r"adapter_config\.json:3: not valid JSON"):
        load_adapter(folder)
    with pytest.raises(InputFileError, match=r"nowhere: no such file or folder"):
        load_adapter(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputFileError, match=r"empty: no adapter_config\.json \+ adapter\.safetensors"):
        load_adapter(tmp_path / "empty")


# ------------------------------------------------------------------------------------------------ PEFT


@pytest.mark.parametrize("targets", [("q", "v"), ALL])
def test_peft_export_loads_in_peft_with_equal_logits(tmp_path, targets):
    from peft import PeftModel
    from transformers import GPT2LMHeadModel

    build_random("tiny", seed=0).save_pretrained(tmp_path / "base")
    cfg = TrainConfig(model="tiny", rank=3, lora_alpha=16, lora_targets=targets)
    model = _trained_lora(cfg)
    ids, pos = _inputs()
    expected = _logits(model, ids, pos)
    folder = export_peft(model, cfg, tmp_path / "peft")
    config = json.loads((folder / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["fan_in_fan_out"]) == (3, 16, True)
    groups = len(set(targets) & {"q", "k", "v"})  # q,v: one rank-2r LoRA on c_attn, alpha doubled
    assert config["rank_pattern"] == {"attn.c_attn": 3 * groups}
    assert config["alpha_pattern"] == {"attn.c_attn": 16 * groups}
    weights = load_file(folder / "adapter_model.safetensors")
    b = weights["base_model.model.transformer.h.0.attn.c_attn.lora_B.weight"]
    assert b.shape == (192, 3 * groups)
    assert (torch.count_nonzero(b[64:128]) == 0) == ("k" not in targets)  # q,v: zero k rows, an exact LoRA
    if "c_fc" in targets:
        assert weights["base_model.model.transformer.h.1.mlp.c_fc.lora_B.weight"].shape == (256, 3)
    peft_model = PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(tmp_path / "base"), folder).eval()
    assert torch.allclose(_logits(peft_model, ids, pos), expected, atol=1e-5)
    assert not torch.allclose(_logits(build_random("tiny", seed=0), ids, pos), expected, atol=1e-3)


# ------------------------------------------------------------------------------------------------ authors' files


def _authors_reference():
    ref = json.loads(AUTHORS_LOGITS.read_text())
    ids = torch.tensor(ref["input_ids"])
    return ids, torch.arange(ids.shape[1]).expand(*ids.shape), torch.tensor(ref["logits"])


def test_authors_checkpoint_gives_the_authors_logits():
    ids, pos, authors = _authors_reference()
    ckpt = import_authors_checkpoint(AUTHORS_PT)
    assert (ckpt.rank, ckpt.n_layer, ckpt.n_embd, ckpt.targets, ckpt.lora_alpha) == (2, 2, 32, ("q", "v"), 32.0)
    assert sorted(ckpt.state) == [f"transformer.h.{i}.attn.c_attn.lora_{p}" for i in (0, 1) for p in "AB"]
    assert not torch.allclose(_logits(fx.our_base_model(), ids, pos), authors, atol=1e-2)  # LoRA does matter
    model, cfg = load_adapter(AUTHORS_PT, model=fx.our_base_model())
    assert (cfg.method, cfg.rank, cfg.lora_alpha, cfg.lora_targets) == ("lora", 2, 32.0, ("q", "v"))
    assert torch.allclose(_logits(model, ids, pos), authors, atol=1e-5)
    merged = load_for_decoding(AUTHORS_PT, model=fx.our_base_model())
    assert torch.allclose(_logits(merged, ids, pos), authors, atol=1e-5)
    # alpha is not in their file: another alpha gives other logits
    other, _ = load_adapter(AUTHORS_PT, model=fx.our_base_model(), lora_alpha=16)
    assert not torch.allclose(_logits(other, ids, pos), authors, atol=1e-2)


def test_authors_format_round_trip_and_prefix_variants(tmp_path):
    model, _ = load_adapter(AUTHORS_PT, model=fx.our_base_model())
    out = export_authors_checkpoint(model, tmp_path / "ours.pt")
    theirs = torch.load(AUTHORS_PT, weights_only=True)["model_state_dict"]
    ours = torch.load(out, weights_only=True)["model_state_dict"]
    assert sorted(ours) == sorted(theirs)
    for k in theirs:
        assert torch.equal(ours[k], theirs[k])
    # a full end-of-training save (their model.state_dict(): base weights too) and un-prefixed keys import alike
    full = {f"module.transformer.{k}": v for k, v in fx.base_state().items()}
    full.update(theirs)
    torch.save({"model_state_dict": full}, tmp_path / "full.pt")
    plain = {k[len("module."):]: v for k, v in theirs.items()}
    torch.save(plain, tmp_path / "plain.pt")
    reference = import_authors_checkpoint(AUTHORS_PT).state
    for path, n_ignored in ((tmp_path / "full.pt", len(fx.base_state())), (tmp_path / "plain.pt", 0)):
        ckpt = import_authors_checkpoint(path)
        assert len(ckpt.ignored) == n_ignored
        assert all(torch.equal(ckpt.state[k], reference[k]) for k in reference)
    with pytest.raises(ValueError, match="q,v only"):
        export_authors_checkpoint(_trained_lora(TrainConfig(model="tiny", lora_targets=("q", "k"))), tmp_path / "x.pt")


def test_bad_authors_files_are_refused_with_file_and_layer(tmp_path):
    theirs = torch.load(AUTHORS_PT, weights_only=True)["model_state_dict"]
    missing = {k: v for k, v in theirs.items() if "h.1.attn.c_attn.lora_B" not in k}
    torch.save({"model_state_dict": missing}, tmp_path / "missing.pt")
    with pytest.raises(InputFileError, match=r"missing\.pt: layer 1 has no lora_B"):
        import_authors_checkpoint(tmp_path / "missing.pt")
    bad = dict(theirs)
    bad["module.transformer.h.0.attn.c_attn.lora_B"] = torch.zeros(96, 2)
    torch.save({"model_state_dict": bad}, tmp_path / "bad.pt")
    with pytest.raises(InputFileError, match=r"bad\.pt: layer 0: lora_B is \(96, 2\), expected \(64, 2\)"):
        import_authors_checkpoint(tmp_path / "bad.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputFileError, match=r"junk\.pt: not a readable PyTorch checkpoint"):
        import_authors_checkpoint(tmp_path / "junk.pt")
    torch.save({"model_state_dict": {"wte.weight": torch.zeros(2, 2)}}, tmp_path / "nolora.pt")
    with pytest.raises(InputFileError, match=r"nolora\.pt: no '...h.<i>.attn.c_attn.lora_A/lora_B' tensors"):
        import_authors_checkpoint(tmp_path / "nolora.pt")
    with pytest.raises(InputFileError, match=r"authors_lora_tiny\.pt: no GPT-2 card has 2 layers of width 32"):
        load_adapter(AUTHORS_PT)  # no model given and no card of that shape
    with pytest.raises(InputFileError, match=r"adapter does not fit the base model: n_embd=32 in the adapter but 64"):
        load_adapter(AUTHORS_PT, model=build_random("tiny", seed=0))


def test_cli_import_authors_info_and_export_peft(tmp_path, capsys):
    ids, pos, authors = _authors_reference()
    assert adapter_io.main(["import-authors", str(AUTHORS_PT), "--out", str(tmp_path / "imp"),
                            "--base-model", "custom-32"]) == 0
    model, cfg = load_adapter(tmp_path / "imp", model=fx.our_base_model())
    assert cfg.model == "custom-32" and torch.allclose(_logits(model, ids, pos), authors, atol=1e-5)
    capsys.readouterr()
    assert adapter_io.main(["info", str(tmp_path / "imp")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["num_params"] == 2 * (4 * 32 + 64 * 2) and info["hyper_params"]["rank"] == 2
    assert adapter_io.main(["export-peft", str(AUTHORS_PT), "--out", str(tmp_path / "peft"),
                            "--base-model", "custom-32"]) == 0
    weights = load_file(tmp_path / "peft" / "adapter_model.safetensors")
    assert weights["base_model.model.transformer.h.1.attn.c_attn.lora_B.weight"].shape == (96, 4)
    assert adapter_io.main(["info", str(tmp_path / "nothing")]) == 2
    assert "nothing: no such file or folder" in capsys.readouterr().err


def test_import_authors_and_export_peft_refuse_to_replace_an_adapter_without_overwrite(tmp_path, capsys):
    out = tmp_path / "run" / "adapter"
    assert adapter_io.main(["import-authors", str(AUTHORS_PT), "--out", str(out), "--base-model", "custom-32"]) == 0
    trained = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    for cmd in ("import-authors", "export-peft"):
        assert adapter_io.main([cmd, str(AUTHORS_PT), "--out", str(out), "--base-model", "custom-32"]) == 2
        assert capsys.readouterr().err.strip() == (
            f"error: {out}: already holds adapter.safetensors, adapter_config.json (a trained adapter?); "
            "pass --overwrite to replace it, or choose another --out")
        assert {p.name: p.read_bytes() for p in out.iterdir()} == trained
    assert adapter_io.main(["import-authors", str(AUTHORS_PT), "--out", str(out), "--base-model", "custom-33",
                            "--overwrite"]) == 0
    assert json.loads((out / "adapter_config.json").read_text())["base_model"] == "custom-33"


def test_medium_shaped_authors_checkpoint_maps_to_the_gpt2_medium_card(tmp_path):
    """A file shaped like their released gpt2-medium r=4 checkpoints converts without any base weights."""
    gen = torch.Generator().manual_seed(0)
    state = {}
    for i in range(24):
        state[f"module.transformer.h.{i}.attn.c_attn.lora_A"] = torch.randn(8, 1024, generator=gen)
        state[f"module.transformer.h.{i}.attn.c_attn.lora_B"] = torch.randn(2048, 4, generator=gen)
    torch.save({"model_state_dict": state}, tmp_path / "gpt2_md_lora_e2e.pt")
    stored = adapter_io.read_adapter(tmp_path / "gpt2_md_lora_e2e.pt")
    assert (stored.cfg.model, stored.cfg.rank, stored.cfg.lora_targets) == ("gpt2-medium", 4, ("q", "v"))
    assert stored.model_shape == {"n_layer": 24, "n_embd": 1024, "n_head": 16}
    assert adapter_io.main(["import-authors", str(tmp_path / "gpt2_md_lora_e2e.pt"), "--out", str(tmp_path / "a")]) == 0
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert (config["base_model"], config["num_params"], config["random_model"]) == ("gpt2-medium", 393_216, False)
    assert config["model_shape"] == {"n_layer": 24, "n_embd": 1024, "n_head": 16}
    converted = load_file(tmp_path / "a" / "adapter.safetensors")
    assert torch.equal(converted["transformer.h.23.attn.c_attn.lora_B"],
                       state["module.transformer.h.23.attn.c_attn.lora_B"])
    assert 1_570_000 < (tmp_path / "a" / "adapter.safetensors").stat().st_size < 1_600_000
