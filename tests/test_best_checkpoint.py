"""--eval-interval and --select-by: the best dev-loss checkpoint kept beside the last, chosen for adapter/ on request,
its record surviving --resume."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from nlg.adapter_io import PEFT_WEIGHTS, write_peft_folder
from nlg.checkpoint import best_info, list_checkpoints, load_best, load_checkpoint, save_best
from nlg.config import paper_train_config
from nlg.train import TrainError, build_parser, config_from_args, train
from tests.conftest import FIXTURES

DATA = FIXTURES / "authors_train_step" / "train.jsonl"  # 13 invented examples


pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(tmp_path, name, **kw):
    """LoRA on the tiny model with a far too high constant learning rate: the dev loss falls for three updates
    (validated after every one) and then rises, so the best checkpoint is not the last."""
    base = dict(model="tiny", train_data=str(DATA), valid_data=str(DATA), out_dir=str(tmp_path / name), seq_len=16,
                batch_size=4, warmup_steps=1, lr=3.0, scheduler="constant", max_steps=8, eval_interval=1,
                save_interval=3, log_interval=1, select_by="valid_loss")
    base.update(kw)
    return paper_train_config("e2e", **base)


def _valid(run):
    return [(x["step"], x["valid_loss"]) for x in map(json.loads, (run / "log.jsonl").read_text().splitlines())
            if "valid_loss" in x]


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_best_checkpoint_is_selected_and_exported(tmp_path):
    run = train(_cfg(tmp_path, "best"), quiet=True)
    curve = _valid(run)
    assert [s for s, _ in curve] == list(range(1, 9))  # every update; no second line at the epoch ends (4, 8)
    best_step, best_loss = min(curve, key=lambda sv: sv[1])
    assert best_step < 8 and curve[-1][1] > best_loss  # the dev loss rose after the best step
    assert [s for s, _ in list_checkpoints(run)] == [6, 8]  # rotation as before; best/ is not one of them

    # the tensors after exactly best_step updates: the same run stopped there keeps that step's checkpoint
    ref = train(_cfg(tmp_path, "ref", save_interval=1), stop_after=best_step, quiet=True)
    at_best = load_checkpoint(ref / "checkpoints" / f"step-{best_step}")["trainable"]
    last = load_checkpoint(run / "checkpoints" / "step-8")["trainable"]
    assert not _equal(at_best, last)

    best = load_best(run)
    assert best["info"] == {"step": best_step, "epoch": 1 if best_step <= 4 else 2, "valid_loss": best_loss}
    assert _equal(best["trainable"], at_best)
    adapter = load_file(str(run / "adapter" / "adapter.safetensors"))
    assert _equal(adapter, at_best)
    config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert config["checkpoint"] == {"selected": "best", "step": best_step, "epoch": best["info"]["epoch"],
                                    "valid_loss": best_loss, "select_by": "valid_loss", "last_step": 8,
                                    "best_step": best_step, "best_valid_loss": best_loss}
    summary = json.loads((run / "train_summary.json").read_text())
    assert (summary["best_step"], summary["best_valid_loss"]) == (best_step, best_loss)
    assert summary["final_valid_loss"] == curve[-1][1] and summary["checkpoint"] == config["checkpoint"]

    # the PEFT export holds the same selected weights
    expect = write_peft_folder(at_best, 4, 32.0, ("q", "v"), tmp_path / "peft-expected")
    got, want = load_file(str(run / "peft_adapter" / PEFT_WEIGHTS)), load_file(str(expect / PEFT_WEIGHTS))
    assert _equal(got, want)


def test_select_by_last_is_the_default_and_keeps_the_final_weights(tmp_path):
    assert paper_train_config("e2e").select_by == "last" and paper_train_config("e2e").eval_interval == 0
    run = train(_cfg(tmp_path, "last", select_by="last", max_steps=5), quiet=True)
    last = load_checkpoint(run / "checkpoints" / "step-5")["trainable"]
    assert _equal(load_file(str(run / "adapter" / "adapter.safetensors")), last)
    config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    summary = json.loads((run / "train_summary.json").read_text())
    curve = _valid(run)
    best_step, best_loss = min(curve, key=lambda sv: sv[1])
    assert best_step < 5  # best/ is still kept and recorded
    assert config["checkpoint"] == {"selected": "last", "step": 5, "epoch": 2, "valid_loss": curve[-1][1],
                                    "select_by": "last", "last_step": 5, "best_step": best_step,
                                    "best_valid_loss": best_loss}
    assert best_info(run)["step"] == best_step == summary["best_step"]


@pytest.mark.parametrize("stop_after", [2, 6])
def test_resume_restores_the_best_record(tmp_path, stop_after):
    """Stopped before the best (2) or after it (6, so no validation of steps <= 6 is repeated): resuming ends
    with the straight run's best record, adapter and log, bit for bit."""
    straight = train(_cfg(tmp_path, "straight"), quiet=True)
    resumed = tmp_path / "resumed"
    train(_cfg(tmp_path, "resumed"), stop_after=stop_after, quiet=True)
    assert not (resumed / "train_summary.json").exists()
    train(_cfg(tmp_path, "resumed", resume=True), quiet=True)
    a = json.loads((straight / "train_summary.json").read_text())
    b = json.loads((resumed / "train_summary.json").read_text())
    assert (a["best_step"], a["best_valid_loss"], a["checkpoint"]) == (b["best_step"], b["best_valid_loss"],
                                                                        b["checkpoint"])
    assert a["checkpoint"]["selected"] == "best" and a["best_step"] < 8
    for name in ("adapter/adapter.safetensors", "peft_adapter/adapter_model.safetensors"):
        assert _equal(load_file(str(straight / name)), load_file(str(resumed / name)))
    assert _equal(load_best(straight)["trainable"], load_best(resumed)["trainable"])
    assert _valid(straight) == _valid(resumed)  # no validation line lost or repeated


