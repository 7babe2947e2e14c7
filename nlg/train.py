"""``python -m nlg.train``: the authors' fine-tuning recipe for any method, on one process or under ``torchrun``.

Per dataset the defaults are the paper's (Table 11 and the authors' README command, see nlg.config); every
TrainConfig field is a flag. What one update does, as in their ``gpt2_ft.py``: each process takes a batch of
``--batch-size`` examples in their sampler's order, computes the masked, label-smoothed mean loss over its own
batch, divides by ``--grad-acc``, back-propagates; DDP averages the gradients over processes; after ``--grad-acc``
batches their AdamW updates the trained tensors with the linearly warmed-up and decayed learning rate.

The run folder (default ``runs/<dataset>-<model>-<method>-r<rank>``) receives ``recipe.json``, ``log.jsonl``,
``checkpoints/step-<N>/`` (last two kept), ``checkpoints/best/`` (the trained tensors at the lowest dev loss so far),
and at the end ``adapter/``, ``peft_adapter/`` (LoRA, PreLayer) and ``train_summary.json``; nothing is written anywhere else.
``--resume`` continues from the last checkpoint bit-for-bit, best-so-far record included.

Validation on the dev split runs at each epoch's end and at the last update, as the authors do, and also every
``--eval-interval`` updates when that is set. ``--select-by last`` (the default, the authors' choice) puts the final
weights in ``adapter/``; ``--select-by valid_loss`` puts the best checkpoint's. ``adapter/adapter_config.json``
("checkpoint") and ``train_summary.json`` say which step that is.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import random
import re
import shutil
import sys
import time
import typing
from pathlib import Path

import torch
from tqdm import tqdm

from nlg import distributed as dist_utils
from nlg import kernels
from nlg.batching import (PAD_RNG_SEED, EpochPlan, collate, loader_seed_draw, read_encoded, total_steps,
                          valid_batches)
from nlg.checkpoint import (latest_checkpoint, load_best, load_latest_complete, remove_stale_temporaries, rng_state,
                            save_best, save_checkpoint,
                            set_rng_state)
from nlg.config import (DATASETS, KERNELS, METHODS, PRETRAIN_DATASET, TrainConfig, default_data_dir,
                        load_recipe_file, paper_train_config)
from nlg.io_utils import (RunLock, RunLockedError, atomic_open, cli_error, file_sha256, remove_paths,
                          write_json)
from nlg.loss import MaskedLMLoss
from nlg.tensorboard_log import REPORT_TO, TensorBoardUnavailable, open_mirror
from nlg.tensorboard_log import check_available as check_tensorboard
from nlg.methods import get_method
from nlg.methods.counts import count_line, exact_counts
from nlg.models import is_random_model, load_model
from nlg.optim import SCHEDULES, build_optimizer, set_lr

# Fields that may change between a run and its resumption (they do not change what is computed).
RESUME_MAY_CHANGE = {"resume", "save_interval", "log_interval", "out_dir", "train_data", "valid_data", "report_to"}
OUR_OUTPUTS = ("recipe.json", "log.jsonl", "checkpoints", "adapter", "peft_adapter", "train_summary.json",
               "tensorboard")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
SELECT_BY = ("last", "valid_loss")  # which weights adapter/ holds: the final ones, or those of the lowest dev loss
CHOICES = {"dataset": DATASETS, "method": METHODS, "precision": tuple(PRECISIONS), "kernels": KERNELS,
           "scheduler": SCHEDULES,
           "select_by": SELECT_BY, "report_to": REPORT_TO}


class TrainError(RuntimeError):
    """A run that cannot start as asked (finished folder, incompatible resume, bad flags)."""


# ---------------------------------------------------------------- paths and run folder
def resolve_paths(cfg: TrainConfig) -> TrainConfig:
    """Fill in the default data files and run folder."""
    data_dir = default_data_dir(cfg.dataset) if cfg.dataset in DATASETS else Path("data") / cfg.dataset
    model_tag = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(cfg.model).name or cfg.model)
    return dataclasses.replace(
        cfg,
        train_data=cfg.train_data or str(data_dir / "train.jsonl"),
        valid_data=cfg.valid_data or str(data_dir / "valid.jsonl"),
        out_dir=cfg.out_dir or str(Path("runs") / f"{cfg.dataset}-{model_tag}-{cfg.method}-r{cfg.rank}"),
    )


def check_config(cfg: TrainConfig) -> None:
    if cfg.dataset not in DATASETS and cfg.dataset != PRETRAIN_DATASET:
        raise TrainError(f"unknown dataset {cfg.dataset!r}; expected one of {', '.join(DATASETS)}")
    if cfg.scheduler not in SCHEDULES:
        raise TrainError(f"unknown --scheduler {cfg.scheduler!r}; expected one of {', '.join(SCHEDULES)}")
    if cfg.precision not in PRECISIONS:
        raise TrainError(f"unknown --precision {cfg.precision!r}; expected one of {', '.join(PRECISIONS)}")
    if cfg.kernels not in KERNELS:
        raise TrainError(f"unknown --kernels {cfg.kernels!r}; expected one of {', '.join(KERNELS)}")
    try:
        check_tensorboard(cfg.report_to)
    except (ValueError, TensorBoardUnavailable) as exc:
        raise TrainError(str(exc)) from None
    for name in ("batch_size", "grad_acc", "valid_batch_size", "seq_len", "epochs", "save_interval", "log_interval"):
        if getattr(cfg, name) < 1:
            raise TrainError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise TrainError(f"--max-steps must be >= 1, got {cfg.max_steps}")
    if cfg.clip < 0:
        raise TrainError(f"--clip must be >= 0, got {cfg.clip}")
    if cfg.eval_interval < 0:
        raise TrainError(f"--eval-interval must be >= 0 (0: validate at epoch ends only), got {cfg.eval_interval}")
    if cfg.select_by not in SELECT_BY:
        raise TrainError(f"unknown --select-by {cfg.select_by!r}; expected one of {', '.join(SELECT_BY)}")


DERIVED_PATTERNS = ("predictions.*.jsonl", "generate.*.json", "eval", "scores.*.json", "report.md", "report.json",
                    "loss.png")  # what the later stages made from this run's adapter (nlg.generate, decode, score, report)


def derived_outputs(run: Path) -> list[Path]:
    """The downstream stages' outputs in a run folder: stale once the run is trained again."""
    return sorted({p for pattern in DERIVED_PATTERNS for p in run.glob(pattern)})


