"""Nothing lost, nothing stale (issue 16's worst cases): --overwrite checks its inputs before it deletes anything and
then removes what later stages derived from the old run; a training file with nothing to learn is refused."""
from __future__ import annotations

import json

import pytest
import torch

from nlg.config import paper_train_config
from nlg.io_utils import InputFileError
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
    cut = tmp_path / "cut.jsonl"  # every completion falls past --seq-len 16
    cut.write_text("".join(json.dumps({"context": [464] * 20, "completion": [318, 50256]}) + "\n" for _ in range(8)))
    with pytest.raises(TrainError, match="cut.jsonl: no example has a token to learn"):
        train(_cfg(tmp_path, train_data=str(cut)), quiet=True)
    assert not (tmp_path / "run" / "adapter").exists()


def test_an_empty_completion_is_an_error_at_its_line(tmp_path):
    """The encoder ends every completion with 50256 (an empty text gives [50256]); one written [] is refused,
    naming its line, even among good records, and nothing is written."""
    data = tmp_path / "one_empty.jsonl"
    good = json.dumps({"context": [464, 50256], "completion": [318, 50256]})
    data.write_text(good + "\n" + good + "\n" + json.dumps({"context": [464, 50256], "completion": []}) + "\n")
    with pytest.raises(InputFileError, match=r"one_empty.jsonl:3: \"completion\" is empty"):
        train(_cfg(tmp_path, train_data=str(data)), quiet=True)
    assert not (tmp_path / "run" / "recipe.json").exists()


def test_a_second_writer_stops_at_once_naming_the_holder(tmp_path):
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from nlg.run_folder import RunLock; "
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


def _stopped_run(tmp_path, data, steps=4, stop_after=4, **kw):
    """A run of ``steps`` updates stopped after ``stop_after`` (a checkpoint every 2), as if interrupted."""
    cfg = _cfg(tmp_path, train_data=str(data), valid_data=str(DATA), max_steps=steps, **kw)
    train(cfg, stop_after=stop_after, quiet=True)
    return cfg


def test_resume_refuses_changed_training_data_naming_the_file_and_both_fingerprints(tmp_path):
    import dataclasses

    from nlg.io_utils import file_sha256

    data = tmp_path / "train.jsonl"
    data.write_bytes(DATA.read_bytes())
    cfg = _stopped_run(tmp_path, data, steps=6, stop_after=2)
    before = file_sha256(data)
    assert json.loads((tmp_path / "run" / "recipe.json").read_text())["data_sha256"]["train_data"] == before
    data.write_bytes(DATA.read_bytes() * 2)  # 16 -> 32 records: resuming would not continue the same run
    run_before = _snapshot(tmp_path / "run")
    with pytest.raises(TrainError) as err:
        train(dataclasses.replace(cfg, resume=True), quiet=True)
    message = str(err.value)
    assert message.startswith(f"{data}: changed since the run started")
    assert before[:12] in message and file_sha256(data)[:12] in message and "--overwrite" in message
    assert _snapshot(tmp_path / "run") == run_before  # nothing written
    data.write_bytes(DATA.read_bytes())  # the same bytes again: the resume goes through
    train(dataclasses.replace(cfg, resume=True), quiet=True)
    assert (tmp_path / "run" / "train_summary.json").is_file()


def test_a_truncated_latest_checkpoint_falls_back_to_the_previous_complete_one(tmp_path, capsys):
    import dataclasses

    cfg = _stopped_run(tmp_path, DATA, steps=6, stop_after=4)
    ckpts = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("step-*")) == ["step-2", "step-4"]
    blob = (ckpts / "step-4" / "trainable.pt").read_bytes()
    (ckpts / "step-4" / "trainable.pt").write_bytes(blob[: len(blob) // 2])  # a crash mid-write, a full disk
    capsys.readouterr()
    run = train(dataclasses.replace(cfg, resume=True), quiet=True)
    err = capsys.readouterr().err
    assert f"{ckpts / 'step-4'}: cannot be loaded" in err and "falling back to the previous checkpoint" in err
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3, 4, 5, 6]  # steps 3-4 redone from step 2, once each

    # and the continuation from step 2 is the uninterrupted run's, bit for bit
    whole = train(dataclasses.replace(cfg, out_dir=str(tmp_path / "whole")), quiet=True)
    from safetensors.torch import load_file  # tensors, not file bytes: safetensors orders its metadata freely

    resumed, straight = (load_file(r / "adapter" / "adapter.safetensors") for r in (run, whole))
    assert resumed.keys() == straight.keys()
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)


