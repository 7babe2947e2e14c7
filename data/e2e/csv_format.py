"""Official E2E csv (``mr,ref``) -> the LoRA/Prefix-Tuning line format ``MR||reference``.

The line-format files the authors train on are the csv rows with the slots renamed and the text split into
whitespace-separated tokens. No tokenizer is shipped with them, so the rules below were inferred from the files
themselves (``devset.csv`` against ``valid.txt``) and reproduce every one of its 4672 lines. The rules:

* MR ``name[The Eagle], eatType[coffee shop]`` -> ``name : The Eagle | Type : coffee shop`` (slot order kept;
  eatType -> Type, priceRange -> price, familyFriendly -> family friendly; values tokenised like the text).
* Punctuation and symbols stand alone (``centre , Alimentum``, ``£ 30``), a run of one symbol stays together.
* A quote that begins a word is split off (``' Aromi``); a quote after a letter or digit starts a new token, so
  contractions keep the quote with their tail (``aren 't``, ``It 's``, ``you 'll``).
* A hyphen between two letters or digits is split off (``family - friendly``, ``1 - star``, ``20 - 25``).
* Periods: ``..``/``...`` are one token; one period after a letter is split off; after a number it is split off
  at the end or before a word that does not start in lower case, but kept in ``out of 5. in`` (a bare number
  followed by a lower-case word); a period inside a number (``30.99``) is kept.

``test.txt`` was tokenised by a different tool (``is n't``, ``5-star`` kept whole), so the same rules reproduce
fewer of its lines; ``compare`` measures both.
"""
from __future__ import annotations

import argparse
import csv
import io
import re
import sys
from pathlib import Path

from nlg.io_utils import InputFileError, atomic_open

from data.common import read_text

SLOT_NAMES = {"eatType": "Type", "priceRange": "price", "familyFriendly": "family friendly"}

_KEEP = "\ue000"  # marks a period that must stay attached to its number
_QUOTES = "'\u2019"
_MR_ITEM = re.compile(r"\s*([^\[\],]+?)\s*\[([^\[\]]*)\]\s*(?:,|$)")  # no bracket inside a value


def _mark_number_period(match: re.Match) -> str:
    return match.group(1) + (_KEEP if match.group(2).islower() else ".")


def tokenize(text: str) -> str:
    """Split ``text`` into the line format's space-separated tokens (rules in the module docstring)."""
    t = f" {text} "
    # a bare number + "." + a lower-case word keeps its period (decided on the raw text, before £ etc. split)
    t = re.sub(r"(?<=\s)(\d+)\.(?=\s+(\S))", _mark_number_period, t)
    # every symbol except . - and quotes stands alone; a run of the same symbol stays one token
    t = re.sub(r"(([^\w\s.\-" + _QUOTES + r"\ue000])\2*)", r" \1 ", t)
    t = re.sub(r"(?<=\s)([" + _QUOTES + r"])(?=\S)", r"\1 ", t)  # opening quote
    t = re.sub(r"(?<=[^\W_])([" + _QUOTES + r"])", r" \1", t)  # contraction or closing quote
    t = re.sub(r"([" + _QUOTES + r"])(?=\.)", r"\1 ", t)  # quote then period
    t = re.sub(r"(?<=[^\W_])-(?=[^\W_])", " - ", t)
    t = re.sub(r"(\.\.+)", r" \1 ", t)
    t = re.sub(r"(?<=[^\W\d_])\.(?!\.)", " .", t)
    t = re.sub(r"(?<=\d)\.(?=\s|$)", " .", t)
    return " ".join(t.replace(_KEEP, ".").split())


def mr_to_line_format(mr: str, path: Path | str = "<mr>", line: int | None = None) -> str:
    """``name[X], eatType[Y]`` -> ``name : X | Type : Y``; anything unparsable is an error naming file and line."""
    items, pos = [], 0
    while pos < len(mr):
        match = _MR_ITEM.match(mr, pos)
        if not match or match.end() == pos:
            raise InputFileError(path, f"malformed MR {mr!r}: expected 'slot[value], slot[value], ...'", line)
        slot, value = match.group(1), match.group(2)
        items.append(f"{SLOT_NAMES.get(slot, slot)} : {tokenize(value)}")
        pos = match.end()
    if not items:
        raise InputFileError(path, "empty MR", line)
    return " | ".join(items)


def csv_to_lines(path: str | Path) -> list[tuple[int, str]]:
    """Every csv row as (csv line number, ``MR||reference``); needs ``mr`` and ``ref`` columns (any case)."""
    path = Path(path)
    reader = csv.reader(io.StringIO(read_text(path), newline=""))
    try:
        header = [h.strip().lower() for h in next(reader)]
    except csv.Error as exc:
        raise InputFileError(path, f"not valid csv ({exc})", reader.line_num) from None
    if "mr" not in header:
        raise InputFileError(path, f"no 'mr' column in the header {header}", 1)
    if "ref" not in header:
        raise InputFileError(
            path, f"no 'ref' column in the header {header}: this file has MRs only (use the *_w_refs.csv file)", 1
        )
    i_mr, i_ref = header.index("mr"), header.index("ref")
    lines = []
    try:
        for row in reader:
            if not row:
                continue
            if len(row) != len(header):
                raise InputFileError(path, f"expected {len(header)} columns, got {len(row)}", reader.line_num)
            mr = mr_to_line_format(row[i_mr], path, reader.line_num)
            ref = tokenize(row[i_ref])
            if not ref:
                raise InputFileError(path, "empty reference", reader.line_num)
            lines.append((reader.line_num, f"{mr}||{ref}"))
    except csv.Error as exc:
        raise InputFileError(path, f"not valid csv ({exc})", reader.line_num) from None
    if not lines:
        raise InputFileError(path, "no rows after the header")
    return lines


def convert(csv_path: str | Path, txt_path: str | Path) -> int:
    """Write the line-format file (``MR||reference `` with the trailing space the released files have)."""
    lines = csv_to_lines(csv_path)
    with atomic_open(txt_path) as handle:
        for _, line in lines:
            handle.write(line + " \n")
    return len(lines)


def compare(csv_path: str | Path, txt_path: str | Path) -> tuple[int, int, list[tuple[int, str, str]]]:
    """How many converted csv rows equal the corresponding line of a released ``.txt`` (after ``strip()``)."""
    ours = csv_to_lines(csv_path)
    theirs = [line.strip() for line in io.StringIO(read_text(txt_path), newline=None)]
    if len(ours) != len(theirs):
        raise InputFileError(txt_path, f"has {len(theirs)} lines but {csv_path} has {len(ours)} rows")
    diffs = [(n, a, b) for (n, a), b in zip(ours, theirs) if a != b]
    return len(ours) - len(diffs), len(ours), diffs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data.e2e.csv_format", description="Convert an official E2E csv to the line format."
    )
    parser.add_argument("csv", help="devset.csv, trainset.csv, testset_w_refs.csv or a cleaned-E2E csv")
    parser.add_argument("--out", help="write the line-format file here")
    parser.add_argument("--compare", metavar="TXT", help="count how many rows reproduce this released .txt")
    args = parser.parse_args(argv)
    try:
        if args.out:
            print(f"{convert(args.csv, args.out)} lines -> {args.out}")
        if args.compare:
            same, total, diffs = compare(args.csv, args.compare)
            print(f"{same}/{total} lines identical to {args.compare}")
            for n, ours, theirs in diffs[:5]:
                print(f"  csv line {n}:\n    ours:   {ours}\n    theirs: {theirs}")
    except InputFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
