"""``python -m nlg.generate``: decode a split with a trained adapter (merged) and the paper's beam search.

Reads ``RUN/recipe.json`` for the dataset and base model, loads ``RUN/adapter/`` (or ``--adapter``: any adapter
folder or an authors' ``.pt`` checkpoint) with ``nlg.adapter_io.load_for_decoding`` (LoRA is merged into W), decodes
the encoded split (``{"context": ids, ...}`` per line) and writes ``RUN/predictions.<split>.jsonl`` with
``{"id": record index, "predict": generated ids, "text": cleaned text}`` plus ``RUN/generate.<split>.json``
(settings, counts, timings, and the sha256 of the data, of its decoded contexts and of the predictions file, by
which ``nlg.decode`` refuses a formatted split other than the one decoded). Under ``torchrun`` every rank decodes
a shard and rank 0 writes the file in the original order. ``--hf-generate`` swaps in transformers' ``generate``
(different rules, see nlg/beam_hf.py).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

from nlg import distributed as dist_utils
from nlg.adapter_io import load_for_decoding
from nlg.beam import PromptError, SearchStats, beam_search, check_prompt, context_window
from nlg.beam_hf import hf_beam_search
from nlg.config import DATASETS, DecodeConfig, default_data_dir, paper_decode_config
from nlg.decode import contexts_sha256, hypothesis_text
from nlg.io_utils import (InputFileError, check_output, cli_error, file_sha256, iter_jsonl, read_json_object,
                          write_json, write_jsonl)
from nlg.models import ModelLoadError, is_random_model, load_model
from nlg.run_folder import RunFolder, RunLock, RunLockedError, encoded_file, read_provenance


class GenerateError(RuntimeError):
    """A setup problem (missing run files, model that cannot be loaded)."""


def read_recipe(run_dir: Path) -> dict:
    return read_json_object(RunFolder(run_dir).recipe, missing_ok=True) or {}


def _random_model(run_dir: Path, base_model: str | None) -> bool:
    """Whether the predictions come from a randomly initialised model: the run's provenance says, else the base
    decoded (a bare decode, no training run behind it)."""
    provenance = read_provenance(run_dir)
    if provenance["recorded_in"] is not None or base_model is None:
        return provenance["model"]["random"]
    return is_random_model(base_model)


def read_prompts(path: str | Path, limit: int | None = None) -> tuple[list[int], list[list[int]]]:
    """(line numbers, context ids) of the first ``limit`` records of an encoded split."""
    lines, prompts = [], []
    for line, rec in iter_jsonl(path):
        if limit is not None and len(prompts) >= limit:
            break
        ctx = rec.get("context") if isinstance(rec, dict) else None
        if not isinstance(ctx, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ctx):
            raise InputFileError(path, "expected an object whose 'context' is a list of token ids", line)
        lines.append(line)
        prompts.append(ctx)
    if not prompts:
        raise InputFileError(path, "no records: the split is empty, nothing to decode")
    return lines, prompts


def validate_prompts(path, lines, prompts, window: int, vocab_size: int, truncate: bool) -> None:
    """Fail on the first prompt the search cannot take, naming file and line."""
    for line, prompt in zip(lines, prompts):
        problem = check_prompt(prompt[-window:] if truncate else prompt, window, vocab_size)
        if problem:
            raise InputFileError(path, problem, line)


def load_decoding_model(run_dir: Path | None, adapter: str | None, base_model: str | None, device: str,
                        lora_alpha: float = 32.0):
    """(model, description): the adapter merged into its base, or the bare base when there is no adapter."""
    candidate = Path(adapter) if adapter else (RunFolder(run_dir).adapter if run_dir is not None else None)
    if adapter or (candidate is not None and candidate.exists()):
        model = load_for_decoding(candidate, base_model=base_model, device=device, lora_alpha=lora_alpha)
        return model, {"adapter": str(candidate), "base_model": base_model}
    if base_model is None:
        raise GenerateError(f"no adapter at {candidate} and no --model: nothing to decode with "
                            "(train first, or pass --adapter PATH, or --model NAME to decode a bare base model)")
    print(f"note: no adapter at {candidate}; decoding the bare base model {base_model!r}", file=sys.stderr)
    return load_model(base_model, device=device).eval(), {"adapter": None, "base_model": base_model}


def _shard_decode(model, prompts, cfg, dist_info, *, batch_size, hf, early_stop, truncate, quiet, stats):
    """Each rank decodes every world-th distinct prompt; all ranks return the full list in the original order."""
    window = context_window(model, cfg)
    keyed = [tuple(p[-window:] if truncate else p) for p in prompts]
    unique = sorted(dict.fromkeys(keyed), key=lambda p: (-len(p), p))  # same order on every rank
    mine = unique[dist_info.rank::dist_info.world] if dist_info.active else unique
    show = not quiet and dist_info.is_main
    if hf:
        outs = hf_beam_search(model, [list(p) for p in mine], cfg, batch_size=batch_size, progress=show)
    else:
        outs = beam_search(model, [list(p) for p in mine], cfg, batch_size=batch_size, early_stop=early_stop,
                           dedup=False, truncate=False, progress=show, stats=stats)
    found = dict(zip(mine, outs))
    if dist_info.active:
        merged = {}
        for part in dist_utils.all_gather_object(found):
            merged.update(part)
        found = merged
    return [found[k] for k in keyed]


def generate(
    run_dir: str | Path,
    dataset: str | None = None,
    split: str = "test",
    data: str | Path | None = None,
    adapter: str | None = None,
    base_model: str | None = None,
    cfg: DecodeConfig | None = None,
    *,
    limit: int | None = None,
    batch_size: int | None = None,
    hf_generate: bool = False,
    early_stop: bool = True,
    truncate: bool = False,
    device: str | None = None,
    output: str | Path | None = None,
    quiet: bool = False,
    lora_alpha: float = 32.0,
) -> Path:
    """Decode one split into ``RUN/predictions.<split>.jsonl``; returns its path (on every rank)."""
    run_dir = Path(run_dir)
    files = RunFolder(run_dir)
    recipe = read_recipe(run_dir)
    dataset = dataset or recipe.get("dataset")
    if dataset not in DATASETS:
        raise GenerateError(f"dataset {dataset!r}: pass --dataset (one of {', '.join(DATASETS)}) "
                            f"or a run folder whose recipe.json names it")
    cfg = cfg or paper_decode_config(dataset)
    cfg.check()
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1 (the number of records to decode), got {limit}")
    data = Path(data) if data else encoded_file(default_data_dir(dataset), split)
    output = Path(output) if output else files.predictions(split)
    check_output(output)  # before hours of beam search, not after
    lines, prompts = read_prompts(data, limit)
    data_sha256 = file_sha256(data)  # now, not after hours of search

    info = dist_utils.setup(device)
    lock = RunLock(run_dir, "generate").acquire() if info.is_main and run_dir.is_dir() else None
    try:
        if base_model is None and not (adapter or files.adapter.exists()):
            base_model = recipe.get("model")
        model, source = load_decoding_model(run_dir, adapter, base_model, str(info.device), lora_alpha)
        window = context_window(model, cfg)
        validate_prompts(data, lines, prompts, window, model.config.vocab_size, truncate)
        stats = SearchStats()
        start = time.perf_counter()
        outs = _shard_decode(model, prompts, cfg, info, batch_size=batch_size, hf=hf_generate, early_stop=early_stop,
                             truncate=truncate, quiet=quiet, stats=stats)
        seconds = time.perf_counter() - start
        if info.is_main:
            write_jsonl(output, ({"id": i, "predict": ids, "text": hypothesis_text(ids)} for i, ids in enumerate(outs)))
            distinct = len({tuple(p) for p in prompts})
            summary = {
                "dataset": dataset, "split": split, "data": str(data), "predictions": str(output),
                "search": "hf-generate" if hf_generate else "paper", "decode": dataclasses.asdict(cfg),
                "batch_size": batch_size or cfg.batch_size, "early_stop": early_stop, "truncate_left": truncate,
                "records": len(prompts), "distinct_prompts": distinct, "world_size": info.world,
                "seconds": round(seconds, 3), "seconds_per_record": round(seconds / len(prompts), 4),
                "seconds_per_distinct_prompt": round(seconds / distinct, 4),
                "stopped_early_rank0": stats.stopped_early, "device": str(info.device),
                "random_model": _random_model(run_dir, source.get("base_model")), **source,
                # what the predictions were made from: nlg.decode pairs them only with a formatted split whose
                # contexts encode to these (the first "records" of it), and finds this record by the last digest
                "data_sha256": data_sha256, "contexts_sha256": contexts_sha256(prompts),
                "predictions_sha256": file_sha256(output),
            }
            write_json(RunFolder(output.parent).generate_record(split), summary)
            print(f"wrote {len(outs)} predictions to {output} ({seconds:.1f} s, "
                  f"{len(prompts) / max(seconds, 1e-9):.2f} records/s)", file=sys.stderr)
        dist_utils.barrier()
    finally:
        if lock is not None:
            lock.release()
        dist_utils.cleanup()
    return output


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nlg.generate",
                                description="Beam-search a split with a trained adapter (the paper's decoding).")
    p.add_argument("--run-dir", required=True, type=Path, help="run folder (recipe.json, adapter/); output goes here")
    p.add_argument("--adapter", help="adapter folder or authors' .pt checkpoint (default RUN/adapter)")
    p.add_argument("--model", dest="base_model", help="base model: card, hub id, HF folder or .bin "
                   "(default: the adapter's own base; without an adapter: recipe.json's model)")
    p.add_argument("--dataset", choices=DATASETS, help="default: recipe.json's dataset")
    p.add_argument("--split", default="test")
    p.add_argument("--data", type=Path, help="encoded split (default data/<dataset>/<split>.jsonl)")
    p.add_argument("--output", type=Path, help="default RUN/predictions.<split>.jsonl")
    p.add_argument("--limit", type=int, help="decode only the first N records")
    p.add_argument("--batch-size", type=int, help="prompts decoded together (default 16)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: this rank's GPU, else CPU)")
    p.add_argument("--beam", type=int)
    p.add_argument("--length-penalty", type=float, help="default 0.9 (e2e) / 0.8 (webnlg, dart)")
    p.add_argument("--no-repeat-ngram-size", type=int)
    p.add_argument("--repetition-penalty", type=float)
    p.add_argument("--max-new-tokens", type=int, help="the authors' --eval_len (64)")
    p.add_argument("--min-length", type=int)
    p.add_argument("--eos-token-ids", type=int, nargs="+", help="end tokens (default 50256 628)")
    p.add_argument("--seq-len", type=int, help="context window as in the authors' --seq_len (512)")
    p.add_argument("--lora-alpha", type=float, default=32.0, help="alpha for authors' .pt files, which lack it")
    p.add_argument("--truncate-left", action="store_true",
                   help="keep the last tokens of a too-long context (the authors' loader does it silently)")
    p.add_argument("--no-early-stop", action="store_true", help="run every step even when the result is settled")
    p.add_argument("--hf-generate", action="store_true",
                   help="use transformers' generate(num_beams=...) instead of the paper's search (different rules)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        dataset = args.dataset or read_recipe(args.run_dir).get("dataset")
        if dataset not in DATASETS:
            raise GenerateError(f"pass --dataset: {RunFolder(args.run_dir).recipe} does not name one")
        overrides = {k: getattr(args, k) for k in ("beam", "length_penalty", "no_repeat_ngram_size",
                                                   "repetition_penalty", "max_new_tokens", "min_length", "seq_len")
                     if getattr(args, k) is not None}
        if args.eos_token_ids:
            overrides["eos_token_ids"] = tuple(args.eos_token_ids)
        if args.batch_size is not None and args.batch_size < 1:
            raise ValueError("--batch-size must be >= 1")
        cfg = paper_decode_config(dataset, **overrides)
        generate(args.run_dir, dataset, args.split, args.data, args.adapter, args.base_model, cfg, limit=args.limit,
                 batch_size=args.batch_size, hf_generate=args.hf_generate, early_stop=not args.no_early_stop,
                 truncate=args.truncate_left, device=args.device, output=args.output, quiet=args.quiet,
                 lora_alpha=args.lora_alpha)
    except (InputFileError, GenerateError, PromptError, ModelLoadError, RunLockedError, ValueError, OSError) as exc:
        return cli_error(exc)
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
