"""The run folder of one training run: whether it starts, resumes or is finished, and every file the trainer writes
into it (recipe, provenance, log, checkpoints, best checkpoint, adapter, summary, TensorBoard mirror; their names:
nlg.run_folder).

``TrainingRun`` holds the folder's lock from the decision to ``release()``, so two trainers never write one folder;
``--overwrite`` removes the run's own outputs and everything later stages derived from them, but only after the
inputs were checked (a typo never costs the run it was meant to replace); ``--resume`` refuses a changed recipe or
changed training data. Only the main process writes; every method is a no-op elsewhere.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

from nlg import distributed as dist_utils
from nlg.adapter_io import export_peft, peft_unexportable, save_adapter
from nlg.checkpoint import (BEST_DIR, latest_checkpoint, load_best, load_latest_complete, remove_stale_temporaries,
                            save_best, save_checkpoint)
from nlg.config import TrainConfig
from nlg.io_utils import atomic_open, file_sha256, remove_paths, write_json
from nlg.models import PRETRAINED_HERE, is_random_model
from nlg.pretrain import default_model_dir
from nlg.run_folder import RunFolder, RunLock, RunLockedError, TRAINING_OUTPUTS, data_records, pretrain_info
from nlg.tensorboard_log import open_mirror

# Fields that may change between a run and its resumption (they do not change what is computed).
RESUME_MAY_CHANGE = {"resume", "save_interval", "log_interval", "out_dir", "train_data", "valid_data", "report_to"}


class TrainError(RuntimeError):
    """A run that cannot start as asked (finished folder, incompatible resume, bad flags)."""


def decide_start(cfg: TrainConfig, overwrite: bool) -> tuple[str, Path | None]:
    """("fresh" | "resume" | "finished", checkpoint); refuses to clobber progress unless asked."""
    run = RunFolder(cfg.out_dir)
    finished = run.summary.is_file()
    ckpt = latest_checkpoint(run.path)
    if overwrite:  # the inputs were checked first (Trainer): a typo never costs the run it was meant to replace
        remove_paths([run.path / name for name in TRAINING_OUTPUTS] + run.derived_outputs())
        return "fresh", None
    if cfg.resume:
        if finished:
            return "finished", ckpt
        return ("resume", ckpt) if ckpt is not None else ("fresh", None)
    if finished:
        raise TrainError(f"{run.path} holds a finished run ({run.summary.name} exists); pass --overwrite to train it "
                         "again from scratch, or choose another --out-dir")
    if ckpt is not None:
        raise TrainError(f"{run.path} holds a started run (last checkpoint {ckpt.name}); pass --resume to continue it "
                         "or --overwrite to start again")
    return "fresh", None


def data_fingerprints(cfg: TrainConfig) -> dict[str, str]:
    """sha256 of the training and dev files, recorded in ``recipe.json`` so ``--resume`` can refuse changed data."""
    return {"train_data": file_sha256(cfg.train_data), "valid_data": file_sha256(cfg.valid_data)}


def check_resume_config(cfg: TrainConfig, run: Path) -> None:
    """``--resume`` continues the same run only with the recipe (and the data) it started with."""
    path = RunFolder(run).recipe
    if not path.is_file():
        raise TrainError(f"{path}: missing, cannot check that --resume uses the same recipe")
    text = path.read_text(encoding="utf-8")
    saved = TrainConfig.from_json(text)
    diffs = [f"--{f.name.replace('_', '-')}: run has {getattr(saved, f.name)!r}, now {getattr(cfg, f.name)!r}"
             for f in dataclasses.fields(TrainConfig)
             if f.name not in RESUME_MAY_CHANGE and getattr(saved, f.name) != getattr(cfg, f.name)]
    if diffs:
        raise TrainError(f"{path}: --resume with a different recipe would not continue the same run:\n  "
                         + "\n  ".join(diffs))
    _check_resume_data(cfg, json.loads(text).get("data_sha256"))


def _check_resume_data(cfg: TrainConfig, saved) -> None:
    """A resumed run continues bit for bit only on the data it started with (the path may move, not the bytes);
    ``saved``: the fingerprints its ``recipe.json`` recorded."""
    if not isinstance(saved, dict):  # a run folder from before fingerprints were recorded: nothing to compare
        return
    for key, now in data_fingerprints(cfg).items():
        if saved.get(key) not in (None, now):
            raise TrainError(f"{getattr(cfg, key)}: changed since the run started (sha256 {saved[key][:12]}… then, "
                             f"{now[:12]}… now); --resume would not continue the same run: restore the file, or "
                             "pass --overwrite to train again on the new data")


def provenance_record(model: str, train_data: str | Path | None, recorded_by: str = "nlg.train") -> dict:
    """``provenance.json``: whether ``model`` is random or pretrained (one pretrained here: its ``pretrain.json``,
    corpus included) and what the data folder of ``train_data`` says of itself (synthetic or real, and where a
    driver got it). Reports take these facts from here only, so they are looked up once, when the run starts."""
    folder = default_model_dir(model) if model in PRETRAINED_HERE else Path(model)
    data = {"train_data": None, "synthetic": False, "synthetic_marker": None, "source": None}
    if train_data is not None:
        data = {"train_data": str(Path(train_data).resolve()), **data_records(Path(train_data).resolve().parent)}
    return {"model": {"name": model, "random": is_random_model(model),
                      "pretrained_here": pretrain_info(folder) if folder is not None else None,
                      "folder": str(folder) if folder is not None and folder.is_dir() else None},
            "data": data, "recorded_by": recorded_by}


class TrainingRun:
    """One run folder, locked for this run: ``mode`` ("fresh" | "resume" | "finished") and ``checkpoint`` (the one
    to resume from) are decided once, on the main process, and shared with the others."""

    def __init__(self, cfg: TrainConfig, dist, overwrite: bool = False, say: Callable[[str], None] = print):
        self.cfg, self.dist, self.say = cfg, dist, say
        self.dir = Path(cfg.out_dir)
        self.files = RunFolder(self.dir)
        self.lock = None
        self.tensorboard = None
        self.log_lines = 0  # lines of log.jsonl that belong to this run (a resumed run drops later ones)
        decision = None
        if dist.is_main:
            try:
                self.lock = RunLock(self.dir, "train").acquire()
                for stale in remove_stale_temporaries(self.dir):  # under the lock: no writer owns them
                    say(f"removed {stale}, left half-written by an earlier run that was stopped")
                decision = decide_start(cfg, overwrite)
                if cfg.resume and decision[0] == "fresh" and not overwrite:
                    say(f"--resume: {self.dir} has no checkpoint yet; starting the run from step 0")
            except (TrainError, RunLockedError) as exc:
                decision = ("error", str(exc))
        decision = dist_utils.broadcast_object(decision)
        if decision[0] == "error":
            self.release()
            raise TrainError(decision[1])
        self.mode, ckpt = decision
        self.checkpoint = Path(ckpt) if ckpt is not None else None

    def release(self) -> None:
        """Close the TensorBoard mirror and give the folder's lock back."""
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    # ------------------------------------------------------------ start
    def start(self, recipe: dict) -> None:
        """A fresh run: ``recipe.json``, ``provenance.json``, an empty log, no best checkpoint of an earlier
        attempt."""
        if not self.dist.is_main:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        for stale in self.files.checkpoints.glob(f".{BEST_DIR}.*.old"):  # an earlier attempt's, cut short before
            shutil.rmtree(stale, ignore_errors=True)  # its first step checkpoint: this run starts with no best
        shutil.rmtree(self.files.checkpoints / BEST_DIR, ignore_errors=True)
        write_json(self.files.recipe, recipe)
        self.record_provenance()
        with atomic_open(self.files.log) as handle:
            handle.write("")
        self.log_lines = 0

    def record_provenance(self, only_if_missing: bool = False) -> None:
        """``provenance.json`` for this run's model and training data (a resumed run from before the record was
        kept gets one too)."""
        if self.dist.is_main and not (only_if_missing and self.files.provenance.is_file()):
            write_json(self.files.provenance, provenance_record(self.cfg.model, self.cfg.train_data))

    def open_mirror(self, first_step: int | None) -> None:
        """TensorBoard events beside the log when ``--report-to tensorboard`` (on resume from ``first_step``)."""
        if self.dist.is_main:
            self.tensorboard = open_mirror(self.cfg.report_to, self.dir, first_step)

    # ------------------------------------------------------------ while training
    def log(self, record: dict) -> None:
        """One line of the log (and its TensorBoard scalars)."""
        if not self.dist.is_main:
            return
        with open(self.files.log, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
        self.log_lines += 1
        if self.tensorboard is not None:
            self.tensorboard.write(record)

    def save(self, step: int, trainable: dict[str, torch.Tensor], optimizer: dict, rngs: list[dict[str, Any]],
             state: dict[str, Any]) -> None:
        """``checkpoints/step-<step>/`` (the last two kept); every process waits for it."""
        if self.dist.is_main:
            save_checkpoint(self.dir, step, trainable, optimizer, rngs, {**state, "log_lines": self.log_lines})
        dist_utils.barrier()

    def save_best(self, trainable: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
        if self.dist.is_main:
            save_best(self.dir, trainable, info)
        dist_utils.barrier()

    def load_best(self) -> dict[str, Any] | None:
        return load_best(self.dir)

    def restore(self) -> tuple[Path, dict[str, Any]]:
        """The newest checkpoint that loads (falling back past broken ones, saying so); the log cut back to it."""
        found = load_latest_complete(self.dir, say=self.say)
        if found is None:
            raise TrainError(f"{self.files.checkpoints}: no checkpoint loads (each failed above); pass --overwrite "
                             "to start again")
        path, ck = found
        self.checkpoint = path
        self.log_lines = int(ck["state"].get("log_lines", 0))
        if self.dist.is_main:  # drop log lines written after the checkpoint
            log = self.files.log
            lines = log.read_text(encoding="utf-8").splitlines(keepends=True) if log.is_file() else []
            with atomic_open(log) as handle:
                handle.writelines(lines[: self.log_lines])
        return path, ck

    # ------------------------------------------------------------ the end
    def finish(self, model: torch.nn.Module, cfg: TrainConfig, chosen: dict, summary: dict) -> None:
        """``adapter/`` (and ``peft_adapter/`` where PEFT can hold the method) with the selected weights, then
        ``train_summary.json``, which marks the run finished."""
        if self.dist.is_main:
            save_adapter(model, cfg, self.files.adapter, checkpoint=chosen)
            if peft_unexportable(cfg) is None:
                export_peft(model, cfg, self.files.peft_adapter)
            write_json(self.files.summary, summary)
        dist_utils.barrier()
