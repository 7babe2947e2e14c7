"""Inference latency of one forward pass: the paper's Table 1 argument, measured on this machine.

Adapters add sequential modules that every token must pass through; LoRA merged into W is a plain GPT-2, so it
adds nothing. Timed here, at batch 1 and short sequences (the paper's online setting), on the gpt2-medium shape
with random weights (latency does not depend on the values): the base model, LoRA merged (what decoding runs),
LoRA unmerged (for contrast), Adapter^L, Adapter^H and prefix-layer (plain prefixes in the KV cache), each called
exactly as the beam search calls the prompt pass (input ids, attention mask, explicit position ids, LM head on
all positions). All variants share the base weights in memory.

Variants are timed round-robin (the order rotated every round), so a change of machine load hits all of them
alike; each variant's ratio is the median over rounds of its time divided by the base model's time in the same
round, with the inter-quartile range. "base (again)" times the base model a second time: its ratio is the noise
level. Usage (small counts run in a few minutes on 2 CPU cores)::

    python scripts/bench_latency.py [--card gpt2-medium] [--seq-lens 32 128] [--repeats 10] [--warmup 2]
                                    [--adapter-l-dim 6] [--adapter-h-dim 112] [--prefix-len 14] [--threads 1] [--json OUT]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from nlg.config import TrainConfig  # noqa: E402
from nlg.methods import get_method  # noqa: E402
from nlg.models import build_random  # noqa: E402


@dataclass
class Variant:
    name: str
    model: torch.nn.Module
    params: int | None  # the paper's count of the method's parameters, None for the base


def _share_weights(base: torch.nn.Module, private: tuple[str, ...] = ()) -> torch.nn.Module:
    """A structural copy of ``base`` that reuses its parameter tensors, except those whose names end in ``private``."""
    memo = {id(p): p for n, p in base.named_parameters() if not n.endswith(private)}
    return copy.deepcopy(base, memo)


def _randomise_trainable(model: torch.nn.Module, seed: int) -> None:
    """Non-degenerate method weights (zero-initialised up-projections or B would still cost the same)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)


def build_variants(card: str, adapter_l_dim: int, adapter_h_dim: int, prefix_len: int, lora_rank: int,
                   device: str = "cpu") -> list[Variant]:
    """The models to time, all on one set of base weights."""
    base = build_random(card, seed=0, device=device).eval()
    base.requires_grad_(False)
    variants = [Variant("base", base, None), Variant("base (again)", base, None)]
    specs = [  # label, method, size, decoding form?, seed of the method's weights (one LoRA for both forms)
        ("LoRA merged", "lora", {"rank": lora_rank, "lora_dropout": 0.0}, True, 0),
        ("LoRA unmerged", "lora", {"rank": lora_rank, "lora_dropout": 0.0}, False, 0),
        ("Adapter^L", "adapter-l", {"adapter_dim": adapter_l_dim}, True, 1),
        ("Adapter^H", "adapter-h", {"adapter_dim": adapter_h_dim}, True, 2),
        ("PreLayer", "prefix-layer", {"prefix_len": prefix_len}, True, 3),
    ]
    for label, method, kw, inference, seed in specs:
        cfg = TrainConfig(method=method, model=card, **kw)
        mod = get_method(method)
        # merging writes into W, so the merged LoRA variant gets its own copy of the fused qkv weights
        private = ("attn.c_attn.weight",) if method == "lora" and inference else ()
        model = mod.apply(_share_weights(base, private), cfg)
        _randomise_trainable(model, seed)
        if inference:
            model = mod.for_inference(model)
        model.requires_grad_(False)
        variants.append(Variant(label, model.eval(), mod.paper_param_count(cfg, model.config)))
    return variants


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.inference_mode()
def time_variants(variants: list[Variant], seq_len: int, batch: int, repeats: int, warmup: int,
                  device: str = "cpu", seed: int = 0) -> dict[str, list[float]]:
    """Seconds per forward for each variant, ``repeats`` rounds after ``warmup``, round-robin with rotation."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 50257, (batch, seq_len), generator=g).to(device)
    mask = torch.ones_like(ids)
    pos = torch.arange(seq_len, device=device).unsqueeze(0).expand(batch, -1)
    times: dict[str, list[float]] = {v.name: [] for v in variants}
    for r in range(warmup + repeats):
        shift = r % len(variants)
        for v in variants[shift:] + variants[:shift]:
            _sync(device)
            t0 = time.perf_counter()
            v.model(input_ids=ids, attention_mask=mask, position_ids=pos)
            _sync(device)
            if r >= warmup:
                times[v.name].append(time.perf_counter() - t0)
    return times


def summarise(times: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Per variant: median and best ms, the paired ratio to the base model (median and quartiles over rounds) and
    the ratio of best times (the least disturbed run of each; steadier on a shared machine)."""
    base = times["base"]
    out = {}
    for name, ts in times.items():
        ratios = sorted(t / b for t, b in zip(ts, base))
        q = statistics.quantiles(ratios, n=4) if len(ratios) >= 2 else [ratios[0]] * 3
        out[name] = {"median_ms": 1000 * statistics.median(ts), "best_ms": 1000 * min(ts),
                     "ratio": statistics.median(ratios), "ratio_q1": q[0], "ratio_q3": q[2],
                     "best_ratio": min(ts) / min(base)}
    return out


