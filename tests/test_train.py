"""The trainer: data layout and order, optimizer and schedule, run folder, resume, CLI, falling loss on E2E."""
from __future__ import annotations

import json
import math
import random

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data.distributed import DistributedSampler

from nlg import train as train_mod
from nlg.batching import EpochPlan, build_example, collate, epoch_order, read_encoded, total_steps
from nlg.checkpoint import list_checkpoints, load_checkpoint
from nlg.config import TrainConfig, paper_train_config
from nlg.io_utils import InputFileError
from nlg.loss import MASK_EPS, full_lm_loss, masked_lm_loss
from nlg.optim import AdamW, lr_factor
from nlg.run_folder import read_provenance
from nlg.train import TrainError, build_parser, config_from_args, train
from tests.conftest import FIXTURES, SHARED_DATA

DATA = FIXTURES / "authors_train_step" / "train.jsonl"  # 13 invented examples


pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(tmp_path, name="run", **kw):
    base = dict(model="tiny", train_data=str(DATA), valid_data=str(DATA), out_dir=str(tmp_path / name),
                seq_len=16, batch_size=4, warmup_steps=2, lr=1e-2, log_interval=1, save_interval=3)
    base.update(kw)
    return paper_train_config("e2e", **base)


# ---------------------------------------------------------------- data
def test_example_layout_and_truncation():
    e = build_example([1, 2, 3], [4, 5], seq_len=512)
    assert (e.input, e.target, e.mask) == ((1, 2, 3, 4, 5), (2, 3, 4, 5, 0), (0, 0, 1, 1, 0))
    # cut at seq_len 4: the authors' mask stops one short of the cut row
    e = build_example([1, 2, 3], [4, 5], seq_len=4)
    assert (e.input, e.target, e.mask) == ((1, 2, 3, 4), (2, 3, 4, 5), (0, 0, 1, 0))
    e = build_example([1, 2, 3, 4, 5, 6], [7], seq_len=4)
    assert (e.input, e.mask) == ((1, 2, 3, 4), (0, 0, 0, 0))


def test_collate_pads_after_real_tokens_to_longest():
    a, b = build_example([7, 8], [9], 512), build_example([1, 2, 3, 4], [5, 6], 512)
    batch = collate([a, b])
    assert batch.input_ids.tolist() == [[7, 8, 9, 0, 0, 0], [1, 2, 3, 4, 5, 6]]
    assert batch.targets.tolist() == [[8, 9, 0, 0, 0, 0], [2, 3, 4, 5, 6, 0]]
    assert batch.mask.int().tolist() == [[0, 1, 0, 0, 0, 0], [0, 0, 0, 1, 1, 0]]
    assert batch.position_ids.tolist() == [list(range(6))] * 2
    assert (batch.n_tokens, batch.n_loss) == (9, 3)


@pytest.mark.parametrize("n,world,epoch", [(16, 1, 1), (16, 2, 3), (24, 3, 2), (40, 2, 5), (17, 4, 1)])
def test_epoch_order_equals_torch_distributed_sampler(n, world, epoch):
    for rank in range(world):
        sampler = DistributedSampler(list(range(n)), num_replicas=world, rank=rank, seed=110)
        sampler.set_epoch(epoch)
        assert epoch_order(n, 110, epoch, rank, world) == list(sampler)


def test_epoch_plan_draws_stretched_items_from_random_911():
    examples = read_encoded(DATA, 16)
    rng = random.Random(911)
    plan = EpochPlan(examples, 4, 110, 1, 0, 1, rng)
    order = epoch_order(16, 110, 1)
    ref = random.Random(911)
    assert [i for b in plan.batches for i in b] == [i if i < 13 else ref.randint(0, 12) for i in order]
    assert rng.getstate() == ref.getstate()


def test_total_steps_is_the_authors_max_step():
    # E2E train (42061 examples), batch 8, 5 epochs: their max_step
    assert total_steps(42061, 8, 5) == 5 * math.ceil(42061 / 8) == 26290
    assert total_steps(42061, 8, 5, world=2) == (26290 + 1) // 2
    assert total_steps(42061, 4, 5, grad_acc=2) == 5 * math.ceil(42061 / 4) // 2
    assert total_steps(42061, 8, 5, max_steps=7) == 7


def test_read_encoded_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"context": [1, 50256], "completion": [2]}\n{"context": "text", "completion": [2]}\n')
    with pytest.raises(InputFileError, match=r"bad\.jsonl:2: .*token ids"):
        read_encoded(bad, 16)
    bad.write_text('{"context": [1, 99999], "completion": [2]}\n')
    with pytest.raises(InputFileError, match=r"bad\.jsonl:1: .*99999"):
        read_encoded(bad, 16)
    bad.write_text("")
    with pytest.raises(InputFileError, match="empty"):
        read_encoded(bad, 16)


