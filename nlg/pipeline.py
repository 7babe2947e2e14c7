"""The paper's protocol for one dataset, end to end, resumable: prepare -> train -> generate -> decode -> score -> report.

Each stage is the project's own CLI run as a subprocess (training and generation through ``torchrun`` when
``--nproc`` > 1 or several nodes are given), writing only inside one run folder. Each finished stage records what
it was made from in ``stages.json`` (the sha256 of its input files and the settings that change its outputs); a
re-run skips a stage whose outputs exist and whose inputs are unchanged, and says so; one whose inputs changed is
redone (the log says which input changed), and so, through their own inputs, is every later stage it feeds. Training that was interrupted resumes
from its last checkpoint. The per-dataset shell scripts in ``scripts/`` are thin shells over this module.

``--seeds 110 111 112`` runs the whole protocol once per seed, each in its own folder ``<run-dir>-s<seed>``
(the trainer gets ``--seed <seed>``), then writes one report over them into ``<run-dir>-seeds/``: every run
beside the paper and each metric's mean ± sample std across the seeds.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from data.common import WAY_OUT_ENV
from data.synthetic import write_synthetic_e2e
from nlg.config import DATASETS, METHODS
from nlg.io_utils import file_sha256, host_reachable, read_json_object, remove_paths, write_json
from nlg.run_folder import (ADAPTER, DATA_SOURCE, EVAL, RunFolder, default_pipeline_dir, encoded_file, formatted_file,
                            seed_dir, seeds_report_dir)

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("NLG_SHARED_DIR", REPO.parent / "shared")) / "data"
SHARED_SUBDIR = {"e2e": "e2e", "webnlg": "webnlg_challenge_2017", "dart": "dart"}


class PipelineError(RuntimeError):
    """A stage failed; the message names the stage and its log."""


@dataclass
class PipelineOptions:
    dataset: str
    model: str = "gpt2-medium"
    method: str = "lora"
    run_dir: Path | None = None
    raw_dir: Path | None = None
    nproc: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    train_limit: int | None = None
    valid_limit: int | None = None
    test_limit: int | None = None
    train_from: str = "train"  # "valid" trains on the dev split where the train split is unavailable
    split: str = "test"
    offline_synthetic: bool = True
    trainer_args: list[str] = field(default_factory=list)
    generate_args: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)  # one full run per seed, then a report across them


def log(message: str) -> None:
    print(f"[pipeline] {message}", file=sys.stderr, flush=True)


def default_run_dir(opts: PipelineOptions) -> Path:
    return default_pipeline_dir(REPO, opts.dataset, opts.model, opts.method)


def _python_module(module: str, args: list[str], opts: PipelineOptions, distributed: bool) -> list[str]:
    if distributed and (opts.nproc > 1 or opts.nnodes > 1):
        return [
            sys.executable, "-m", "torch.distributed.run",
            f"--nproc_per_node={opts.nproc}", f"--nnodes={opts.nnodes}", f"--node_rank={opts.node_rank}",
            f"--master_addr={opts.master_addr}", f"--master_port={opts.master_port}",
            "-m", module, *args,
        ]
    return [sys.executable, "-m", module, *args]


def run_stage(name: str, cmd: list[str], run_dir: Path, echo: bool = True, env: dict | None = None) -> float:
    """Run one stage, its output into run_dir/logs/<name>.log (and onto stderr when ``echo``); returns its
    seconds; raises with the log path on failure. ``env``: extra environment variables for the stage."""
    logs = RunFolder(run_dir).logs
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{name}.log"
    if echo:
        log(f"{name}: {' '.join(shlex.quote(c) for c in cmd)}")
    start = time.time()
    full_env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
                    **(env or {}))
    with open(log_path, "a", encoding="utf-8") as handle:
        handle.write(f"\n$ {' '.join(shlex.quote(c) for c in cmd)}\n")
        handle.flush()
        proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            line = raw.decode("utf-8", "replace")
            handle.write(line)
            if echo:
                sys.stderr.write(line)
        code = proc.wait()
    if code != 0:
        raise PipelineError(f"{run_dir.name}: stage {name!r} failed with exit code {code}; see {log_path}")
    seconds = time.time() - start
    if echo:
        log(f"{name}: done in {seconds:.1f}s")
    return seconds


# ---------------------------------------------------------------- what each stage was made from


def stage_inputs(files: dict[str, Path], settings: dict) -> dict:
    """A stage's record: each input file's sha256 (None when absent) and its output-changing settings."""
    return {"files": {name: (file_sha256(path) if Path(path).is_file() else None)
                      for name, path in sorted(files.items())},
            "settings": json.loads(json.dumps(settings, default=str))}


def _changes(old: dict, new: dict) -> list[str]:
    """What differs between two stage records, for the log ("data/test.jsonl changed", "settings.limits ...")."""
    out = []
    for kind in ("files", "settings"):
        a, b = old.get(kind) or {}, new.get(kind) or {}
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                out.append(f"{key} changed" if kind == "files" else f"{key}: {a.get(key)!r} -> {b.get(key)!r}")
    return out


def up_to_date(run_dir: Path, stage: str, inputs: dict, outputs_exist: bool) -> bool:
    """True when ``stage`` can be skipped: its outputs exist and were made from exactly ``inputs``. A folder from
    before stage records were kept is trusted (and said so); otherwise a changed input is logged."""
    if not outputs_exist:
        return False
    stages = RunFolder(run_dir).stages
    recorded = (read_json_object(stages, missing_ok=True) or {}).get(stage)
    if recorded is None:
        log(f"{stage}: outputs exist but {stages.name} has no record of their inputs (an older run folder): "
            "kept as they are")
        return True
    changed = _changes(recorded, inputs)
    if changed:
        log(f"{stage}: redoing it, its inputs changed: {'; '.join(changed)}")
        return False
    return True


def record_stage(run_dir: Path, stage: str, inputs: dict) -> None:
    stages = RunFolder(run_dir).stages
    records = read_json_object(stages, missing_ok=True) or {}
    records[stage] = inputs
    write_json(stages, records)


# ---------------------------------------------------------------- data
def _online(host: str = "raw.githubusercontent.com", timeout: float = 3.0) -> bool:
    """Whether the official files could be downloaded (one short connection attempt)."""
    if os.environ.get("NLG_OFFLINE", "0") not in ("0", ""):
        return False
    return host_reachable(host, timeout=timeout)


def _raw_source(opts: PipelineOptions, run_dir: Path) -> tuple[Path | None, str]:
    """Where the raw files come from: --raw-dir, ../shared/data, download (None), or the synthetic sample."""
    if opts.raw_dir is not None:
        return opts.raw_dir, "raw-dir"
    shared = SHARED_DATA / SHARED_SUBDIR[opts.dataset]
    if shared.is_dir():
        return shared, "shared"
    if _online():
        return None, "download"
    if opts.dataset == "e2e" and opts.offline_synthetic:
        folder = write_synthetic_e2e(RunFolder(run_dir).raw_synthetic)
        return folder, "synthetic"
    raise PipelineError(
        f"no raw data for {opts.dataset}: pass --raw-dir (RAW_DIR=...), place the files in {shared}, or go online "
        "so the official files can be downloaded"
    )


def _split_limits(opts: PipelineOptions) -> dict[str, int | None]:
    """Records kept per split; a dev split that doubles as training data keeps the larger limit."""
    limits: dict[str, int | None] = {}
    for split, limit in ((opts.train_from, opts.train_limit), ("valid", opts.valid_limit), (opts.split, opts.test_limit)):
        if split in limits and (limits[split] is None or limit is None):
            limits[split] = None
        else:
            limits[split] = max(limits.get(split) or 0, limit or 0) or None
    return limits


def missing_split_way_out(opts: PipelineOptions, split: str) -> str:
    """How a user of this pipeline (scripts/<dataset>.sh) does without ``split`` when its raw file is missing: the
    preparer's own advice, its --splits flag, is not a flag they have."""
    if split == "train":
        return ", or train on the dev split instead: TRAIN_FROM=valid (nlg.pipeline --train-from valid)"
    if split == opts.split and split != "valid":
        return ", or decode and score the dev split instead: SPLIT=valid (nlg.pipeline --split valid)"
    return "; the protocol cannot do without the dev split (training validates on it)"