def _fmt_params(n: int | None) -> str:
    return "" if n is None else f"{n:,}"


def report(results: dict[int, dict[str, dict[str, float]]], variants: list[Variant], batch: int) -> str:
    lines = []
    params = {v.name: v.params for v in variants}
    for seq_len, summary in results.items():
        lines.append(f"batch {batch}, sequence length {seq_len}:")
        lines.append(f"  {'variant':<15} {'|Θ| (paper formula)':>20} {'median ms':>10} {'best ms':>9} "
                     f"{'paired ratio':>13} {'IQR':>13} {'best/best':>10}")
        for name, s in summary.items():
            lines.append(f"  {name:<15} {_fmt_params(params[name]):>20} {s['median_ms']:>10.1f} {s['best_ms']:>9.1f} "
                         f"{s['ratio']:>13.3f} {s['ratio_q1']:>6.3f}–{s['ratio_q3']:<6.3f} {s['best_ratio']:>10.3f}")
        noise = summary["base (again)"]
        lora = summary["LoRA merged"]
        spread = max(abs(noise["ratio_q1"] - 1), abs(noise["ratio_q3"] - 1), abs(noise["best_ratio"] - 1), 0.01)
        verdict = "within" if abs(lora["ratio"] - 1) <= spread and abs(lora["best_ratio"] - 1) <= spread else "NOT within"
        lines.append(f"  LoRA merged {lora['ratio']:.3f}x (best/best {lora['best_ratio']:.3f}x); noise (base timed "
                     f"against itself) 1.00 ± {spread:.3f}: {verdict} noise of 1.00")
    return "\n".join(lines)


def run(card: str = "gpt2-medium", seq_lens=(32, 128), batch: int = 1, repeats: int = 10, warmup: int = 2,
        adapter_l_dim: int = 6, adapter_h_dim: int = 112, prefix_len: int = 14, lora_rank: int = 4,
        device: str = "cpu", progress: bool = True) -> tuple[dict, list[Variant]]:
    """Build the variants once and time every sequence length; returns ({seq_len: summary}, variants)."""
    variants = build_variants(card, adapter_l_dim, adapter_h_dim, prefix_len, lora_rank, device)
    results = {}
    for seq_len in seq_lens:
        if progress:
            print(f"timing sequence length {seq_len} ({warmup} + {repeats} rounds of {len(variants)} variants)",
                  file=sys.stderr, flush=True)
        results[seq_len] = summarise(time_variants(variants, seq_len, batch, repeats, warmup, device))
    return results, variants


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python scripts/bench_latency.py", description=__doc__.split("\n")[0])
    p.add_argument("--card", default="gpt2-medium", help="model shape (random weights): tiny, gpt2, gpt2-medium, gpt2-large")
    p.add_argument("--seq-lens", type=int, nargs="+", default=[32, 128])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--adapter-l-dim", type=int, default=6, help="Adapter^L bottleneck (6: 0.37M on gpt2-medium)")
    p.add_argument("--adapter-h-dim", type=int, default=112, help="Adapter^H bottleneck (112: 11.06M on gpt2-medium)")
    p.add_argument("--prefix-len", type=int, default=14, help="PreLayer prefix length (14: 0.34M on gpt2-medium)")
    p.add_argument("--lora-rank", type=int, default=4)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: steadier on a shared machine; 0 = torch's choice)")
    p.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0 or args.batch < 1 or min(args.seq_lens) < 1:
        p.error("--repeats, --batch and --seq-lens must be >= 1 and --warmup >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    results, variants = run(args.card, args.seq_lens, args.batch, args.repeats, args.warmup, args.adapter_l_dim,
                            args.adapter_h_dim, args.prefix_len, args.lora_rank, args.device)
    print(f"{args.card} shape, random weights, {args.device}, {torch.get_num_threads()} threads, "
          f"{args.repeats} rounds after {args.warmup} warm-up")
    print(report(results, variants, args.batch))
    if args.json:
        from nlg.io_utils import write_json

        write_json(args.json, {"card": args.card, "batch": args.batch, "device": args.device,
                               "threads": torch.get_num_threads(), "repeats": args.repeats,
                               "params": {v.name: v.params for v in variants},
                               "results": {str(k): v for k, v in results.items()}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
