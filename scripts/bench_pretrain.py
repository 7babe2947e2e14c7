"""Pretraining speed: this project's trainer (nlg.train, as nlg.pretrain drives it) vs a plain transformers loop.

Both train the same model (``nlg.models.load_model("random:<card>")``: same config, same initial weights) on the
same batches (the pretraining corpus's blocks, ``nlg.pretrain.write_corpus``, in the trainer's epoch-1 order,
batch and block size from ``PretrainConfig`` unless flags say otherwise), in the same precision (``--precision``:
bf16 autocast or fp32) and with the same optimizer settings (AdamW with the recipe's lr, betas, eps and weight
decay, the linear warm-up schedule, gradient clipping):

- ``plain``: ``GPT2LMHeadModel(input_ids, labels=...)``, ``torch.optim.AdamW``, transformers'
  ``get_linear_schedule_with_warmup``, ``clip_grad_norm_``, ``loss.backward(); opt.step(); sched.step();
  zero_grad`` — what a transformers user writes;
- ``ours``: a ``nlg.train.Trainer`` built from ``PretrainConfig(...).train_config(...)``, one step being exactly
  what ``Trainer.run``'s loop does per update: ``collate`` + ``Trainer.micro_step`` + ``Trainer.update`` (public:
  ``Trainer.run`` cannot be interleaved with another loop, and it also validates and checkpoints);
  the trainer's CPU kernels include ``nlg.kernels.equal_length_attention`` (one batched SDPA call when every block has
  the same length) and, under bf16 autocast, ``nlg.kernels.head_loss_autocast`` (the fused LM head + loss).

All variants run in one process, interleaved: one untimed warm-up step each, then ``--rounds`` rounds in which
each variant in turn times ``--steps`` steps (A B C A B C ...), every variant stepping through the same batches
in the same order. Reported per variant: real tokens/s (loss tokens, i.e. predicted next tokens, per second of
the steps' wall time; best round and median step), the ratio to ``plain``, CPU use of the steps (process CPU
seconds / (wall seconds x threads): well under 1 means other jobs took the cores), the loss of the first step
(same weights, same batch: must agree), the memory its first step left resident (gradients, optimizer state,
persistent buffers) and the peak a step adds above the resident size before it (Linux VmHWM, reset per round
through /proc/self/clear_refs). ``--profile`` adds a torch.profiler table of one step per variant, its phases
(forward + loss, backward, optimizer) and timings of the LM head + loss and of attention alone.

    python scripts/bench_pretrain.py [--precision bf16|fp32|both] [--steps 3] [--rounds 2] [--threads 2]
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import random
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from nlg.batching import PAD_RNG_SEED, EpochPlan, collate  # noqa: E402
from nlg.config import PretrainConfig  # noqa: E402
from nlg.cpu_info import cpuinfo_field  # noqa: E402
from nlg.pretrain import CORPUS_KINDS  # noqa: E402
from nlg.train_build import autocast  # noqa: E402

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
VARIANTS = ("plain", "ours")


# ---------------------------------------------------------------- machine and memory
def cpu_model() -> str:
    return cpuinfo_field("model name") or platform.processor() or "unknown CPU"


def cpu_flags() -> list[str]:
    have = set((cpuinfo_field("flags") or "").split())
    return [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in have]


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_mib() -> float | None:
    kib = _status_kib("VmRSS")
    return kib / 1024 if kib is not None else None


def reset_peak() -> bool:
    """Reset VmHWM (the peak resident size) to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_mib() -> float | None:
    kib = _status_kib("VmHWM")
    return kib / 1024 if kib is not None else None


# ---------------------------------------------------------------- data
def build_corpus(cfg: PretrainConfig, data_dir: Path | None, folder: Path) -> tuple[Path, Path, dict]:
    """The pretraining blocks exactly as nlg.pretrain writes them (train.jsonl / heldout.jsonl, corpus.json)."""
    from nlg.pretrain import load_corpus, write_corpus

    info = write_corpus(load_corpus(cfg, data_dir), cfg, folder)
    return folder / "train.jsonl", folder / "heldout.jsonl", info


