"""Nothing lost, nothing stale (issue 16's worst cases): --overwrite checks its inputs before it deletes anything and
then removes what later stages derived from the old run; a training file with nothing to learn is refused."""
from __future__ import annotations

import json

import pytest

from nlg.config import paper_train_config
from nlg.train import TrainError, main, train
from tests.conftest import FIXTURES

DATA = FIXTURES / "authors_train_step" / "train.jsonl"
pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(tmp_path, **kw):
    base = dict(model="tiny", train_data=str(DATA), valid_data=str(DATA), out_dir=str(tmp_path / "run"), seq_len=16,
                batch_size=4, warmup_steps=2, lr=1e-2, log_interval=1, save_interval=2, max_steps=2)
    base.update(kw)
    return paper_train_config("e2e", **base)


def _snapshot(run):
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_overwrite_with_a_missing_input_leaves_the_run_intact(tmp_path, capsys):
    run = train(_cfg(tmp_path), quiet=True)
    before = _snapshot(run)
    argv = ["--model", "tiny", "--train-data", str(tmp_path / "trian.jsonl"), "--valid-data", str(DATA),
            "--out-dir", str(run), "--seq-len", "16", "--batch-size", "4", "--max-steps", "2", "--overwrite", "--quiet"]
    assert main(argv) == 2
    assert "trian.jsonl: no such file" in capsys.readouterr().err
    assert _snapshot(run) == before  # adapter, checkpoints, log, recipe, summary: all still there, unchanged


def test_overwrite_removes_what_later_stages_made_from_the_old_run(tmp_path):
    run = train(_cfg(tmp_path), quiet=True)
    derived = ["predictions.test.jsonl", "generate.test.json", "scores.test.json", "report.md", "eval/test/hypothesis.txt"]
    for name in derived:
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text("old\n")
    (run / "logs").mkdir()
    (run / "logs" / "train.log").write_text("the pipeline's log of this very stage\n")
    train(_cfg(tmp_path, lr=2e-2), overwrite=True, quiet=True)
    assert not any((run / name).exists() for name in derived) and not (run / "eval").exists()
    assert (run / "logs" / "train.log").is_file()  # the stage logs are the pipeline's, kept
    assert json.loads((run / "recipe.json").read_text())["lr"] == 2e-2


def test_a_training_file_with_nothing_to_learn_is_refused(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("".join(json.dumps({"context": [464, 318], "completion": []}) + "\n" for _ in range(8)))
    with pytest.raises(TrainError, match="empty.jsonl: no example has a token to learn"):
        train(_cfg(tmp_path, train_data=str(empty)), quiet=True)
    assert not (tmp_path / "run" / "adapter").exists()


def test_a_second_writer_stops_at_once_naming_the_holder(tmp_path):
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from nlg.io_utils import RunLock; "
        f"lock = RunLock({str(run)!r}, 'train').acquire(); print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True, cwd=str(FIXTURES.parent.parent))
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        with pytest.raises(TrainError, match=rf"in use by PID {holder.pid} \(train: "):
            train(_cfg(tmp_path), quiet=True)
        assert time.monotonic() - started < 30 and not (run / "recipe.json").exists()
    finally:
        holder.kill()
        holder.wait()
    train(_cfg(tmp_path), quiet=True)  # the kernel dropped the dead holder's lock: no stale lock to clean up
    assert (run / "adapter").is_dir()
