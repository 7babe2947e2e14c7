"""``python -m nlg.train``: the authors' fine-tuning recipe for any method, on one process or under ``torchrun``.

Per dataset the defaults are the paper's (Table 11 and the authors' README command, see nlg.config); every
TrainConfig field is a flag. What one update does, as in their ``gpt2_ft.py``: each process takes a batch of
``--batch-size`` examples in their sampler's order, computes the masked, label-smoothed mean loss over its own
batch, divides by ``--grad-acc``, back-propagates; DDP averages the gradients over processes; after ``--grad-acc``
batches their AdamW updates the trained tensors with the linearly warmed-up and decayed learning rate.

The run folder (default ``runs/<dataset>-<model>-<method>-r<rank>``) receives ``recipe.json``, ``provenance.json``
(random or pretrained model, synthetic or real data: what reports warn about), ``log.jsonl``,
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
import dataclasses
import json
import math
import random
import sys
import time
import typing
from pathlib import Path

import torch
from tqdm import tqdm

from nlg import distributed as dist_utils
from nlg.batching import PAD_RNG_SEED, EpochPlan, collate, loader_seed_draw
from nlg.checkpoint import BEST_DIR, rng_state, set_rng_state
from nlg.config import (DATASETS, KERNELS, METHODS, PRETRAIN_DATASET, TrainConfig, default_data_dir,
                        load_recipe_file, paper_train_config)
from nlg.io_utils import cli_error
from nlg.methods.counts import count_line, exact_counts
from nlg.methods.registry import wte_rank_problem
from nlg.optim import SCHEDULES
from nlg.tensorboard_log import REPORT_TO, TensorBoardUnavailable
from nlg.tensorboard_log import check_available as check_tensorboard
from nlg.train_build import PRECISIONS, build, micro_step, update, validate
from nlg.run_folder import DATA, TRAIN_SUMMARY, default_train_dir, encoded_file
from nlg.train_run import TrainError, TrainingRun, check_resume_config, data_fingerprints

SELECT_BY = ("last", "valid_loss")  # which weights adapter/ holds: the final ones, or those of the lowest dev loss
CHOICES = {"dataset": DATASETS, "method": METHODS, "precision": tuple(PRECISIONS), "kernels": KERNELS,
           "scheduler": SCHEDULES,
           "select_by": SELECT_BY, "report_to": REPORT_TO}


# ---------------------------------------------------------------- configuration
def resolve_paths(cfg: TrainConfig) -> TrainConfig:
    """Fill in the default data files and run folder."""
    data_dir = default_data_dir(cfg.dataset) if cfg.dataset in DATASETS else Path(DATA) / cfg.dataset
    return dataclasses.replace(
        cfg,
        train_data=cfg.train_data or str(encoded_file(data_dir, "train")),
        valid_data=cfg.valid_data or str(encoded_file(data_dir, "valid")),
        out_dir=cfg.out_dir or str(default_train_dir(cfg.dataset, cfg.model, cfg.method, cfg.rank)),
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
    wte_problem = wte_rank_problem(cfg)
    if wte_problem:
        raise TrainError(f"--wte-rank {wte_problem}")
    if cfg.select_by not in SELECT_BY:
        raise TrainError(f"unknown --select-by {cfg.select_by!r}; expected one of {', '.join(SELECT_BY)}")


def check_inputs(cfg: TrainConfig) -> None:
    """The training and validation files exist (before anything in the run folder is touched)."""
    for path in (cfg.train_data, cfg.valid_data):
        if not Path(path).is_file():
            raise TrainError(f"{path}: no such file; prepare the data with `python -m data.{cfg.dataset}.prepare` "
                             "or point --train-data / --valid-data at encoded JSONL files")


# ---------------------------------------------------------------- the run
@dataclasses.dataclass
class Progress:
    step: int = 0  # optimizer updates done
    micro: int = 0  # batches done (all epochs)
    epoch: int = 1  # current epoch, from 1 as the authors count
    batch_in_epoch: int = 0  # batches of the current epoch done
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
    """One run: ``Trainer(cfg).run()``. Built in two parts (the run folder, nlg.train_run; what it trains with,
    nlg.train_build) so tests can inspect or seed the model before ``run()``, whose loop is ``_loop``."""

    def __init__(self, cfg: TrainConfig, device: str | None = None, overwrite: bool = False,
                 stop_after: int | None = None, quiet: bool = False):
        check_config(cfg)
        self.cfg = cfg = resolve_paths(cfg)
        self.dist = dist_utils.setup(device)
        self.quiet = quiet or not self.dist.is_main
        self.stop_after = stop_after
        self.run_dir = Path(cfg.out_dir)
        check_inputs(cfg)
        self.folder = TrainingRun(cfg, self.dist, overwrite, say=self.info)
        self.mode = self.folder.mode
        if self.mode == "finished":
            return
        try:
            if self.mode == "resume":
                check_resume_config(cfg, self.run_dir)  # the recipe, then the data's fingerprints
            self.setup = build(cfg, self.dist)
            self.progress = Progress()
            self.pad_rng = random.Random(PAD_RNG_SEED)
            self.pad_rng_epoch_start = self.pad_rng.getstate()
            if self.mode == "resume":
                self._restore()
                self.folder.record_provenance(only_if_missing=True)
            else:
                self.folder.start(self._recipe())
                self.info(count_line(cfg, self.model))  # exact counts beside the paper's formula and Table 3 figure
        except BaseException:
            self.folder.release()
            raise

    # the parts tests and the pretraining command look at
    model = property(lambda self: self.setup.model)
    method = property(lambda self: self.setup.method)
    params = property(lambda self: self.setup.params)
    optimizer = property(lambda self: self.setup.optimizer)
    loss_module = property(lambda self: self.setup.loss_module)
    kernels = property(lambda self: self.setup.kernels)
    total_steps = property(lambda self: self.setup.total_steps)
    train_examples = property(lambda self: self.setup.train_examples)
    valid_examples = property(lambda self: self.setup.valid_examples)

    def info(self, message: str) -> None:
        if self.dist.is_main:
            print(message, file=sys.stderr, flush=True)

    def _recipe(self) -> dict:
        cfg, s = self.cfg, self.setup
        recipe = json.loads(cfg.to_json())
        recipe.update({
            "trainable_params": sum(p.numel() for p in s.params),
            "paper_param_count": s.method.paper_param_count(cfg, s.model.config),
            "saved_params": exact_counts(cfg, s.model)[1],  # prefix-layer trains an MLP, saves the prefixes
            "world_size": self.dist.world,
            "total_steps": s.total_steps,
            "train_examples": len(s.train_examples),
            "valid_examples": len(s.valid_examples),
            "data_sha256": data_fingerprints(cfg),
        })
        return recipe

    # ------------------------------------------------------------ one update (public: nlg.pretrain, the benchmarks)
    def micro_step(self, batch, sync: bool = True) -> torch.Tensor:
        return micro_step(self.setup, self.cfg, batch, self.dist.device, sync)

    def update(self) -> float:
        return update(self.setup, self.cfg, self.progress.step)

    def validate(self) -> float:
        return validate(self.setup, self.cfg, self.dist)

    # ------------------------------------------------------------ the loop
    def run(self) -> Path:
        if self.mode == "finished":
            self.info(f"{self.run_dir}: this run already finished ({TRAIN_SUMMARY}); nothing to do")
            self.folder.release()
            return self.run_dir
        try:  # on resume, TensorBoard events after the checkpoint's step go, like log.jsonl's lines
            self.folder.open_mirror(self.progress.step + 1 if self.mode == "resume" else None)
            return self._loop()
        finally:
            if self.kernels is not None:
                self.kernels.release_packs()
            self.folder.release()

    def _loop(self) -> Path:
        """Epochs of the authors' batches; an update every --grad-acc batches; log, validate, checkpoint."""
        cfg, p = self.cfg, self.progress
        reference = cfg.kernels == "reference"  # the authors' random stream: their rows and loader draws
        self.model.train()
        bar = tqdm(total=self.total_steps, initial=p.step, desc="train", unit="step", disable=self.quiet,
                   dynamic_ncols=True)
        start = time.perf_counter() - p.elapsed_s
        window = Window()
        while p.step < self.total_steps and (cfg.max_steps is not None or p.epoch <= cfg.epochs):
            plan = self._epoch_plan(p.epoch)
            if reference and p.batch_in_epoch == 0:
                loader_seed_draw()  # their epoch's DataLoader iterator draws one number
            for bi in range(p.batch_in_epoch, len(plan)):
                t0 = time.perf_counter()
                # reference: rows padded to --seq-len as theirs, so LoRA dropout masks have their (B, seq_len, d)
                batch = collate([self.setup.train_examples[i] for i in plan.batches[bi]],
                                pad_to=cfg.seq_len if reference else None)
                p.micro, p.batch_in_epoch = p.micro + 1, bi + 1
                boundary = p.micro % cfg.grad_acc == 0
                window.add_batch(self.micro_step(batch, sync=boundary), batch.n_tokens)
                if not boundary:
                    window.time += time.perf_counter() - t0
                    continue
                lr = self.update()
                p.step += 1
                window.add_update(time.perf_counter() - t0, cfg.grad_acc)
                bar.update(1)
                if p.step % cfg.log_interval == 0 or p.step == self.total_steps:
                    self._log_train(window, lr, start)
                    bar.set_postfix(loss=f"{p.last_loss:.3f}", lr=f"{lr:.2e}")
                if cfg.eval_interval and p.step % cfg.eval_interval == 0:  # before the save: it holds the record
                    if reference:
                        loader_seed_draw()  # their evaluate()'s valid DataLoader iterator
                    self._validate_and_record(bar, f"step {p.step}")
                if p.step % cfg.save_interval == 0 or p.step == self.total_steps:
                    p.elapsed_s = time.perf_counter() - start
                    self._save()
                if p.step == self.total_steps:
                    break
                if self.stop_after is not None and p.step >= self.stop_after:
                    bar.close()
                    p.elapsed_s = time.perf_counter() - start
                    self.info(f"stopped after step {p.step} as asked (--stop-after); continue with --resume")
                    return self.run_dir
            if ((p.batch_in_epoch >= len(plan) or p.step == self.total_steps)
                    and (p.valid_step, p.valid_epoch) != (p.step, p.epoch)):  # --eval-interval may have just run
                self._validate_and_record(bar, f"epoch {p.epoch} step {p.step}")
            if p.batch_in_epoch >= len(plan):
                p.epoch, p.batch_in_epoch = p.epoch + 1, 0
        bar.close()
        p.elapsed_s = time.perf_counter() - start
        if p.valid_step != p.step:
            self._validate_and_record()
        self._finish()
        return self.run_dir

    # ------------------------------------------------------------ what the loop calls
    def _epoch_plan(self, epoch: int) -> EpochPlan:
        self.pad_rng_epoch_start = self.pad_rng.getstate()
        bucket = 50 if self.cfg.bucket_by_length else 0
        return EpochPlan(self.setup.train_examples, self.cfg.batch_size, self.cfg.seed, epoch, self.dist.rank,
                         self.dist.world, self.pad_rng, bucket)

    def _log_train(self, window: Window, lr: float, start: float) -> None:
        p = self.progress
        loss_sum, updates, tokens, secs = dist_utils.all_sum(
            [window.loss, window.updates, window.tokens, window.time], self.dist.device)
        secs = secs / self.dist.world  # processes run side by side
        p.tokens += int(tokens)
        p.train_time_s += secs
        p.last_loss = loss_sum / updates
        self.folder.log({"step": p.step, "epoch": p.epoch, "loss": p.last_loss, "lr": lr,
                         "tokens_per_s": tokens / secs if secs > 0 else None,
                         "elapsed_s": round(time.perf_counter() - start, 3)})
        window.reset()

    def _validate_and_record(self, bar=None, where: str | None = None) -> float:
        """Validate now, log it, and keep the tensors in checkpoints/best/ when the dev loss is the lowest yet."""
        p = self.progress
        loss = self.validate()
        p.last_valid_loss, p.valid_step, p.valid_epoch = loss, p.step, p.epoch
        self.folder.log({"step": p.step, "epoch": p.epoch, "valid_loss": loss})
        if math.isfinite(loss) and (p.best_valid_loss is None or loss < p.best_valid_loss):
            p.best_step, p.best_epoch, p.best_valid_loss = p.step, p.epoch, loss
            self.folder.save_best(self.method.trainable_state(self.model),
                                  {"step": p.step, "epoch": p.epoch, "valid_loss": loss})
        if bar is not None and self.dist.is_main:
            bar.write(f"{where}: valid loss {loss:.4f}", file=sys.stderr)
        return loss

    def _save(self) -> None:
        p, s = self.progress, self.setup
        rng = rng_state(self.dist.device)
        rng["pad_epoch_start"] = self.pad_rng_epoch_start
        rngs = dist_utils.all_gather_object(rng)
        state = dataclasses.asdict(p)
        state.update(world_size=self.dist.world, total_steps=s.total_steps,
                     scaler=s.scaler.state_dict() if s.scaler.is_enabled() else None)
        self.folder.save(p.step, s.method.trainable_state(s.model), s.optimizer.state_dict(), rngs, state)

    def _restore(self) -> None:
        path, ck = self.folder.restore()
        s, state = self.setup, ck["state"]
        if state.get("world_size") != self.dist.world:
            raise TrainError(f"{path}: written by {state.get('world_size')} processes, resumed with "
                             f"{self.dist.world}; resume with the same number of processes")
        s.method.load_state(s.model, ck["trainable"])
        s.optimizer.load_state_dict(ck["optimizer"])
        if state.get("scaler"):
            s.scaler.load_state_dict(state["scaler"])
        rng = ck["rng"][self.dist.rank]
        set_rng_state(rng, self.dist.device)
        self.pad_rng_epoch_start = _as_random_state(rng["pad_epoch_start"])
        self.pad_rng.setstate(self.pad_rng_epoch_start)
        fields = {f.name for f in dataclasses.fields(Progress)}
        self.progress = p = Progress(**{k: v for k, v in state.items() if k in fields})
        best = f"; best dev loss so far {p.best_valid_loss:.4f} at step {p.best_step}" if p.best_step is not None else ""
        self.info(f"resuming from step {p.step} ({path}){best}")

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
        best = self.folder.load_best()
        if best is None or best["info"].get("step") != chosen["step"]:
            found = "none" if best is None else f"step {best['info'].get('step')}"
            raise TrainError(f"{self.folder.files.checkpoints / BEST_DIR}: expected the best checkpoint of step "
                             f"{chosen['step']}, found {found}; rerun with --select-by last or --overwrite")
        self.method.load_state(self.model, {k: v.to(self.dist.device) for k, v in best["trainable"].items()})

    def _finish(self) -> None:
        p = self.progress
        chosen = self.selection()
        if self.dist.is_main:
            self._load_selected(chosen)  # the adapter and the PEFT export hold the same selected weights
        self.folder.finish(self.model, self.cfg, chosen, {
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


@dataclasses.dataclass
class Window:
    """What happened since the last log line: summed loss, updates, real tokens, seconds."""

    loss: float = 0.0
    updates: int = 0
    tokens: int = 0
    time: float = 0.0
    pending: torch.Tensor | None = None  # the summed losses of the current update's batches (not yet synced)

    def add_batch(self, loss: torch.Tensor, tokens: int) -> None:
        self.pending = loss if self.pending is None else self.pending + loss
        self.tokens += tokens

    def add_update(self, seconds: float, grad_acc: int) -> None:
        self.time += seconds
        self.loss += float(self.pending) / grad_acc
        self.updates += 1
        self.pending = None

    def reset(self) -> None:
        self.loss, self.updates, self.tokens, self.time = 0.0, 0, 0, 0.0


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