def test_stale_temporary_checkpoint_folders_are_removed_on_the_next_start(tmp_path, capsys):
    import dataclasses

    cfg = _stopped_run(tmp_path, DATA, steps=4, stop_after=2)
    ckpts = tmp_path / "run" / "checkpoints"
    stale = [ckpts / ".step-4.abc123.tmp", ckpts / ".best.def456.tmp"]
    for folder in stale:
        folder.mkdir()
        (folder / "trainable.pt").write_bytes(b"half")
    capsys.readouterr()
    train(dataclasses.replace(cfg, resume=True), quiet=True)
    assert not any(p.exists() for p in stale)
    assert f"removed {stale[0]}" in capsys.readouterr().err


def test_resume_with_nothing_to_resume_says_it_starts_from_step_0(tmp_path, capsys):
    train(_cfg(tmp_path, resume=True), quiet=True)
    assert "has no checkpoint yet; starting the run from step 0" in capsys.readouterr().err


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_outputs_get_the_users_umask_not_mkstemps_0600(tmp_path, mask):
    import os
    import stat

    from nlg.io_utils import write_json

    old = os.umask(mask)
    try:
        write_json(tmp_path / "out.json", {"a": 1})
        run = train(_cfg(tmp_path), quiet=True)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out.json").stat().st_mode) == 0o666 & ~mask
    assert stat.S_IMODE((run / "recipe.json").stat().st_mode) == 0o666 & ~mask
    assert stat.S_IMODE((run / "checkpoints" / "step-2").stat().st_mode) == 0o777 & ~mask


@pytest.mark.parametrize("flag,value,message", [
    ("--length-penalty", "nan", "--length-penalty must be a finite number, got nan"),
    ("--length-penalty", "inf", "--length-penalty must be a finite number, got inf"),
    ("--beam", "0", "--beam must be an integer >= 1, got 0"),
    ("--repetition-penalty", "-1", "--repetition-penalty must be a finite number > 0, got -1.0"),
])
def test_generate_refuses_bad_search_settings_before_loading_anything(tmp_path, capsys, flag, value, message):
    from nlg.generate import main as generate_main

    argv = ["--run-dir", str(tmp_path / "no-run"), "--dataset", "e2e", "--model", "tiny", flag, value, "--quiet"]
    assert generate_main(argv) == 2
    assert capsys.readouterr().err.strip() == f"error: {message}"
    assert not (tmp_path / "no-run").exists()


def test_a_seq_len_beyond_the_models_positions_is_refused_before_training(tmp_path):
    with pytest.raises(TrainError, match=r"--seq-len 2048 exceeds the model's 1024 positions \(tiny\)"):
        train(_cfg(tmp_path, seq_len=2048), quiet=True)
    assert not (tmp_path / "run" / "recipe.json").exists()


def test_an_os_error_is_one_line_naming_the_path_and_nlg_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    taken = tmp_path / "run"
    taken.write_text("a file where the run folder should go\n")
    argv = ["--model", "tiny", "--train-data", str(DATA), "--valid-data", str(DATA), "--out-dir", str(taken),
            "--seq-len", "16", "--batch-size", "4", "--max-steps", "2", "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {taken}") and "Traceback" not in err[0]
    monkeypatch.setenv("NLG_DEBUG", "1")
    with pytest.raises(OSError):
        main(argv)
    assert taken.read_text() == "a file where the run folder should go\n"


# ------------------------------------------------------------------------------------------------ a full disk
TORCH_SHORT_WRITE = "[enforce fail at inline_container.cc:664] . unexpected pos 1408 vs 1302"


def _train_argv(run, *extra):
    return ["--model", "tiny", "--train-data", str(DATA), "--valid-data", str(DATA), "--out-dir", str(run),
            "--seq-len", "16", "--batch-size", "4", "--warmup-steps", "2", "--save-interval", "2",
            "--log-interval", "1", "--max-steps", "4", "--quiet", *extra]


def _fill_the_disk_at(monkeypatch, marker, error):
    """torch.save writes part of a file whose path contains ``marker``, then fails as on a full disk."""
    real = torch.save

    def save(obj, f, *args, **kwargs):
        if marker in str(f):
            with open(f, "wb") as handle:
                handle.write(b"PK\x03\x04 half a zip")
            raise error
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)