def stage_prepare(opts: PipelineOptions, run_dir: Path) -> dict:
    """The splits into RUN/data/, with ``data_source.json`` there: the trainer copies it, and the data folder's
    synthetic marker, into the run's provenance."""
    data_dir = RunFolder(run_dir).data
    marker = data_dir / DATA_SOURCE
    limits = _split_limits(opts)
    settings = {"dataset": opts.dataset, "raw_dir": str(opts.raw_dir) if opts.raw_dir else None, "limits": limits,
                "train_split": opts.train_from}
    inputs = stage_inputs({}, settings)
    done = marker.is_file() and all(encoded_file(data_dir, s).is_file() for s in limits)
    if up_to_date(run_dir, "prepare", inputs, done):
        log(f"prepare: skipped (already done: {data_dir})")
        return json.loads(marker.read_text())
    remove_paths([marker])
    raw, source = _raw_source(opts, run_dir)
    for split, limit in limits.items():
        args = ["--out-dir", str(data_dir), "--splits", split]
        args += ["--raw-dir", str(raw)] if raw is not None else []
        args += ["--limit", str(limit)] if limit else []
        run_stage(f"prepare-{split}", _python_module(f"data.{opts.dataset}.prepare", args, opts, False), run_dir,
                  env={WAY_OUT_ENV: missing_split_way_out(opts, split)})
    info = {
        "source": source,
        "raw_dir": str(raw) if raw else None,
        "train_split": opts.train_from,
        "limits": limits,
    }
    write_json(marker, info)
    record_stage(run_dir, "prepare", inputs)
    return info


