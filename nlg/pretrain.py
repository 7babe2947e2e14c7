"""``python -m nlg.pretrain``: a small GPT-2 pretrained here from scratch, so the pipeline can show it learns.

No pretrained GPT-2 weights exist on a machine without the hub, so the CPU-scale experiments start from a model
made here: the same ``GPT2LMHeadModel`` (tied embeddings, the GPT-2 BPE, a card of :data:`nlg.models.CARDS`)
trained as a plain causal language model on the WebNLG 2017 + DART texts of ``data.corpus`` (never E2E text).
Documents are joined with the end-of-text id 50256 and cut into fixed blocks; each block is a trainer example
whose context is its first token, so the loss covers every next-token prediction in the block.

One training engine: the run is ``nlg.train``'s full fine-tuning (``--method ft``) of the randomly initialised
card (``--model random:<card>``), so the optimizer, schedule, checkpoints, ``--resume``, logging and progress bar
are the trainer's own. The result is cached: a folder under ``$NLG_CACHE_DIR/pretrained`` (default
``~/.cache/nlg-lora/pretrained``) named by the recipe and the corpus, holding

- ``model/``: a Hugging Face folder (``config.json``, ``model.safetensors``) that every ``--model`` flag takes,
  with ``pretrain.json`` beside the weights: corpus (kind, sources, documents, tokens, what was excluded),
  tokens seen, held-out perplexity, recipe, wall time;
- ``corpus/``: the encoded blocks; ``run/``: the trainer's run folder (recipe, log, summary).

A second call with the same recipe and corpus reuses the folder and says so; an interrupted one resumes.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path

import torch

from data.corpus import Corpus, generated_corpus, shared_corpus
from nlg.config import PretrainConfig
from nlg.io_utils import read_json_object, write_json, write_jsonl
from nlg.models import CARDS
from nlg.pipeline import SHARED_DATA
from nlg.run_folder import (ADAPTER, CHECKPOINTS, CORPUS_INFO, HELDOUT, PRETRAIN_CORPUS, PRETRAIN_INFO, PRETRAIN_MODEL,
                            PRETRAIN_RUN, RunFolder, describe_pretrained, encoded_file, pretrain_info)
from nlg.tokenizer import EOS_ID, get_tokenizer

CORPUS_KINDS = ("shared", "generated")
PRECISION_CHOICES = ("auto", "bf16", "fp32", "fp16")


class PretrainError(RuntimeError):
    """Pretraining cannot start as asked."""


def cache_root() -> Path:
    return Path(os.environ.get("NLG_CACHE_DIR") or Path.home() / ".cache" / "nlg-lora") / "pretrained"


def native_bf16() -> bool:
    """True where the device the trainer picks (this process's GPU, else the CPU) multiplies bf16 in hardware."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


def resolve_precision(cfg: PretrainConfig) -> PretrainConfig:
    """``cfg`` with ``precision="auto"`` replaced by what this machine runs fastest (bf16 when native, else fp32)."""
    if cfg.precision not in PRECISION_CHOICES:
        raise PretrainError(f"unknown --precision {cfg.precision!r}; expected one of {', '.join(PRECISION_CHOICES)}")
    if cfg.precision != "auto":
        return cfg
    return dataclasses.replace(cfg, precision="bf16" if native_bf16() else "fp32")


def recipe_key(cfg: PretrainConfig, fingerprint: str) -> str:
    """Folder name: the card, the corpus kind and a digest of everything that changes the weights."""
    text = json.dumps({"recipe": dataclasses.asdict(cfg), "corpus": fingerprint}, sort_keys=True)
    return f"{cfg.card}-{cfg.corpus}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def default_model_dir(card: str = "mini") -> Path | None:
    """The newest finished pretrained ``model/`` folder of ``card`` in the cache (what ``--model mini`` loads)."""
    root = cache_root()
    found = [p for p in root.glob(f"{card}-*/{PRETRAIN_MODEL}")
             if (p / PRETRAIN_INFO).is_file() and (p / "config.json").is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def load_corpus(cfg: PretrainConfig, data_dir: str | Path | None) -> Corpus:
    if cfg.corpus == "generated":
        return generated_corpus(cfg.generated_documents, seed=0)
    if cfg.corpus != "shared":
        raise PretrainError(f"unknown --corpus {cfg.corpus!r}; expected one of {', '.join(CORPUS_KINDS)}")
    data_dir = Path(data_dir) if data_dir else SHARED_DATA
    if not data_dir.is_dir():
        raise PretrainError(f"{data_dir}: no such folder with WebNLG 2017 / DART; pass --data-dir, or "
                            "--corpus generated for the offline template corpus")
    return shared_corpus(data_dir)


def pack_blocks(documents: list[str], block_size: int) -> tuple[list[dict], int]:
    """Documents as one stream ``50256 doc 50256 doc ...`` cut into ``block_size`` blocks (the tail dropped);
    returns (trainer records, tokens in the stream)."""
    tok = get_tokenizer()
    stream = [EOS_ID]
    for ids in tok(documents, add_special_tokens=False)["input_ids"]:
        stream.extend(ids)
        stream.append(EOS_ID)
    records = [{"context": stream[i:i + 1], "completion": stream[i + 1:i + block_size]}
               for i in range(0, len(stream) - block_size + 1, block_size)]
    return records, len(stream)


def write_corpus(corpus: Corpus, cfg: PretrainConfig, folder: Path) -> dict:
    """Encoded train / held-out blocks and ``corpus.json``; returns the corpus record."""
    train_docs, held_docs = corpus.split()
    random.Random(0).shuffle(train_docs)  # mix sources and topics within blocks; fixed, so the corpus is too
    train, train_tokens = pack_blocks(train_docs, cfg.block_size)
    held, held_tokens = pack_blocks(held_docs, cfg.block_size)
    if not train or not held:
        raise PretrainError(f"the corpus is too small for blocks of {cfg.block_size} tokens "
                            f"({train_tokens} train / {held_tokens} held-out tokens)")
    write_jsonl(encoded_file(folder, "train"), train)
    write_jsonl(encoded_file(folder, HELDOUT), held)
    info = {
        "kind": corpus.kind,
        "label": ("WebNLG 2017 + DART v1.1.1 texts (no E2E)" if corpus.kind == "shared"
                  else "a template corpus generated by data.corpus (invented facts; not real text)"),
        "sources": corpus.sources,
        "excluded": corpus.excluded,
        "conventions": corpus.conventions,
        "fingerprint": corpus.fingerprint(),
        "documents": len(corpus.documents),
        "train_documents": len(train_docs),
        "heldout_documents": len(held_docs),
        "train_tokens": train_tokens,
        "heldout_tokens": held_tokens,
        "block_size": cfg.block_size,
        "train_blocks": len(train),
        "heldout_blocks": len(held),
    }
    write_json(folder / CORPUS_INFO, info)
    return info


def pretrain(cfg: PretrainConfig = PretrainConfig(), data_dir: str | Path | None = None,
             root: str | Path | None = None, overwrite: bool = False, quiet: bool = False) -> Path:
    """Pretrain (or reuse) the small model; returns its Hugging Face ``model/`` folder."""
    from nlg.train import Trainer  # nlg.train -> nlg.train_run -> this module (provenance of models made here)

    if cfg.card not in CARDS:
        raise PretrainError(f"unknown --card {cfg.card!r}; expected one of {', '.join(CARDS)}")
    cfg = resolve_precision(cfg)
    corpus = load_corpus(cfg, data_dir)
    folder = Path(root) if root else cache_root() / recipe_key(cfg, corpus.fingerprint())
    model_dir = folder / PRETRAIN_MODEL
    corpus_dir = folder / PRETRAIN_CORPUS
    say = (lambda m: None) if quiet else (lambda m: print(f"[pretrain] {m}", file=sys.stderr, flush=True))
    if overwrite and folder.exists():
        shutil.rmtree(folder)
    if (model_dir / PRETRAIN_INFO).is_file():
        info = pretrain_info(model_dir)
        say(f"reusing the cached pretrained model {model_dir} ({describe_pretrained(info)})")
        return model_dir
    corpus_info = read_json_object(corpus_dir / CORPUS_INFO, missing_ok=True)
    if corpus_info is None or corpus_info.get("fingerprint") != corpus.fingerprint():
        corpus_info = write_corpus(corpus, cfg, corpus_dir)
    say(f"corpus: {corpus_info['documents']} documents, {corpus_info['train_tokens']:,} train tokens "
        f"({corpus_info['train_blocks']} blocks of {cfg.block_size}), {corpus_info['heldout_tokens']:,} held out; "
        f"excluded {corpus_info['excluded']}")
    run = RunFolder(folder / PRETRAIN_RUN)
    run_dir = run.path
    resume = run.recipe.is_file()
    tcfg = cfg.train_config(str(encoded_file(corpus_dir, "train")), str(encoded_file(corpus_dir, HELDOUT)),
                            str(run_dir), resume=resume)
    start = time.time()
    trainer = Trainer(tcfg, quiet=quiet)  # this process's GPU when there is one, else the CPU
    trainer.run()
    summary = read_json_object(run.summary)
    config = trainer.model.config
    info = {
        "card": cfg.card, "n_layer": config.n_layer, "n_embd": config.n_embd, "n_head": config.n_head,
        "corpus": corpus_info,
        "tokens_seen": trainer.progress.tokens,
        "steps": summary["steps"],
        "final_train_loss": summary["final_train_loss"],
        "heldout_loss": summary["final_valid_loss"],
        "heldout_perplexity": math.exp(summary["final_valid_loss"]),
        "tokens_per_s": summary["tokens_per_s"],
        "train_time_s": summary["train_time_s"],
        "wall_time_s": round(time.time() - start, 1),
        "recipe": dataclasses.asdict(cfg),
        "run_dir": str(run_dir),
    }
    tmp = folder / f"{PRETRAIN_MODEL}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    trainer.model.save_pretrained(str(tmp))
    write_json(tmp / PRETRAIN_INFO, info)
    if model_dir.exists():
        shutil.rmtree(model_dir)
    os.replace(tmp, model_dir)
    for name in (CHECKPOINTS, ADAPTER):  # the weights now live in model/; checkpoints only served resuming
        shutil.rmtree(run_dir / name, ignore_errors=True)
    say(f"wrote {model_dir}: {describe_pretrained(info)}")
    return model_dir


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nlg.pretrain", description=__doc__.split("\n\n")[0])
    defaults = PretrainConfig()
    for f in dataclasses.fields(PretrainConfig):
        kind = type(getattr(defaults, f.name))
        choices = {"corpus": CORPUS_KINDS, "card": tuple(CARDS), "precision": PRECISION_CHOICES}.get(f.name)
        p.add_argument("--" + f.name.replace("_", "-"), type=kind, default=getattr(defaults, f.name),
                       choices=choices, help=f"(default {getattr(defaults, f.name)!r})")
    p.add_argument("--data-dir", default=None, help=f"raw WebNLG / DART folders (default {SHARED_DATA})")
    p.add_argument("--out", default=None, help="cache entry to write (default: named by recipe and corpus under "
                                               f"{cache_root()})")
    p.add_argument("--overwrite", action="store_true", help="pretrain again even if the cache holds this model")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    extra = {k: args.pop(k) for k in ("data_dir", "out", "overwrite", "quiet")}
    try:
        model_dir = pretrain(PretrainConfig(**args), data_dir=extra["data_dir"], root=extra["out"],
                             overwrite=extra["overwrite"], quiet=extra["quiet"])
    except (PretrainError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(model_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
