"""Turn run folders into a report beside the paper's tables.

  python -m eval.report RUN_DIR [RUN_DIR ...] [--out DIR] [--split test]

Reads each run's recipe.json, train_summary.json, log.jsonl and scores.<split>.json (missing ones are reported
as missing) and writes report.md, report.json and a loss-curve PNG per run -- into the run folder for one run,
into --out for several, plus a bar chart across the runs. Several runs of one dataset, model, method and size
(seeds: ``SEEDS="110 111 112" scripts/e2e.sh``) are also summarised as mean ± sample standard deviation
(ddof 1) per metric, beside the paper's ± figures.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nlg.io_utils import InputFileError, cli_error, atomic_open, iter_jsonl, read_json_object, write_json
from nlg.run_folder import METRICS_PNG, REPORT_DIR, RUN_LOSS_PNG, RunFolder, describe_pretrained, read_provenance

from .paper import PaperRow, ours_in_paper_scale, paper_row
from .sacrebleu_extra import LABEL

LOWER_IS_BETTER = {"TER"}
METRIC_ORDER = {
    "e2e": ["BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr"],
    "dart": ["BLEU", "METEOR", "TER", "BLEU_NLTK", "chrF++"],
    "webnlg": [f"{m}/{c}" for m in ("BLEU", "METEOR", "TER", "BLEU_NLTK", "chrF++")
               for c in ("unseen", "seen", "all")],
}


def load_run(run_dir: str | Path, split: str = "test") -> dict:
    """Everything the report needs from one run folder; absent files give None (their names listed in
    'missing')."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputFileError(run_dir, "no such run folder")
    files = RunFolder(run_dir)
    run: dict = {"dir": str(run_dir), "name": run_dir.name, "missing": []}
    for key, path in (("recipe", files.recipe), ("summary", files.summary), ("scores", files.scores(split))):
        run[key] = read_json_object(path, missing_ok=True)
        if run[key] is None:
            run["missing"].append(path.name)
    log_path = files.log
    run["train_curve"], run["valid_curve"] = [], []
    if log_path.is_file():
        for _, rec in iter_jsonl(log_path):
            if "valid_loss" in rec and rec.get("valid_loss") is not None:
                run["valid_curve"].append((rec.get("step"), rec["valid_loss"]))
            elif "loss" in rec and rec.get("loss") is not None:
                run["train_curve"].append((rec.get("step"), rec["loss"]))
    else:
        run["missing"].append(log_path.name)
    recipe, scores = run["recipe"] or {}, run["scores"] or {}
    run["dataset"] = recipe.get("dataset") or scores.get("dataset")
    run["model"] = recipe.get("model")
    run["method"] = recipe.get("method")
    provenance = read_provenance(run_dir)  # what the model and the data were, recorded once by the trainer
    here = provenance["model"]["pretrained_here"]
    run["random_model"] = provenance["model"]["random"]
    run["pretrained_here"] = describe_pretrained(here) if here else None
    run["data_source"] = provenance["data"]["source"] or {}
    run["synthetic_data"] = provenance["data"]["synthetic"]
    summary = run["summary"] or {}
    run["trainable_params"] = summary.get("trainable_params", recipe.get("trainable_params"))
    run["paper_param_count"] = recipe.get("paper_param_count")
    run["metrics"] = flatten_metrics(scores.get("metrics"))
    run["extra"] = scores.get("extra") or {}
    run["stale"] = stale_outputs(run_dir, split)
    return run


def stale_outputs(run_dir: Path, split: str = "test") -> list[str]:
    """Each output older than what it was made from (scores before the predictions they claim to score, ...):
    a report must not show them as current."""
    files = RunFolder(run_dir)
    chain = [files.adapter_weights, files.predictions(split), files.eval_dir(split), files.scores(split)]
    present = [p for p in chain if p.exists()]

    def mtime(p: Path) -> float:
        return max([p.stat().st_mtime] + [c.stat().st_mtime for c in p.rglob("*")]) if p.is_dir() else p.stat().st_mtime

    out = []
    for made_from, made in zip(present, present[1:]):
        if mtime(made) < mtime(made_from):
            out.append(f"{made.relative_to(run_dir)} is older than {made_from.relative_to(run_dir)}")
    return out