# ---------------------------------------------------------------- train .. report
def stage_train(opts: PipelineOptions, run_dir: Path) -> None:
    files = RunFolder(run_dir)
    train_data, valid_data = encoded_file(files.data, opts.train_from), encoded_file(files.data, "valid")
    inputs = stage_inputs({"train_data": train_data, "valid_data": valid_data},
                          {"model": opts.model, "method": opts.method, "trainer_args": opts.trainer_args})
    done = files.summary.is_file() and files.adapter.is_dir()
    if up_to_date(run_dir, "train", inputs, done):
        log(f"train: skipped (already done: {files.adapter.name}/ and {files.summary.name} exist)")
        return
    args = [
        "--dataset", opts.dataset, "--model", opts.model, "--method", opts.method,
        "--train-data", str(train_data), "--valid-data", str(valid_data), "--out-dir", str(run_dir),
    ]
    if done:  # made from other inputs: the trainer checks the new ones, then removes the run and what came of it
        args.append("--overwrite")
    elif any(files.checkpoints.glob("step-*")):
        log("train: resuming from the last checkpoint in checkpoints/")
        args.append("--resume")
    run_stage("train", _python_module("nlg.train", args + opts.trainer_args, opts, True), run_dir)
    record_stage(run_dir, "train", inputs)


def _adapter_files(run_dir: Path) -> dict[str, Path]:
    folder = RunFolder(run_dir).adapter
    return {f"{ADAPTER}/{p.name}": p for p in sorted(folder.iterdir()) if p.is_file()} if folder.is_dir() else {}


def stage_generate(opts: PipelineOptions, run_dir: Path) -> None:
    files = RunFolder(run_dir)
    out = files.predictions(opts.split)
    data = encoded_file(files.data, opts.split)
    inputs = stage_inputs({"data": data, **_adapter_files(run_dir)},
                          {"split": opts.split, "generate_args": opts.generate_args})
    if up_to_date(run_dir, "generate", inputs, out.is_file()):
        log(f"generate: skipped (already done: {out.name})")
        return
    remove_paths([out, files.eval_dir(opts.split), files.scores(opts.split)])
    args = ["--run-dir", str(run_dir), "--dataset", opts.dataset, "--split", opts.split, "--data", str(data)]
    run_stage("generate", _python_module("nlg.generate", args + opts.generate_args, opts, True), run_dir)
    record_stage(run_dir, "generate", inputs)


def stage_decode(opts: PipelineOptions, run_dir: Path) -> None:
    files = RunFolder(run_dir)
    out = files.eval_dir(opts.split)
    formatted = formatted_file(files.data, opts.split)
    inputs = stage_inputs({"predictions": files.predictions(opts.split), "formatted": formatted},
                          {"split": opts.split})
    if up_to_date(run_dir, "decode", inputs, out.is_dir() and any(out.iterdir())):
        log(f"decode: skipped (already done: {out.relative_to(run_dir)}/)")
        return
    remove_paths([out, files.scores(opts.split)])
    args = ["--run-dir", str(run_dir), "--dataset", opts.dataset, "--split", opts.split, "--formatted", str(formatted)]
    run_stage("decode", _python_module("nlg.decode", args, opts, False), run_dir)
    record_stage(run_dir, "decode", inputs)


def stage_score(opts: PipelineOptions, run_dir: Path) -> None:
    run = RunFolder(run_dir)
    out, eval_dir = run.scores(opts.split), run.eval_dir(opts.split)
    files = {f"{EVAL}/{opts.split}/{p.relative_to(eval_dir)}": p for p in sorted(eval_dir.rglob("*"))
             if p.is_file()} if eval_dir.is_dir() else {}
    inputs = stage_inputs(files, {"split": opts.split})
    if up_to_date(run_dir, "score", inputs, out.is_file()):
        log(f"score: skipped (already done: {out.name})")
        return
    remove_paths([out])
    args = ["--run-dir", str(run_dir), "--dataset", opts.dataset, "--split", opts.split]
    run_stage("score", _python_module("eval.score", args, opts, False), run_dir)
    record_stage(run_dir, "score", inputs)


