"""DDP: 2 gloo processes x batch 4 == 1 process running the same examples as batch 4 with 2 accumulation steps.

Normalisation (the authors'): each process's loss is the mean over *its own* batch's loss positions, DDP
averages the gradients of the processes. The exact single-process twin is therefore gradient accumulation with
each micro-batch normalised by its own loss positions and divided by the number of micro-batches.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from nlg.batching import EpochPlan
from nlg.config import paper_train_config
from nlg.train import Trainer
from tests.conftest import FIXTURES, REPO

DATA = FIXTURES / "authors_train_step" / "train.jsonl"
COMMON = dict(model="tiny", train_data=str(DATA), valid_data=str(DATA), seq_len=16, lr=1e-2, warmup_steps=1,
              max_steps=3, lora_dropout=0.0, log_interval=1, save_interval=1000)


class _Interleaved:
    """Rank 0's batch k, then rank 1's batch k: what the two processes run side by side, in one stream."""

    def __init__(self, plans):
        self.batches = [b for pair in zip(*(p.batches for p in plans)) for b in pair]

    def __len__(self):
        return len(self.batches)


def _torchrun() -> list[str]:
    exe = shutil.which("torchrun")
    return [exe] if exe else [sys.executable, "-m", "torch.distributed.run"]


def test_two_gloo_processes_equal_one_process_with_grad_acc(tmp_path):
    ddp_dir = tmp_path / "ddp"
    args = ["--model", "tiny", "--train-data", str(DATA), "--valid-data", str(DATA), "--out-dir", str(ddp_dir),
            "--seq-len", "16", "--batch-size", "4", "--lr", "1e-2", "--warmup-steps", "1", "--max-steps", "3",
            "--lora-dropout", "0", "--log-interval", "1", "--save-interval", "1000", "--device", "cpu", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(_torchrun() + ["--standalone", "--nproc_per_node", "2", "-m", "nlg.train"] + args,
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    recipe = json.loads((ddp_dir / "recipe.json").read_text())
    assert recipe["world_size"] == 2 and recipe["batch_size"] == 4 and recipe["grad_acc"] == 1

    torch.set_num_threads(1)
    cfg = paper_train_config("e2e", out_dir=str(tmp_path / "single"), batch_size=4, grad_acc=2, **COMMON)
    twin = Trainer(cfg, quiet=True)
    rngs = [random.Random(911), random.Random(911)]  # each process has its own stretching stream
    twin._epoch_plan = lambda epoch: _Interleaved(
        [EpochPlan(twin.train_examples, 4, cfg.seed, epoch, r, 2, rngs[r]) for r in range(2)])
    twin.run()

    a = load_file(str(ddp_dir / "adapter" / "adapter.safetensors"))
    b = load_file(str(tmp_path / "single" / "adapter" / "adapter.safetensors"))
    assert a.keys() == b.keys() and any("lora_B" in k for k in a)
    assert all(b[k].abs().max() > 1e-3 for k in b if "lora_B" in k)  # B started at 0: the updates moved it
    # bit-identical: (g0 + g1) / 2 from DDP equals g0 / 2 + g1 / 2 from accumulation exactly in floating point
    assert all(torch.equal(a[k], b[k]) for k in a)

    def losses(d):
        return [json.loads(x)["loss"] for x in (d / "log.jsonl").read_text().splitlines() if '"loss"' in x]

    assert losses(ddp_dir) == pytest.approx(losses(tmp_path / "single"), rel=1e-6)  # mean over both processes
    assert len(losses(ddp_dir)) == 3