def check_inputs(cfg: TrainConfig) -> None:
    """The training and validation files exist (before anything in the run folder is touched)."""
    for path in (cfg.train_data, cfg.valid_data):
        if not Path(path).is_file():
            raise TrainError(f"{path}: no such file; prepare the data with `python -m data.{cfg.dataset}.prepare` "
                             "or point --train-data / --valid-data at encoded JSONL files")


def _decide_start(cfg: TrainConfig, overwrite: bool) -> tuple[str, Path | None]:
    """("fresh" | "resume" | "finished", checkpoint); refuses to clobber progress unless asked."""
    run = Path(cfg.out_dir)
    finished = (run / "train_summary.json").is_file()
    ckpt = latest_checkpoint(run)
    if overwrite:  # the inputs were checked first (Trainer): a typo never costs the run it was meant to replace
        remove_paths([run / name for name in OUR_OUTPUTS] + derived_outputs(run))
        return "fresh", None
    if cfg.resume:
        if finished:
            return "finished", ckpt
        return ("resume", ckpt) if ckpt is not None else ("fresh", None)
    if finished:
        raise TrainError(f"{run} holds a finished run (train_summary.json exists); pass --overwrite to train it "
                         "again from scratch, or choose another --out-dir")
    if ckpt is not None:
        raise TrainError(f"{run} holds a started run (last checkpoint {ckpt.name}); pass --resume to continue it "
                         "or --overwrite to start again")
    return "fresh", None