def extra_lines(extra: dict) -> list[str]:
    """The extra figures of a score record (sacreBLEU with its signature), labelled as not the paper's metric."""
    if LABEL in extra:
        e = extra[LABEL]
        return [f"Extra, not the paper's BLEU: {LABEL} {e['score']:.2f} (`{e['signature']}`)."]
    return [f"[{cat}] " + line for cat, sub in extra.items() if sub for line in extra_lines(sub)]


def data_line(run: dict) -> str | None:
    """One sentence on the data a run used, when a driver recorded where it came from (its ``data_source.json``,
    as the run's provenance holds it): source, which split trained, record limits."""
    source = run.get("data_source") or {}
    if not source:
        return None
    text = f"Data: {source.get('source', '?')}"
    if source.get("raw_dir"):
        text += f" (`{source['raw_dir']}`)"
    if source.get("train_split", "train") != "train":
        text += f"; trained on the **{source['train_split']}** split because no train split was available"
    limits = {k: v for k, v in (source.get("limits") or {}).items() if v}
    if limits:
        text += "; first records only: " + ", ".join(f"{k} {v}" for k, v in limits.items())
    return text + "."


def flatten_metrics(metrics: dict | None) -> dict[str, float | None]:
    """{"all": {"BLEU": ..}} -> {"BLEU/all": ..}; flat metric dicts stay as they are."""
    if not metrics:
        return {}
    if all(isinstance(v, dict) or v is None for v in metrics.values()):
        flat = {}
        for cat, values in metrics.items():
            for name, value in (values or {}).items():
                flat[f"{name}/{cat}"] = value
        return flat
    return dict(metrics)


def compare(run: dict) -> list[dict]:
    """One row per metric: ours (in the paper's scale), the paper's figure, and the difference."""
    dataset = run["dataset"]
    row: PaperRow | None = None
    if dataset and run["model"] and run["method"]:
        row = paper_row(dataset, run["model"], run["method"], run["paper_param_count"] or run["trainable_params"])
    run["paper_label"] = row.label if row else None
    order = METRIC_ORDER.get(dataset, [])
    names = [m for m in order if m in run["metrics"]] + sorted(set(run["metrics"]) - set(order))
    out = []
    for name in names:
        value = run["metrics"][name]
        ours = ours_in_paper_scale(dataset, name, value) if value is not None else None
        fig = row.metrics.get(name) if row else None
        diff = (ours - fig.value) if (fig is not None and ours is not None) else None
        better = None
        if diff is not None:
            better = diff <= 0 if name.split("/")[0] in LOWER_IS_BETTER else diff >= 0
        out.append({"metric": name, "ours": ours, "paper": fig.value if fig else None,
                    "paper_ci": fig.ci if fig else None, "diff": diff, "better_or_equal": better})
    return out


def group_key(run: dict) -> tuple | None:
    """Runs that differ only in seed share dataset, model, method and trainable size (None: not enough recorded)."""
    if not (run.get("dataset") and run.get("model") and run.get("method")):
        return None
    return run["dataset"], run["model"], run["method"], run.get("trainable_params")


