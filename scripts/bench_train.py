"""Training speed: this project's trainer vs transformers + peft (and the authors' code when a path is given).

Every variant trains the same real E2E batches (batch 8, drawn with the paper's seed) on the gpt2-medium shape with
the same random weights, LoRA r=4, alpha 32, dropout 0.1, fp32, label smoothing 0.1, each in its own process
(so peak memory is its own). Printed per variant: real (non-pad) tokens/s, peak resident memory (and the part
above the loaded model: for ours that includes the copies of the frozen weights pre-packed for MKL's GEMM,
nlg/mkl_prepack.py, which the trainer makes by default on the CPU in fp32), the loss of the first step (B = 0, so
every variant computes the base model's loss: it must agree) and the fraction of this machine's measured fp32 matmul peak that the *useful* FLOPs reach. Every
variant trains on the batches once untimed and is timed on a second pass over them (the steady state of a long
run; see ``_timed``).

Useful FLOPs of a batch are the same for every variant: the forward pass over the real tokens (linear layers,
causal attention, the LM head only at the positions the loss uses) plus the backward pass a LoRA update needs
(gradients with respect to activations of every matmul, attention's four backward matmuls, the LoRA weights'
gradients; no gradients for frozen weights). Work on padding or on LM-head rows the loss ignores is not useful.

    python scripts/bench_train.py --steps 3 [--authors-path /path/to/microsoft/LoRA] [--precision bf16]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from nlg.batching import Example, EpochPlan, collate, read_encoded  # noqa: E402

SHARED_E2E = REPO.parent / "shared" / "data" / "e2e"
CARD = "gpt2-medium"
RANK, ALPHA, DROPOUT, LABEL_SMOOTH, LR = 4, 32.0, 0.1, 0.1, 2e-4


# ---------------------------------------------------------------- data
def e2e_examples(tmp: Path, limit: int = 2000) -> tuple[list[Example], str]:
    """E2E examples: data/e2e/train.jsonl when prepared, else the shared dev split, else the synthetic sample."""
    prepared = REPO / "data" / "e2e" / "train.jsonl"
    if prepared.is_file():
        return read_encoded(prepared, 512), str(prepared)
    from data.e2e.prepare import prepare

    if (SHARED_E2E / "valid.txt").is_file():
        prepare(raw_dir=SHARED_E2E, out_dir=tmp, splits=("valid",), limit=limit)
        return read_encoded(tmp / "valid.jsonl", 512), f"{SHARED_E2E / 'valid.txt'} (first {limit} records)"
    from data.synthetic import write_synthetic_e2e

    write_synthetic_e2e(tmp / "raw", seed=0)
    prepare(raw_dir=tmp / "raw", out_dir=tmp, splits=("train",))
    return read_encoded(tmp / "train.jsonl", 512), "the synthetic E2E sample (no real data found)"


def draw_batches(examples: list[Example], n: int, batch_size: int = 8, seed: int = 110) -> list[list[Example]]:
    """The first ``n`` batches of epoch 1 in the authors' order."""
    import random

    plan = EpochPlan(examples, batch_size, seed, 1, 0, 1, random.Random(911))
    return [[examples[i] for i in b] for b in plan.batches[:n]]


# ---------------------------------------------------------------- FLOPs
def useful_flops(batch: list[Example], n_layer: int, d: int, vocab: int, r: int = RANK) -> float:
    """Forward + the backward a LoRA update needs, over real tokens only (see the module docstring)."""
    tokens = sum(len(e.input) for e in batch)
    loss_pos = sum(e.n_loss for e in batch)
    linear = 24 * d * d * tokens * n_layer  # c_attn 6d², attn c_proj 2d², c_fc 8d², mlp c_proj 8d² (x2 FLOP/MAC)
    attn = sum(2 * d * len(e.input) * (len(e.input) + 1) for e in batch) * n_layer  # QK^T and PV, causal half
    lora = 2 * 2 * (d * r + r * d) * tokens * n_layer  # q and v: x A^T then (.) B^T
    head = 2 * d * vocab * loss_pos
    forward = linear + attn + lora + head
    backward = linear + 2 * attn + 2 * lora + head  # activation grads; attention has 4 backward matmuls; LoRA dW
    return float(forward + backward)


