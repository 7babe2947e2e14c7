"""The official WebNLG 2017 XML -> the JSON layout the LoRA authors' converter reads (``train/dev/test.json``).

Those JSON files were written by the WebNLG corpus reader: entries ordered by size folder (1triples..7triples),
then file name, then document order (the test file is ``testdata_with_lex.xml``), numbered from 1, every
lexicalisation kept (``toFix`` too). :func:`dumps` writes the layout exactly as the released files are written,
so the rebuilt ``dev.json`` equals the released one byte for byte and the rebuilt ``train.json``/``test.json``
have the git blob ids the LoRA repository lists for them (see ``RELEASED_BLOBS``; checked in the tests).

    python -m data.webnlg.xml_reader XML_DIR_OR_FILE OUT.json
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from tqdm import tqdm

from nlg.io_utils import InputFileError, atomic_open

from data.common import parse_xml, split_triple

# git blob ids of the JSON files in github.com/microsoft/LoRA at c4593f0 (examples/NLG/data/webnlg_challenge_2017/)
RELEASED_BLOBS = {
    "train.json": "461766d1fe902bd659b821a03f49310c22403686",
    "dev.json": "180f096ff49a7e597dd7c507ea0c5441e839b770",
    "test.json": "7f552799b7e3b5badf95b725c20d955e0886811e",
}
TEST_XML = "testdata_with_lex.xml"


def split_files(folder: Path) -> list[Path]:
    """The XML files of a train/ or dev/ folder in the corpus reader's order; the test folder's single file."""
    folder = Path(folder)
    if folder.is_file():
        return [folder]
    if (folder / TEST_XML).is_file():
        return [folder / TEST_XML]
    return [f for size in range(1, 8) for f in sorted((folder / f"{size}triples").glob("*.xml"))]


def _triples(elements, path: Path, where: str) -> list[dict]:
    out = []
    for el in elements:
        s, p, o = split_triple(el.text, path, where)
        out.append({"subject": s, "property": p, "object": o})
    return out


def _entry(el, path: Path, index: int) -> dict:
    where = f"entry {index} (eid={el.get('eid')!r})"
    modified = el.findall("modifiedtripleset")
    if len(modified) != 1:
        raise InputFileError(path, f"{where}: expected one <modifiedtripleset>, found {len(modified)}")
    for attr in ("category", "eid", "size"):
        if el.get(attr) is None:
            raise InputFileError(path, f"{where}: <entry> has no {attr!r} attribute")
    lexs = []
    for lex in el.findall("lex"):
        if lex.get("comment") is None:
            raise InputFileError(path, f"{where}: <lex lid={lex.get('lid')!r}> has no 'comment' attribute")
        lexs.append({"comment": lex.get("comment"), "xml_id": lex.get("lid"), "lex": lex.text or "", "lang": ""})
    return {
        "category": el.get("category"),
        "size": el.get("size"),
        "xml_id": el.get("eid"),
        "shape": "NA",
        "shape_type": "NA",
        "originaltriplesets": {
            "originaltripleset": [
                _triples(ots.findall("otriple"), path, where) for ots in el.findall("originaltripleset")
            ]
        },
        "modifiedtripleset": _triples(modified[0].findall("mtriple"), path, where),
        "lexicalisations": lexs,
        "dbpedialinks": [],
        "links": [],
    }


def read_layout(source: str | Path) -> dict:
    """``{"entries": [{"1": {...}}, {"2": {...}}, ...]}`` from a split folder or a single XML file."""
    files = split_files(Path(source))
    if not files:
        raise InputFileError(source, f"no WebNLG XML files here (expected 1triples/ .. 7triples/ or {TEST_XML})")
    entries = []
    for path in tqdm(files, desc=f"read {Path(source).name}", unit="file", mininterval=1.0, disable=len(files) < 8):
        root = parse_xml(path)
        found = root.iter("entry")
        for i, el in enumerate(found, 1):
            entries.append(_entry(el, path, i))
    if not entries:
        raise InputFileError(source, "no <entry> elements")
    return {"entries": [{str(i): e} for i, e in enumerate(entries, 1)]}


def dumps(layout: dict) -> bytes:
    """The released files' serialisation: indent 4, sorted keys, non-ASCII kept, UTF-8, no final newline."""
    return json.dumps(layout, ensure_ascii=False, indent=4, sort_keys=True).encode("utf-8")


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data.webnlg.xml_reader", description=__doc__.split("\n")[0])
    parser.add_argument("source", help="train/ or dev/ folder, test/ folder or one XML file")
    parser.add_argument("out", help="JSON file to write")
    args = parser.parse_args(argv)
    try:
        data = dumps(read_layout(args.source))
    except InputFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    with atomic_open(args.out, "wb") as handle:
        handle.write(data)
    known = {v: k for k, v in RELEASED_BLOBS.items()}.get(git_blob_id(data))
    print(f"wrote {args.out} ({len(data)} bytes)" + (f", identical to the released {known}" if known else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