def seed_groups(runs: list[dict]) -> list[dict]:
    """Per group of two or more runs (see group_key; call compare() first): each metric's mean ± std over the runs
    that have it, in the paper's scale, beside the paper's figure and its ±."""
    from .aggregate import summarize  # mean and sample std (ddof 1); imported here: eval.aggregate imports us

    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        key = group_key(r)
        if key is not None:
            groups.setdefault(key, []).append(r)
    out = []
    for (dataset, model, method, params), members in groups.items():
        if len(members) < 2:
            continue
        names: list[str] = []
        for r in members:
            names += [e["metric"] for e in r["comparison"] if e["metric"] not in names]
        metrics = []
        for name in names:
            entries = [e for r in members for e in r["comparison"] if e["metric"] == name]
            stats = summarize(e["ours"] for e in entries)
            mean = stats["mean"]
            paper = next((e for e in entries if e["paper"] is not None), None)
            metrics.append({"metric": name, "mean": mean, "std": stats["std"], "n": stats["n"],
                            "paper": paper["paper"] if paper else None, "paper_ci": paper["paper_ci"] if paper else None,
                            "diff": (mean - paper["paper"]) if (paper and mean is not None) else None})
        out.append({"dataset": dataset, "model": model, "method": method, "trainable_params": params,
                    "runs": [r["name"] for r in members],
                    "seeds": [(r["recipe"] or {}).get("seed") for r in members],
                    "paper_label": next((r["paper_label"] for r in members if r.get("paper_label")), None),
                    "metrics": metrics})
    return out


def _digits(metric: str) -> int:
    return 4 if metric in ("NIST", "CIDEr") else 2


def _paper_cell(value, ci) -> str:
    if value is None:
        return "—"
    return f"{value:g}" + (f" ± {ci:g}" if ci is not None else "")


def render_seed_groups(groups: list[dict]) -> list[str]:
    """The "Across seeds" section: one table per group of runs."""
    if not groups:
        return []
    lines = ["", "## Across seeds", "",
             "Mean ± sample standard deviation (n − 1) of our runs; the paper's ± is its own spread over its runs."]
    for g in groups:
        seeds = ", ".join("?" if s is None else str(s) for s in g["seeds"])
        lines += ["", f"### {g['dataset']} {g['model']} {g['method']}: {len(g['runs'])} runs (seeds {seeds})", "",
                  "| metric | ours (mean ± std) | runs | paper | mean − paper |", "|---|---|---|---|---|"]
        for m in g["metrics"]:
            d = _digits(m["metric"])
            ours = "—" if m["mean"] is None else (
                f"{m['mean']:.{d}f}" + (f" ± {m['std']:.{d}f}" if m["std"] is not None else ""))
            diff = "—" if m["diff"] is None else f"{m['diff']:+.2f}"
            lines.append(f"| {m['metric']} | {ours} | {m['n']} | {_paper_cell(m['paper'], m['paper_ci'])} | {diff} |")
    return lines


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 1e5 else f"{value:.3g}"
    return str(value)


def _fmt_params(n) -> str:
    if n is None:
        return "—"
    return f"{n / 1e6:.2f}M" if n >= 1e4 else f"{n:,}"


def _diff_cell(entry: dict) -> str:
    if entry["diff"] is None:
        return "—"
    mark = "🟢" if entry["better_or_equal"] else "🔴"
    return f"{mark} {entry['diff']:+.2f}"


def headline(runs: list[dict]) -> str:
    """The report's first line: says loudly when a model was random or pretrained here, or the data synthetic."""
    random_runs = [r["name"] for r in runs if r["random_model"]]
    synthetic = [r["name"] for r in runs if r["synthetic_data"]]
    parts = []
    here = list(dict.fromkeys(r["pretrained_here"] for r in runs if r.get("pretrained_here")))
    if here:
        parts.append("**Model: " + "; ".join(here) + "**")
    if random_runs:
        which = "this run" if len(runs) == 1 else ("all runs" if len(random_runs) == len(runs)
                                                   else ", ".join(random_runs))
        parts.append(f"**Randomly initialised model** ({which}: a tiny random GPT-2, not pretrained weights)")
    if synthetic:
        which = "this run" if len(runs) == 1 else ("all runs" if len(synthetic) == len(runs) else ", ".join(synthetic))
        parts.append(f"**synthetic data** ({which})")
    if parts:
        return "> ⚠️ " + " and ".join(parts) + ": the numbers only test the pipeline and are not comparable " \
                                                 "with the paper."
    return "# Results beside the paper"


