"""Shared test fixtures: the ../shared data folder (skip with a reason when absent) and tiny models."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("NLG_SHARED_DIR", REPO.parent / "shared"))
SHARED_DATA = SHARED / "data"
EVAL_CASES = SHARED / "eval-cases"
FIXTURES = Path(__file__).resolve().parent / "fixtures"

if (SHARED / "nltk_data").is_dir():
    os.environ.setdefault("NLTK_DATA", str(SHARED / "nltk_data"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"needs {path} (the shared raw data beside the checkout), which is absent here")
    return path


@pytest.fixture
def shared_data() -> Path:
    """../shared/data, or skip with the reason."""
    return _need(SHARED_DATA)


@pytest.fixture
def eval_cases() -> Path:
    """../shared/eval-cases, or skip with the reason."""
    return _need(EVAL_CASES)


@pytest.fixture
def tiny_model():
    """A seeded random tiny GPT-2 (2 layers, 64 wide, GPT-2 vocabulary)."""
    from nlg.models import build_random

    return build_random("tiny", seed=0)


@pytest.fixture
def one_thread():
    """Two threads on a shared 2-core machine spin-wait each other: one thread is many times faster here."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
