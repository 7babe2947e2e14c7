"""Pretraining speed: this project's trainer (nlg.train, as nlg.pretrain drives it) vs a plain transformers loop.

Both train the same model (``nlg.models.load_model("random:<card>")``: same config, same initial weights) on the
same batches (the pretraining corpus's blocks, ``nlg.pretrain.write_corpus``, in the trainer's epoch-1 order,
batch and block size from ``PretrainConfig`` unless flags say otherwise), in the same precision (``--precision``:
bf16 autocast, fp32, or both) and with the same optimizer settings (AdamW with the recipe's lr, betas, eps and weight
decay, the linear warm-up schedule, gradient clipping):

- ``plain``: ``GPT2LMHeadModel(input_ids, labels=...)``, ``torch.optim.AdamW``, transformers'
  ``get_linear_schedule_with_warmup``, ``clip_grad_norm_``, ``loss.backward(); opt.step(); sched.step();
  zero_grad`` — what a transformers user writes;
- ``ours``: a ``nlg.train.Trainer`` built from ``PretrainConfig(...).train_config(...)``, one step being exactly
  what ``Trainer._run`` does per update: ``collate`` + ``Trainer._micro_step`` + ``Trainer._update`` (internals:
  ``Trainer.run`` cannot be interleaved with another loop, and it also validates and checkpoints);
- ``ours+fast`` (default on): ``ours`` with two faster kernels written for pretraining, swapped in only around
  its own steps: ``nlg.equal_length_attention`` (one batched SDPA call when every block has the same length,
  instead of one attention call per sequence) and ``nlg.head_loss_autocast`` (the fused LM head + loss under bf16
  autocast, which ``nlg.loss`` otherwise leaves to autograd). The proposed diffs wiring them into the trainer are
  in results/bench_pretrain.md.

All variants (with ``--precision both``: every variant in both precisions) run in one process, interleaved: one
untimed warm-up step each, then ``--rounds`` rounds in which each variant in turn times ``--steps`` steps (A B C,
then C B A, ...), every variant stepping through the same batches in the same order. Reported per variant: real
tokens/s (loss tokens, i.e. predicted next tokens, per second of the steps' wall time: best round, median step,
and median over the steps that had the cores to themselves), the ratio to ``plain`` in the same precision and to
the faster ``plain``, CPU use of the steps (process CPU seconds / (wall seconds x threads): well under 1 means
other jobs took the cores; a step at >= 90 % had them to itself), the loss of the first step
(same weights, same batch: must agree), the memory its first step left resident (gradients, optimizer state,
persistent buffers) and the peak a step adds above the resident size before it (Linux VmHWM, reset per round
through /proc/self/clear_refs). ``--profile`` adds a torch.profiler table of one step per variant, its phases
(forward + loss, backward, optimizer) and timings of the LM head + loss and of attention alone. The latency of
one OpenMP parallel region (a 40,000-element ``mul_``) is printed before and after: on a machine whose cores
other jobs also use it grows from microseconds to milliseconds, and a step's time then follows the number of
parallel operators more than its FLOPs.

    python scripts/bench_pretrain.py [--precision bf16|fp32|both] [--steps 3] [--rounds 2] [--threads 2]
        [--variants plain,ours,ours+fast] [--profile] [--json out.json] [--markdown out.md]
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

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
VARIANTS = ("plain", "ours", "ours+fast")
CLEAN_CPU = 0.9  # a step whose CPU use reaches this had the cores to itself (no other job ran meanwhile)


# ---------------------------------------------------------------- machine and memory
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in have]
    except OSError:
        pass
    return []


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


def region_latency_us(n: int = 100) -> float:
    """Median wall time of one small parallel operator (40,000 floats: above ATen's grain, so OpenMP runs it on
    every thread): microseconds on an idle machine, up to a scheduler slice when other jobs hold the cores."""
    x = torch.ones(40_000)
    x.mul_(1.0)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        x.mul_(1.0)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


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


# ---------------------------------------------------------------- the fast kernels, swapped in for ours+fast
@contextlib.contextmanager
def fast_paths():
    """Route the trainer's attention through nlg.equal_length_attention and, under bf16 autocast, its loss through
    nlg.head_loss_autocast, for the duration of the block (what the proposed diffs do permanently)."""
    import nlg.loss as loss_mod
    import nlg.packed as packed_mod
    from nlg.equal_length_attention import causal_attention
    from nlg.head_loss_autocast import autocast_head_cross_entropy_sum, fused_autocast_head_applies

    real_attention, real_loss = packed_mod.varlen_causal_attention, loss_mod.masked_lm_loss

    def masked_lm_loss(hidden, lm_head, targets, mask, label_smooth=0.0, buffer=None, fused=None):
        if fused is not False and fused_autocast_head_applies(hidden, lm_head):
            ls = float(label_smooth) if label_smooth > 0.0001 else 0.0
            sel = mask.bool()
            denom = sel.sum().to(torch.float32) + loss_mod.MASK_EPS
            return autocast_head_cross_entropy_sum(hidden[sel], lm_head.weight, targets[sel], ls, denom, buffer)
        return real_loss(hidden, lm_head, targets, mask, label_smooth, buffer, fused)

    packed_mod.varlen_causal_attention, loss_mod.masked_lm_loss = causal_attention, masked_lm_loss
    try:
        yield
    finally:
        packed_mod.varlen_causal_attention, loss_mod.masked_lm_loss = real_attention, real_loss


# ---------------------------------------------------------------- variants
class Plain:
    """The usual transformers loop on the same model, batches, precision and optimizer settings."""

    kind = "plain"

    def __init__(self, tcfg, total_steps: int):
        from transformers import get_linear_schedule_with_warmup

        from nlg.models import load_model

        self.cfg, self.precision = tcfg, tcfg.precision
        self.label = f"plain/{tcfg.precision}"
        self.model = load_model(tcfg.model)
        self.model.requires_grad_(True)
        self.model.train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=tcfg.lr, betas=(tcfg.adam_beta1, tcfg.adam_beta2),
                                     eps=tcfg.adam_eps, weight_decay=tcfg.weight_decay)
        self.sched = get_linear_schedule_with_warmup(self.opt, tcfg.warmup_steps, total_steps)
        self.dtype = PRECISIONS[tcfg.precision]

    def context(self):
        return contextlib.nullcontext()

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


class Ours:
    """nlg.train.Trainer as nlg.pretrain builds it; a step is what Trainer._run does per update (grad_acc 1)."""

    def __init__(self, tcfg, total_steps: int, run_dir: Path, fast: bool = False):
        from nlg.train import Trainer

        self.fast, self.precision = fast, tcfg.precision
        self.kind = "ours+fast" if fast else "ours"
        self.label = f"{self.kind}/{tcfg.precision}"
        self.trainer = Trainer(dataclasses.replace(tcfg, out_dir=str(run_dir), max_steps=total_steps),
                               device="cpu", quiet=True, overwrite=True)
        self.trainer.model.train()  # as Trainer._run does
        self.model = self.trainer.model

    def context(self):
        return fast_paths() if self.fast else contextlib.nullcontext()

    def step(self, examples) -> float:
        tr = self.trainer
        with self.context():
            loss = tr._micro_step(collate(examples), sync=True)
            tr._update()
        tr.progress.step += 1
        tr.progress.micro += 1
        return float(loss)

    def forward_loss(self, examples):  # profiling only: _micro_step's forward, without its backward
        tr = self.trainer
        b = collate(examples).to(tr.dist.device)
        with tr._autocast():
            return tr.loss_module(b.input_ids, b.position_ids, b.targets, b.mask, b.lengths, tr.cfg.label_smooth)

    def update(self):
        self.trainer._update()
        self.trainer.progress.step += 1


# ---------------------------------------------------------------- measuring
def measure(variants, batches, steps: int, rounds: int, threads: int) -> dict:
    """Warm-up step each, then ``rounds`` x (each variant: ``steps`` timed steps), interleaved, the order
    reversed every other round."""
    res = {v.label: {"times": [], "step_tokens": [], "cpu": [], "losses": [], "round_s": [], "round_tokens": [],
                     "step_peak_mib": []} for v in variants}
    for v in variants:  # warm-up: first-touch of the allocator's heap, lazily built buffers, MKL/oneDNN kernels
        before = rss_mib()
        res[v.label]["first_loss"] = v.step(batches[0])
        # what the variant keeps after its first step: gradients, optimizer state, persistent buffers
        res[v.label]["kept_mib"] = (rss_mib() or 0) - (before or 0)
    for r in range(rounds):
        use = batches[1 + r * steps: 1 + (r + 1) * steps]
        for v in (variants if r % 2 == 0 else variants[::-1]):
            out = res[v.label]
            base = rss_mib()
            can_peak = reset_peak()
            t_round, tokens = 0.0, 0
            for examples in use:
                c0, t0 = time.process_time(), time.perf_counter()
                out["losses"].append(v.step(examples))
                dt = time.perf_counter() - t0
                out["times"].append(dt)
                out["step_tokens"].append(sum(e.n_loss for e in examples))
                out["cpu"].append((time.process_time() - c0) / (dt * threads))
                t_round += dt
                tokens += out["step_tokens"][-1]
            out["round_s"].append(t_round)
            out["round_tokens"].append(tokens)
            if can_peak and base is not None:
                out["step_peak_mib"].append(peak_mib() - base)
            print(f"  round {r + 1}/{rounds} {v.label:15} {t_round / len(use):6.2f} s/step "
                  f"({', '.join(f'{t:.2f}' for t in out['times'][-len(use):])})", flush=True)
    for out in res.values():
        out["tok_per_s_best_round"] = max(n / t for n, t in zip(out["round_tokens"], out["round_s"]))
        out["tok_per_s_median_step"] = statistics.median(n / t for n, t in zip(out["step_tokens"], out["times"]))
        out["s_per_step_median"] = statistics.median(out["times"])
        out["cpu_use"] = statistics.median(out["cpu"])
        clean = [n / t for n, t, c in zip(out["step_tokens"], out["times"], out["cpu"]) if c >= CLEAN_CPU]
        out["tok_per_s_clean"] = statistics.median(clean) if clean else None
        out["clean_steps"] = len(clean)
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


def profile(variants, examples, top: int) -> dict:
    """torch.profiler's top ops for one step of each variant, its phases, and component timings (best of 2)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    out = {"phases": {}, "components": {}}
    for v in variants:
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            v.step(examples)
        print(f"\n--- torch.profiler, one step of {v.label} (self CPU time) ---")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top))
        holder = {}

        def fwd():
            with v.context():
                holder["loss"] = v.forward_loss(examples)

        def fwd_bwd():
            fwd()
            with v.context():
                holder["loss"].backward()

        phase = {"forward+loss": _best_of(fwd), "forward+loss+backward": _best_of(fwd_bwd)}
        t0 = time.perf_counter()
        v.update()
        phase["optimizer (clip+step+zero_grad)"] = time.perf_counter() - t0
        out["phases"][v.label] = phase
    print("\n--- phases of one step (s; forward and backward best of 2) ---")
    for label, phase in out["phases"].items():
        print(f"{label:15} " + ", ".join(f"{k} {t:.2f}" for k, t in phase.items()))
    for prec in dict.fromkeys(v.precision for v in variants):
        out["components"][prec] = comp = components(variants[0].model.config, examples, prec)
        print(f"--- {prec}: components alone on this batch's shapes (s, best of 2) ---")
        for k, t in comp.items():
            print(f"{t:7.2f}  {k}")
    return out


