"""DART v1.1.1: the JSON release or the official XML -> the authors' formatted and encoded jsonl files.

As in the authors' ``format_converting_dart.py``: context = the triples as ``subject : property : object`` with
the property lower-cased, joined by `` | ``; one record per annotation, in order. The XML carries the same
triples and annotations (checked on dev, entry by entry); an empty ``<lex/>`` is the empty string, as in the JSON.

    python -m data.dart.prepare [--raw-dir DIR] [--out-dir DIR] [--splits train valid test] [--vocab V] [--limit N]
"""
from __future__ import annotations

import sys
from pathlib import Path

from tqdm import tqdm

from nlg.io_utils import InputFileError

from data.common import (check_record, cli, load_json, missing_split, parse_xml, run_prepare, split_triple,
                         warn_unused)

DATASET = "dart"
STEMS = {"train": "dart-v1.1.1-full-train", "valid": "dart-v1.1.1-full-dev", "test": "dart-v1.1.1-full-test"}
WHERE_TO_GET = "Both formats are in github.com/Yale-LILY/dart (data/v1.1.1/)"


def locate(raw_dir: Path, split: str) -> Path:
    """``dart-v1.1.1-full-<split>.json`` if present, else the ``.xml`` of the same name."""
    names = [STEMS[split] + ".json", STEMS[split] + ".xml"]
    for name in names:
        if (raw_dir / name).is_file():
            return raw_dir / name
    raise missing_split(DATASET, split, raw_dir, names, WHERE_TO_GET)


def entries_from_xml(path: Path, wheres: list[str] | None = None) -> list[dict]:
    """The XML as the JSON's ``[{"tripleset": [[s, p, o], ...], "annotations": [{"source", "text"}]}]``."""
    entries = []
    for i, el in enumerate(tqdm(list(parse_xml(path).iter("entry")), desc=f"read {path.name}", unit="entry",
                                mininterval=1.0), 1):
        where = f"entry {i} (eid={el.get('eid')!r})"
        triples = [list(split_triple(m.text, path, where)) for m in el.iter("mtriple")]
        annotations = [{"source": lex.get("comment"), "text": lex.text or ""} for lex in el.iter("lex")]
        entries.append({"tripleset": triples, "annotations": annotations})
        if wheres is not None:
            wheres.append(where)
    if not entries:
        raise InputFileError(path, "no <entry> elements")
    return entries


def triples_context(tripleset: list) -> str:
    """The authors' context for one entry: ``subject : property : object`` (property lower-cased), `` | ``-joined."""
    return " | ".join(f"{s} : {p.lower()} : {o}" for s, p, o in tripleset)


def records_from_entries(entries: list, path: Path, wheres: list[str] | None = None) -> list[dict]:
    """The authors' conversion of the JSON list."""
    if not isinstance(entries, list):
        raise InputFileError(path, "expected a JSON list of entries")
    records, unannotated, empty = [], [], []
    for i, entry in enumerate(entries, 1):
        where = wheres[i - 1] if wheres else f"entry {i}"
        if not isinstance(entry, dict) or "tripleset" not in entry or "annotations" not in entry:
            raise InputFileError(path, f"{where}: expected an object with 'tripleset' and 'annotations'")
        for triple in entry["tripleset"]:
            if not isinstance(triple, list) or len(triple) != 3 or not all(isinstance(x, str) for x in triple):
                raise InputFileError(path, f"{where}: triple {triple!r} is not [subject, property, object]")
        context = triples_context(entry["tripleset"])
        if not entry["annotations"]:
            unannotated.append(where)
        for ann in entry["annotations"]:
            if not isinstance(ann, dict) or "text" not in ann:
                raise InputFileError(path, f"{where}: annotation {ann!r} has no 'text'")
            if isinstance(ann["text"], str) and not ann["text"].strip():
                empty.append(where)
            records.append(check_record({"context": context, "completion": ann["text"]}, path, where))
    warn_unused(path, "entries without an annotation", unannotated, "they give no record, as in the authors' converter")
    warn_unused(path, "empty annotation texts", empty,
                "kept as empty completions and references, as the authors' converter keeps them")
    return records


def read(source: Path, split: str = "") -> list[dict]:
    wheres: list[str] = []
    entries = entries_from_xml(source, wheres) if source.suffix.lower() == ".xml" else load_json(source)
    return records_from_entries(entries, source, wheres)


def prepare(raw_dir=None, out_dir=None, splits=("train", "valid", "test"), vocab=None, limit=None):
    """Write ``<split>_formatted.jsonl`` and ``<split>.jsonl`` per split; returns {split: (formatted, encoded)}."""
    return run_prepare(DATASET, locate, read, raw_dir, out_dir, splits, vocab, limit)


def main(argv=None) -> int:
    return cli(DATASET, "Prepare DART v1.1.1 as the LoRA authors do.", prepare, argv)


if __name__ == "__main__":
    sys.exit(main())