def plain_labels(batch) -> torch.Tensor:
    """transformers' ``labels`` (it shifts them itself) giving the trainer's loss positions: label j counts iff the
    trainer's mask is on at position j - 1 (all 127 next tokens of a 128-token pretraining block)."""
    labels = torch.full_like(batch.input_ids, -100)
    labels[:, 1:] = torch.where(batch.mask[:, :-1], batch.input_ids[:, 1:], torch.full_like(batch.input_ids[:, 1:], -100))
    return labels


# ---------------------------------------------------------------- variants
class Plain:
    """The usual transformers loop on the same model, batches, precision and optimizer settings."""

    name = "plain"

    def __init__(self, tcfg, total_steps: int):
        from transformers import get_linear_schedule_with_warmup

        from nlg.models import load_model

        self.cfg = tcfg
        self.model = load_model(tcfg.model)
        self.model.requires_grad_(True)
        self.model.train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=tcfg.lr, betas=(tcfg.adam_beta1, tcfg.adam_beta2),
                                     eps=tcfg.adam_eps, weight_decay=tcfg.weight_decay)
        self.sched = get_linear_schedule_with_warmup(self.opt, tcfg.warmup_steps, total_steps)
        self.dtype = PRECISIONS[tcfg.precision]

    def forward_loss(self, examples):
        b = collate(examples)
        padded = bool((b.lengths < b.input_ids.shape[1]).any())
        attn = (torch.arange(b.input_ids.shape[1]).unsqueeze(0) < b.lengths.unsqueeze(1)).long() if padded else None
        with torch.autocast("cpu", dtype=self.dtype or torch.bfloat16, enabled=self.dtype is not None):
            return self.model(input_ids=b.input_ids, attention_mask=attn, labels=plain_labels(b)).loss

    def update(self):
        if self.cfg.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.clip)
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)

    def step(self, examples) -> float:
        loss = self.forward_loss(examples)
        loss.backward()
        self.update()
        return float(loss.detach())

    def context(self):
        return contextlib.nullcontext()


class Ours:
    """nlg.train.Trainer as nlg.pretrain builds it; a step is what Trainer.run's loop does per update (grad_acc 1)."""

    name = "ours"

    def __init__(self, tcfg, total_steps: int, run_dir: Path):
        from nlg.train import Trainer

        self.trainer = Trainer(dataclasses.replace(tcfg, out_dir=str(run_dir), max_steps=total_steps),
                               device="cpu", quiet=True, overwrite=True)
        self.trainer.model.train()  # as Trainer.run does
        self.model = self.trainer.model

    def context(self):
        return contextlib.nullcontext()

    def step(self, examples) -> float:
        tr = self.trainer
        loss = tr.micro_step(collate(examples))
        tr.update()
        tr.progress.step += 1
        tr.progress.micro += 1
        return float(loss)

    def forward_loss(self, examples):  # profiling only: micro_step's forward, without its backward
        tr = self.trainer
        b = collate(examples).to(tr.dist.device)
        with autocast(tr.cfg, tr.dist.device):
            return tr.loss_module(b.input_ids, b.position_ids, b.targets, b.mask, b.lengths, tr.cfg.label_smooth)

    def update(self):
        self.trainer.update()
        self.trainer.progress.step += 1