def matmul_peak(seconds: float = 3.0) -> float:
    """Best fp32 matmul rate (FLOP/s) over a few square and GPT-2-like shapes, all threads."""
    best = 0.0
    shapes = [(2048, 2048, 2048), (512, 1024, 4096), (512, 4096, 1024), (1024, 1024, 3072)]
    per = seconds / len(shapes)
    for m, k, n in shapes:
        a, b = torch.randn(m, k), torch.randn(k, n)
        out = torch.empty(m, n)
        torch.mm(a, b, out=out)
        t_end = time.perf_counter() + per
        while time.perf_counter() < t_end:
            t0 = time.perf_counter()
            torch.mm(a, b, out=out)
            best = max(best, 2 * m * k * n / (time.perf_counter() - t0))
    return best


# ---------------------------------------------------------------- memory
def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ---------------------------------------------------------------- variants (each runs in its own process)
def run_ours(batches, precision: str, workdir: Path) -> dict:
    """This project's trainer, step for step as ``nlg.train`` runs it (Trainer.micro_step + Trainer.update)."""
    from nlg.config import paper_train_config
    from nlg.io_utils import write_jsonl
    from nlg.train import Trainer

    data = workdir / "bench.jsonl"
    write_jsonl(data, [{"context": list(e.input[:1]), "completion": list(e.input[1:])} for e in batches[0]])
    cfg = paper_train_config("e2e", model="random:" + CARD, train_data=str(data), valid_data=str(data),
                             out_dir=str(workdir / "run"), precision=precision, max_steps=10**6, cpu_prepack=False)
    import nlg.train_build as train_mod  # where the trainer loads its base model
    from nlg.models import build_random

    real_load = train_mod.load_model
    train_mod.load_model = lambda name, **kw: build_random(CARD, seed=0)  # random weights of the real shape
    try:
        trainer = Trainer(cfg, device="cpu", quiet=True)
    finally:
        train_mod.load_model = real_load
    trainer.model.train()  # as Trainer.run does: LoRA dropout active, like the other variants
    base = rss_bytes()
    # what Trainer.__init__ does by default (--cpu-prepack), done after the base measurement so that "above
    # model" counts the packed copies
    from nlg.kernels.mkl_prepack import pack_frozen

    trainer.kernels.packs = pack_frozen(trainer.model)

    def step(batch):
        b = collate(batch)
        loss = trainer.micro_step(b)
        trainer.update()
        return float(loss)

    return _timed(step, batches, base)


def run_peft(batches, precision: str, workdir: Path) -> dict:
    """The usual transformers + peft loop: pad to the longest row, attention mask, full logits, -100 labels."""
    import torch.nn.functional as F
    from peft import LoraConfig, get_peft_model
    from transformers import get_linear_schedule_with_warmup

    from nlg.models import build_random

    model = build_random(CARD, seed=0)
    model = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=DROPOUT,
                                             target_modules=["c_attn"], fan_in_fan_out=True, bias="none"))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR, betas=(0.9, 0.999),
                            eps=1e-6, weight_decay=0.01)
    sched = get_linear_schedule_with_warmup(opt, 500, 26290)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    base = rss_bytes()

    def step(batch):
        b = collate(batch)
        attn = torch.zeros_like(b.input_ids)
        for row, e in enumerate(batch):
            attn[row, : len(e.input)] = 1
        labels = torch.full_like(b.input_ids, -100)
        labels[:, 1:] = torch.where(b.mask[:, :-1], b.input_ids[:, 1:], torch.full_like(b.input_ids[:, 1:], -100))
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            logits = model(input_ids=b.input_ids, attention_mask=attn).logits
        loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1),
                               ignore_index=-100, label_smoothing=LABEL_SMOOTH)
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach().item()

    return _timed(step, batches, base)


