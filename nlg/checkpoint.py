"""Resumable training checkpoints: ``<run>/checkpoints/step-<N>/``, written whole or not at all, last two kept.

A checkpoint holds everything the next update depends on: the trained tensors, the optimizer moments, the
schedule position, every process's random-number state (dropout, and the data stream that stretches the dataset)
and the data position (epoch, batches done), so a resumed run continues bit-for-bit. Files:
``trainable.pt`` (the method's ``trainable_state``), ``optimizer.pt``, ``rng.pt`` (a list, one entry per rank)
and ``state.json`` (step, epoch, position, counters; human-readable).
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from nlg.io_utils import write_json

KEEP = 2
_STEP_DIR = re.compile(r"^step-(\d+)$")


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's generator states (torch CPU, CUDA when used, Python's ``random``)."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        m = _STEP_DIR.match(child.name)
        if m and child.is_dir() and (child / "state.json").is_file():
            found.append((int(m.group(1)), child))
    return sorted(found)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def save_checkpoint(run_dir: str | os.PathLike, step: int, trainable: dict[str, torch.Tensor], optimizer: dict,
                    rng: list[dict[str, Any]], state: dict[str, Any], keep: int = KEEP) -> Path:
    """Write ``checkpoints/step-<step>/`` atomically (a temporary folder renamed into place), keep the last ``keep``."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step}"
    tmp = Path(tempfile.mkdtemp(prefix=f".step-{step}.", suffix=".tmp", dir=root))
    try:
        torch.save({k: v.detach().cpu() for k, v in trainable.items()}, tmp / "trainable.pt")
        torch.save(optimizer, tmp / "optimizer.pt")
        torch.save(rng, tmp / "rng.pt")
        write_json(tmp / "state.json", {**state, "step": step})
        _fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for _, old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Everything ``save_checkpoint`` wrote: keys ``trainable``, ``optimizer``, ``rng``, ``state``."""
    path = Path(path)
    for name in ("trainable.pt", "optimizer.pt", "rng.pt", "state.json"):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path}: incomplete checkpoint, {name} is missing")
    return {
        "trainable": torch.load(path / "trainable.pt", map_location="cpu", weights_only=True),
        "optimizer": torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True),
        "rng": torch.load(path / "rng.pt", map_location="cpu", weights_only=True),
        "state": json.loads((path / "state.json").read_text(encoding="utf-8")),
    }


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
