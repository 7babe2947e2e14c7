"""The per-dataset scripts end to end on the tiny model, and resuming after a kill during training."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from nlg.run_folder import read_provenance
from tests.conftest import REPO, SHARED_DATA

SHARED_SUBDIR = {"e2e": "e2e", "webnlg": "webnlg_challenge_2017", "dart": "dart"}
# Each dataset's splits as the tests use them: which split trains, and which raw-dir to read.
TRAIN_FROM = {"e2e": "valid", "webnlg": "valid", "dart": "valid"}  # shared data has no E2E/DART train split


def _raw_dir(dataset: str) -> Path | None:
    shared = SHARED_DATA / SHARED_SUBDIR[dataset]
    if shared.is_dir():
        return shared
    return None


def _env(run_dir: Path, dataset: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        MODEL="tiny", METHOD="lora", RUN_DIR=str(run_dir), TRAIN_LIMIT="48", VALID_LIMIT="16", TEST_LIMIT="10",
        GENERATE_ARGS="--batch-size 4 --beam 3 --max-new-tokens 12", HF_HUB_OFFLINE="1", NLG_OFFLINE="1",
        PYTHONUNBUFFERED="1",
    )
    raw = _raw_dir(dataset)
    if raw is not None:
        env["RAW_DIR"] = str(raw)
        env["TRAIN_FROM"] = TRAIN_FROM[dataset]
    elif dataset != "e2e":
        pytest.skip(f"needs {SHARED_DATA / SHARED_SUBDIR[dataset]} (only E2E has an offline synthetic sample)")
    env.update(extra)
    return env


TRAIN_FLAGS = ["--max-steps", "6", "--warmup-steps", "2", "--batch-size", "4", "--save-interval", "2",
               "--log-interval", "1"]


def _script(dataset: str) -> list[str]:
    return ["bash", str(REPO / "scripts" / f"{dataset}.sh"), *TRAIN_FLAGS]


def _check_artefacts(run_dir: Path, dataset: str) -> None:
    assert (run_dir / "adapter" / "adapter.safetensors").is_file()
    assert json.loads((run_dir / "adapter" / "adapter_config.json").read_text())["method"] == "lora"
    preds = [json.loads(line) for line in (run_dir / "predictions.test.jsonl").read_text().splitlines()]
    assert len(preds) == 10 and all(isinstance(p["predict"], list) for p in preds)
    ev = run_dir / "eval" / "test"
    if dataset == "e2e":
        hyps = (ev / "hypothesis.txt").read_text().splitlines()
        groups = (ev / "references.txt").read_text().strip("\n").split("\n\n")
        assert len(hyps) == len(groups) >= 1
    else:
        folder = ev / "all" if dataset == "webnlg" else ev
        hyps = (folder / "hypothesis").read_text().splitlines()
        for k in range(6):
            assert len((folder / f"reference{k}").read_text().splitlines()) == len(hyps)
    scores = json.loads((run_dir / "scores.test.json").read_text())
    metrics = scores["metrics"]["all"] if dataset == "webnlg" else scores["metrics"]
    assert "BLEU" in metrics and "METEOR" in metrics
    report = (run_dir / "report.md").read_text()
    assert "random" in report.splitlines()[0].lower()
    assert (run_dir / "report.json").is_file()
    assert (run_dir / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["e2e", "webnlg", "dart"])
def test_dataset_script_end_to_end(dataset, tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.run(_script(dataset), env=_env(run_dir, dataset), cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_artefacts(run_dir, dataset)
    # a second run skips every finished stage and leaves the results as they were
    before = (run_dir / "predictions.test.jsonl").read_bytes()
    again = subprocess.run(_script(dataset), env=_env(run_dir, dataset), cwd=REPO, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "train: skipped" in again.stderr and "generate: skipped" in again.stderr
    assert (run_dir / "predictions.test.jsonl").read_bytes() == before
    if dataset == "e2e":
        _changed_input_redoes_exactly_the_stages_after_it(run_dir)


def _changed_input_redoes_exactly_the_stages_after_it(run_dir: Path) -> None:
    """A re-run with another TEST_LIMIT: the test split changes, so prepare, generate, decode and score are redone
    (the log says why); training, whose data did not change, is skipped; the report is of the new predictions."""
    stages = json.loads((run_dir / "stages.json").read_text())
    assert sorted(stages) == ["decode", "generate", "prepare", "score", "train"]
    adapter = (run_dir / "adapter" / "adapter.safetensors").read_bytes()
    again = subprocess.run(_script("e2e"), env=_env(run_dir, "e2e", TEST_LIMIT="6"), cwd=REPO, capture_output=True,
                           text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    err = again.stderr
    assert "prepare: redoing it, its inputs changed: limits: " in err
    assert "train: skipped" in err and (run_dir / "adapter" / "adapter.safetensors").read_bytes() == adapter
    assert "generate: redoing it, its inputs changed: data changed" in err
    assert "decode: skipped" not in err and "score: skipped" not in err
    assert len((run_dir / "predictions.test.jsonl").read_text().splitlines()) == 6
    assert json.loads((run_dir / "scores.test.json").read_text())["metrics"]["BLEU"] is not None
    assert "Stale" not in (run_dir / "report.md").read_text()
    assert json.loads((run_dir / "stages.json").read_text())["prepare"]["settings"]["limits"]["test"] == 6


@pytest.mark.slow
def test_offline_fresh_machine_uses_the_synthetic_sample(tmp_path):
    """No RAW_DIR, no ../shared, no network: the E2E script generates and labels its own synthetic sample."""
    run_dir = tmp_path / "run"
    env = _env(run_dir, "e2e", NLG_SHARED_DIR=str(tmp_path / "no-shared"))
    env.pop("RAW_DIR", None)
    env.pop("TRAIN_FROM", None)
    proc = subprocess.run(_script("e2e"), env=env, cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_artefacts(run_dir, "e2e")
    provenance = read_provenance(run_dir)
    assert provenance["recorded_in"] == "provenance.json" and provenance["data"]["synthetic"] is True
    assert provenance["data"]["source"]["source"] == "synthetic"
    assert "synthetic data" in (run_dir / "report.md").read_text().splitlines()[0]


@pytest.mark.slow
def test_killed_during_training_resumes_to_the_same_adapter(tmp_path):
    straight = tmp_path / "straight"
    proc = subprocess.run(_script("e2e"), env=_env(straight, "e2e"), cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]

    killed = tmp_path / "killed"
    env = _env(killed, "e2e", GENERATE_ARGS="--batch-size 4 --beam 3 --max-new-tokens 12")
    child = subprocess.Popen(_script("e2e"), env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not any((killed / "checkpoints").glob("step-2")) and time.time() < deadline:
        if child.poll() is not None:
            pytest.fail("the run finished before it could be interrupted")
        time.sleep(0.05)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    assert not (killed / "adapter").exists(), "the kill came after training ended"

    resumed = subprocess.run(_script("e2e"), env=env, cwd=REPO, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stderr.lower()
    a = load_file(straight / "adapter" / "adapter.safetensors")
    b = load_file(killed / "adapter" / "adapter.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert (a[key] == b[key]).all(), key


def test_seeds_run_one_folder_each_then_a_report_across_them(tmp_path, monkeypatch):
    """--seeds: the protocol once per seed in <run-dir>-s<seed> with the trainer's --seed, then eval.report over
    the seed folders into <run-dir>-seeds (stages stubbed: this checks the orchestration only)."""
    from nlg import pipeline

    done, stages = [], []
    monkeypatch.setattr(pipeline, "run_pipeline", lambda opts: done.append(opts) or Path(opts.run_dir))
    monkeypatch.setattr(pipeline, "run_stage", lambda name, cmd, run_dir: stages.append((name, cmd, run_dir)))
    base = tmp_path / "e2e-tiny-lora"
    opts = pipeline.parse_args(["--dataset", "e2e", "--model", "tiny", "--run-dir", str(base), "--seeds", "110",
                                "111", "112", "--", "--max-steps", "6", "--seed", "1"])
    assert opts.seeds == [110, 111, 112] and opts.trainer_args == ["--max-steps", "6", "--seed", "1"]
    out = pipeline.run_seeds(opts)
    assert [o.run_dir for o in done] == [tmp_path / f"e2e-tiny-lora-s{s}" for s in (110, 111, 112)]
    assert [o.trainer_args for o in done] == [["--max-steps", "6", "--seed", "1", "--seed", str(s)]
                                              for s in (110, 111, 112)]  # argparse: the last --seed wins
    assert all(o.seeds == [] and o.dataset == "e2e" and o.model == "tiny" for o in done)
    assert out == tmp_path / "e2e-tiny-lora-seeds" and out.is_dir()
    ((name, cmd, where),) = stages
    assert name == "report" and where == out
    assert cmd[cmd.index("eval.report") + 1:] == [*(str(o.run_dir) for o in done), "--out", str(out),
                                                  "--split", "test"]
    with pytest.raises(pipeline.PipelineError, match="repeats"):
        pipeline.run_seeds(pipeline.parse_args(["--dataset", "e2e", "--seeds", "110", "110"]))


def test_protocol_script_passes_seeds(tmp_path):
    env = dict(os.environ, PYTHON="echo", SEEDS="110 111 112", RUN_DIR=str(tmp_path / "r"))
    proc = subprocess.run(["bash", str(REPO / "scripts" / "run_protocol.sh"), "e2e", "--max-steps", "3"], env=env,
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    words = proc.stdout.split()
    assert words[words.index("--seeds") + 1:words.index("--seeds") + 4] == ["110", "111", "112"]
    assert words[-3:] == ["--", "--max-steps", "3"]


def test_report_flags_scores_older_than_the_predictions_they_claim_to_score(tmp_path):
    from eval.report import stale_outputs

    run = tmp_path / "run"
    (run / "eval" / "test").mkdir(parents=True)
    for name in ("predictions.test.jsonl", "eval/test/hypothesis.txt", "scores.test.json"):
        (run / name).write_text("x\n")
    now = time.time()
    os.utime(run / "predictions.test.jsonl", (now - 30, now - 30))
    os.utime(run / "eval" / "test" / "hypothesis.txt", (now - 20, now - 20))
    os.utime(run / "eval" / "test", (now - 20, now - 20))
    os.utime(run / "scores.test.json", (now - 10, now - 10))
    assert stale_outputs(run) == []
    os.utime(run / "predictions.test.jsonl", (now, now))  # decoded again after scoring
    assert stale_outputs(run) == ["eval/test is older than predictions.test.jsonl"]


def test_a_missing_train_split_points_script_users_to_train_from_valid(tmp_path, capsys, monkeypatch):
    """prepare's own advice (--splits) is not a flag scripts/dart.sh has: through the pipeline it says TRAIN_FROM."""
    from data.common import WAY_OUT_ENV
    from data.dart.prepare import main as prepare_main
    from nlg import pipeline

    assert pipeline.WAY_OUT_ENV == WAY_OUT_ENV
    raw = tmp_path / "raw"
    raw.mkdir()
    monkeypatch.delenv(WAY_OUT_ENV, raising=False)
    assert prepare_main(["--raw-dir", str(raw), "--out-dir", str(tmp_path / "d"), "--splits", "train"]) == 1
    assert capsys.readouterr().err.strip().endswith("or leave this split out with --splits")

    run = tmp_path / "run"
    opts = pipeline.PipelineOptions(dataset="dart", raw_dir=raw, run_dir=run)
    with pytest.raises(pipeline.PipelineError, match="stage 'prepare-train' failed with exit code 1"):
        pipeline.stage_prepare(opts, run)
    error = [line for line in (run / "logs" / "prepare-train.log").read_text().splitlines()
             if line.startswith("error:")]
    assert len(error) == 1 and error[0].endswith(
        "download the files the LoRA authors used, or train on the dev split instead: TRAIN_FROM=valid "
        "(nlg.pipeline --train-from valid)")


@pytest.mark.parametrize("flag", ["--train-limit", "--valid-limit", "--test-limit"])
def test_a_limit_of_0_is_refused_not_read_as_no_limit(flag, capsys):
    from nlg.pipeline import parse_args

    with pytest.raises(SystemExit) as exit_:
        parse_args(["--dataset", "e2e", flag, "0"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().endswith(f"error: {flag} must be >= 1 (records to keep), got 0")
