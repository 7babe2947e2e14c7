"""Helpers shared by the tests/test_data_*.py files (fixture paths, the authors' output digests)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tests.conftest import FIXTURES

DATA_FIX = FIXTURES / "data"
AUTHORS_OUTPUTS = json.loads((DATA_FIX / "authors_outputs.json").read_text(encoding="utf-8"))


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def assert_authors_files(dataset: str, split: str, formatted: Path, encoded: Path) -> None:
    """Our two files are byte-identical to what the authors' converter + gpt2_encode.py write."""
    want = AUTHORS_OUTPUTS[dataset][split]
    for kind, path in (("formatted", formatted), ("encoded", encoded)):
        data = Path(path).read_bytes()
        assert (len(data), data.count(b"\n")) == (want[kind]["bytes"], want[kind]["records"]), (dataset, split, kind)
        assert hashlib.sha256(data).hexdigest() == want[kind]["sha256"], (dataset, split, kind)
