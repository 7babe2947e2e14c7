"""What every preparer shares: strict readers, the authors' two output files per split, and the CLI shell.

The LoRA authors' pipeline is ``format_converting_<name>.py`` (raw file -> ``<split>_formatted.jsonl``) followed by
``gpt2_encode.py --add_bos --add_eos`` (-> ``<split>.jsonl``). Both write ``json.dumps(record)`` lines with the
default ASCII escaping, so we do the same and our files are byte-identical to theirs, not merely equal as data.
Readers here turn every malformed input into an ``InputFileError`` that names the file and the line or entry.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from tqdm import tqdm

from data.download import fetch
from data.splits import SPLITS, check_splits
from nlg.config import default_data_dir
from nlg.io_utils import InputFileError, atomic_group, atomic_open, cli_error
from nlg.run_folder import SYNTHETIC_MARKER, encoded_file, formatted_file
from nlg.tokenizer import EOS_ID, get_tokenizer

Record = dict  # {"context": str, "completion": str[, "cate": bool]} in that key order


class MissingSplitError(FileNotFoundError):
    """A requested split has no raw file; the message lists what was looked for and where to get it."""


# ----------------------------------------------------------------------------------------------- reading


def read_text(path: str | os.PathLike) -> str:
    """The whole file as text: must exist, be non-empty and be UTF-8 (a leading BOM is dropped)."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "no such file")
    data = path.read_bytes()
    if not data.strip():
        raise InputFileError(path, "the file is empty")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputFileError(
            path, f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); re-save it as UTF-8", line
        ) from None
    return text[1:] if text.startswith("\ufeff") else text


def iter_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """Yield (line number, line) split exactly as Python's text-mode file iteration splits (universal newlines)."""
    for lineno, line in enumerate(io.StringIO(read_text(path), newline=None), 1):
        yield lineno, line


def load_json(path: str | os.PathLike):
    """Parse a JSON file; a syntax error names the file and line."""
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputFileError(path, f"not valid JSON ({exc.msg}, column {exc.colno})", exc.lineno) from None


