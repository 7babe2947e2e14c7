"""``--kernels reference|fast``: the reference path is loralib's LoRA forward with ``nn.Dropout``, transformers'
GPT-2 forward on padded batches and ``F.cross_entropy``; fast (the default) equals it in exact arithmetic.

Equality is checked in float64, where every kernel's rounding is ~1e-16 relative: the fast path's regrouped sums
(packed rows, the fused head, the concatenated ``[A|1]·[sB;bias]`` product) can then differ from the reference by
no more than a few float64 roundings of the magnitudes summed, far below the 1e-9 relative bound used here, so a
real difference (a wrong mask, a missing term) cannot hide inside it on any CPU."""
from __future__ import annotations

import json

import pytest
import torch

from nlg.config import paper_train_config
from nlg import kernels
from nlg.kernels import FastLoRAConv1D
from nlg.lora import LoRAConv1D, inject_lora, lora_modules
from nlg.loss import MaskedLMLoss
from nlg.models import build_random
from nlg.train import TrainError, Trainer, train
from tests.conftest import FIXTURES
from tests.tolerance import assert_within, f64, gamma, mag

DATA = FIXTURES / "authors_train_step" / "train.jsonl"
pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(seed=3):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([9, 6, 4])
    ids = torch.randint(0, 50257, (3, 9), generator=g)
    pos = torch.arange(9).expand(3, 9)
    mask = (torch.arange(9) < lengths[:, None]).double() * (torch.arange(9) >= 2).double()
    return ids, pos, torch.roll(ids, -1, 1), mask, lengths


def _model(reference: bool):
    model = build_random("tiny", seed=0).double()
    inject_lora(model, rank=2, alpha=8, targets=("q", "v", "o"))
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for _, m in lora_modules(model):
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g, dtype=torch.float64) * 0.05)
    if reference:
        return model, MaskedLMLoss(model)
    loss_fn = kernels.loss_module(model)
    kernels.install(model)
    return model, loss_fn


def test_fast_loss_and_gradients_equal_the_reference_in_float64():
    ids, pos, targets, mask, lengths = _batch()
    results = []
    for reference in (True, False):
        model, loss_fn = _model(reference)
        model.train()
        assert getattr(loss_fn, "packed", False) is (not reference)
        loss = loss_fn(ids, pos, targets, mask, lengths=lengths, label_smooth=0.1)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results.append((loss.detach(), grads))
    (ref_loss, ref_grads), (fast_loss, fast_grads) = results
    assert torch.allclose(fast_loss, ref_loss, rtol=1e-9, atol=0)
    assert ref_grads.keys() == fast_grads.keys() and len(ref_grads) == 8  # 2 layers x (c_attn, c_proj) x A, B
    for name, g in ref_grads.items():
        scale = g.abs().max()
        assert (fast_grads[name] - g).abs().max() <= 1e-9 * scale, name


def test_reference_lora_forward_is_loralibs_formula_with_nn_dropouts_mask():
    torch.manual_seed(0)
    model = build_random("tiny", seed=0)
    inject_lora(model, rank=2, alpha=8, dropout=0.1, targets=("q", "v"))  # the reference kernels: nothing installed
    layer = model.transformer.h[0].attn.c_attn
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(5, 64)
    layer.train()
    torch.manual_seed(7)
    got = layer(x)
    torch.manual_seed(7)  # the same draw nn.Dropout makes: loralib's masks, so the authors' random stream
    dropped = torch.nn.functional.dropout(x, 0.1, training=True)
    a, b = f64(layer.lora_A).view(2, 2, 64), f64(layer.lora_B).view(2, 64, 2)
    # exact (float64) result of the float32 operands, and a bound on what any float32 kernel order makes of it:
    # the base dot products (64 terms + bias), the two LoRA products (64, then 2 terms), the scaling by 4 (exact)
    # and the sum of the parts: gamma_(64 + 2 + 4) of the sum of the terms' magnitudes
    expected = f64(x) @ f64(layer.weight) + f64(layer.bias)
    size = mag(x) @ mag(layer.weight) + mag(layer.bias)
    for i, cols in enumerate((slice(0, 64), slice(128, 192))):
        expected[:, cols] += (f64(dropped) @ a[i].T @ b[i].T) * 4.0
        size[:, cols] += (mag(dropped) @ a[i].abs().T @ b[i].abs().T) * 4.0
    assert_within(got, expected, gamma(64 + 2 + 4) * size, "LoRA forward")