def test_missing_best_checkpoint_is_an_error_not_a_silent_fallback(tmp_path):
    train(_cfg(tmp_path, "gone", max_steps=8), stop_after=6, quiet=True)
    run = tmp_path / "gone"
    info = best_info(run)
    assert info["step"] < 6
    save_best(run, load_checkpoint(run / "checkpoints" / "step-6")["trainable"], {**info, "step": 6})  # clobbered
    with pytest.raises(TrainError, match=rf"best checkpoint of step {info['step']}, found step 6"):
        train(_cfg(tmp_path, "gone", resume=True), quiet=True)


def test_save_best_replaces_whole_and_leaves_no_temporary(tmp_path):
    one, two = {"w": torch.ones(2)}, {"w": torch.zeros(2)}
    save_best(tmp_path, one, {"step": 1, "epoch": 1, "valid_loss": 2.0})
    save_best(tmp_path, two, {"step": 3, "epoch": 1, "valid_loss": 1.5})
    best = load_best(tmp_path)
    assert best["info"]["step"] == 3 and torch.equal(best["trainable"]["w"], two["w"])
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["best"]
    assert load_best(tmp_path / "nothing") is None and best_info(tmp_path / "nothing") is None


def test_flags_and_their_checks(tmp_path):
    cfg, _ = config_from_args(build_parser().parse_args(["--eval-interval", "50", "--select-by", "valid_loss"]))
    assert (cfg.eval_interval, cfg.select_by) == (50, "valid_loss")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--select-by", "bleu"])
    with pytest.raises(TrainError, match="--eval-interval must be >= 0"):
        train(_cfg(tmp_path, "bad", eval_interval=-1), quiet=True)
    with pytest.raises(TrainError, match="unknown --select-by"):
        train(_cfg(tmp_path, "bad", select_by="bleu"), quiet=True)
    train(_cfg(tmp_path, "changed", max_steps=4), stop_after=3, quiet=True)
    with pytest.raises(TrainError, match="--select-by: run has 'valid_loss', now 'last'"):
        train(_cfg(tmp_path, "changed", max_steps=4, select_by="last", resume=True), quiet=True)


def test_a_fresh_start_drops_an_earlier_attempts_best(tmp_path):
    """An attempt cut short before its first step checkpoint may leave checkpoints/best/; a fresh run (which is
    what such a folder gets) must not inherit it."""
    stale = save_best(tmp_path / "fresh", {"w": torch.ones(1)}, {"step": 99, "epoch": 9, "valid_loss": 0.0})
    train(_cfg(tmp_path, "fresh", eval_interval=0), stop_after=1, quiet=True)
    assert not stale.exists() and best_info(tmp_path / "fresh") is None