# ---------------------------------------------------------------- loss and optimizer
def test_masked_loss_equals_full_formula_and_eps():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50, bias=False)
    hidden = torch.randn(2, 5, 8)
    targets = torch.randint(0, 50, (2, 5))
    mask = torch.tensor([[0, 1, 1, 0, 0], [0, 0, 1, 1, 1]])
    for ls in (0.0, 0.1):
        ours = masked_lm_loss(hidden, head, targets, mask, ls)
        ref = full_lm_loss(head(hidden), targets, mask, ls)
        torch.testing.assert_close(ours, ref, rtol=1e-6, atol=0)
    logp = torch.log_softmax(head(hidden), -1)
    by_hand = sum((0.9 * -logp[b, t, targets[b, t]] + 0.1 * -logp[b, t].mean())
                  for b in range(2) for t in range(5) if mask[b, t]) / (5 + MASK_EPS)
    torch.testing.assert_close(masked_lm_loss(hidden, head, targets, mask, 0.1), by_hand, rtol=1e-6, atol=0)


def test_adamw_decays_after_the_update():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    opt = AdamW([p], lr=0.1, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01, correct_bias=True)
    w = p.detach().clone().double()
    m = torch.zeros(3, dtype=torch.double)
    v = torch.zeros(3, dtype=torch.double)
    for t, g in enumerate([torch.tensor([0.3, -0.1, 2.0]), torch.tensor([-0.2, 0.4, 1.0])], 1):
        p.grad = g.clone()
        opt.step()
        g = g.double()
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        w = w - 0.1 * math.sqrt(1 - 0.999**t) / (1 - 0.9**t) * m / (v.sqrt() + 1e-6)
        w = w - 0.1 * 0.01 * w  # decay of the already-updated weight
        torch.testing.assert_close(p.detach().double(), w, rtol=1e-6, atol=1e-7)


def test_linear_schedule_with_warmup():
    assert [lr_factor(k, 500, 1000) for k in (0, 250, 500, 750, 999, 1000, 1200)] == \
        [0.0, 0.5, 1.0, 0.5, 1 / 500, 0.0, 0.0]
    assert lr_factor(700, 500, 1000, "constant") == 1.0


# ---------------------------------------------------------------- runs
def test_run_folder_contract(tmp_path):
    out = train(_cfg(tmp_path, max_steps=5, save_interval=2), quiet=True)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [".lock", "recipe.json", "provenance.json", "log.jsonl", "checkpoints", "adapter", "peft_adapter",
         "train_summary.json"])
    assert (out / ".lock").read_text() == ""  # released: the holder's line is cleared when the stage ends
    assert [s for s, _ in list_checkpoints(out)] == [4, 5]  # every 2 steps and the last, the last two kept
    recipe = json.loads((out / "recipe.json").read_text())
    assert TrainConfig.from_json(json.dumps(recipe)) == train_mod.resolve_paths(_cfg(tmp_path, max_steps=5,
                                                                                     save_interval=2))
    provenance = read_provenance(out)
    assert provenance["model"]["random"] is True and provenance["data"]["synthetic"] is False
    assert recipe["trainable_params"] == recipe["paper_param_count"] == 2 * (8 * 64 + 128 * 4)
    lines = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    train_lines = [x for x in lines if "loss" in x]
    assert [x["step"] for x in train_lines] == [1, 2, 3, 4, 5]
    assert all(set(x) == {"step", "epoch", "loss", "lr", "tokens_per_s", "elapsed_s"} for x in train_lines)
    valid_lines = [x for x in lines if "valid_loss" in x]
    assert [(x["step"], x["epoch"]) for x in valid_lines] == [(4, 1), (5, 2)]  # 4 batches per epoch, then the end
    assert all(set(x) == {"step", "epoch", "valid_loss"} for x in valid_lines)
    assert [x["lr"] for x in train_lines] == [0.0, 5e-3, 1e-2, pytest.approx(1e-2 * 2 / 3, rel=1e-15), pytest.approx(1e-2 / 3, rel=1e-15)]
    summary = json.loads((out / "train_summary.json").read_text())
    assert set(summary) == {"trainable_params", "train_time_s", "tokens_per_s", "final_train_loss",
                            "final_valid_loss", "steps", "best_step", "best_valid_loss", "checkpoint"}
    assert summary["checkpoint"]["selected"] == "last" and summary["checkpoint"]["step"] == 5  # the default
    assert summary["steps"] == 5 and summary["final_valid_loss"] == valid_lines[-1]["valid_loss"]
    assert summary["final_train_loss"] == train_lines[-1]["loss"]
    # the adapter holds exactly the trained tensors of the last checkpoint
    final = load_checkpoint(out / "checkpoints" / "step-5")["trainable"]
    saved = load_file(str(out / "adapter" / "adapter.safetensors"))
    assert set(saved) == set(final) and all(torch.equal(saved[k], final[k]) for k in final)