def components(c, examples, prec: str) -> dict:
    """LM head + loss and attention, forward + backward, as each variant computes them, on the batch's shapes."""
    import nlg.loss as loss_mod
    from nlg.equal_length_attention import batched_causal_attention
    from nlg.head_loss import LogitsBuffer
    from nlg.varlen_attention import varlen_causal_attention

    b = collate(examples)
    m = int(b.mask.sum())
    dtype = PRECISIONS[prec]
    ac = (lambda: torch.autocast("cpu", dtype=dtype)) if dtype is not None else contextlib.nullcontext
    torch.manual_seed(0)
    hidden = torch.randn(m, c.n_embd)
    head = torch.nn.Linear(c.n_embd, c.vocab_size, bias=False)
    torch.nn.init.normal_(head.weight, std=0.02)
    targets = b.targets[b.mask]
    everywhere = torch.ones_like(targets, dtype=torch.bool)
    buf = LogitsBuffer()

    def head_run(kind):
        def run():
            h = hidden.clone().requires_grad_()
            with fast_paths() if kind == "fast" else contextlib.nullcontext():
                with ac():
                    if kind == "plain":  # transformers' ForCausalLMLoss: logits upcast, mean cross-entropy
                        loss = F.cross_entropy(head(h).float(), targets)
                    else:
                        loss = loss_mod.masked_lm_loss(h, head, targets, everywhere, 0.0, buf)
            loss.backward()
        return run

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

    ours_head = "nlg.head_loss, fused" if dtype is None else "autograd: nlg.head_loss is fp32-only"
    return {
        f"LM head + loss ({m} rows x {c.vocab_size}): plain (autograd, transformers' loss)": _best_of(head_run("plain")),
        f"LM head + loss: ours ({ours_head})": _best_of(head_run("ours")),
        "LM head + loss: ours+fast" + (" (nlg.head_loss_autocast)" if dtype is not None else " (= ours)"):
            _best_of(head_run("fast")),
        f"attention x {c.n_layer} layers: ours (per sequence, nlg.varlen_attention)":
            c.n_layer * _best_of(attn(lambda q: varlen_causal_attention(q, bounds, heads, dh ** -0.5))),
        f"attention x {c.n_layer} layers: plain and ours+fast (batched SDPA)":
            c.n_layer * _best_of(attn(lambda q: batched_causal_attention(q, length, heads, dh ** -0.5))),
    }


