"""The folders this project writes, named in one place, with the lock and the records every stage reads.

A run folder (``runs/<dataset>-<model>-<method>-r<rank>`` by default) is written by one training run and then by
the stages that use its adapter; it holds

- ``.lock``: held by the stage writing into the folder (:class:`RunLock`);
- ``recipe.json``: every TrainConfig field and the run's counts; ``log.jsonl``: one line per logged step;
- ``provenance.json``: what the run was made from: a random or a pretrained model (for one pretrained here, its
  ``pretrain.json``), synthetic or real data (the data folder's ``synthetic.json`` and ``data_source.json``);
  reports read it through :func:`read_provenance` and never look for markers anywhere else;
- ``checkpoints/``: ``step-<N>/`` and ``best/`` (their layout: nlg.checkpoint); ``tensorboard/`` when asked for;
- ``adapter/`` (its layout: nlg.adapter_io) and ``peft_adapter/``, then ``train_summary.json``, which marks the run
  finished;
- ``predictions.<split>.jsonl`` and ``generate.<split>.json`` (nlg.generate), ``eval/<split>/`` (nlg.decode),
  ``scores.<split>.json`` (eval.score), ``report.md``, ``report.json``, ``loss.png`` (eval.report);
- from nlg.pipeline: ``data/`` (the prepared splits, with ``data_source.json``), ``raw-synthetic/`` (the synthetic
  sample, when it is the only data), ``logs/<stage>.log`` and ``stages.json``.

A data folder holds ``<split>.jsonl`` (encoded) and ``<split>_formatted.jsonl`` per split, ``synthetic.json`` when it
was prepared from the synthetic sample (data.synthetic), and ``data_source.json`` when a driver recorded where its
raw files came from. An experiment folder (nlg.cpu_table3) holds ``manifest.json``, ``data/``, ``runs/`` and
``report/``; a pretraining cache entry (nlg.pretrain) holds ``model/`` (with ``pretrain.json``), ``corpus/`` (with
``corpus.json``) and ``run/``, a run folder of its own.
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from nlg.io_utils import read_json_object

try:
    import fcntl
except ImportError:  # Windows: the run lock is a no-op
    fcntl = None

# ---------------------------------------------------------------- a run folder
LOCK = ".lock"
RECIPE = "recipe.json"
LOG = "log.jsonl"
PROVENANCE = "provenance.json"
CHECKPOINTS = "checkpoints"
TENSORBOARD = "tensorboard"
ADAPTER = "adapter"
ADAPTER_WEIGHTS = "adapter.safetensors"  # inside adapter/ (the rest of that folder: nlg.adapter_io)
PEFT_ADAPTER = "peft_adapter"
TRAIN_SUMMARY = "train_summary.json"
PREDICTIONS = "predictions.{split}.jsonl"
GENERATE_RECORD = "generate.{split}.json"
EVAL = "eval"
SCORES = "scores.{split}.json"
REPORT_MD = "report.md"
REPORT_JSON = "report.json"
LOSS_PNG = "loss.png"
RUN_LOSS_PNG = "loss-{name}.png"  # one run's curve in a report over several
METRICS_PNG = "metrics.png"
# added by nlg.pipeline
DATA = "data"  # also the checkout's data/<dataset>/, where the preparers write by default (nlg.config)
RAW_SYNTHETIC = "raw-synthetic"
LOGS = "logs"
STAGES = "stages.json"

# ---------------------------------------------------------------- a data folder
ENCODED = "{split}.jsonl"
FORMATTED = "{split}_formatted.jsonl"
SYNTHETIC_MARKER = "synthetic.json"  # written by data.synthetic; the preparers carry it next to what they write
DATA_SOURCE = "data_source.json"  # where a driver (nlg.pipeline, nlg.cpu_table3) got the raw files

# ---------------------------------------------------------------- default folders
RUNS = "runs"  # the default parent of run folders, in the working directory (nlg.train) or the checkout
MANIFEST = "manifest.json"  # an experiment folder's list of rows and run folders (nlg.cpu_table3)
REPORT_DIR = "report"  # a report over several runs: beside them (eval.report), in the experiment folder

# ---------------------------------------------------------------- a pretraining cache entry (nlg.pretrain)
PRETRAIN_MODEL = "model"
PRETRAIN_INFO = "pretrain.json"  # inside model/, beside the weights
PRETRAIN_CORPUS = "corpus"
CORPUS_INFO = "corpus.json"
HELDOUT = "heldout"  # the corpus split the pretraining run validates on
PRETRAIN_RUN = "run"

# What nlg.train writes (removed by --overwrite), and what later stages derive from its adapter (stale once the
# run is trained again).
TRAINING_OUTPUTS = (RECIPE, LOG, PROVENANCE, CHECKPOINTS, ADAPTER, PEFT_ADAPTER, TRAIN_SUMMARY, TENSORBOARD)
DERIVED_OUTPUTS = (PREDICTIONS.format(split="*"), GENERATE_RECORD.format(split="*"), EVAL, SCORES.format(split="*"),
                   REPORT_MD, REPORT_JSON, LOSS_PNG)


@dataclass(frozen=True)
class RunFolder:
    """The paths of one run folder (nothing is created)."""

    path: Path

    def __init__(self, path: str | os.PathLike):
        object.__setattr__(self, "path", Path(path))

    name = property(lambda self: self.path.name)
    lock = property(lambda self: self.path / LOCK)
    recipe = property(lambda self: self.path / RECIPE)
    log = property(lambda self: self.path / LOG)
    provenance = property(lambda self: self.path / PROVENANCE)
    checkpoints = property(lambda self: self.path / CHECKPOINTS)
    tensorboard = property(lambda self: self.path / TENSORBOARD)
    adapter = property(lambda self: self.path / ADAPTER)
    adapter_weights = property(lambda self: self.path / ADAPTER / ADAPTER_WEIGHTS)
    peft_adapter = property(lambda self: self.path / PEFT_ADAPTER)
    summary = property(lambda self: self.path / TRAIN_SUMMARY)
    data = property(lambda self: self.path / DATA)
    raw_synthetic = property(lambda self: self.path / RAW_SYNTHETIC)
    logs = property(lambda self: self.path / LOGS)
    stages = property(lambda self: self.path / STAGES)
    report_md = property(lambda self: self.path / REPORT_MD)
    report_json = property(lambda self: self.path / REPORT_JSON)
    loss_png = property(lambda self: self.path / LOSS_PNG)

    def predictions(self, split: str) -> Path:
        return self.path / PREDICTIONS.format(split=split)

    def generate_record(self, split: str) -> Path:
        return self.path / GENERATE_RECORD.format(split=split)

    def eval_dir(self, split: str) -> Path:
        return self.path / EVAL / split

    def scores(self, split: str) -> Path:
        return self.path / SCORES.format(split=split)

    def derived_outputs(self) -> list[Path]:
        """The downstream stages' outputs present in the folder."""
        return sorted({p for pattern in DERIVED_OUTPUTS for p in self.path.glob(pattern)})