def test_resume_is_bit_for_bit(tmp_path):
    """6 updates straight == 3 updates, stop, resume 3 (LoRA dropout on, so the RNG state must come back)."""
    kw = dict(max_steps=6, lora_dropout=0.1)
    straight = train(_cfg(tmp_path, "straight", **kw), quiet=True)
    train(_cfg(tmp_path, "resumed", **kw), stop_after=3, quiet=True)
    resumed = tmp_path / "resumed"
    assert not (resumed / "train_summary.json").exists() and [s for s, _ in list_checkpoints(resumed)] == [3]
    train(_cfg(tmp_path, "resumed", resume=True, **kw), quiet=True)
    a, b = load_checkpoint(straight / "checkpoints" / "step-6"), load_checkpoint(resumed / "checkpoints" / "step-6")
    assert a["trainable"].keys() == b["trainable"].keys()
    assert all(torch.equal(a["trainable"][k], b["trainable"][k]) for k in a["trainable"])
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys() and all(
        torch.equal(sa[i][k], sb[i][k]) if torch.is_tensor(sa[i][k]) else sa[i][k] == sb[i][k]
        for i in sa for k in sa[i])
    assert a["state"]["micro"] == b["state"]["micro"] == 6
    strip = lambda p: [{k: v for k, v in json.loads(x).items() if k not in ("tokens_per_s", "elapsed_s")}
                       for x in (p / "log.jsonl").read_text().splitlines()]
    assert strip(straight) == strip(resumed)  # no duplicated or missing line after the resume


def test_refusals_and_overwrite(tmp_path, capsys):
    cfg = _cfg(tmp_path, max_steps=2)
    train(cfg, quiet=True)
    with pytest.raises(TrainError, match="finished run.*--overwrite"):
        train(cfg, quiet=True)
    train(_cfg(tmp_path, max_steps=2, resume=True), quiet=True)  # a finished run resumed: nothing to do
    assert "already finished" in capsys.readouterr().err
    train(_cfg(tmp_path, "other", max_steps=4), stop_after=3, quiet=True)
    with pytest.raises(TrainError, match="started run.*--resume"):
        train(_cfg(tmp_path, "other", max_steps=4), quiet=True)
    with pytest.raises(TrainError, match="--lr: run has 0.01, now 0.02"):
        train(_cfg(tmp_path, "other", max_steps=4, lr=2e-2, resume=True), quiet=True)
    out = train(_cfg(tmp_path, "other", max_steps=4), overwrite=True, quiet=True)
    assert json.loads((out / "train_summary.json").read_text())["steps"] == 4


def test_cli_flags_cover_the_config_and_paper_defaults():
    parser = build_parser()
    flags = {a.dest for a in parser._actions}
    assert {f for f in TrainConfig.__dataclass_fields__} <= flags
    cfg, extra = config_from_args(parser.parse_args(["--dataset", "dart", "--rank", "8", "--lora-targets", "q,k,v",
                                                      "--no-correct-bias", "--max-steps", "9", "--device", "cpu"]))
    assert (cfg.weight_decay, cfg.lora_dropout, cfg.label_smooth) == (0.0, 0.0, 0.0)  # DART's column of Table 11
    assert (cfg.rank, cfg.lora_targets, cfg.correct_bias, cfg.max_steps) == (8, ("q", "k", "v"), False, 9)
    assert extra["device"] == "cpu"
    cfg, _ = config_from_args(parser.parse_args(["--model", "tiny"]))
    assert cfg == paper_train_config("e2e", model="tiny")
    assert (cfg.lr, cfg.adam_beta2, cfg.adam_eps, cfg.warmup_steps, cfg.batch_size, cfg.epochs, cfg.seed,
            cfg.label_smooth, cfg.lora_dropout, cfg.weight_decay) == (2e-4, 0.999, 1e-6, 500, 8, 5, 110, 0.1, 0.1, 0.01)


