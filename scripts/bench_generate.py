"""Beam-search speed: this project's search vs transformers' ``generate(num_beams=10)`` vs the authors' ``gpt2_beam.py``.

Seconds per prompt on a randomly initialised model of a real shape (default gpt2-medium) for distinct E2E test
contexts, each implementation at the batch sizes given (its best is used for the ratios). Outputs are checked:
ours must equal the authors' token for token (when their clone is given) and must depend neither on the batch size
nor on the cache (`--cache shared-prefix plain` times both, interleaved).
A random model rarely ends a hypothesis, so every prompt runs all steps: early stopping does not help here, this
measures the search itself.

    python scripts/bench_generate.py --prompts 50 --batch-sizes 1 8 16 --hf-batch-sizes 1 8 \\
        --authors-ref ../ref/microsoft+LoRA --authors-batch-sizes 1
    python scripts/bench_generate.py --prompts 3 --max-new-tokens 8     # a quick run
    python scripts/bench_generate.py --prompts 16 --batch-sizes 16 --hf-batch-sizes --cache shared-prefix plain
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from nlg.beam import SearchStats, beam_search  # noqa: E402
from nlg.beam_hf import hf_beam_search  # noqa: E402
from nlg.config import paper_decode_config  # noqa: E402
from nlg.io_utils import iter_jsonl  # noqa: E402
from nlg.models import build_random  # noqa: E402
from nlg.tokenizer import EOS_ID, encode  # noqa: E402


def e2e_prompts(n: int, data: Path | None) -> tuple[list[list[int]], str]:
    """The first ``n`` distinct E2E test contexts (encoded split if present, else the shared raw test.txt)."""
    seen: dict[tuple[int, ...], None] = {}
    candidates = [data] if data else [REPO / "data" / "e2e" / "test.jsonl"]
    for path in candidates:
        if path and path.is_file():
            for _, rec in iter_jsonl(path):
                seen.setdefault(tuple(rec["context"]), None)
                if len(seen) == n:
                    break
            return [list(p) for p in seen], str(path)
    raw = REPO.parent / "shared" / "data" / "e2e" / "test.txt"
    if not raw.is_file():
        raise SystemExit("no E2E test data: prepare data/e2e/ (python -m data.e2e.prepare) or pass --data")
    for line in raw.read_text(encoding="utf-8").splitlines():
        context = line.strip().split("||")[0]
        seen.setdefault(tuple(encode(context) + [EOS_ID]), None)
        if len(seen) == n:
            break
    return [list(p) for p in seen], str(raw)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gpt2-medium", help="model card to build with random weights")
    ap.add_argument("--prompts", type=int, default=50)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 16])
    ap.add_argument("--cache", nargs="+", choices=["shared-prefix", "plain"], default=["shared-prefix"],
                    help="our search's cache (nlg.beam.CACHES); several are timed side by side, the first is 'ours'")
    ap.add_argument("--hf-batch-sizes", type=int, nargs="*", default=[1, 8])
    ap.add_argument("--authors-ref", type=Path, help="a clone of github.com/microsoft/LoRA to time their gpt2_beam.py")
    ap.add_argument("--authors-batch-sizes", type=int, nargs="+", default=[1])
    ap.add_argument("--authors-prompts", type=int, help="time the authors' code on the first N prompts only")
    ap.add_argument("--data", type=Path, help="encoded E2E split (default data/e2e/test.jsonl)")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads")
    ap.add_argument("--repeats", type=int, default=1, help="time ours and transformers N times, interleaved; best counts")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    prompts, source = e2e_prompts(args.prompts, args.data)
    cfg = paper_decode_config("e2e", max_new_tokens=args.max_new_tokens)
    model = build_random(args.model, seed=0).eval()
    print(f"{args.model} (random weights), {len(prompts)} distinct E2E test prompts from {source}, beam {cfg.beam}, "
          f"{cfg.max_new_tokens} new tokens, {torch.get_num_threads()} threads", flush=True)
    rows, outputs = [], {}
    label = {c: "ours" if i == 0 else f"ours-{c}" for i, c in enumerate(args.cache)}  # the first cache is "ours"
    runs = [(label[c], c, b) for b in args.batch_sizes for c in args.cache]
    runs += [("transformers", None, b) for b in args.hf_batch_sizes]
    times: dict[tuple[str, int], list[float]] = {(impl, b): [] for impl, _, b in runs}
    for rep in range(args.repeats):  # interleaved, best of N: the machine may be shared
        for impl, cache, b in runs:
            if cache is not None:
                stats = SearchStats()
                out, sec = timed(lambda: beam_search(model, prompts, cfg, batch_size=b, stats=stats, cache=cache))
            else:
                out, sec = timed(lambda: hf_beam_search(model, prompts, cfg, batch_size=b))
            outputs.setdefault("ours", out)
            times[(impl, b)].append(sec)
            same = out == outputs["ours"]
            if cache is not None and not same:
                raise SystemExit(f"{impl} at batch {b} differs from ours at batch {args.batch_sizes[0]}")
            print(f"[{rep + 1}/{args.repeats}] {impl:18s} batch {b:3d}: {sec / len(prompts):8.3f} s/prompt"
                  + ("" if cache else f"  (equal to ours: {same}; not expected, different rules)"), flush=True)
    for (impl, b), secs in times.items():
        rows.append({"impl": impl, "batch": b, "prompts": len(prompts), "s_per_prompt": min(secs) / len(prompts),
                     "runs_s": secs})
    if args.authors_ref:
        from scripts.authors_beam import authors_hypothesis, authors_modules, run_authors_beam, their_twin

        modules = authors_modules(args.authors_ref)
        net = their_twin(modules[1], model)
        subset = prompts[: args.authors_prompts or len(prompts)]
        for b in args.authors_batch_sizes:
            raw, sec = timed(lambda: run_authors_beam(modules, net, subset, cfg, batch_size=b))
            hyps = [authors_hypothesis(r, cfg.eos_token_ids) for r in raw]
            equal = hyps == outputs["ours"][: len(subset)]
            rows.append({"impl": "authors", "batch": b, "prompts": len(subset), "s_per_prompt": sec / len(subset),
                         "runs_s": [sec], "same_as_ours": equal})
            print(f"authors     batch {b:3d}: {sec / len(subset):8.3f} s/prompt  (equal to ours: {equal})", flush=True)

    best = {}
    for r in rows:
        if r["impl"] not in best or r["s_per_prompt"] < best[r["impl"]]["s_per_prompt"]:
            best[r["impl"]] = r
    ours = best["ours"]["s_per_prompt"]
    print("best: " + ", ".join(f"{k} {v['s_per_prompt']:.3f} s/prompt at batch {v['batch']}" for k, v in best.items()))
    ratios = {f"{k}/ours": v["s_per_prompt"] / ours for k, v in best.items() if k != "ours"}
    for k, v in ratios.items():
        print(f"speed-up over {k.split('/')[0]}: {v:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "best": best, "ratios": ratios, "model": args.model,
                                         "max_new_tokens": cfg.max_new_tokens, "threads": torch.get_num_threads()},
                                        indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