@pytest.mark.parametrize("error,free,reason", [
    (OSError(28, "No space left on device"), None, "no space left on device while saving the checkpoint"),
    # torch's zip writer reports a short write so: on a full disk that is what it says; with space left, a gist
    (RuntimeError(TORCH_SHORT_WRITE), 0, "no space left on device while saving the checkpoint"),
    (RuntimeError(TORCH_SHORT_WRITE), 10 << 30, "torch could not write the checkpoint (unexpected pos 1408 vs 1302)"),
])
def test_a_full_disk_while_checkpointing_is_one_line_and_keeps_the_previous_checkpoint(
        tmp_path, capsys, monkeypatch, error, free, reason):
    from nlg import io_utils
    from nlg.checkpoint import list_checkpoints, load_checkpoint

    run = tmp_path / "run"
    _fill_the_disk_at(monkeypatch, ".step-4.", error)
    if free is not None:
        monkeypatch.setattr(io_utils, "free_bytes", lambda folder: free)
    assert main(_train_argv(run)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    ckpts = run / "checkpoints"
    assert err[-1] == f"error: {ckpts / 'step-4'}: {reason}; the previous checkpoint (step-2) is kept"
    assert not any("Traceback" in line for line in err)
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-2"]  # no half-written temporary folder left
    assert [step for step, _ in list_checkpoints(run)] == [2] and load_checkpoint(ckpts / "step-2")["state"]["step"] == 2

    monkeypatch.undo()  # space again: --resume continues from step 2, nothing lost
    assert main(_train_argv(run, "--resume")) == 0
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3, 4]
    assert (run / "adapter" / "adapter.safetensors").is_file()


def test_a_full_disk_while_saving_the_best_checkpoint_keeps_the_previous_best(tmp_path, monkeypatch):
    from nlg.checkpoint import load_best, save_best
    from nlg.io_utils import SaveError

    save_best(tmp_path, {"w": torch.ones(2)}, {"step": 2, "epoch": 1, "valid_loss": 3.0})
    _fill_the_disk_at(monkeypatch, ".best.", OSError(28, "No space left on device"))
    with pytest.raises(SaveError) as err:
        save_best(tmp_path, {"w": torch.zeros(2)}, {"step": 4, "epoch": 1, "valid_loss": 2.0})
    assert (err.value.filename, err.value.strerror) == (
        str(tmp_path / "checkpoints" / "best"),
        "no space left on device while saving the best checkpoint; the previous best checkpoint (step 2) is kept")
    best = load_best(tmp_path)
    assert best["info"]["step"] == 2 and torch.equal(best["trainable"]["w"], torch.ones(2))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["best"]