def test_cli_end_to_end(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["--model", "tiny", "--train-data", str(DATA), "--valid-data", str(DATA), "--out-dir", str(out),
            "--seq-len", "16", "--batch-size", "4", "--max-steps", "3", "--save-interval", "2", "--quiet"]
    assert train_mod.main(args + ["--stop-after", "2"]) == 0
    assert train_mod.main(args) == 2
    assert "--resume" in capsys.readouterr().err
    assert train_mod.main(args + ["--resume"]) == 0
    assert "resuming from step 2" in capsys.readouterr().err
    assert json.loads((out / "train_summary.json").read_text())["steps"] == 3


def _e2e_encoded(tmp_path):
    """A few hundred E2E records from ../shared when present, else the project's synthetic sample."""
    from data.e2e.prepare import prepare

    raw = SHARED_DATA / "e2e"
    if (raw / "valid.txt").is_file():
        prepare(raw_dir=raw, out_dir=tmp_path / "e2e", splits=("valid",), limit=240)
        rows = (tmp_path / "e2e" / "valid.jsonl").read_text().splitlines()
        (tmp_path / "e2e" / "train.jsonl").write_text("\n".join(rows[:200]) + "\n")
        (tmp_path / "e2e" / "valid.jsonl").write_text("\n".join(rows[200:]) + "\n")
        return tmp_path / "e2e", False
    from data.synthetic import write_synthetic_e2e

    write_synthetic_e2e(tmp_path / "raw", seed=0)
    prepare(raw_dir=tmp_path / "raw", out_dir=tmp_path / "e2e", splits=("train", "valid"), limit=200)
    return tmp_path / "e2e", True


def test_training_loss_falls_on_e2e(tmp_path):
    data, synthetic = _e2e_encoded(tmp_path)
    cfg = paper_train_config("e2e", model="tiny", train_data=str(data / "train.jsonl"),
                             valid_data=str(data / "valid.jsonl"), out_dir=str(tmp_path / "run"), max_steps=40,
                             warmup_steps=5, lr=2e-3, log_interval=5, save_interval=1000)
    out = train(cfg, quiet=True)
    assert read_provenance(out)["data"]["synthetic"] is synthetic
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    losses = [x["loss"] for x in log if "loss" in x]
    valid = [x["valid_loss"] for x in log if "valid_loss" in x]
    assert len(losses) == 8 and losses[-1] < losses[0] - 0.08
    assert valid[-1] < valid[0]


def test_bucket_by_length_is_a_deterministic_regrouping_of_the_same_epoch():
    examples = read_encoded(DATA, 512)
    plain = EpochPlan(examples, 2, 110, 1, 0, 1, random.Random(911))
    buckets = [EpochPlan(examples, 2, 110, 1, 0, 1, random.Random(911), bucket=50) for _ in range(2)]
    assert buckets[0].batches == buckets[1].batches != plain.batches
    assert sorted(i for b in buckets[0].batches for i in b) == sorted(i for b in plain.batches for i in b)
    spread = lambda plan: sum(max(len(examples[i].input) for i in b) - min(len(examples[i].input) for i in b)
                              for b in plan.batches)
    assert spread(buckets[0]) < spread(plain)  # rows of a batch have close lengths: less padding


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_runs_train_end_to_end(tmp_path, precision):
    """--precision bf16/fp16 (never the paper default) trains through the packed path and saves an adapter."""
    out = train(_cfg(tmp_path, precision=precision, max_steps=3, lora_dropout=0.1), quiet=True)
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 3 and math.isfinite(summary["final_train_loss"])
    assert (out / "adapter").is_dir()


def test_cpu_prepack_trains_the_same_adapter_and_frees_its_packs(tmp_path):
    """--cpu-prepack (the CPU fp32 default: frozen weights packed for MKL's GEMM) changes float rounding only:
    the same losses and adapter as --no-cpu-prepack to fp32 tolerance, and no pack outlives the run."""
    from nlg.kernels import mkl_prepack

    if not mkl_prepack.available():
        pytest.skip("this torch build has no MKL packed GEMM")
    kw = dict(max_steps=4, lora_dropout=0.1)
    trainer = train_mod.Trainer(_cfg(tmp_path, "packed", **kw), quiet=True)
    assert len(trainer.kernels.packs) == 4 * trainer.model.config.n_layer + 2 and mkl_prepack._PACKS
    packed = trainer.run()
    assert not mkl_prepack._PACKS and trainer.kernels.packs is None
    plain = train(_cfg(tmp_path, "plain", cpu_prepack=False, **kw), quiet=True)
    losses = [[json.loads(x).get("loss") for x in (p / "log.jsonl").read_text().splitlines()] for p in (packed, plain)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    a = load_file(str(packed / "adapter" / "adapter.safetensors"))
    b = load_file(str(plain / "adapter" / "adapter.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5 * b[k].abs().max().item())