def _cfg(tmp_path, name, **kw):
    base = dict(model="tiny", train_data=str(DATA), valid_data=str(DATA), out_dir=str(tmp_path / name), seq_len=16,
                batch_size=4, warmup_steps=2, lr=1e-2, log_interval=1, save_interval=10, max_steps=6)
    base.update(kw)
    return paper_train_config("e2e", **base)


def test_reference_mode_trains_with_plain_modules_and_is_recorded(tmp_path):
    trainer = Trainer(_cfg(tmp_path, "ref", kernels="reference"), quiet=True)
    assert trainer.kernels is None and type(trainer.loss_module) is MaskedLMLoss
    assert all(type(m) is LoRAConv1D for _, m in lora_modules(trainer.model))
    assert not any(isinstance(m, torch.nn.GELU) for m in trainer.model.modules())  # transformers' own GELU
    run = trainer.run()
    assert json.loads((run / "recipe.json").read_text())["kernels"] == "reference"
    losses = [json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert len(losses) == 6 and losses[-1] < losses[0]
    with pytest.raises(TrainError, match="unknown --kernels 'slow'"):
        train(_cfg(tmp_path, "bad", kernels="slow"), quiet=True)


def test_install_switches_every_kernel_and_remove_puts_the_reference_back():
    model = build_random("tiny", seed=0)
    inject_lora(model, rank=2, alpha=8, targets=("q", "v"))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    acts = [type(b.mlp.act) for b in model.transformer.h]
    installed = kernels.install(model, "cpu", "fp32")
    assert [type(m) for _, m in lora_modules(model)] == [FastLoRAConv1D] * 2
    assert all(type(b.mlp.act) is torch.nn.GELU for b in model.transformer.h)
    assert installed.packs is None or len(installed.packs) == 4 * 2 + 2  # CPU fp32: the frozen weights packed
    kernels.remove(model, installed)
    assert [type(m) for _, m in lora_modules(model)] == [LoRAConv1D] * 2
    assert [type(b.mlp.act) for b in model.transformer.h] == acts and installed.packs is None
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # same tensors, same names


def test_fast_mode_installs_the_kernels_on_the_trained_model(tmp_path):
    trainer = Trainer(_cfg(tmp_path, "fast", max_steps=1), quiet=True)
    assert isinstance(trainer.loss_module, kernels.FastMaskedLMLoss) and trainer.loss_module.packed
    assert all(type(m) is FastLoRAConv1D for _, m in lora_modules(trainer.model))
    trainer.run()
    assert trainer.kernels.packs is None  # freed when the run ended


def test_reference_mode_with_dropout_resumes_bit_for_bit_across_an_epoch_end(tmp_path):
    """Reference mode's extra draws (the authors' DataLoader iterator at each epoch and --eval-interval validation,
    nlg.batching.loader_seed_draw) are made once: 8 updates straight == 4 (the end of epoch 1), stop, resume 4."""
    kw = dict(kernels="reference", lora_dropout=0.1, max_steps=None, epochs=2, eval_interval=3, save_interval=2)
    straight = train(_cfg(tmp_path, "straight", **kw), quiet=True)
    train(_cfg(tmp_path, "resumed", **kw), stop_after=4, quiet=True)
    resumed = train(_cfg(tmp_path, "resumed", resume=True, **kw), quiet=True)
    strip = lambda run: [{k: v for k, v in json.loads(x).items() if k not in ("tokens_per_s", "elapsed_s")}
                         for x in (run / "log.jsonl").read_text().splitlines()]
    assert strip(straight) == strip(resumed) and len([r for r in strip(straight) if "loss" in r]) == 8
    a, b = (torch.load(run / "checkpoints" / "step-8" / "trainable.pt") for run in (straight, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