def render_markdown(runs: list[dict], chart: str | None, groups: list[dict] | None = None) -> str:
    lines = [headline(runs), ""]
    if lines[0].startswith(">"):
        lines += ["# Results beside the paper", ""]
    lines += ["🟢 ours is as good as or better than the paper's figure, 🔴 worse (TER: lower is better). "
              "Our values are in the paper's scale (E2E BLEU, METEOR, ROUGE-L in percent).", ""]
    lines += ["| run | dataset | model | method | trainable params | train time | tokens/s | paper row |",
              "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        s = r["summary"] or {}
        lines.append(f"| {r['name']} | {r['dataset'] or '—'} | {r['model'] or '—'}"
                     f"{' (random)' if r['random_model'] else ''} | {r['method'] or '—'} | "
                     f"{_fmt_params(r['trainable_params'])} | "
                     f"{_fmt(s.get('train_time_s'), 1) + ' s' if s.get('train_time_s') is not None else '—'} | "
                     f"{_fmt(s.get('tokens_per_s'), 0)} | {r['paper_label'] or '—'} |")
    for r in runs:
        lines += ["", f"## {r['name']}", ""]
        if r["missing"]:
            lines += [f"Missing: {', '.join(r['missing'])}.", ""]
        if r.get("stale"):
            lines += [f"⚠️ **Stale**: {'; '.join(r['stale'])}: these scores may not be of this run's current "
                      "outputs; re-run the later stages (the pipeline redoes them when their inputs changed).", ""]
        if data_line(r):
            lines += [data_line(r), ""]
        s = r["summary"] or {}
        if s:
            best = ""
            if s.get("best_step") is not None:
                best = f", best valid loss {_fmt(s.get('best_valid_loss'), 4)} at step {s['best_step']}"
            chosen = s.get("checkpoint") or {}
            held = (f" The adapter holds the {chosen['selected']} weights (step {chosen.get('step')}, "
                    f"--select-by {chosen.get('select_by')}).") if chosen.get("selected") else ""
            lines += [f"Final train loss {_fmt(s.get('final_train_loss'), 4)}, final valid loss "
                      f"{_fmt(s.get('final_valid_loss'), 4)}{best}, {s.get('steps', '—')} steps.{held}", ""]
        if r["comparison"]:
            lines += ["| metric | ours | paper | ours − paper |", "|---|---|---|---|"]
            for e in r["comparison"]:
                paper = "—" if e["paper"] is None else (
                    f"{e['paper']:g}" + (f" ± {e['paper_ci']:g}" if e["paper_ci"] is not None else ""))
                lines.append(f"| {e['metric']} | {_fmt(e['ours'], 4 if e['metric'] in ('NIST', 'CIDEr') else 2)} | "
                             f"{paper} | {_diff_cell(e)} |")
            if r.get("extra"):
                lines += [""] + extra_lines(r["extra"])
        else:
            lines.append("No scores yet.")
        if r.get("loss_png"):
            lines += ["", f"![loss curve of {r['name']}]({r['loss_png']})"]
    lines += render_seed_groups(groups or [])
    if chart:
        lines += ["", "## Across runs", "", f"![metrics across runs]({chart})"]
    return "\n".join(lines) + "\n"


def plot_loss(run: dict, path: Path) -> bool:
    """Training (and validation) loss against step; False when the run has no logged loss."""
    if not run["train_curve"] and not run["valid_curve"]:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    if run["train_curve"]:
        xs, ys = zip(*run["train_curve"])
        ax.plot(xs, ys, label="train loss")
    if run["valid_curve"]:
        xs, ys = zip(*run["valid_curve"])
        ax.plot(xs, ys, "o-", label="valid loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(run["name"] + (" (random model)" if run["random_model"] else ""))
    ax.legend()
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return True


def plot_bars(runs: list[dict], path: Path) -> bool:
    """One panel per metric, one bar per run, the paper's figure as a hatched bar beside ours."""
    names = []
    for r in runs:
        for e in r["comparison"]:
            if e["ours"] is not None and e["metric"] not in names:
                names.append(e["metric"])
    if not names:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(names))
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        labels, ours, paper = [], [], []
        for r in runs:
            e = next((e for e in r["comparison"] if e["metric"] == name), None)
            labels.append(r["method"] or r["name"])
            ours.append(e["ours"] if e and e["ours"] is not None else 0.0)
            paper.append(e["paper"] if e and e["paper"] is not None else 0.0)
        xs = range(len(runs))
        ax.bar([x - 0.2 for x in xs], ours, width=0.4, label="ours")
        ax.bar([x + 0.2 for x in xs], paper, width=0.4, hatch="//", fill=False, label="paper")
        ax.set_xticks(list(xs))
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
        ax.set_title(name)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return True


def _save(fig, path: Path) -> None:
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=100)