def encoded_file(folder: str | os.PathLike, split: str) -> Path:
    """``<split>.jsonl`` of a data folder: the authors' encoded records, what training and decoding read."""
    return Path(folder) / ENCODED.format(split=split)


def formatted_file(folder: str | os.PathLike, split: str) -> Path:
    """``<split>_formatted.jsonl`` of a data folder: the text records, what nlg.decode takes references from."""
    return Path(folder) / FORMATTED.format(split=split)


# ---------------------------------------------------------------- default names
def model_tag(model: str) -> str:
    """A model name or path as a folder-name part (its last component, odd characters replaced)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(model).name or model)


def default_train_dir(dataset: str, model: str, method: str, rank: int) -> Path:
    """nlg.train's run folder when no ``--out-dir`` is given (relative to the working directory)."""
    return Path(RUNS) / f"{dataset}-{model_tag(model)}-{method}-r{rank}"


def default_pipeline_dir(root: Path, dataset: str, model: str, method: str) -> Path:
    """nlg.pipeline's run folder when no ``--run-dir`` is given: under ``root/runs``."""
    name = Path(model).name if os.sep in model else model
    return root / RUNS / f"{dataset}-{name}-{method}"


def seed_dir(base: Path, seed: int) -> Path:
    """The run folder of one seed of ``base``: ``<base>-s<seed>``."""
    return base.with_name(f"{base.name}-s{seed}")


def seeds_report_dir(base: Path) -> Path:
    """Where the report across the seeds of ``base`` goes: ``<base>-seeds``."""
    return base.with_name(f"{base.name}-seeds")


# ---------------------------------------------------------------- the lock
class RunLockedError(RuntimeError):
    """Another process holds the run folder's lock."""


