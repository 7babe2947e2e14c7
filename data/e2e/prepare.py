"""E2E NLG: the line format (``MR||reference``) or the official csv -> the authors' formatted and encoded jsonl.

Each line is ``strip()``-ed and split at ``||``: context is the part before, completion the part after, as in the
authors' ``format_converting_e2e.py``. Where a split's ``.txt`` is absent the official (or cleaned) csv is
converted with :mod:`data.e2e.csv_format`, which reproduces every line of the released ``valid.txt``.

    python -m data.e2e.prepare [--raw-dir DIR] [--out-dir DIR] [--splits train valid test] [--vocab V] [--limit N]
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterable

from nlg.io_utils import InputFileError

from data.common import check_record, cli, iter_lines, missing_split, run_prepare
from data.e2e.csv_format import csv_to_lines

DATASET = "e2e"
# Looked for in this order: the line format the authors used, the official csv, the cleaned-E2E csv.
RAW_FILES = {
    "train": ("train.txt", "trainset.csv", "train-fixed.no-ol.csv"),
    "valid": ("valid.txt", "devset.csv", "devel-fixed.no-ol.csv"),
    "test": ("test.txt", "testset_w_refs.csv", "test-fixed.csv"),
}
WHERE_TO_GET = (
    "The line format is in github.com/microsoft/LoRA (examples/NLG/data/e2e/), the official csv in "
    "github.com/tuetschek/e2e-dataset, the cleaned csv in github.com/tuetschek/e2e-cleaning (cleaned-data/)"
)


def locate(raw_dir: Path, split: str) -> Path:
    for name in RAW_FILES[split]:
        if (raw_dir / name).is_file():
            return raw_dir / name
    raise missing_split(DATASET, split, raw_dir, RAW_FILES[split], WHERE_TO_GET)


def parse_line(line: str, path: Path | str, lineno: int) -> dict:
    """One ``MR||reference`` line -> record; exactly one ``||`` is required, with an MR and a reference around it
    (an empty one is an error at its line, as the csv reader makes an empty ``mr`` or ``ref`` field)."""
    items = line.strip().split("||")
    if items == [""]:
        raise InputFileError(path, "empty line (expected 'MR||reference')", lineno)
    if len(items) != 2:
        raise InputFileError(path, f"expected exactly one '||' (MR||reference), found {len(items) - 1}", lineno)
    if not items[0].strip():
        raise InputFileError(path, "empty MR", lineno)
    if not items[1].strip():
        raise InputFileError(path, "empty reference", lineno)
    return check_record({"context": items[0], "completion": items[1]}, Path(path), f"line {lineno}")


def records_from_lines(lines: Iterable[tuple[int, str]], path: Path | str) -> list[dict]:
    return [parse_line(line, path, lineno) for lineno, line in lines]


def read(source: Path, split: str = "") -> list[dict]:
    """Records of one raw file, ``.txt`` (line format) or ``.csv`` (converted first)."""
    if source.suffix.lower() == ".csv":
        return records_from_lines(csv_to_lines(source), source)
    return records_from_lines(iter_lines(source), source)


def prepare(raw_dir=None, out_dir=None, splits=("train", "valid", "test"), vocab=None, limit=None):
    """Write ``<split>_formatted.jsonl`` and ``<split>.jsonl`` per split; returns {split: (formatted, encoded)}."""
    return run_prepare(DATASET, locate, read, raw_dir, out_dir, splits, vocab, limit)


def main(argv=None) -> int:
    return cli(DATASET, "Prepare E2E NLG as the LoRA authors do.", prepare, argv)


if __name__ == "__main__":
    sys.exit(main())