# ---------------------------------------------------------------- measuring
def measure(variants, batches, steps: int, rounds: int, threads: int) -> dict:
    """Warm-up step each, then ``rounds`` x (each variant: ``steps`` timed steps), interleaved."""
    res = {v.name: {"times": [], "cpu": [], "losses": [], "round_s": [], "step_peak_mib": [], "tokens": 0}
           for v in variants}
    for v in variants:  # warm-up: first-touch of the allocator's heap, lazily built buffers, MKL/oneDNN kernels
        before = rss_mib()
        res[v.name]["first_loss"] = v.step(batches[0])
        # what the variant keeps after its first step: gradients, optimizer state, persistent buffers
        res[v.name]["kept_mib"] = (rss_mib() or 0) - (before or 0)
    for r in range(rounds):
        use = batches[1 + r * steps: 1 + (r + 1) * steps]
        for v in variants:
            out = res[v.name]
            base = rss_mib()
            can_peak = reset_peak()
            t_round = 0.0
            for examples in use:
                c0, t0 = time.process_time(), time.perf_counter()
                out["losses"].append(v.step(examples))
                dt = time.perf_counter() - t0
                out["times"].append(dt)
                out["cpu"].append((time.process_time() - c0) / (dt * threads))
                t_round += dt
                if r == 0:
                    out["tokens"] += sum(e.n_loss for e in examples)
            out["round_s"].append(t_round)
            if can_peak and base is not None:
                out["step_peak_mib"].append(peak_mib() - base)
            print(f"  round {r + 1}/{rounds} {v.name:10} {t_round / len(use):6.2f} s/step "
                  f"({', '.join(f'{t:.2f}' for t in out['times'][-len(use):])})", flush=True)
    for name, out in res.items():
        n = steps
        out["tok_per_s_best_round"] = out["tokens"] / min(out["round_s"])
        out["tok_per_s_median_step"] = out["tokens"] / n / statistics.median(out["times"])
        out["s_per_step_median"] = statistics.median(out["times"])
        out["cpu_use"] = statistics.median(out["cpu"])
        out["step_peak_mib"] = max(out["step_peak_mib"]) if out["step_peak_mib"] else None
    return res


