"""WebNLG 2017: the JSON layout (``train/dev/test.json``) or the official XML -> the authors' jsonl files.

As in the authors' ``format_converting_webnlg.py``: one record per lexicalisation whose comment is ``good``,
context = the modified triples as ``subject : property : object`` joined by `` | ``, completion = the text,
``cate`` = the entry's category is one of the 10 categories seen in training. The XML is read into the same JSON
layout first (:mod:`data.webnlg.xml_reader`), so both routes go through one converter.

    python -m data.webnlg.prepare [--raw-dir DIR] [--out-dir DIR] [--splits train valid test] [--vocab V] [--limit N]
"""
from __future__ import annotations

import sys
from pathlib import Path

from nlg.io_utils import InputFileError

from data.common import check_record, cli, load_json, missing_split, run_prepare, warn_unused
from data.webnlg.xml_reader import TEST_XML, read_layout

DATASET = "webnlg"
SEEN_CATEGORIES = frozenset(
    {"Airport", "Astronaut", "Building", "City", "ComicsCharacter", "Food", "Monument", "SportsTeam", "University",
     "WrittenWork"}
)
JSON_NAMES = {"train": "train.json", "valid": "dev.json", "test": "test.json"}
XML_DIRS = {"train": "train", "valid": "dev", "test": "test"}
WHERE_TO_GET = (
    "The JSON files are in github.com/microsoft/LoRA (examples/NLG/data/webnlg_challenge_2017/), the official "
    "2017 XML in github.com/XiangLi1999/PrefixTuning (data/webnlg_challenge_2017/)"
)


def _has_xml(folder: Path, split: str) -> bool:
    if split == "test":
        return (folder / TEST_XML).is_file()
    return any(folder.glob("[1-7]triples/*.xml"))


def locate(raw_dir: Path, split: str) -> Path:
    """``<name>.json`` if present, else the XML split folder (``train/``, ``dev/``, ``test/``)."""
    json_path = raw_dir / JSON_NAMES[split]
    if json_path.is_file():
        return json_path
    xml_dir = raw_dir / XML_DIRS[split]
    if xml_dir.is_dir() and _has_xml(xml_dir, split):
        return xml_dir
    looked = [JSON_NAMES[split], f"{XML_DIRS[split]}/" + (TEST_XML if split == "test" else "{1..7}triples/*.xml")]
    raise missing_split(DATASET, split, raw_dir, looked, WHERE_TO_GET)


def _get(mapping, key, path: Path, where: str):
    if not isinstance(mapping, dict) or key not in mapping:
        raise InputFileError(path, f"{where}: missing {key!r}")
    return mapping[key]


def records_from_layout(layout: dict, path: Path) -> list[dict]:
    """The authors' conversion of one JSON-layout document."""
    entries = _get(layout, "entries", path, "top level")
    if not isinstance(entries, list):
        raise InputFileError(path, "'entries' is not a list")
    records, unused, empty = [], [], []
    for i, wrapper in enumerate(entries, 1):
        where = f"entry {i}"
        entry = _get(wrapper, str(i), path, f"{where} (entries are numbered from 1, in order)")
        category = _get(entry, "category", path, where)
        triples = _get(entry, "modifiedtripleset", path, where)
        context = " | ".join(
            " : ".join(str(_get(t, key, path, where)) for key in ("subject", "property", "object")) for t in triples
        )
        seen = category in SEEN_CATEGORIES
        before = len(records)
        for lex in _get(entry, "lexicalisations", path, where):
            if _get(lex, "comment", path, where) == "good":
                rec = {"context": context, "completion": _get(lex, "lex", path, where), "cate": seen}
                records.append(check_record(rec, path, where))
                if isinstance(rec["completion"], str) and not rec["completion"].strip():
                    empty.append(f"{where} (eid={entry.get('xml_id')!r})")
        if len(records) == before:
            unused.append(f"{where} (eid={entry.get('xml_id', entry.get('eid'))!r})")
    warn_unused(path, "entries without a usable lexicalisation (none marked 'good')", unused,
                "they give no record, as in the authors' converter")
    warn_unused(path, "empty 'good' lexicalisations", empty,
                "kept as empty completions and references, as the authors' converter keeps them")
    return records


def read(source: Path, split: str = "") -> list[dict]:
    layout = load_json(source) if source.is_file() and source.suffix == ".json" else read_layout(source)
    return records_from_layout(layout, source)


def prepare(raw_dir=None, out_dir=None, splits=("train", "valid", "test"), vocab=None, limit=None):
    """Write ``<split>_formatted.jsonl`` and ``<split>.jsonl`` per split; returns {split: (formatted, encoded)}."""
    return run_prepare(DATASET, locate, read, raw_dir, out_dir, splits, vocab, limit)


def main(argv=None) -> int:
    return cli(DATASET, "Prepare WebNLG 2017 as the LoRA authors do.", prepare, argv)


if __name__ == "__main__":
    sys.exit(main())