def run_authors(batches, precision: str, workdir: Path, authors_path: Path) -> dict:
    """The authors' GPT2LMModel + loralib + AdamW + schedule, rows padded to seq_len 512 as their FT_Dataset does."""
    src = authors_path / "examples" / "NLG" / "src"
    if not src.is_dir():
        raise SystemExit(f"--authors-path {authors_path}: no examples/NLG/src in it (a clone of microsoft/LoRA?)")
    sys.path[:0] = [str(src), str(authors_path)]
    import loralib
    from model import GPT2Config, GPT2LMModel
    from optimizer import AdamW as TheirAdamW, get_linear_schedule_with_warmup

    from nlg.models import build_random

    torch.manual_seed(110)
    from nlg.models import CARDS

    c = CARDS[CARD]
    cfg = GPT2Config(n_embd=c.n_embd, n_layer=c.n_layer, n_head=c.n_head, lora_attn_dim=RANK, lora_attn_alpha=int(ALPHA),
                     lora_dropout=DROPOUT)
    model = GPT2LMModel(cfg)
    model.load_weight(build_random(CARD, seed=0).transformer.state_dict())
    loralib.mark_only_lora_as_trainable(model)
    model.train()
    opt = TheirAdamW([{"params": list(model.parameters())}], lr=LR, betas=(0.9, 0.999), eps=1e-6,
                     weight_decay=0.01, correct_bias=True)
    sched = get_linear_schedule_with_warmup(opt, 500, 26290)
    base = rss_bytes()

    def step(batch):
        b = collate(batch, pad_to=512)  # == their FT_Dataset rows (tests/test_train_parity.py)
        _, loss = model(b.input_ids, lm_labels=b.targets, lm_mask=b.mask.float(), label_smooth=LABEL_SMOOTH)
        loss = loss.mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        sched.step()
        return loss.detach().item()

    return _timed(step, batches, base)


def _timed(step, batches, base_rss: int) -> dict:
    """Train on every batch once untimed, then time a second pass over the same batches.

    The untimed pass brings the process to the steady state of a long run: the allocator's heap has reached its
    high-water mark (in a fresh process a batch longer than any before it pays ~0.5 s of first-touch page faults
    on this VM) and every lazily built buffer exists. The matmul peak is measured in the same process just before
    and after (shared machines drift: the fraction of peak is taken against what this process could get then).
    """
    peak = matmul_peak(1.5)
    warm_losses = [step(batch) for batch in batches]
    times = []
    for batch in batches:
        t0 = time.perf_counter()
        step(batch)
        times.append(time.perf_counter() - t0)
    peak = max(peak, matmul_peak(1.5))
    return {"times": times, "warm_losses": warm_losses, "base_rss": base_rss,
            "peak_rss": peak_rss_bytes(), "peak": peak}


def child(args) -> None:
    global CARD
    torch.manual_seed(0)
    spec = json.loads(Path(args.child).read_text())
    CARD = spec["card"]
    batches = [[Example(tuple(e[0]), tuple(e[1]), tuple(e[2])) for e in b] for b in spec["batches"]]
    workdir = Path(spec["workdir"])
    if args.variant == "ours":
        out = run_ours(batches, spec["precision"], workdir)
    elif args.variant == "peft":
        out = run_peft(batches, spec["precision"], workdir)
    else:
        out = run_authors(batches, "fp32", workdir, Path(spec["authors_path"]))
    Path(spec["result"]).write_text(json.dumps(out))


