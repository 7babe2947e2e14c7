"""Inputs for the decoding golden test: the shared dev/test splits in the authors' formatted layout and a fixed,
deterministic set of predictions (shared by tests/test_decode.py and tests/fixtures/decode_golden/make_golden.py).

The predictions are built from each record's own reference, varied by record index so that every rule of the
authors' ``gpt2_decode.py`` matters: a cut at ``<|endoftext|>`` (50256) and at ``\\n\\n`` (628, or two 198s), text
after the cut, surrounding spaces to strip, upper case to lower, a broken UTF-8 byte, and different predictions for
records sharing a context (the last one in file order is the group's hypothesis).
"""
from __future__ import annotations

import json
from pathlib import Path

SPLITS = ("valid", "test")
RAW_SUBDIR = {"e2e": "e2e", "webnlg": "webnlg_challenge_2017", "dart": "dart"}
LONE_BYTE_TOKEN = "Ã"  # byte 0xC3 alone: an incomplete UTF-8 sequence -> U+FFFD on decoding


def formatted_records(dataset: str, split: str, shared_data: Path) -> list[dict]:
    """The split as the project's preparer converts it (the authors' ``<split>_formatted.jsonl`` records)."""
    import importlib

    prep = importlib.import_module(f"data.{dataset}.prepare")
    raw = shared_data / RAW_SUBDIR[dataset]
    return prep.read(prep.locate(raw, split), split)


def write_formatted(records: list[dict], path: Path) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec) + "\n")
    return path


def fixed_predictions(records: list[dict]) -> list[dict]:
    """One ``{"id", "predict"}`` per record, in id order."""
    from nlg.tokenizer import get_tokenizer

    tok = get_tokenizer()
    junk = tok.encode(" and then some text after the cut", add_special_tokens=False)
    lone = tok.convert_tokens_to_ids(LONE_BYTE_TOKEN)
    texts = []
    for i, rec in enumerate(records):
        text = " " + rec["completion"]
        if i % 5 == 2:
            text = text.upper()
        elif i % 5 == 3:
            text = "   " + text + "  "
        texts.append(text)
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    out = []
    for i, seq in enumerate(ids):
        kind = i % 5
        if kind == 0:
            seq = seq + [50256] + junk
        elif kind == 1:
            seq = seq + [628] + junk
        elif kind == 2:
            seq = seq + [198, 198] + junk
        elif kind == 4:
            seq = seq[: max(1, len(seq) // 2)] + [lone] + [50256]
        out.append({"id": i, "predict": seq})
    return out


def write_predictions(preds: list[dict], path: Path) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for p in preds:
            f.write(json.dumps(p) + "\n")
    return path
