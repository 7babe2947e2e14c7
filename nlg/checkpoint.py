"""Resumable training checkpoints: ``<run>/checkpoints/step-<N>/``, written whole or not at all, last two kept.

A checkpoint holds everything the next update depends on: the trained tensors, the optimizer moments, the
schedule position, every process's random-number state (dropout, and the data stream that stretches the dataset)
and the data position (epoch, batches done), so a resumed run continues bit-for-bit. Files:
``trainable.pt`` (the method's ``trainable_state``), ``optimizer.pt``, ``rng.pt`` (a list, one entry per rank)
and ``state.json`` (step, epoch, position, counters; human-readable).

Beside them ``checkpoints/best/`` holds the trained tensors at the lowest dev loss so far (``trainable.pt``) and
``best.json`` (step, epoch, valid_loss); it is replaced whole when a validation improves on it and is never removed
by the rotation. The record of the best so far also travels in each step checkpoint's state, so a resumed run
knows it.

A full disk while saving (``ENOSPC``, or torch's zip writer's ``unexpected pos 1408 vs 1302`` for the same short
write) is one ``SaveError`` line naming the folder and what was kept; the temporary folder is removed and the
checkpoints written before stay as they were.
"""
from __future__ import annotations

import json
import os
import pickle
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from nlg.io_utils import permit_as_created, saving, write_json
from nlg.run_folder import CHECKPOINTS

KEEP = 2
BEST_DIR = "best"
BEST_INFO = "best.json"
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
    root = Path(run_dir) / CHECKPOINTS
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
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step}"
    previous = latest_checkpoint(run_dir)
    kept = f"the previous checkpoint ({previous.name}) is kept" if previous else "there was no earlier checkpoint"
    tmp = Path(tempfile.mkdtemp(prefix=f".step-{step}.", suffix=".tmp", dir=root))
    try:
        with saving(final, "the checkpoint", kept):  # a full disk: one line, and the temporary folder goes
            permit_as_created(tmp, directory=True)
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


def save_best(run_dir: str | os.PathLike, trainable: dict[str, torch.Tensor], info: dict[str, Any]) -> Path:
    """Write ``checkpoints/best/`` (``trainable.pt`` + ``best.json`` with step, epoch, valid_loss) as a whole: the
    new folder is built aside and renamed into place; the one it replaces is moved aside first and removed last, so
    a crash at any point leaves a complete best folder (``load_best`` also finds one left aside)."""
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / BEST_DIR
    kept = _best_kept(run_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f".{BEST_DIR}.", suffix=".tmp", dir=root))
    old = None
    try:
        with saving(final, "the best checkpoint", kept):
            permit_as_created(tmp, directory=True)
            torch.save({k: v.detach().cpu() for k, v in trainable.items()}, tmp / "trainable.pt")
            write_json(tmp / BEST_INFO, info)
            _fsync_dir(tmp)
        if final.exists():
            old = root / f".{BEST_DIR}.{os.getpid()}.old"
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
        os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _best_kept(run_dir: str | os.PathLike) -> str:
    """What a failed save_best leaves, for its message (a best.json that cannot be read is not a reason to fail)."""
    try:
        previous = best_info(run_dir)
    except (OSError, ValueError):
        previous = {}
    if previous is None:
        return "there was no earlier best checkpoint"
    return f"the previous best checkpoint (step {previous.get('step')}) is kept"


def _best_folder(run_dir: str | os.PathLike) -> Path | None:
    root = Path(run_dir) / CHECKPOINTS
    final = root / BEST_DIR
    if (final / BEST_INFO).is_file() and (final / "trainable.pt").is_file():
        return final
    aside = sorted(root.glob(f".{BEST_DIR}.*.old")) if root.is_dir() else []  # a crash between the two renames
    return next((d for d in aside if (d / BEST_INFO).is_file() and (d / "trainable.pt").is_file()), None)


def best_info(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """``best.json`` of the run's best checkpoint, or None when there is none."""
    folder = _best_folder(run_dir)
    return json.loads((folder / BEST_INFO).read_text(encoding="utf-8")) if folder is not None else None


def load_best(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The best checkpoint: keys ``trainable`` (tensors) and ``info`` (step, epoch, valid_loss); None if absent."""
    folder = _best_folder(run_dir)
    if folder is None:
        return None
    return {"trainable": torch.load(folder / "trainable.pt", map_location="cpu", weights_only=True),
            "info": json.loads((folder / BEST_INFO).read_text(encoding="utf-8"))}


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


def load_latest_complete(run_dir: str | os.PathLike, say=print) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that loads, with its contents; one that fails to load (truncated by a crash or a full
    disk) is reported through ``say`` and the previous one tried. None when no checkpoint loads."""
    for _, path in reversed(list_checkpoints(run_dir)):
        try:
            return path, load_checkpoint(path)
        except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
            say(f"{path}: cannot be loaded ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); "
                "falling back to the previous checkpoint")
    return None


def remove_stale_temporaries(run_dir: str | os.PathLike) -> list[Path]:
    """Remove ``checkpoints/.step-N.*.tmp`` and ``.best.*.tmp`` folders a killed run left; call it holding the
    run folder's lock (no other writer can own them then). Returns what was removed."""
    root = Path(run_dir) / CHECKPOINTS
    stale = sorted(root.glob(".step-*.tmp")) + sorted(root.glob(f".{BEST_DIR}.*.tmp")) if root.is_dir() else []
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


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