def test_a_full_disk_while_writing_an_adapter_keeps_the_previous_pair(tmp_path, capsys, monkeypatch):
    """The weights are written, the config's sync fails (delayed allocation): neither file is replaced."""
    import os

    from nlg import adapter_io, io_utils
    from tests.test_adapter_io import AUTHORS_PT

    out = tmp_path / "run" / "adapter"
    assert adapter_io.main(["import-authors", str(AUTHORS_PT), "--out", str(out), "--base-model", "custom-32"]) == 0
    before = _snapshot(out)
    real_fsync, calls = os.fsync, []

    def fsync(fd):
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(io_utils.os, "fsync", fsync)
    capsys.readouterr()
    assert adapter_io.main(["import-authors", str(AUTHORS_PT), "--out", str(out), "--base-model", "custom-33",
                            "--overwrite"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {out}: no space left on device while saving the adapter; the previous adapter is kept")
    assert _snapshot(out) == before  # old weights beside their old config, and no temporary file


# ------------------------------------------------------------------------------------------------ file and line
def test_a_training_file_that_is_not_utf8_is_named_with_its_line(tmp_path, capsys):
    bad = tmp_path / "train.jsonl"
    second = b'{"context": [464, 318], "completion": [50256], "note": "caf\xe9"}\n'
    bad.write_bytes(DATA.read_bytes().splitlines(keepends=True)[0] + second)
    argv = ["--model", "tiny", "--train-data", str(bad), "--valid-data", str(DATA), "--out-dir",
            str(tmp_path / "run"), "--seq-len", "16", "--batch-size", "1", "--max-steps", "1", "--quiet"]
    assert main(argv) == 2
    column = second.index(b"\xe9") + 1
    assert capsys.readouterr().err.strip() == (
        f"error: {bad}:2: not UTF-8 text (byte 0xe9 at column {column}); re-save it as UTF-8")
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("key,value,message", [
    ("rank", "four", "train_config key 'rank' must be int, got 'four'"),
    ("rank", 0, "train_config key 'rank': LoRA rank must be a positive integer, got 0"),
    ("lora_dropout", 1.5, "train_config key 'lora_dropout': LoRA dropout must be in [0, 1), got 1.5"),
    ("lora_targets", ["q", "zz"], "train_config key 'lora_targets': unknown LoRA target 'zz'; expected any of "
                                  "q, k, v, o, c_fc, c_proj, wte"),
    ("method", "lorax", "train_config key 'method': unknown method 'lorax'; expected one of lora, ft, ft-top2, "
                        "adapter-h, adapter-l, prefix-layer, prefix-embed"),
    ("model", 5, "train_config key 'model' must be str, got 5"),
])
def test_a_bad_value_in_an_adapters_train_config_names_file_and_line(tmp_path, capsys, key, value, message):
    from nlg import adapter_io
    from tests.test_adapter_io import AUTHORS_PT

    out = tmp_path / "adapter"
    assert adapter_io.main(["import-authors", str(AUTHORS_PT), "--out", str(out), "--base-model", "custom-32"]) == 0
    path = out / "adapter_config.json"
    config = json.loads(path.read_text())
    config["train_config"][key] = value
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    capsys.readouterr()
    assert adapter_io.main(["info", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    prefix = f"error: {path}:"
    assert err.startswith(prefix) and err.endswith(f": {message}")
    line = int(err[len(prefix):].split(":")[0])  # the key's own line, inside train_config
    text = path.read_text().splitlines()
    assert text[line - 1].strip().startswith(f'"{key}": ')
    assert line > next(i for i, row in enumerate(text, 1) if row.strip().startswith('"train_config"'))


# ------------------------------------------------------------------------------------------------ nlg.generate
def _prompts(tmp_path, *contexts):
    data = tmp_path / "test.jsonl"
    data.write_text("".join(json.dumps({"context": c, "completion": [50256]}) + "\n" for c in contexts))
    return data


def _generate_argv(tmp_path, data, *extra):
    return ["--run-dir", str(tmp_path / "run"), "--dataset", "e2e", "--model", "tiny", "--data", str(data),
            "--max-new-tokens", "2", "--beam", "2", "--quiet", *extra]


def test_generate_names_file_and_line_of_an_out_of_vocabulary_token(tmp_path, capsys):
    from nlg.generate import main as generate_main

    data = _prompts(tmp_path, [464, 318], [464, 50257, 318])
    assert generate_main(_generate_argv(tmp_path, data)) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: {data}:2: token id 50257 is not in the vocabulary (0..50256)")
    assert not (tmp_path / "run" / "predictions.test.jsonl").exists()


def test_generate_limit_0_is_refused_as_a_limit_not_as_an_empty_split(tmp_path, capsys):
    from nlg.generate import main as generate_main

    data = _prompts(tmp_path, [464, 318])
    assert generate_main(_generate_argv(tmp_path, data, "--limit", "0")) == 2
    assert capsys.readouterr().err.strip() == "error: --limit must be >= 1 (the number of records to decode), got 0"


def _no_search(monkeypatch):
    """Loading the model means the output check came too late: fail the test there."""
    from nlg import generate

    def load(*args, **kwargs):
        raise AssertionError("the model was loaded: the output was not checked before the search")

    monkeypatch.setattr(generate, "load_decoding_model", load)


def test_generate_output_that_cannot_be_written_fails_before_the_search(tmp_path, capsys, monkeypatch):
    import os

    from nlg import io_utils
    from nlg.generate import main as generate_main

    data = _prompts(tmp_path, [464, 318])
    _no_search(monkeypatch)
    blocker = tmp_path / "a-file"
    blocker.write_text("x\n")
    assert generate_main(_generate_argv(tmp_path, data, "--output", str(blocker / "sub" / "p.jsonl"))) == 2
    assert capsys.readouterr().err.strip() == f"error: {blocker}: is a file, cannot hold {blocker / 'sub' / 'p.jsonl'}"

    locked = tmp_path / "read-only"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(io_utils.os, "access",  # what a read-only folder answers (root ignores the mode bits)
                        lambda path, mode: False if str(path) == str(locked) else real_access(path, mode))
    assert generate_main(_generate_argv(tmp_path, data, "--output", str(locked / "new" / "p.jsonl"))) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {locked}: not writable (read-only or no permission), cannot write {locked / 'new' / 'p.jsonl'}")
    assert list(locked.iterdir()) == []


@pytest.mark.skipif(not hasattr(__import__("os"), "geteuid") or __import__("os").geteuid() == 0,
                    reason="root writes into a read-only folder")
def test_generate_into_a_really_read_only_folder_fails_before_the_search(tmp_path, capsys, monkeypatch):
    from nlg.generate import main as generate_main

    data = _prompts(tmp_path, [464, 318])
    _no_search(monkeypatch)
    locked = tmp_path / "read-only"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert generate_main(_generate_argv(tmp_path, data, "--output", str(locked / "p.jsonl"))) == 2
    finally:
        locked.chmod(0o755)
    assert "not writable (read-only or no permission)" in capsys.readouterr().err


def test_generate_output_under_folders_not_made_yet_creates_them(tmp_path):
    from nlg.generate import main as generate_main

    data = _prompts(tmp_path, [464, 318])
    out = tmp_path / "new" / "deeper" / "p.jsonl"
    assert generate_main(_generate_argv(tmp_path, data, "--output", str(out))) == 0
    assert len(out.read_text().splitlines()) == 1 and (out.parent / "generate.test.json").is_file()