# ---------------------------------------------------------------- driver
def main(argv=None) -> int:
    global CARD
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant (each batch is trained on once untimed first)")
    p.add_argument("--rounds", type=int, default=2,
                   help="run every variant this many times, alternating, and keep each step's best time")
    p.add_argument("--authors-rounds", type=int, default=1, help="rounds for the authors' (slow) code")
    p.add_argument("--authors-path", type=Path, default=None, help="a clone of github.com/microsoft/LoRA")
    p.add_argument("--authors-steps", type=int, default=None, help="steps for the authors' code (default --steps)")
    p.add_argument("--authors-batch", type=int, default=8,
                   help="rows per step for the authors' code (their 512-token rows take ~2 GiB of activations "
                        "each on gpt2-medium; lower it on a small machine: tokens/s is per real token either way)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                   help="autocast for ours and peft (the authors' loop always runs fp32)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--card", default=CARD, help="model shape (random weights); the paper's is gpt2-medium")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        child(args)
        return 0

    from nlg.models import card_config

    CARD = args.card
    mc = card_config(CARD)
    with tempfile.TemporaryDirectory(prefix="bench_train.") as tmp:
        tmp = Path(tmp)
        examples, source = e2e_examples(tmp)
        n = args.steps
        batches = draw_batches(examples, max(n, args.authors_steps or args.steps))
        print(f"data: {source}; batch 8; {CARD} shape, random weights; LoRA r={RANK} q,v; "
              f"{args.precision}; threads {args.threads or torch.get_num_threads()}", flush=True)
        peak = matmul_peak()
        print(f"measured fp32 matmul peak: {peak / 1e9:.1f} GFLOP/s (each variant re-measures its own)", flush=True)
        variants = ["ours", "peft"] + (["authors"] if args.authors_path else [])
        results = {}
        raws: dict[str, list[dict]] = {v: [] for v in variants}
        uses = {}
        for rnd in range(args.rounds):
            for v in variants:
                if v == "authors" and rnd >= args.authors_rounds:
                    continue
                steps = (args.authors_steps or args.steps) if v == "authors" else n
                use = batches[:steps]
                if v == "authors":
                    use = [b[: args.authors_batch] for b in use]
                uses[v] = use
                spec = {"batches": [[[list(e.input), list(e.target), list(e.mask)] for e in b] for b in use],
                        "workdir": str(tmp / f"{v}{rnd}"), "result": str(tmp / f"{v}{rnd}.json"),
                        "precision": args.precision, "card": CARD,
                        "authors_path": str(args.authors_path) if args.authors_path else None}
                (tmp / f"{v}{rnd}").mkdir()
                (tmp / f"{v}{rnd}.spec.json").write_text(json.dumps(spec))
                cmd = [sys.executable, __file__, "--variant", v, "--child", str(tmp / f"{v}{rnd}.spec.json")]
                if args.threads:
                    cmd += ["--threads", str(args.threads)]
                print(f"round {rnd + 1}: running {v} ({steps} steps) ...", flush=True)
                subprocess.run(cmd, check=True, cwd=REPO)
                raws[v].append(json.loads((tmp / f"{v}{rnd}.json").read_text()))
        for v in variants:
            runs, use = raws[v], uses[v]
            # best of the rounds for every step (the same batch each round), like timeit: load from other
            # processes on a shared machine only ever slows a step down
            secs = sum(min(r["times"][i] for r in runs) for i in range(len(use)))
            peak_v = max(r["peak"] for r in runs)
            tokens = sum(len(e.input) for b in use for e in b)
            flops = sum(useful_flops(b, mc.n_layer, mc.n_embd, mc.vocab_size) for b in use)
            results[v] = {
                "tokens_per_s": tokens / secs,
                "s_per_step": secs / len(use),
                "useful_gflops": flops / secs / 1e9,
                "peak_gflops": peak_v / 1e9,
                "peak_fraction": flops / secs / peak_v,
                "peak_rss_gib": max(r["peak_rss"] for r in runs) / 2**30,
                "above_model_gib": max(r["peak_rss"] - r["base_rss"] for r in runs) / 2**30,
                "first_loss": runs[0]["warm_losses"][0],
                "losses": runs[0]["warm_losses"],
                "rounds": len(runs),
            }
    print()
    print(f"{'variant':8} {'real tok/s':>10} {'s/step':>8} {'useful GFLOP/s':>15} {'peak':>6} {'of peak':>8} "
          f"{'peak RSS GiB':>12} {'above model':>11} {'loss step 1':>12}")
    for v, r in results.items():
        print(f"{v:8} {r['tokens_per_s']:10.1f} {r['s_per_step']:8.2f} {r['useful_gflops']:15.1f} {r['peak_gflops']:6.1f} "
              f"{r['peak_fraction']:8.1%} {r['peak_rss_gib']:12.2f} {r['above_model_gib']:11.2f} {r['first_loss']:12.6f}")
    ours = results["ours"]
    print()
    for v in variants[1:]:
        r = results[v]
        print(f"ours / {v}: {ours['tokens_per_s'] / r['tokens_per_s']:.2f}x real tokens/s, "
              f"peak memory {ours['peak_rss_gib'] / r['peak_rss_gib']:.2f}x ({ours['above_model_gib']:.2f} vs "
              f"{r['above_model_gib']:.2f} GiB above the model), " + (
                  f"first-step loss difference {abs(ours['first_loss'] - r['first_loss']):.2e}"
                  if v != "authors" or args.authors_batch >= 8 else
                  f"(authors ran {args.authors_batch} of the 8 rows per step: loss and memory not comparable)"))
    print(f"ours: useful FLOPs at {ours['peak_fraction']:.1%} of the measured fp32 matmul peak")
    if args.json:
        args.json.write_text(json.dumps({"peak_flops": peak, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