# ---------------------------------------------------------------- driver
def print_tables(precisions, res: dict, kinds: list[str]) -> tuple[list[str], list[str]]:
    lines = ["| variant | tok/s (best round) | tok/s (median step) | s/step (median) | vs plain, same precision "
             f"| vs faster plain | CPU use | tok/s, steps at CPU use >= {CLEAN_CPU:.0%} (n) | loss step 1 "
             "| kept after step 1, MiB | step peak above RSS, MiB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    plains = [res[f"plain/{p}"]["tok_per_s_best_round"] for p in precisions if f"plain/{p}" in res]
    best_plain = max(plains) if plains else None
    summary = []
    for prec in precisions:
        base = res.get(f"plain/{prec}")
        for kind in kinds:
            label = f"{kind}/{prec}"
            r = res[label]
            tps = r["tok_per_s_best_round"]
            ratio = f"{tps / base['tok_per_s_best_round']:.2f}x" if base else "-"
            vs_best = f"{tps / best_plain:.2f}x" if best_plain else "-"
            peak = f"{r['step_peak_mib']:.0f}" if r["step_peak_mib"] is not None else "-"
            clean = f"{r['tok_per_s_clean']:.0f} ({r['clean_steps']})" if r["tok_per_s_clean"] else "- (0)"
            lines.append(f"| {label} | {tps:.0f} | {r['tok_per_s_median_step']:.0f} | {r['s_per_step_median']:.2f} | "
                         f"{ratio} | {vs_best} | {r['cpu_use']:.0%} | {clean} | {r['first_loss']:.5f} | "
                         f"{r['kept_mib']:.0f} | {peak} |")
            if base and kind != "plain":
                both_clean = r["tok_per_s_clean"] and base["tok_per_s_clean"]
                summary.append(f"{label} / plain/{prec} = {ratio} (best rounds; median steps "
                               f"{r['tok_per_s_median_step'] / base['tok_per_s_median_step']:.2f}x; steps with the "
                               "cores to themselves " + (f"{r['tok_per_s_clean'] / base['tok_per_s_clean']:.2f}x)"
                                                         if both_clean else "n/a)"))
    if len(precisions) == 2:
        for kind in kinds:
            a, b = res[f"{kind}/bf16"], res[f"{kind}/fp32"]
            summary.append(f"{kind}: bf16 / fp32 = {a['tok_per_s_best_round'] / b['tok_per_s_best_round']:.2f}x")
    return lines, summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--precision", default="bf16", choices=("bf16", "fp32", "both"),
                   help="bf16 autocast (default, as the issue asks), fp32, or both (all interleaved)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant per round")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds")
    p.add_argument("--threads", type=int, default=2, help="torch threads (the same for every variant)")
    p.add_argument("--card", default=PretrainConfig.card)
    p.add_argument("--batch-size", type=int, default=None, help=f"default PretrainConfig's ({PretrainConfig.batch_size})")
    p.add_argument("--block-size", type=int, default=None, help=f"default PretrainConfig's ({PretrainConfig.block_size})")
    p.add_argument("--corpus", default="shared", choices=("shared", "generated"))
    p.add_argument("--data-dir", type=Path, default=None, help="WebNLG / DART folders (default ../shared/data)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {', '.join(VARIANTS)}")
    p.add_argument("--profile", action="store_true", help="also profile one step per variant and time components")
    p.add_argument("--profile-top", type=int, default=12)
    p.add_argument("--json", type=Path, default=None, help="write every number here")
    p.add_argument("--markdown", type=Path, default=None, help="write the command, machine and table here")
    args = p.parse_args(argv)
    kinds = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in kinds if v not in VARIANTS]
    if bad:
        p.error(f"unknown variant(s) {bad}; expected {', '.join(VARIANTS)}")
    torch.set_num_threads(args.threads)
    command = "python " + shlex.join(["scripts/bench_pretrain.py"] + (sys.argv[1:] if argv is None else list(argv)))
    latency0 = region_latency_us()
    machine = (f"{cpu_model()}; {os.cpu_count()} logical CPUs ({', '.join(cpu_flags())}); torch {torch.__version__}, "
               f"{torch.get_num_threads()} threads; load average at start {os.getloadavg()[0]:.2f}; one OpenMP "
               f"region {latency0:.0f} us")
    print(f"command: {command}\nmachine: {machine}", flush=True)
    precisions = ["bf16", "fp32"] if args.precision == "both" else [args.precision]
    defaults = PretrainConfig()
    with tempfile.TemporaryDirectory(prefix="bench_pretrain.") as tmp:
        tmp = Path(tmp)
        cfgs = {prec: PretrainConfig(card=args.card, corpus=args.corpus, precision=prec,
                                     block_size=args.block_size or defaults.block_size,
                                     batch_size=args.batch_size or defaults.batch_size) for prec in precisions}
        t0 = time.perf_counter()
        train, held, info = build_corpus(cfgs[precisions[0]], args.data_dir, tmp / "corpus")
        print(f"corpus: {info['label']}; {info['train_blocks']} train blocks of {info['block_size']} "
              f"({time.perf_counter() - t0:.0f} s to build)", flush=True)
        total = 1 + args.rounds * args.steps
        variants = []
        for prec, cfg in cfgs.items():
            tcfg = dataclasses.replace(cfg.train_config(str(train), str(held), str(tmp / "run"), resume=False),
                                       max_steps=total)
            for kind in kinds:
                variants.append(Plain(tcfg, total) if kind == "plain" else
                                Ours(tcfg, total, tmp / f"run-{kind}-{prec}", fast=kind == "ours+fast"))
        examples = next((v.trainer.train_examples for v in variants if isinstance(v, Ours)), None)
        if examples is None:
            from nlg.batching import read_encoded
            examples = read_encoded(train, cfgs[precisions[0]].block_size)
        cfg = cfgs[precisions[0]]
        # the trainer's epoch-1 batches: EpochPlan with the recipe's seed and the authors' pad stream
        plan = EpochPlan(examples, cfg.batch_size, cfg.seed, 1, 0, 1, random.Random(PAD_RNG_SEED))
        if len(plan) < total:
            raise SystemExit(f"the corpus gives {len(plan)} batches, the benchmark needs {total}")
        batches = [[examples[i] for i in idx] for idx in plan.batches[:total]]
        setup = (f"{cfg.card} GPT-2 (random init, {variants[0].model.config.n_layer} layers x "
                 f"{variants[0].model.config.n_embd}), batch {cfg.batch_size} x block {cfg.block_size} = "
                 f"{sum(e.n_loss for e in batches[0])} loss tokens/step, lr {cfg.lr}, warm-up {cfg.warmup_steps}, "
                 f"clip {cfg.clip}; 1 warm-up + {args.rounds} rounds x {args.steps} timed steps per variant")
        print(f"setup: {setup}", flush=True)
        results = measure(variants, batches, args.steps, args.rounds, args.threads)
        prof = profile(variants, batches[-1], args.profile_top) if args.profile else None
    latency1 = region_latency_us()
    lines, summary = print_tables(precisions, results, kinds)
    summary.append(f"load average at end {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; one OpenMP region "
                   f"{latency0:.0f} us at start, {latency1:.0f} us at end")
    print("\n" + "\n".join(lines) + "\n\n" + "\n".join(summary))
    if args.markdown:
        md = [f"command: `{command}`", "", f"machine: {machine}", "", f"setup: {setup}", ""] + lines + [""] + \
             [f"- {s}" for s in summary]
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text("\n".join(md) + "\n")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"command": command, "machine": machine, "setup": setup, "results": results,
                                         "profile": prof}, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
