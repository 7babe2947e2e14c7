"""METEOR 1.5's paraphrase table cut down to the entries a scoring call can use, so METEOR starts in a second.

METEOR loads all 5.3 million entries of ``paraphrase-en.gz`` at every start (about 6 CPU-seconds here), while a
scoring call can only use an entry whose phrases occur in its texts. METEOR's own ``FilterParaphrase`` tool keeps
an entry when either of its phrases occurs in the references (its documented way to speed METEOR up, via ``-a``);
this module keeps a superset of that, fast: an entry stays when every word of at least one of its phrases is a
piece of some blank-separated, lower-cased token of the texts, a piece being any substring cut where METEOR's
normaliser could cut (around punctuation, between letters and digits, before n't; see ``_pieces``). Words without
an ASCII letter or digit (entity and quote normalisation create such), words with non-ASCII characters (Java and
Python lower-case a few differently) and overlong words always count as present; hash collisions only keep more
entries. The scores are therefore those of the full table: the tests compare every segment's statistics with the
full table's on the E2E and WebNLG cases, and every shared case against the official figures.

The table is indexed once (about fifteen seconds and 0.4 GB on disk, cached under ``$NLG_CACHE_DIR`` or
``~/.cache/nlg-lora``); ``python -m eval.meteor_paraphrase build`` does it ahead of time (``scripts/setup.sh``
runs it).
"""
from __future__ import annotations

import argparse
import gzip
import json
import mmap
import os
import shutil
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Iterable

import numpy as np

from .java import meteor_paraphrase_table

FORMAT = 2  # bump when the index layout changes
MAX_WORD = 64  # longest substring looked up; longer table words are treated as always present


def cache_root() -> Path:
    return Path(os.environ.get("NLG_CACHE_DIR") or Path.home() / ".cache" / "nlg-lora")


def _word_hash(word: bytes) -> int:
    return zlib.crc32(word)