def _best_of(fn, repeats: int = 2) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def profile(variants, examples, prec: str, top: int) -> dict:
    """torch.profiler's top ops for one step of each variant, and component timings (best of 2)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from nlg.kernels.equal_length_attention import batched_causal_attention
    from nlg.kernels.head_loss import LogitsBuffer
    from nlg.kernels.loss import fast_masked_lm_loss as masked_lm_loss
    from nlg.kernels.varlen_attention import varlen_causal_attention

    out = {}
    for v in variants:
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            v.step(examples)
        print(f"\n--- torch.profiler, one {prec} step of {v.name} (self CPU time) ---")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top))
        phase = {}
        loss_holder = {}

        def fwd():
            with v.context():
                loss_holder["loss"] = v.forward_loss(examples)

        def fwd_bwd():
            fwd()
            with v.context():
                loss_holder["loss"].backward()

        phase["forward+loss"] = _best_of(fwd)
        phase["forward+loss+backward"] = _best_of(fwd_bwd)
        t0 = time.perf_counter()
        v.update()
        phase["optimizer (clip+step+zero_grad)"] = time.perf_counter() - t0
        out[v.name] = phase
    # components on this batch's shapes, outside the models
    b = collate(examples)
    model = variants[0].model
    c = model.config
    m = int(b.mask.sum())
    dtype = PRECISIONS[prec]
    ac = (lambda: torch.autocast("cpu", dtype=dtype)) if dtype is not None else contextlib.nullcontext
    hidden = torch.randn(m, c.n_embd)
    weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    targets = b.targets[b.mask]
    head = torch.nn.Linear(c.n_embd, c.vocab_size, bias=False)
    head.weight = weight
    buf = LogitsBuffer()

    def head_plain():
        h = hidden.clone().requires_grad_()
        with ac():
            loss = F.cross_entropy(head(h).float(), targets)  # transformers' ForCausalLMLoss: upcast, mean
        loss.backward()

    def head_ours():
        h = hidden.clone().requires_grad_()
        with ac():
            loss = masked_lm_loss(h, head, targets, torch.ones_like(targets, dtype=torch.bool), 0.0, buf)
        loss.backward()

    n, length = b.input_ids.numel(), b.input_ids.shape[1]
    bounds = tuple((i * length, (i + 1) * length) for i in range(b.input_ids.shape[0]))
    heads, dh = c.n_head, c.n_embd // c.n_head
    qkv0 = torch.randn(n, 3 * c.n_embd, dtype=dtype or torch.float32)
    go = torch.randn(n, c.n_embd, dtype=dtype or torch.float32)

    def attn(fn):
        def run():
            q = qkv0.clone().requires_grad_()
            fn(q).backward(go)
        return run

    comp = {
        f"LM head + loss fwd+bwd ({m} rows x {c.vocab_size}): plain (autograd, transformers' loss)": _best_of(head_plain),
        f"LM head + loss fwd+bwd: ours (nlg.kernels.loss: {'nlg.kernels.head_loss' if dtype is None else 'nlg.kernels.head_loss_autocast'})":
            _best_of(head_ours),
        f"attention fwd+bwd x {c.n_layer} layers: per sequence (nlg.kernels.varlen_attention, mixed lengths)":
            c.n_layer * _best_of(attn(lambda q: varlen_causal_attention(q, bounds, heads, dh ** -0.5))),
        f"attention fwd+bwd x {c.n_layer} layers: batched SDPA (plain; ours on equal lengths)":
            c.n_layer * _best_of(attn(lambda q: batched_causal_attention(q, length, heads, dh ** -0.5))),
    }
    print(f"\n--- {prec}: phases of one step (s, best of 2) ---")
    for name, phase in out.items():
        print(f"{name:10} " + ", ".join(f"{k} {t:.2f}" for k, t in phase.items()))
    print(f"--- {prec}: components alone on this batch's shapes (s, best of 2) ---")
    for k, t in comp.items():
        print(f"{t:7.2f}  {k}")
    return {"phases": out, "components": comp}


# ---------------------------------------------------------------- driver
def run_precision(prec: str, args, train: Path, held: Path, tmp: Path) -> dict:
    cfg = PretrainConfig(card=args.card, block_size=args.block_size or PretrainConfig.block_size,
                         batch_size=args.batch_size or PretrainConfig.batch_size, precision=prec)
    total = 1 + args.rounds * args.steps
    tcfg = dataclasses.replace(cfg.train_config(str(train), str(held), str(tmp / f"run-{prec}"), resume=False),
                               max_steps=total)
    variants = [Plain(tcfg, total) if name == "plain" else Ours(tcfg, total, tmp / f"run-{prec}-{name}")
                for name in args.variants]
    # the trainer's epoch-1 batches (EpochPlan with the recipe's seed and the authors' pad stream)
    examples = next((v.trainer.train_examples for v in variants if isinstance(v, Ours)), None)
    if examples is None:
        from nlg.batching import read_encoded
        examples = read_encoded(train, tcfg.seq_len)
    plan = EpochPlan(examples, tcfg.batch_size, tcfg.seed, 1, 0, 1, random.Random(PAD_RNG_SEED))
    if len(plan) < total:
        raise SystemExit(f"the corpus gives {len(plan)} batches, the benchmark needs {total}")
    batches = [[examples[i] for i in idx] for idx in plan.batches[:total]]
    print(f"\n== {prec}: {cfg.card} (random init), batch {tcfg.batch_size} x block {tcfg.seq_len}, "
          f"{sum(e.n_loss for e in batches[0])} loss tokens/step; 1 warm-up + {args.rounds} x {args.steps} steps "
          f"per variant ==", flush=True)
    res = measure(variants, batches, args.steps, args.rounds, args.threads)
    if args.profile:
        res["_profile"] = profile(variants, batches[-1], prec, args.profile_top)
    return res


def print_table(prec: str, res: dict, variants: list[str]) -> list[str]:
    base = res.get("plain")
    lines = [f"| {prec} | variant | tok/s (best round) | tok/s (median step) | s/step (median) | vs plain | CPU use "
             f"| loss step 1 | kept after step 1, MiB | step peak above RSS, MiB |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in variants:
        r = res[name]
        ratio = (f"{r['tok_per_s_best_round'] / base['tok_per_s_best_round']:.2f}x" if base else "-")
        peak = f"{r['step_peak_mib']:.0f}" if r["step_peak_mib"] is not None else "-"
        lines.append(f"| {prec} | {name} | {r['tok_per_s_best_round']:.0f} | {r['tok_per_s_median_step']:.0f} | "
                     f"{r['s_per_step_median']:.2f} | {ratio} | {r['cpu_use']:.0%} | {r['first_loss']:.5f} | "
                     f"{r['kept_mib']:.0f} | {peak} |")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--precision", default="bf16", choices=("bf16", "fp32", "both"),
                   help="autocast bf16 (default, as the issue asks) or fp32, or both in turn")
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant per round")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds (ABAB...)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (the same for every variant)")
    p.add_argument("--card", default=PretrainConfig.card)
    p.add_argument("--batch-size", type=int, default=None, help=f"default PretrainConfig's ({PretrainConfig.batch_size})")
    p.add_argument("--block-size", type=int, default=None, help=f"default PretrainConfig's ({PretrainConfig.block_size})")
    p.add_argument("--corpus", default=PretrainConfig.corpus, choices=CORPUS_KINDS)
    p.add_argument("--data-dir", type=Path, default=None, help="WebNLG / DART folders (default ../shared/data)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {', '.join(VARIANTS)}")
    p.add_argument("--profile", action="store_true", help="also profile one step per variant and time components")
    p.add_argument("--profile-top", type=int, default=12)
    p.add_argument("--json", type=Path, default=None, help="write every number here")
    p.add_argument("--markdown", type=Path, default=None, help="write the command, machine and table here")
    args = p.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in args.variants if v not in VARIANTS]
    if bad:
        p.error(f"unknown variant(s) {bad}; expected {', '.join(VARIANTS)}")
    torch.set_num_threads(args.threads)
    command = "python " + shlex.join(["scripts/bench_pretrain.py"] + (sys.argv[1:] if argv is None else list(argv)))
    machine = (f"{cpu_model()}; {os.cpu_count()} logical CPUs ({', '.join(cpu_flags())}); torch {torch.__version__} "
               f"({torch.get_num_threads()} threads); load average at start {os.getloadavg()[0]:.2f}")
    print(f"command: {command}\nmachine: {machine}", flush=True)
    precisions = ["bf16", "fp32"] if args.precision == "both" else [args.precision]
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_pretrain.") as tmp:
        tmp = Path(tmp)
        cfg0 = PretrainConfig(card=args.card, corpus=args.corpus,
                              block_size=args.block_size or PretrainConfig.block_size)
        t0 = time.perf_counter()
        train, held, info = build_corpus(cfg0, args.data_dir, tmp / "corpus")
        print(f"corpus: {info['label']}; {info['train_blocks']} train blocks of {info['block_size']} "
              f"({time.perf_counter() - t0:.0f} s to build)", flush=True)
        for prec in precisions:
            results[prec] = run_precision(prec, args, train, held, tmp)
    load_end = os.getloadavg()[0]
    lines = []
    for prec in precisions:
        lines += print_table(prec, results[prec], args.variants) + [""]
    print("\n" + "\n".join(lines))
    summary = []
    for prec in precisions:
        r = results[prec]
        if "plain" in r:
            for name in args.variants:
                if name != "plain":
                    summary.append(f"{prec}: {name} / plain = {r[name]['tok_per_s_best_round'] / r['plain']['tok_per_s_best_round']:.2f}x "
                                   f"(median steps: {r[name]['tok_per_s_median_step'] / r['plain']['tok_per_s_median_step']:.2f}x)")
    if "bf16" in results and "fp32" in results:
        for name in args.variants:
            summary.append(f"{name}: bf16 / fp32 = {results['bf16'][name]['tok_per_s_best_round'] / results['fp32'][name]['tok_per_s_best_round']:.2f}x")
    summary.append(f"load average at end {load_end:.2f} (the machine's {os.cpu_count()} CPUs; above that, other jobs "
                   "shared them during the run)")
    print("\n".join(summary))
    if args.markdown:
        md = [f"command: `{command}`", "", f"machine: {machine}", ""] + lines + [f"- {s}" for s in summary]
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text("\n".join(md) + "\n")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"command": command, "machine": machine, "results": results},
                                        indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