def build_report(run_dirs: list[str | Path], out: str | Path | None = None, split: str = "test") -> Path:
    """Write report.md, report.json and the PNGs; returns the folder they are in."""
    if not run_dirs:
        raise ValueError("no run folders given")
    runs = [load_run(d, split) for d in run_dirs]
    if out is None:
        out = Path(run_dirs[0]) if len(runs) == 1 else Path(run_dirs[0]).parent / REPORT_DIR
    out = Path(out)
    written = RunFolder(out)  # the run folder itself for one run, else a report folder with the same file names
    out.mkdir(parents=True, exist_ok=True)
    for r in runs:
        r["comparison"] = compare(r)
        png = RunFolder(r["dir"]).loss_png if len(runs) == 1 else out / RUN_LOSS_PNG.format(name=r["name"])
        r["loss_png"] = png.name if plot_loss(r, png) else None
    chart = METRICS_PNG if len(runs) > 1 and plot_bars(runs, out / METRICS_PNG) else None
    groups = seed_groups(runs)
    with atomic_open(written.report_md) as handle:
        handle.write(render_markdown(runs, chart, groups))
    write_json(written.report_json, {
        "headline": headline(runs),
        "split": split,
        "runs": [{k: r[k] for k in ("name", "dir", "dataset", "model", "method", "random_model", "synthetic_data", "data_source",
                                    "trainable_params", "paper_param_count", "paper_label", "comparison", "missing",
                                    "loss_png")}
                 | {"train_time_s": (r["summary"] or {}).get("train_time_s"),
                    "tokens_per_s": (r["summary"] or {}).get("tokens_per_s"),
                    "final_train_loss": (r["summary"] or {}).get("final_train_loss"),
                    "final_valid_loss": (r["summary"] or {}).get("final_valid_loss"),
                    "best_step": (r["summary"] or {}).get("best_step"),
                    "best_valid_loss": (r["summary"] or {}).get("best_valid_loss"),
                    "checkpoint": (r["summary"] or {}).get("checkpoint"),
                    "seed": (r["recipe"] or {}).get("seed"),
                    "metrics": r["metrics"]} for r in runs],
        "seed_groups": groups,
        "chart": chart,
    })
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dirs", nargs="+", help="run folders (recipe.json, train_summary.json, log.jsonl, scores)")
    ap.add_argument("--out", help="where to write (default: the run folder for one run, RUNS_PARENT/report for "
                                  "several)")
    ap.add_argument("--split", default="test", help="which scores.<split>.json to report (default: test)")
    args = ap.parse_args(argv)
    try:
        out = build_report(args.run_dirs, args.out, args.split)
    except (InputFileError, ValueError, OSError) as exc:
        return cli_error(exc)
    written = RunFolder(out)
    print(written.report_md.read_text(encoding="utf-8").split("\n", 1)[0])
    print(f"wrote {written.report_md} and {written.report_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
