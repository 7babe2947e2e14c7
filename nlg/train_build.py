"""What a training run is made of, built once: data, model with its method, optimizer, loss, kernels; and the two
things one update does with them (``micro_step``, ``update``) plus validation, as public functions that the trainer,
the pretraining command and the benchmarks share.
"""
from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from nlg import kernels
from nlg.batching import Example, collate, read_encoded, total_steps, valid_batches
from nlg.config import TrainConfig
from nlg.loss import MaskedLMLoss
from nlg.methods import method_for
from nlg.models import load_model
from nlg.optim import build_optimizer, set_lr
from nlg.train_run import TrainError
from nlg import distributed as dist_utils

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Setup:
    """Everything one run trains with."""

    train_examples: list[Example]
    valid_examples: list[Example]
    total_steps: int
    method: object  # nlg.methods.registry.Method
    model: torch.nn.Module
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    loss_module: torch.nn.Module  # nlg.loss.MaskedLMLoss, or nlg.kernels' fast one
    ddp: torch.nn.Module | None  # the loss module wrapped by DistributedDataParallel under torchrun
    kernels: kernels.Installed | None  # --kernels fast: what nlg.kernels.install changed (packs freed at the end)


def read_data(cfg: TrainConfig, world: int) -> tuple[list[Example], list[Example], int]:
    """Training and dev examples and the run's number of updates (the authors' ``max_step``); refuses data that
    gives nothing to train on."""
    train_examples = read_encoded(cfg.train_data, cfg.seq_len)
    valid_examples = read_encoded(cfg.valid_data, cfg.seq_len)
    steps = total_steps(len(train_examples), cfg.batch_size, cfg.epochs, cfg.grad_acc, world, cfg.max_steps)
    if not any(e.n_loss for e in train_examples):
        raise TrainError(f"{cfg.train_data}: no example has a token to learn (every completion is empty or cut "
                         f"off by --seq-len {cfg.seq_len}): there is nothing to train on")
    if steps < 1:
        raise TrainError(f"{cfg.train_data}: {len(train_examples)} examples give no complete update "
                         f"(batch {cfg.batch_size} x grad-acc {cfg.grad_acc} x {world} processes)")
    return train_examples, valid_examples, steps


def build(cfg: TrainConfig, dist) -> Setup:
    """Data, the base model with the method applied (seeded so its initialisation does not depend on how the base
    was built), optimizer, loss; DDP under torchrun; the fast kernels unless ``--kernels reference``."""
    train_examples, valid_examples, steps = read_data(cfg, dist.world)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    method = method_for(cfg)
    model = load_model(cfg.model)  # a random test model is built with load_model's own seed, as decoding does
    if cfg.seq_len > model.config.n_positions:
        raise TrainError(f"--seq-len {cfg.seq_len} exceeds the model's {model.config.n_positions} positions "
                         f"({cfg.model}); use --seq-len {model.config.n_positions} or less")
    torch.manual_seed(cfg.seed)
    model = method.apply(model, cfg).to(dist.device)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise TrainError(f"method {cfg.method!r} left no trainable parameter")
    optimizer = build_optimizer(params, cfg)
    scaler = torch.amp.GradScaler(dist.device.type, enabled=cfg.precision == "fp16")
    fast = cfg.kernels == "fast"  # else the reference: plain modules, LoRA as loralib writes it
    loss_module = kernels.loss_module(model) if fast else MaskedLMLoss(model)
    ddp = None
    if dist.active:
        ids = [dist.device.index] if dist.device.type == "cuda" else None
        ddp = DDP(loss_module, device_ids=ids, broadcast_buffers=False, find_unused_parameters=False)
    # after DDP's broadcast of the weights: the pre-packed copies are made from them
    installed = kernels.install(model, dist.device, cfg.precision, prepack=cfg.cpu_prepack) if fast else None
    return Setup(train_examples, valid_examples, steps, method, model, params, optimizer, scaler, loss_module, ddp,
                 installed)


def autocast(cfg: TrainConfig, device: torch.device):
    """``--precision``'s autocast context (none for fp32)."""
    dtype = PRECISIONS[cfg.precision]
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def micro_step(s: Setup, cfg: TrainConfig, batch, device: torch.device, sync: bool = True) -> torch.Tensor:
    """Forward and backward of one batch (the loss divided by ``--grad-acc``); DDP syncs gradients when ``sync``."""
    b = batch.to(device)
    module = s.ddp if s.ddp is not None else s.loss_module
    ctx = contextlib.nullcontext() if (sync or s.ddp is None) else s.ddp.no_sync()
    with ctx:
        with autocast(cfg, device):
            loss = module(b.input_ids, b.position_ids, b.targets, b.mask, b.lengths, cfg.label_smooth)
        s.scaler.scale(loss / cfg.grad_acc).backward()
    return loss.detach()


def update(s: Setup, cfg: TrainConfig, step: int) -> float:
    """The optimizer update after ``step`` updates: the scheduled learning rate, clipping, AdamW; returns the lr."""
    lr = set_lr(s.optimizer, cfg.lr, step, cfg.warmup_steps, s.total_steps, cfg.scheduler)
    if cfg.clip > 0:
        s.scaler.unscale_(s.optimizer)
        torch.nn.utils.clip_grad_norm_(s.params, cfg.clip)
    s.scaler.step(s.optimizer)
    s.scaler.update()
    s.optimizer.zero_grad(set_to_none=True)
    return lr


@torch.no_grad()
def validate(s: Setup, cfg: TrainConfig, dist) -> float:
    """Mean over validation batches of each batch's masked mean loss (no smoothing), as the authors report."""
    s.model.eval()
    total, count = 0.0, 0
    for idx in valid_batches(s.valid_examples, cfg.valid_batch_size, dist.rank, dist.world):
        b = collate([s.valid_examples[i] for i in idx]).to(dist.device)
        with autocast(cfg, dist.device):
            loss = s.loss_module(b.input_ids, b.position_ids, b.targets, b.mask, b.lengths, 0.0)
        total += float(loss)
        count += 1
    s.model.train()
    total, count = dist_utils.all_sum([total, count], dist.device)
    return total / max(count, 1)