def _check_resume_config(cfg: TrainConfig, run: Path) -> None:
    path = run / "recipe.json"
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


def data_fingerprints(cfg: TrainConfig) -> dict[str, str]:
    """sha256 of the training and dev files, recorded in ``recipe.json`` so ``--resume`` can refuse changed data."""
    return {"train_data": file_sha256(cfg.train_data), "valid_data": file_sha256(cfg.valid_data)}


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


def _is_synthetic(train_data: str) -> bool:
    """The synthetic E2E sample marks its folders with ``synthetic.json``."""
    folder = Path(train_data).resolve().parent
    return any((d / "synthetic.json").is_file() for d in (folder, folder.parent))


# ---------------------------------------------------------------- the run
@dataclasses.dataclass
class Progress:
    step: int = 0  # optimizer updates done
    micro: int = 0  # batches done (all epochs)
    epoch: int = 1  # current epoch, from 1 as the authors count
    batch_in_epoch: int = 0  # batches of the current epoch done
    log_lines: int = 0
    elapsed_s: float = 0.0
    train_time_s: float = 0.0
    tokens: int = 0  # real tokens trained on, all processes
    last_loss: float | None = None
    last_valid_loss: float | None = None
    valid_step: int | None = None  # step and epoch of the last validation
    valid_epoch: int | None = None
    best_step: int | None = None  # the validation with the lowest dev loss so far (its tensors: checkpoints/best/)
    best_epoch: int | None = None
    best_valid_loss: float | None = None