class RunLock:
    """An exclusive lock on a run folder for a stage that writes into it (``fcntl.flock`` on ``RUN/.lock``).

    A second writer stops at once with the holder's PID, stage and command; the kernel drops the lock when its
    process ends however it ends, so a killed run never leaves a stale lock. Where ``fcntl`` is missing (Windows)
    the lock is a no-op."""

    def __init__(self, run_dir: str | os.PathLike, stage: str, create: bool = True):
        self.path = RunFolder(run_dir).lock
        self.stage = stage
        self.create = create  # False: a folder that does not exist is not locked (nothing in it to protect)
        self._handle = None

    def acquire(self) -> "RunLock":
        if fcntl is None:
            return self
        if not self.path.parent.is_dir():
            if not self.create:
                return self
            self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RunLockedError(f"{self.path.parent}: in use by {holder}; wait for it to end or stop it") from None
        handle.seek(0)
        handle.truncate()
        command = " ".join(sys.argv) or "python"
        handle.write(f"PID {os.getpid()} ({self.stage}: {command})\n")
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is not None:
            self._handle.seek(0)
            self._handle.truncate()
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# ---------------------------------------------------------------- records
def pretrain_info(model_dir: str | os.PathLike) -> dict | None:
    """``pretrain.json`` of a model folder made by nlg.pretrain, or None for any other model."""
    path = Path(model_dir) / PRETRAIN_INFO
    return read_json_object(path, missing_ok=True) if Path(model_dir).is_dir() else None


def describe_pretrained(info: dict) -> str:
    """One line saying what a model pretrained here is (reports start with it), from its ``pretrain.json``."""
    c = info["corpus"]
    copies = (f" + {c['copy_blocks']} synthetic copy blocks of {c['block_size']} tokens (random ids, each span "
              "repeated)") if c.get("copy_blocks") else ""
    pins = info.get("kernel_paths")
    pinned = f"CPU kernels pinned ({', '.join(f'{k}={v}' for k, v in pins.items())}); " if pins else ""
    return (f"{info['card']} GPT-2 ({info['n_layer']} layers, {info['n_embd']} wide) pretrained here from scratch on "
            f"{info['tokens_seen'] / 1e6:.1f}M tokens ({c['train_tokens'] / 1e6:.2f}M-token corpus: {c['label']}"
            f"{copies}); {pinned}held-out perplexity {info['heldout_perplexity']:.1f}; not OpenAI's GPT-2")


def data_records(folder: str | os.PathLike) -> dict:
    """What a data folder says about itself: ``synthetic`` (it carries ``synthetic.json``), that marker's content
    and the driver's ``data_source.json`` (None where absent). Only the folder itself is looked at."""
    folder = Path(folder)
    marker = read_json_object(folder / SYNTHETIC_MARKER, missing_ok=True)
    return {"synthetic": marker is not None and marker.get("synthetic", True) is not False,
            "synthetic_marker": marker, "source": read_json_object(folder / DATA_SOURCE, missing_ok=True)}


def read_provenance(run_dir: str | os.PathLike) -> dict:
    """What a run was made from: ``{"model": {"name", "random", "pretrained_here", "folder"}, "data": {"train_data",
    "synthetic", "synthetic_marker", "source"}, "recorded_in"}``, from ``provenance.json``. A run folder from before
    that record was kept is read from what it has (recipe.json's ``random_model`` and ``synthetic_data``, the
    pipeline's ``data_source.json`` beside it, the model folder's ``pretrain.json``); ``recorded_in`` says which."""
    folder = RunFolder(run_dir)
    record = read_json_object(folder.provenance, missing_ok=True)
    if record is not None:
        model, data = record.get("model") or {}, record.get("data") or {}
        return {"model": {"name": model.get("name"), "random": bool(model.get("random")),
                          "pretrained_here": model.get("pretrained_here"), "folder": model.get("folder")},
                "data": {"train_data": data.get("train_data"), "synthetic": bool(data.get("synthetic")),
                         "synthetic_marker": data.get("synthetic_marker"), "source": data.get("source")},
                "recorded_in": PROVENANCE}
    recipe = read_json_object(folder.recipe, missing_ok=True) or {}
    source = read_json_object(folder.path / DATA_SOURCE, missing_ok=True)
    name = recipe.get("model")
    found = [n for n, d in ((RECIPE, recipe), (DATA_SOURCE, source)) if d]
    here = pretrain_info(name) if isinstance(name, str) and name else None
    return {"model": {"name": name, "random": bool(recipe.get("random_model")), "pretrained_here": here,
                      "folder": name if here is not None else None},
            "data": {"train_data": recipe.get("train_data"),
                     "synthetic": bool(recipe.get("synthetic_data") or (source or {}).get("synthetic_data")),
                     "synthetic_marker": None, "source": source},
            "recorded_in": ", ".join(found) or None}