class ParaphraseIndex:
    """The table's entries as pairs of distinct phrases, each phrase as the indices of its distinct words."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.word_hash = np.load(folder / "word_hash.npy")  # uint32 per distinct word
        self.always = np.load(folder / "always.npy")  # bool per distinct word (see _always_present)
        # distinct phrases x longest phrase: word indices, padded with len(word_hash) (a slot that is always present)
        self.phrase_words = np.load(folder / "phrase_words.npy", mmap_mode="r")
        self.entry_phrases = np.load(folder / "entry_phrases.npy", mmap_mode="r")  # entries x 2: phrase indices
        self.entry_offset = np.load(folder / "entry_offset.npy", mmap_mode="r")  # int64 per entry, + end
        with open(folder / "table.txt", "rb") as handle:
            self.table = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)

    @property
    def entries(self) -> int:
        return len(self.entry_offset) - 1

    def keep(self, texts: Iterable[str]) -> np.ndarray:
        """Boolean mask of the entries a METEOR call over ``texts`` can use (a superset)."""
        hashes = np.fromiter(_piece_hashes(texts), dtype=np.uint32)
        present = np.append(self.always | np.isin(self.word_hash, hashes), True)  # the last slot is the padding
        ok = present[self.phrase_words].all(axis=1)
        return ok[self.entry_phrases[:, 0]] & ok[self.entry_phrases[:, 1]]

    def write_filtered(self, texts: Iterable[str], out: Path) -> int:
        """Write the usable entries (original lines, original order) to ``out``; returns their count. The file is
        gzip without compression (METEOR only reads gzip; deflating would cost more than it saves)."""
        keep = self.keep(texts)
        kept = np.flatnonzero(keep)
        # runs of consecutive kept entries are contiguous bytes of the table
        edges = np.flatnonzero(np.diff(np.concatenate(([False], keep, [False])).astype(np.int8)))
        run_start, run_end = edges[0::2], edges[1::2]
        offsets = np.asarray(self.entry_offset)
        table = self.table
        body = b"".join([table[a:b] for a, b in zip(offsets[run_start].tolist(), offsets[run_end].tolist())])
        with gzip.open(out, "wb", compresslevel=0) as handle:
            handle.write(body)
        return len(kept)


def _always_present(word: bytes) -> bool:
    """Words the substring test does not decide: without an ASCII letter or digit (punctuation, which METEOR's
    entity and quote normalisation can create), with any non-ASCII character (Java and Python lower-case a few of
    those differently), or too long to look up."""
    return len(word) > MAX_WORD or max(word) >= 0x80 or not any(chr(b).isalnum() for b in word)


def _pieces(token: str) -> Iterable[str]:
    """Every piece METEOR's normaliser could cut ``token`` into: the substrings that start and end at a boundary,
    a boundary being the token's ends, either side of a character that is not an ASCII letter or digit, a change
    between letters and digits, and one character before an apostrophe (English n't)."""
    n = len(token)
    cuts = {0, n}
    for i, ch in enumerate(token):
        if not (ch.isascii() and ch.isalnum()):
            cuts.update((i, i + 1))
        elif i and token[i - 1].isascii() and token[i - 1].isalnum() and ch.isdigit() != token[i - 1].isdigit():
            cuts.add(i)
        if ch == "'" and i:
            cuts.add(i - 1)
    cuts = sorted(cuts)
    for a, start in enumerate(cuts):
        for end in cuts[a + 1:]:
            if end - start > MAX_WORD:
                break
            yield token[start:end]


def _piece_hashes(texts: Iterable[str]) -> Iterable[int]:
    tokens = set()
    for text in texts:
        tokens.update(text.lower().split())
    pieces = set()
    for token in tokens:
        pieces.update(_pieces(token))
    for piece in pieces:
        yield _word_hash(piece.encode("utf-8"))


def build(table: Path, folder: Path, quiet: bool = False) -> Path:
    """Index ``table`` into ``folder`` (written beside it first, then renamed: concurrent builders are safe)."""
    folder.parent.mkdir(parents=True, exist_ok=True)  # fail at once when the cache cannot be written
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    try:
        return _build_into(table, folder, tmp, quiet)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _build_into(table: Path, folder: Path, tmp: Path, quiet: bool) -> Path:
    if not quiet:
        print(f"indexing METEOR's paraphrase table {table} (once; about fifteen seconds)", file=sys.stderr, flush=True)
    raw = gzip.decompress(table.read_bytes())
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if len(lines) % 3:
        raise ValueError(f"{table}: {len(lines)} lines, not a multiple of 3 (probability, phrase, phrase)")
    n_entries = len(lines) // 3
    line_len = np.fromiter((len(line) + 1 for line in lines), dtype=np.int64, count=len(lines))
    line_end = np.cumsum(line_len)
    entry_offset = np.concatenate(([0], line_end[2::3]))
    words: dict[bytes, int] = {}
    phrases: dict[bytes, int] = {}
    phrase_rows: list[list[int]] = []
    entry_phrases = np.empty((n_entries, 2), dtype=np.int32)
    for e in range(n_entries):
        for side in (0, 1):
            line = lines[3 * e + 1 + side]
            p = phrases.get(line)
            if p is None:
                parts = line.split()
                if not parts:
                    raise ValueError(f"{table}: entry {e + 1} has an empty phrase")
                row = []
                for w in parts:
                    i = words.get(w)
                    if i is None:
                        i = words[w] = len(words)
                    row.append(i)
                p = phrases[line] = len(phrase_rows)
                phrase_rows.append(row)
            entry_phrases[e, side] = p
    vocab = list(words)
    width = max(len(r) for r in phrase_rows)
    pad = len(vocab)  # index of the always-present padding slot
    dtype = np.uint16 if pad < 2 ** 16 else np.int32
    phrase_words = np.full((len(phrase_rows), width), pad, dtype=dtype)
    for p, row in enumerate(phrase_rows):
        phrase_words[p, : len(row)] = row
    word_hash = np.fromiter((_word_hash(w) for w in vocab), dtype=np.uint32, count=len(vocab))
    always = np.fromiter((_always_present(w) for w in vocab), dtype=bool, count=len(vocab))
    np.save(tmp / "word_hash.npy", word_hash)
    np.save(tmp / "always.npy", always)
    np.save(tmp / "phrase_words.npy", phrase_words)
    np.save(tmp / "entry_phrases.npy", entry_phrases)
    np.save(tmp / "entry_offset.npy", entry_offset)
    (tmp / "table.txt").write_bytes(raw)
    (tmp / "meta.json").write_text(json.dumps({"format": FORMAT, "table": str(table), "entries": n_entries,
                                               "words": len(vocab)}) + "\n")
    try:
        os.replace(tmp, folder)
    except OSError:  # another process finished first
        if not (folder / "meta.json").is_file():
            raise
    return folder


def index_folder(table: Path | None = None) -> Path:
    table = table or meteor_paraphrase_table()
    stat = table.stat()
    key = f"meteor-paraphrase-v{FORMAT}-{stat.st_size}-{int(stat.st_mtime)}"
    return cache_root() / key


def load_index(table: Path | None = None, build_missing: bool = True) -> ParaphraseIndex | None:
    """The cached index of ``table`` (built when missing and allowed); None when it cannot be had."""
    table = table or meteor_paraphrase_table()
    folder = index_folder(table)
    if not (folder / "meta.json").is_file():
        if not build_missing:
            return None
        build(table, folder)
    return ParaphraseIndex(folder)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.meteor_paraphrase", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("build", help="index the paraphrase table now (cached; a no-op when done)")
    filt = sub.add_parser("filter", help="write the entries usable for the given text files")
    filt.add_argument("out", help="output .gz (pass to METEOR with -a)")
    filt.add_argument("texts", nargs="+", help="files with one segment per line")
    args = ap.parse_args(argv)
    index = load_index()
    if args.cmd == "build":
        print(f"{index.folder}: {index.entries} entries")
        return 0
    texts = [line for path in args.texts for line in Path(path).read_text(encoding="utf-8").splitlines()]
    kept = index.write_filtered(texts, Path(args.out))
    print(f"kept {kept} of {index.entries} entries -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