def stage_report(opts: PipelineOptions, run_dir: Path) -> None:
    run_stage("report", _python_module("eval.report", [str(run_dir)], opts, False), run_dir)


STAGES = ("prepare", "train", "generate", "decode", "score", "report")


def run_pipeline(opts: PipelineOptions) -> Path:
    """Run (or resume) every stage for one dataset; returns the run folder."""
    if opts.dataset not in DATASETS:
        raise PipelineError(f"unknown dataset {opts.dataset!r}; expected one of {', '.join(DATASETS)}")
    if opts.method not in METHODS:
        raise PipelineError(f"unknown method {opts.method!r}; expected one of {', '.join(METHODS)}")
    run_dir = Path(opts.run_dir) if opts.run_dir else default_run_dir(opts)
    run_dir.mkdir(parents=True, exist_ok=True)
    log(f"run folder: {run_dir}")
    stage_prepare(opts, run_dir)
    stage_train(opts, run_dir)
    stage_generate(opts, run_dir)
    stage_decode(opts, run_dir)
    stage_score(opts, run_dir)
    stage_report(opts, run_dir)
    log(f"finished: report at {RunFolder(run_dir).report_md}")
    return run_dir


def run_seeds(opts: PipelineOptions) -> Path:
    """The protocol once per seed in ``<run-dir>-s<seed>``, then one report over them in ``<run-dir>-seeds``;
    returns that report folder. Each seed's folder resumes on its own, so re-running continues where it stopped."""
    if len(set(opts.seeds)) != len(opts.seeds):
        raise PipelineError(f"--seeds repeats a seed: {' '.join(map(str, opts.seeds))}")
    base = Path(opts.run_dir) if opts.run_dir else default_run_dir(opts)
    run_dirs = []
    for seed in opts.seeds:
        log(f"seed {seed}")
        one = dataclasses.replace(opts, seeds=[], run_dir=seed_dir(base, seed),
                                  trainer_args=[*opts.trainer_args, "--seed", str(seed)])  # the last --seed wins
        run_dirs.append(run_pipeline(one))
    out = seeds_report_dir(base)
    out.mkdir(parents=True, exist_ok=True)
    args = [*map(str, run_dirs), "--out", str(out), "--split", opts.split]
    run_stage("report", _python_module("eval.report", args, opts, False), out)
    log(f"finished {len(run_dirs)} seeds: report across them at {RunFolder(out).report_md}")
    return out


def parse_args(argv: list[str] | None = None) -> PipelineOptions:
    argv = list(sys.argv[1:] if argv is None else argv)
    trainer_args: list[str] = []
    if "--" in argv:  # everything after "--" goes to the trainer
        cut = argv.index("--")
        argv, trainer_args = argv[:cut], argv[cut + 1:]
    p = argparse.ArgumentParser(prog="python -m nlg.pipeline", description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--model", default="gpt2-medium")
    p.add_argument("--method", default="lora", choices=METHODS)
    p.add_argument("--run-dir", type=Path)
    p.add_argument("--raw-dir", type=Path, help="local raw files; default ../shared/data, then download, then (E2E) synthetic")
    p.add_argument("--nproc", type=int, default=1, help="processes per node for training and generation (torchrun)")
    p.add_argument("--nnodes", type=int, default=1)
    p.add_argument("--node-rank", type=int, default=0)
    p.add_argument("--master-addr", default="127.0.0.1")
    p.add_argument("--master-port", type=int, default=29500)
    p.add_argument("--train-limit", type=int)
    p.add_argument("--valid-limit", type=int)
    p.add_argument("--test-limit", type=int)
    p.add_argument("--train-from", default="train", choices=("train", "valid"),
                   help="'valid' trains on the dev split (for demos where the train split is absent)")
    p.add_argument("--split", default="test", help="split to decode and score")
    p.add_argument("--no-synthetic", dest="offline_synthetic", action="store_false",
                   help="offline with no data: fail instead of generating the synthetic E2E sample")
    p.add_argument("--generate-args", default="", help="extra arguments for nlg.generate, one string")
    p.add_argument("--seeds", type=int, nargs="+", default=[],
                   help="one run per seed in <run-dir>-s<seed> (trainer --seed), then a report across them in "
                        "<run-dir>-seeds")
    ns = p.parse_args(argv)
    for name in ("train_limit", "valid_limit", "test_limit"):  # 0 would silently mean "no limit"
        if getattr(ns, name) is not None and getattr(ns, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1 (records to keep), got {getattr(ns, name)}")
    values = vars(ns)
    values["generate_args"] = shlex.split(values.pop("generate_args"))
    return PipelineOptions(trainer_args=trainer_args, **values)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    try:
        run_seeds(opts) if opts.seeds else run_pipeline(opts)
    except PipelineError as exc:
        log(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
