"""eval.meteor_paraphrase on a small table written here: which entries a set of texts keeps, and the file."""
from __future__ import annotations

import gzip

import numpy as np

from eval.meteor_paraphrase import build, ParaphraseIndex

ENTRIES = [  # probability, phrase, phrase
    ("0.5", "big", "large"),
    ("0.25", "large", "huge"),
    ("0.125", "city centre", "downtown"),
    ("0.0625", "near the river", "riverside"),
    ("0.03125", "n't", "not"),
    ("0.015625", ",", ";"),
    ("0.0078125", "caf\u00e9", "coffee shop"),
    ("0.00390625", "cheap", "inexpensive"),
]


def _index(tmp_path) -> ParaphraseIndex:
    table = tmp_path / "paraphrase-en.gz"
    body = "".join(f"{p}\n{a}\n{b}\n" for p, a, b in ENTRIES)
    table.write_bytes(gzip.compress(body.encode("utf-8")))
    return ParaphraseIndex(build(table, tmp_path / "index", quiet=True))


def test_an_entry_stays_when_both_phrases_can_occur(tmp_path):
    """A match pairs one phrase in a hypothesis with the other in a reference, so both must be there."""
    index = _index(tmp_path)
    assert index.entries == len(ENTRIES)
    keep = index.keep(["The BIG pub is in the City centre, LARGE and cheap.", "It isn't downtown; it's 2km away"])
    kept = [ENTRIES[i][1] for i in np.flatnonzero(keep)]
    # big/large (BIG, LARGE,); large/huge: no huge; city centre/downtown ("centre," and "downtown;" are cut at the
    # punctuation); river: absent; n't (cut before the apostrophe of isn't) / not: "not" absent; punctuation-only
    # words always count as present; café (non-ASCII: present) / coffee shop: absent; cheap/inexpensive: no
    # inexpensive
    assert kept == ["big", "city centre", ","]
    assert list(np.flatnonzero(index.keep(["it is not so", "isn't it"]))) == [4, 5]


def test_pieces_are_cut_where_the_normaliser_can_cut():
    from eval.meteor_paraphrase import _pieces

    assert set(_pieces("downtown")) == {"downtown"}  # never a bare substring such as "town"
    assert {"do", "n't", "don't", "'t", "n", "'", "t"} <= set(_pieces("don't"))
    assert {"2", "km", "2km"} == set(_pieces("2km"))
    assert {"u", ".", "s", "u.s", "u.s."} <= set(_pieces("u.s."))


def test_filtered_file_holds_the_original_lines_in_order(tmp_path):
    index = _index(tmp_path)
    out = tmp_path / "filtered.gz"
    count = index.write_filtered(["cheap food near the river", "inexpensive riverside"], out)
    lines = gzip.decompress(out.read_bytes()).decode("utf-8")
    wanted = [e for e in ENTRIES if e[1] in ("near the river", ",", "cheap")]
    assert count == len(wanted) == 3
    assert lines == "".join(f"{p}\n{a}\n{b}\n" for p, a, b in wanted)
    assert index.write_filtered(["nothing here"], out) == 1  # the punctuation pair only
    assert gzip.decompress(out.read_bytes()).decode("utf-8") == "0.015625\n,\n;\n"


def test_building_twice_is_harmless(tmp_path):
    first = _index(tmp_path)
    second = _index(tmp_path)  # the folder exists: the second build's rename fails and the first stays
    assert second.entries == first.entries
