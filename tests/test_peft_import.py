"""PEFT in: a GPT-2 LoRA trained with PEFT (any targets PEFT allows on GPT-2, fan_in_fan_out, rank/alpha patterns,
rsLoRA) is read into this project's LoRA and decoded with the paper's beam search; ours -> PEFT -> ours is exact;
what cannot be represented is refused with the reason."""
from __future__ import annotations

import json

import pytest
import torch

from nlg.adapter_io import export_peft, load_for_decoding, read_adapter
from nlg.config import DecodeConfig, TrainConfig
from nlg.generate import generate
from nlg.io_utils import InputFileError
from nlg.lora import lora_modules
from nlg.methods import get_method
from nlg.models import build_random
from tests.conftest import FIXTURES

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPTS = FIXTURES / "authors_train_step" / "train.jsonl"


def _peft_model(tmp_path, **lora_kw):
    """A tiny GPT-2 with a PEFT LoRA whose A and B are random (as after training), saved with save_pretrained."""
    from peft import LoraConfig, get_peft_model

    base = build_random("tiny", seed=0)
    base.save_pretrained(tmp_path / "base")
    kw = dict(r=4, lora_alpha=16, target_modules=["c_attn"], fan_in_fan_out=True, lora_dropout=0.0)
    kw.update(lora_kw)
    model = get_peft_model(base, LoraConfig(**kw))
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    model.save_pretrained(tmp_path / "peft")
    return model.eval()


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


IDS = torch.randint(0, 50257, (2, 9), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("lora_kw,exact", [
    ({}, True),  # c_attn alone: the general form (q, k, v each get the whole A)
    ({"target_modules": ["c_attn", "c_proj", "c_fc"]}, True),  # every Conv1D of the blocks
    ({"target_modules": ["c_fc"], "rank_pattern": {"c_fc": 2}, "layers_to_transform": [1]}, True),  # one layer
    ({"target_modules": ["c_attn", "c_fc"], "rank_pattern": {"c_fc": 2}, "alpha_pattern": {"c_fc": 4}}, False),
    ({"target_modules": ["c_attn"], "use_rslora": True}, True),
])
def test_a_peft_lora_gives_peft_s_logits(tmp_path, lora_kw, exact):
    peft_model = _peft_model(tmp_path, **lora_kw)
    expected = _logits(peft_model, IDS)
    ours = load_for_decoding(tmp_path / "peft", base_model=str(tmp_path / "base"))
    got = _logits(ours, IDS)
    # ours merges the update into W (one rounding of W + scale·BA per weight) where PEFT adds x·W and the LoRA
    # path: the same function to float32 rounding of logits of magnitude ~1 through 2 layers
    assert torch.allclose(got, expected, atol=2e-5, rtol=0)
    assert not torch.allclose(_logits(build_random("tiny", seed=0), IDS), expected, atol=1e-3)
    assert read_adapter(tmp_path / "peft", base_model="tiny").cfg.method == "lora"
    from nlg.peft_import import read_peft_lora
    assert read_peft_lora(tmp_path / "peft").exact is exact


def test_a_peft_lora_decodes_to_the_tokens_of_the_same_weights_merged(tmp_path):
    peft_model = _peft_model(tmp_path, target_modules=["c_attn", "c_proj"])
    peft_model.merge_and_unload().save_pretrained(tmp_path / "merged")
    cfg = DecodeConfig(beam=3, max_new_tokens=8)
    a = generate(tmp_path / "run-a", "e2e", data=PROMPTS, adapter=str(tmp_path / "peft"),
                 base_model=str(tmp_path / "base"), cfg=cfg, limit=3, quiet=True)
    b = generate(tmp_path / "run-b", "e2e", data=PROMPTS, base_model=str(tmp_path / "merged"), cfg=cfg, limit=3,
                 quiet=True)
    tokens = lambda p: [json.loads(x)["predict"] for x in p.read_text().splitlines()]  # noqa: E731
    assert tokens(a) == tokens(b) and any(tokens(a))


@pytest.mark.parametrize("targets", [("q", "v"), ("q", "k", "v", "o", "c_fc", "c_proj"), ("v",), ("k", "c_proj")])
def test_ours_to_peft_to_ours_is_exact(tmp_path, targets):
    cfg = TrainConfig(model="tiny", rank=3, lora_alpha=12, lora_targets=targets)
    model = build_random("tiny", seed=0)
    get_method("lora").apply(model, cfg)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for _, m in lora_modules(model):
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=gen))
    state = get_method("lora").trainable_state(model)
    back = read_adapter(export_peft(model, cfg, tmp_path / "peft"), base_model="tiny")
    assert (back.cfg.rank, back.cfg.lora_alpha, back.cfg.lora_targets) == (3, 12.0, targets)
    assert back.state.keys() == state.keys() and all(torch.equal(back.state[k], state[k]) for k in state)


@pytest.mark.parametrize("change,message", [
    ({"use_dora": True}, "DoRA"),
    ({"bias": "lora_only"}, "trained biases"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
    ({"peft_type": "PREFIX_TUNING"}, "only LoRA is read"),
])
def test_what_cannot_be_represented_is_refused(tmp_path, change, message):
    _peft_model(tmp_path)
    path = tmp_path / "peft" / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(InputFileError, match=f"adapter_config.json: this PEFT adapter cannot be represented here: "
                                             f".*{message}"):
        read_adapter(tmp_path / "peft", base_model="tiny")


def test_lora_on_the_embedding_is_refused(tmp_path):
    _peft_model(tmp_path, target_modules=["c_attn", "wte"])
    with pytest.raises(InputFileError, match="wte.*not a LoRA tensor of a GPT-2 block"):
        read_adapter(tmp_path / "peft", base_model="tiny")


def test_prelayer_exports_as_peft_prefix_tuning_with_equal_logits(tmp_path):
    """PreLayer's plain prefixes as PEFT prefix tuning (prefix_projection off): same cache, same mask ones, real
    tokens from position l_p in both, so PEFT computes our logits."""
    from peft import PeftModel
    from transformers import GPT2LMHeadModel

    from nlg.adapter_io import export_peft
    from nlg.methods.prefix import KV_KEY

    base = build_random("tiny", seed=0)
    base.save_pretrained(tmp_path / "base")
    cfg = TrainConfig(model="tiny", method="prefix-layer", prefix_len=5, prefix_mid_dim=32)
    model = get_method("prefix-layer").apply(build_random("tiny", seed=0), cfg)
    kv = get_method("prefix-layer").export_state(model)[KV_KEY]
    get_method("prefix-layer").load_state(model, {KV_KEY: torch.randn(kv.shape, generator=torch.Generator()
                                                                       .manual_seed(4))})
    model = get_method("prefix-layer").for_inference(model).eval()
    folder = export_peft(model, cfg, tmp_path / "peft")
    config = json.loads((folder / "adapter_config.json").read_text())
    assert (config["peft_type"], config["num_virtual_tokens"], config["prefix_projection"]) == \
        ("PREFIX_TUNING", 5, False)
    peft_model = PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(tmp_path / "base"), folder).eval()
    ids = IDS.clone()
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # right padding, as training batches have
    with torch.no_grad():
        ours = model(input_ids=ids, attention_mask=mask).logits
        theirs = peft_model(input_ids=ids, attention_mask=mask).logits
    live = mask.bool()
    assert torch.allclose(ours[live], theirs[live], atol=1e-5, rtol=0)
    with torch.no_grad():
        plain = base.eval()(input_ids=ids, attention_mask=mask).logits
    assert not torch.allclose(plain[live], ours[live], atol=1e-3)