def parse_xml(path: str | os.PathLike) -> ET.Element:
    """Parse an XML file and return its root; a syntax error names the file and line."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "no such file")
    if not path.read_bytes().strip():
        raise InputFileError(path, "the file is empty")
    try:
        return ET.parse(path).getroot()
    except ET.ParseError as exc:
        line, col = exc.position
        raise InputFileError(path, f"not well-formed XML ({exc.msg.split(':')[0]}, column {col})", line) from None


def split_triple(text: str | None, path: Path, where: str) -> tuple[str, str, str]:
    """``subject | property | object`` as the official XML writes it: exactly three parts on ``" | "``."""
    parts = (text or "").split(" | ")
    if len(parts) != 3:
        raise InputFileError(path, f"{where}: expected 'subject | property | object', got {text!r}")
    return parts[0], parts[1], parts[2]


# ----------------------------------------------------------------------------------------------- writing


def check_record(record: Record, path: Path, where: str) -> Record:
    """Context and completion must be strings (the authors' encoder would fail later on anything else)."""
    for key in ("context", "completion"):
        if not isinstance(record.get(key), str):
            raise InputFileError(path, f"{where}: {key} is {record.get(key)!r}, expected a string")
    return record


def warn_unused(path: Path, what: str, wheres: Sequence[str], consequence: str) -> None:
    """One stderr line for inputs a converter does not turn into records (or keeps empty): count, first ids."""
    if wheres:
        shown = ", ".join(wheres[:3]) + (f", ... ({len(wheres) - 3} more)" if len(wheres) > 3 else "")
        print(f"warning: {path}: {len(wheres)} {what} ({shown}): {consequence}", file=sys.stderr)


def encode_records(records: Sequence[Record], vocab=None, desc: str = "encode") -> list[dict]:
    """The authors' ``gpt2_encode.py --add_bos --add_eos``: ids(context)+[50256], ids(" "+completion)+[50256]."""
    tok = get_tokenizer(vocab)
    out = []
    for rec in tqdm(records, desc=desc, unit="rec", mininterval=1.0):
        out.append(
            {
                "context": tok.encode(rec["context"], add_special_tokens=False) + [EOS_ID],
                "completion": tok.encode(" " + rec["completion"], add_special_tokens=False) + [EOS_ID],
            }
        )
    return out


def _write_lines(handle, records: Iterable[dict]) -> None:
    for rec in records:
        handle.write(json.dumps(rec) + "\n")


def write_split(out_dir: str | os.PathLike, split: str, records: Sequence[Record], vocab=None) -> tuple[Path, Path]:
    """Write ``<split>_formatted.jsonl`` and ``<split>.jsonl`` as a pair: both are written to temporary files
    first and renamed into place only when both are complete, so a failure (a full disk) leaves the old pair."""
    out_dir = Path(out_dir)
    encoded = encode_records(records, vocab, desc=f"encode {split}")
    formatted_path, encoded_path = formatted_file(out_dir, split), encoded_file(out_dir, split)
    with atomic_group([formatted_path, encoded_path]) as (formatted_handle, encoded_handle):
        _write_lines(formatted_handle, records)
        _write_lines(encoded_handle, encoded)
    return formatted_path, encoded_path


# ----------------------------------------------------------------------------------------------- driving

Locator = Callable[[Path, str], Path]  # (raw_dir, split) -> raw file or folder, or MissingSplitError
Reader = Callable[[Path, str], list]  # (raw file or folder, split) -> records


# How to do without a missing split, after the advice to download it. nlg.pipeline sets it for each split it
# prepares: its users choose splits with TRAIN_FROM / SPLIT, not with this CLI's --splits.
WAY_OUT_ENV = "NLG_MISSING_SPLIT_WAY_OUT"
WAY_OUT = ", or leave this split out with --splits"


def missing_split(dataset: str, split: str, raw_dir: Path, looked_for: Sequence[str], where_to_get: str):
    names = ", ".join(looked_for)
    way_out = os.environ.get(WAY_OUT_ENV) or WAY_OUT
    return MissingSplitError(
        f"{dataset} {split}: none of {names} is in {raw_dir}. {where_to_get}. Or run without --raw-dir to "
        f"download the files the LoRA authors used{way_out}"
    )


def run_prepare(
    dataset: str,
    locate: Locator,
    read: Reader,
    raw_dir: str | os.PathLike | None,
    out_dir: str | os.PathLike | None,
    splits: Iterable[str],
    vocab=None,
    limit: int | None = None,
) -> dict[str, tuple[Path, Path]]:
    """Locate every split first (so a missing one stops us before anything is written), then read and write."""
    splits = check_splits(splits)
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be a positive number of records, got {limit}")
    if raw_dir is None:
        raw_dir = fetch(dataset, splits)
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise FileNotFoundError(f"--raw-dir {raw_dir} is not a folder")
    out_dir = Path(out_dir) if out_dir is not None else default_data_dir(dataset)
    sources = {split: locate(raw_dir, split) for split in splits}
    records = {}
    for split, source in sources.items():
        recs = read(source, split)
        if not recs:
            raise InputFileError(source, f"{dataset} {split}: no records found")
        records[split] = recs[:limit] if limit else recs
    result = {split: write_split(out_dir, split, recs, vocab) for split, recs in records.items()}
    carry_synthetic_marker(raw_dir, out_dir)
    return result


def carry_synthetic_marker(source_dir: Path, out_dir: Path) -> None:
    """Data made from the synthetic sample says so in its own folder (a run's provenance copies the marker from
    there); data made from real files clears a stale one."""
    marker = out_dir / SYNTHETIC_MARKER
    if (source_dir / SYNTHETIC_MARKER).is_file():
        if source_dir.resolve() != out_dir.resolve():
            copy_file(source_dir / SYNTHETIC_MARKER, marker)
    elif marker.is_file():
        marker.unlink()


def build_parser(dataset: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m data.{dataset}.prepare", description=description)
    parser.add_argument("--raw-dir", help="folder with the raw files (default: download the official files to a cache)")
    parser.add_argument("--out-dir", help=f"where to write (default data/{dataset}/)")
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS, help="default: all three")
    parser.add_argument("--vocab", help="GPT-2 vocabulary folder or hub id (default: the packaged, verified files)")
    parser.add_argument("--limit", type=int, help="keep only the first N records of each split")
    return parser


def cli(dataset: str, description: str, prepare: Callable, argv: Sequence[str] | None = None) -> int:
    """Thin argparse shell: user errors become one line on stderr and exit status 1."""
    args = build_parser(dataset, description).parse_args(argv)
    try:
        written = prepare(
            raw_dir=args.raw_dir, out_dir=args.out_dir, splits=args.splits, vocab=args.vocab, limit=args.limit
        )
    except (InputFileError, OSError, ValueError, RuntimeError) as exc:
        cli_error(exc)
        return 1
    for split, (formatted, encoded) in written.items():
        n = sum(1 for _ in open(encoded, encoding="utf-8"))
        print(f"{dataset} {split}: {n} records -> {formatted} , {encoded}")
    return 0


def copy_file(src: Path, dst: Path) -> None:
    """Atomic copy (used for markers and downloads)."""
    with open(src, "rb") as fin, atomic_open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout)