class Trainer:
    """One run: ``Trainer(cfg).run()``. Split in steps so tests can inspect or seed the model before training."""

    def __init__(self, cfg: TrainConfig, device: str | None = None, overwrite: bool = False,
                 stop_after: int | None = None, quiet: bool = False):
        check_config(cfg)
        self.cfg = cfg = resolve_paths(cfg)
        self.dist = dist_utils.setup(device)
        self.quiet = quiet or not self.dist.is_main
        self.stop_after = stop_after
        self.run_dir = Path(cfg.out_dir)
        check_inputs(cfg)
        self.lock = None  # the run folder's lock (main process), held until run() ends
        decision = None
        if self.dist.is_main:
            try:
                self.lock = RunLock(self.run_dir, "train").acquire()
                for stale in remove_stale_temporaries(self.run_dir):  # under the lock: no writer owns them
                    self.info(f"removed {stale}, left half-written by an earlier run that was stopped")
                decision = _decide_start(cfg, overwrite)
                if cfg.resume and decision[0] == "fresh" and not overwrite:
                    self.info(f"--resume: {self.run_dir} has no checkpoint yet; starting the run from step 0")
            except (TrainError, RunLockedError) as exc:
                decision = ("error", str(exc))
        decision = dist_utils.broadcast_object(decision)
        try:
            if decision[0] == "error":
                raise TrainError(decision[1])
            self._build(cfg, decision)
        except BaseException:
            self._release_lock()
            raise

    def _release_lock(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def _build(self, cfg: TrainConfig, decision) -> None:
        """Data, model, method, optimizer, loss; a fresh recipe or the restored checkpoint."""
        self.mode, ckpt = decision
        self.ckpt_path = Path(ckpt) if ckpt is not None else None
        if self.mode == "finished":
            return
        if self.mode == "resume":
            _check_resume_config(cfg, self.run_dir)  # the recipe, then the data's fingerprints

        self.train_examples = read_encoded(cfg.train_data, cfg.seq_len)
        self.valid_examples = read_encoded(cfg.valid_data, cfg.seq_len)
        self.total_steps = total_steps(len(self.train_examples), cfg.batch_size, cfg.epochs, cfg.grad_acc,
                                       self.dist.world, cfg.max_steps)
        if not any(e.n_loss for e in self.train_examples):
            raise TrainError(f"{cfg.train_data}: no example has a token to learn (every completion is empty or cut "
                             f"off by --seq-len {cfg.seq_len}): there is nothing to train on")
        if self.total_steps < 1:
            raise TrainError(f"{cfg.train_data}: {len(self.train_examples)} examples give no complete update "
                             f"(batch {cfg.batch_size} x grad-acc {cfg.grad_acc} x {self.dist.world} processes)")

        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self.method = get_method(cfg.method)
        model = load_model(cfg.model)  # a random test model is built with load_model's own seed, as decoding does
        if cfg.seq_len > model.config.n_positions:
            raise TrainError(f"--seq-len {cfg.seq_len} exceeds the model's {model.config.n_positions} positions "
                             f"({cfg.model}); use --seq-len {model.config.n_positions} or less")
        torch.manual_seed(cfg.seed)  # the method's initialisation does not depend on how the base was built
        model = self.method.apply(model, cfg)
        self.model = model.to(self.dist.device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        if not self.params:
            raise TrainError(f"method {cfg.method!r} left no trainable parameter")
        self.optimizer = build_optimizer(self.params, cfg)
        self.scaler = torch.amp.GradScaler(self.dist.device.type, enabled=cfg.precision == "fp16")
        fast = cfg.kernels == "fast"  # else the reference: plain modules, LoRA as loralib writes it
        self.loss_module = kernels.loss_module(self.model) if fast else MaskedLMLoss(self.model)
        self.ddp = None
        if self.dist.active:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.dist.device.index] if self.dist.device.type == "cuda" else None
            self.ddp = DDP(self.loss_module, device_ids=ids, broadcast_buffers=False, find_unused_parameters=False)
        # after DDP's broadcast of the weights (the pre-packed copies are made from them); packs freed when run() ends
        self.kernels = (kernels.install(self.model, self.dist.device, cfg.precision, prepack=cfg.cpu_prepack)
                        if fast else None)
        self.tensorboard = None  # opened by run() on the main process when --report-to tensorboard
        self.progress = Progress()
        self.pad_rng = random.Random(PAD_RNG_SEED)
        self.pad_rng_epoch_start = self.pad_rng.getstate()
        if self.mode == "resume":
            self._restore(self.ckpt_path)
        else:
            self._write_recipe()

    # ------------------------------------------------------------ bookkeeping
    def info(self, message: str) -> None:
        if self.dist.is_main:
            print(message, file=sys.stderr, flush=True)

    def _write_recipe(self) -> None:
        if not self.dist.is_main:
            return
        cfg = self.cfg
        recipe = json.loads(cfg.to_json())
        recipe.update({
            "random_model": is_random_model(cfg.model),
            "synthetic_data": _is_synthetic(cfg.train_data),
            "trainable_params": sum(p.numel() for p in self.params),
            "paper_param_count": self.method.paper_param_count(cfg, self.model.config),
            "saved_params": exact_counts(cfg, self.model)[1],  # prefix-layer trains an MLP, saves the prefixes
            "world_size": self.dist.world,
            "total_steps": self.total_steps,
            "train_examples": len(self.train_examples),
            "valid_examples": len(self.valid_examples),
            "data_sha256": data_fingerprints(cfg),
        })
        self.info(count_line(cfg, self.model))  # exact counts next to the paper's formula and Table 3 figure
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for stale in (self.run_dir / "checkpoints").glob(".best.*.old"):  # an earlier attempt's, cut short before
            shutil.rmtree(stale, ignore_errors=True)  # its first step checkpoint: this run starts with no best
        shutil.rmtree(self.run_dir / "checkpoints" / "best", ignore_errors=True)
        write_json(self.run_dir / "recipe.json", recipe)
        with atomic_open(self.run_dir / "log.jsonl") as handle:
            handle.write("")

    def _log(self, record: dict) -> None:
        if not self.dist.is_main:
            return
        with open(self.run_dir / "log.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
        self.progress.log_lines += 1
        if self.tensorboard is not None:
            self.tensorboard.write(record)

    def _save(self) -> None:
        p = self.progress
        rng = rng_state(self.dist.device)
        rng["pad_epoch_start"] = self.pad_rng_epoch_start
        rngs = dist_utils.all_gather_object(rng)
        if self.dist.is_main:
            state = dataclasses.asdict(p)
            state.update(world_size=self.dist.world, total_steps=self.total_steps,
                         scaler=self.scaler.state_dict() if self.scaler.is_enabled() else None)
            save_checkpoint(self.run_dir, p.step, self.method.trainable_state(self.model),
                            self.optimizer.state_dict(), rngs, state)
        dist_utils.barrier()

    def _restore(self, path: Path) -> None:
        found = load_latest_complete(self.run_dir, say=self.info)
        if found is None:
            raise TrainError(f"{path.parent}: no checkpoint loads (each failed above); pass --overwrite to start "
                             "again")
        path, ck = found
        self.ckpt_path = path
        state = ck["state"]
        if state.get("world_size") != self.dist.world:
            raise TrainError(f"{path}: written by {state.get('world_size')} processes, resumed with "
                             f"{self.dist.world}; resume with the same number of processes")
        self.method.load_state(self.model, ck["trainable"])
        self.optimizer.load_state_dict(ck["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        rng = ck["rng"][self.dist.rank]
        set_rng_state(rng, self.dist.device)
        self.pad_rng_epoch_start = _as_random_state(rng["pad_epoch_start"])
        self.pad_rng.setstate(self.pad_rng_epoch_start)
        fields = {f.name for f in dataclasses.fields(Progress)}
        self.progress = Progress(**{k: v for k, v in state.items() if k in fields})
        if self.dist.is_main:  # drop log lines written after the checkpoint
            log = self.run_dir / "log.jsonl"
            lines = log.read_text(encoding="utf-8").splitlines(keepends=True) if log.is_file() else []
            with atomic_open(log) as handle:
                handle.writelines(lines[: self.progress.log_lines])
        p = self.progress
        best = f"; best dev loss so far {p.best_valid_loss:.4f} at step {p.best_step}" if p.best_step is not None else ""
        self.info(f"resuming from step {p.step} ({path}){best}")

    # ------------------------------------------------------------ steps
    def _autocast(self):
        dtype = PRECISIONS[self.cfg.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.dist.device.type, dtype=dtype)

    def _micro_step(self, batch, sync: bool) -> torch.Tensor:
        b = batch.to(self.dist.device)
        module = self.ddp if self.ddp is not None else self.loss_module
        ctx = contextlib.nullcontext() if (sync or self.ddp is None) else self.ddp.no_sync()
        with ctx:
            with self._autocast():
                loss = module(b.input_ids, b.position_ids, b.targets, b.mask, b.lengths, self.cfg.label_smooth)
            self.scaler.scale(loss / self.cfg.grad_acc).backward()
        return loss.detach()

    def _update(self) -> float:
        cfg = self.cfg
        lr = set_lr(self.optimizer, cfg.lr, self.progress.step, cfg.warmup_steps, self.total_steps, cfg.scheduler)
        if cfg.clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, cfg.clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return lr

    @torch.no_grad()
    def validate(self) -> float:
        """Mean over validation batches of each batch's masked mean loss (no smoothing), as the authors report."""
        self.model.eval()
        total, count = 0.0, 0
        for idx in valid_batches(self.valid_examples, self.cfg.valid_batch_size, self.dist.rank, self.dist.world):
            b = collate([self.valid_examples[i] for i in idx]).to(self.dist.device)
            with self._autocast():
                loss = self.loss_module(b.input_ids, b.position_ids, b.targets, b.mask, b.lengths, 0.0)
            total += float(loss)
            count += 1
        self.model.train()
        total, count = dist_utils.all_sum([total, count], self.dist.device)
        return total / max(count, 1)

    def _validate_and_record(self) -> float:
        """Validate now, log it, and keep the tensors in checkpoints/best/ when the dev loss is the lowest yet."""
        p = self.progress
        loss = self.validate()
        p.last_valid_loss, p.valid_step, p.valid_epoch = loss, p.step, p.epoch
        self._log({"step": p.step, "epoch": p.epoch, "valid_loss": loss})
        if math.isfinite(loss) and (p.best_valid_loss is None or loss < p.best_valid_loss):
            p.best_step, p.best_epoch, p.best_valid_loss = p.step, p.epoch, loss
            if self.dist.is_main:
                save_best(self.run_dir, self.method.trainable_state(self.model),
                          {"step": p.step, "epoch": p.epoch, "valid_loss": loss})
            dist_utils.barrier()
        return loss

    def _epoch_plan(self, epoch: int) -> EpochPlan:
        self.pad_rng_epoch_start = self.pad_rng.getstate()
        bucket = 50 if self.cfg.bucket_by_length else 0
        return EpochPlan(self.train_examples, self.cfg.batch_size, self.cfg.seed, epoch, self.dist.rank,
                         self.dist.world, self.pad_rng, bucket)

    # ------------------------------------------------------------ main loop
    def run(self) -> Path:
        if self.mode == "finished":
            self.info(f"{self.run_dir}: this run already finished (train_summary.json); nothing to do")
            self._release_lock()
            return self.run_dir
        try:
            if self.dist.is_main:  # on resume, events after the checkpoint's step go, like log.jsonl's lines
                self.tensorboard = open_mirror(self.cfg.report_to, self.run_dir,
                                               self.progress.step + 1 if self.mode == "resume" else None)
            return self._run()
        finally:
            if self.kernels is not None:
                self.kernels.release_packs()
            if self.tensorboard is not None:
                self.tensorboard.close()
                self.tensorboard = None
            self._release_lock()

    def _run(self) -> Path:
        cfg, p = self.cfg, self.progress
        self.model.train()
        bar = tqdm(total=self.total_steps, initial=p.step, desc="train", unit="step", disable=self.quiet,
                   dynamic_ncols=True)
        start = time.perf_counter() - p.elapsed_s
        window = {"loss": 0.0, "updates": 0, "tokens": 0, "time": 0.0}
        pending_loss = torch.zeros((), device=self.dist.device)
        stopped = False
        reference = cfg.kernels == "reference"
        pad_to = cfg.seq_len if reference else None
        while p.step < self.total_steps and not stopped:
            if cfg.max_steps is None and p.epoch > cfg.epochs:
                break
            plan = self._epoch_plan(p.epoch)
            if reference and p.batch_in_epoch == 0:  # the authors' random stream: their epoch's DataLoader iterator
                loader_seed_draw()
            for bi in range(p.batch_in_epoch, len(plan)):
                t0 = time.perf_counter()
                # reference: rows padded to --seq-len as theirs, so LoRA dropout masks have their (B, seq_len, d)
                batch = collate([self.train_examples[i] for i in plan.batches[bi]], pad_to=pad_to)
                p.micro += 1
                boundary = p.micro % cfg.grad_acc == 0
                pending_loss += self._micro_step(batch, sync=boundary)
                window["tokens"] += batch.n_tokens
                p.batch_in_epoch = bi + 1
                if not boundary:
                    window["time"] += time.perf_counter() - t0
                    continue
                lr = self._update()
                p.step += 1
                dt = time.perf_counter() - t0
                window["time"] += dt
                window["loss"] += float(pending_loss) / cfg.grad_acc
                window["updates"] += 1
                pending_loss.zero_()
                bar.update(1)
                if p.step % cfg.log_interval == 0 or p.step == self.total_steps:
                    self._log_train(window, lr, start)
                    bar.set_postfix(loss=f"{p.last_loss:.3f}", lr=f"{lr:.2e}")
                if cfg.eval_interval and p.step % cfg.eval_interval == 0:  # before the save: it holds the record
                    if reference:  # their evaluate()'s valid DataLoader iterator (their stream, as above)
                        loader_seed_draw()
                    self._validate_and_record()
                    if self.dist.is_main:
                        bar.write(f"step {p.step}: valid loss {p.last_valid_loss:.4f}", file=sys.stderr)
                if p.step % cfg.save_interval == 0 or p.step == self.total_steps:
                    p.elapsed_s = time.perf_counter() - start
                    self._save()
                if p.step == self.total_steps:
                    break
                if self.stop_after is not None and p.step >= self.stop_after:
                    stopped = True
                    break
            if stopped:
                break
            if (p.batch_in_epoch >= len(plan) or p.step == self.total_steps) and (p.valid_step, p.valid_epoch) != (
                    p.step, p.epoch):  # not twice for one step and epoch (--eval-interval may have just run)
                self._validate_and_record()
                if self.dist.is_main:
                    bar.write(f"epoch {p.epoch} step {p.step}: valid loss {p.last_valid_loss:.4f}", file=sys.stderr)
            if p.batch_in_epoch >= len(plan):
                p.epoch += 1
                p.batch_in_epoch = 0
        bar.close()
        p.elapsed_s = time.perf_counter() - start
        if stopped:
            self.info(f"stopped after step {p.step} as asked (--stop-after); continue with --resume")
            return self.run_dir
        if p.valid_step != p.step:
            self._validate_and_record()
        self._finish()
        return self.run_dir

    def _log_train(self, window: dict, lr: float, start: float) -> None:
        p = self.progress
        loss_sum, updates, tokens, secs = dist_utils.all_sum(
            [window["loss"], window["updates"], window["tokens"], window["time"]], self.dist.device)
        secs = secs / self.dist.world  # processes run side by side
        p.tokens += int(tokens)
        p.train_time_s += secs
        p.last_loss = loss_sum / updates
        self._log({"step": p.step, "epoch": p.epoch, "loss": p.last_loss, "lr": lr,
                   "tokens_per_s": tokens / secs if secs > 0 else None,
                   "elapsed_s": round(time.perf_counter() - start, 3)})
        window.update(loss=0.0, updates=0, tokens=0, time=0.0)

    def selection(self) -> dict:
        """Which weights the run's adapter holds (``--select-by``): "best" (lowest dev loss) or "last"."""
        p, cfg = self.progress, self.cfg
        if cfg.select_by == "valid_loss" and p.best_step is not None:
            chosen = {"selected": "best", "step": p.best_step, "epoch": p.best_epoch, "valid_loss": p.best_valid_loss}
        else:
            valid = p.last_valid_loss if p.valid_step == p.step else None
            chosen = {"selected": "last", "step": p.step, "epoch": p.valid_epoch if valid is not None else None,
                      "valid_loss": valid}
        return {**chosen, "select_by": cfg.select_by, "last_step": p.step, "best_step": p.best_step,
                "best_valid_loss": p.best_valid_loss}

    def _load_selected(self, chosen: dict) -> None:
        """Put the best checkpoint's tensors into the model when they are what adapter/ must hold."""
        if chosen["selected"] != "best" or chosen["step"] == self.progress.step:
            return  # the model already holds them
        best = load_best(self.run_dir)
        if best is None or best["info"].get("step") != chosen["step"]:
            found = "none" if best is None else f"step {best['info'].get('step')}"
            raise TrainError(f"{self.run_dir / 'checkpoints' / 'best'}: expected the best checkpoint of step "
                             f"{chosen['step']}, found {found}; rerun with --select-by last or --overwrite")
        self.method.load_state(self.model, {k: v.to(self.dist.device) for k, v in best["trainable"].items()})

    def _finish(self) -> None:
        p = self.progress
        if self.dist.is_main:
            from nlg.adapter_io import export_peft, peft_unexportable, save_adapter

            chosen = self.selection()
            self._load_selected(chosen)  # the adapter and the PEFT export hold the same selected weights
            save_adapter(self.model, self.cfg, self.run_dir / "adapter", checkpoint=chosen)
            if peft_unexportable(self.cfg) is None:
                export_peft(self.model, self.cfg, self.run_dir / "peft_adapter")
            write_json(self.run_dir / "train_summary.json", {
                "trainable_params": sum(t.numel() for t in self.params),
                "train_time_s": round(p.train_time_s, 3),
                "tokens_per_s": p.tokens / p.train_time_s if p.train_time_s > 0 else None,
                "final_train_loss": p.last_loss,
                "final_valid_loss": p.last_valid_loss,
                "steps": p.step,
                "best_step": p.best_step,
                "best_valid_loss": p.best_valid_loss,
                "checkpoint": chosen,
            })
            best = "" if p.best_step is None else f" (best {p.best_valid_loss:.4f} at step {p.best_step})"
            self.info(f"done: {p.step} steps, train loss {p.last_loss:.4f}, valid loss {p.last_valid_loss:.4f}"
                      f"{best}; adapter/ holds the {chosen['selected']} weights (step {chosen['step']}); "
                      f"run folder {self.run_dir}")
        dist_utils.barrier()


def _as_random_state(state):
    """JSON/torch round trips turn the tuple in ``random.getstate()`` into lists; make it a tuple again."""
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


def train(cfg: TrainConfig, device: str | None = None, overwrite: bool = False, stop_after: int | None = None,
          quiet: bool = False) -> Path:
    """Train one run as ``cfg`` says; returns the run folder."""
    return Trainer(cfg, device=device, overwrite=overwrite, stop_after=stop_after, quiet=quiet).run()


# ---------------------------------------------------------------- CLI
def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    """Every TrainConfig field as a flag; defaults come from the paper's recipe for --dataset."""
    p = argparse.ArgumentParser(
        prog="python -m nlg.train",
        description="Fine-tune GPT-2 with LoRA (or a baseline method) on E2E / WebNLG / DART as the paper did.",
        argument_default=argparse.SUPPRESS,
    )
    hints = typing.get_type_hints(TrainConfig)
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        hint = hints[f.name]
        default = getattr(defaults, f.name)
        help_text = f"(paper default for the dataset; E2E: {default!r})"
        if f.name == "resume":
            p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in the run folder")
        elif hint is bool:
            p.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction, help=help_text)
        elif f.name == "lora_targets":
            p.add_argument(_flag(f.name), type=lambda s: tuple(t.strip() for t in s.split(",") if t.strip()),
                           help="comma-separated subset of q,k,v,o,c_fc,c_proj,wte (default q,v; wte: the tied "
                                "token embedding)")
        else:
            base = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
            kind = base[0] if isinstance(base[0], type) else str
            p.add_argument(_flag(f.name), type=kind, help=help_text, choices=CHOICES.get(f.name))
    p.add_argument("--config", default=None, metavar="FILE",
                   help="a JSON or YAML recipe (a run's own recipe.json reproduces that run); flags override it")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: this process's GPU, else CPU)")
    p.add_argument("--overwrite", action="store_true", help="discard this run folder's training outputs and start over")
    p.add_argument("--stop-after", type=int, default=None,
                   help="stop after this many updates as if interrupted (the schedule is unchanged); --resume continues")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def config_from_args(ns: argparse.Namespace) -> tuple[TrainConfig, dict]:
    """The run's TrainConfig: the paper's recipe for the dataset, then a ``--config`` file's values, then the flags
    given on the command line (each overriding the one before)."""
    values = vars(ns).copy()
    extra = {k: values.pop(k, None) for k in ("device", "overwrite", "stop_after", "quiet", "config")}
    if extra["config"]:
        values = {**load_recipe_file(extra["config"]), **values}
    dataset = values.pop("dataset", "e2e")
    model = values.pop("model", TrainConfig.model)
    return paper_train_config(dataset, model, **values), extra


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    try:
        cfg, extra = config_from_args(ns)
        train(cfg, device=extra["device"], overwrite=bool(extra["overwrite"]), stop_after=extra["stop_after"],
              quiet=bool(extra["quiet"]))
    except (TrainError, ValueError, OSError) as exc:
        return cli_error(exc)
    finally:
        dist_utils.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
