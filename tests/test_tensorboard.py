"""``--report-to tensorboard``: log.jsonl's scalars mirrored into RUN/tensorboard/, also across a resume; a clear
error when the package is missing."""
from __future__ import annotations

import json
import sys

import pytest

from nlg.config import paper_train_config
from nlg.train import TrainError, train
from tests.conftest import FIXTURES

DATA = FIXTURES / "authors_train_step" / "train.jsonl"
pytestmark = pytest.mark.usefixtures("one_thread")
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                                        reason="the optional tensorboard package is not installed")


def _cfg(tmp_path, name="run", **kw):
    base = dict(model="tiny", train_data=str(DATA), valid_data=str(DATA), out_dir=str(tmp_path / name), seq_len=16,
                batch_size=4, warmup_steps=2, lr=1e-2, log_interval=1, save_interval=2, max_steps=4,
                eval_interval=2, report_to="tensorboard")
    base.update(kw)
    return paper_train_config("e2e", **base)


def _scalars(run):
    acc = event_accumulator.EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _from_log(run, key):
    return [(r["step"], r[key]) for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if key in r]


def test_scalars_equal_the_log(tmp_path):
    run = train(_cfg(tmp_path), quiet=True)
    got = _scalars(run)
    assert set(got) == {"train/loss", "train/lr", "train/tokens_per_s", "valid/loss"}
    for tag, key in (("train/loss", "loss"), ("train/lr", "lr"), ("valid/loss", "valid_loss")):
        expected = _from_log(run, key)
        assert [s for s, _ in got[tag]] == [s for s, _ in expected]
        assert all(v == pytest.approx(e, rel=1e-6) for (_, v), (_, e) in zip(got[tag], expected))  # float32 events
    assert [s for s, _ in got["train/loss"]] == [1, 2, 3, 4]


def test_resume_keeps_one_event_per_step(tmp_path):
    train(_cfg(tmp_path), stop_after=3, quiet=True)  # checkpoint at step 2; the log of step 3 is written, then lost
    run = train(_cfg(tmp_path, resume=True), quiet=True)
    steps = [s for s, _ in _scalars(run)["train/loss"]]
    assert steps == [1, 2, 3, 4] and [s for s, _ in _from_log(run, "loss")] == steps


def test_off_by_default_and_a_clear_error_without_the_package(tmp_path, monkeypatch):
    run = train(_cfg(tmp_path, "plain", report_to="none"), quiet=True)
    assert not (run / "tensorboard").exists()
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    with pytest.raises(TrainError, match="--report-to tensorboard needs the tensorboard package"):
        train(_cfg(tmp_path, "missing"), quiet=True)
    assert not (tmp_path / "missing").exists()  # refused before anything was written
