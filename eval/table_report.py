"""One report for a whole Table-3-style experiment: every row (method, tuned variant, control) over its seeds.

  python -m eval.table_report MANIFEST [--out DIR]

eval.report compares single runs with the paper; a table needs more: rows pooled over seeds (mean ± sample std,
so seed noise is visible), the paper's GPT-2 M rows beside ours, whether the methods come out in the paper's
order, what the model actually is (a small GPT-2 pretrained here, not OpenAI's), and a few outputs to read.
The experiment driver writes a manifest (JSON) naming the rows and their run folders; keys:

  title, command, machine, wall_time_s, budget_s, pretrain_time_s, split ("test"), test_formatted (optional
  path of the <split>_formatted.jsonl that gives the MRs; also looked for: RUN/data/ and data/ beside the
  manifest), train_formatted (optional: the training split's formatted file, whose names count as seen in
  eval.name_recall; default data/train_formatted.jsonl beside the manifest), pretrain (the model's pretrain.json), notes (list of lines), failures (list of lines),
  data, budget, seeds (copied into report.json),
  rows: [{id, label, kind (method | tuned | control), method, settings, paper_method (null: no paper figure),
          paper_trainable_m (optional: which paper row when the paper has several sizes), runs: [folders]}]

Run folders are absolute or relative to the repository root. Output in DIR: report.md, report.json,
metrics.png, loss.png.
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

from nlg.config import default_data_dir
from nlg.decode import group_references, read_formatted
from nlg.io_utils import InputFileError, atomic_open, read_json_object, write_json
from nlg.run_folder import DATA, LOSS_PNG, METRICS_PNG, REPORT_DIR, RunFolder, formatted_file

from .aggregate import aggregate_runs, summarize
from .name_recall import name_recall, trained_names
from .paper import PAPER_ROWS, PaperRow, paper_row
from .readers import read_e2e_references, read_hypotheses
from .report import METRIC_ORDER, load_run

REPO = Path(__file__).resolve().parent.parent
DATASET = "e2e"
PAPER_MODEL = "gpt2-medium"  # the paper's GPT-2 M rows are the ones a small model is set beside
METRICS = METRIC_ORDER[DATASET]
METRIC_LABEL = {"ROUGE_L": "ROUGE-L"}
DIGITS = {"NIST": 4, "CIDEr": 4}  # the rest are percentages: 2 decimals
PAPER_DIGITS = {"NIST": 2, "CIDEr": 2}  # as Table 3 prints them; the rest 1 decimal
N_EXAMPLES = 3
KINDS = ("method", "tuned", "control")
# manifest keys copied into report.json as they are (the driver's record of the experiment)
PASSED_THROUGH = ("title", "command", "machine", "wall_time_s", "budget_s", "pretrain_time_s", "pretrain", "data",
                  "budget", "seeds", "calls")


# ---------------------------------------------------------------- manifest and rows
def load_manifest(path: str | Path) -> dict:
    """The manifest as a dict, with the row fields this report relies on checked (errors name the file)."""
    manifest = read_json_object(path)
    rows = manifest.get("rows")
    if not isinstance(rows, list) or not rows:
        raise InputFileError(path, "expected a non-empty list 'rows'")
    seen = set()
    for i, row in enumerate(rows):
        where = f"rows[{i}]"
        if not isinstance(row, dict) or not isinstance(row.get("id"), str) or not isinstance(row.get("runs"), list):
            raise InputFileError(path, f"{where}: expected an object with a string 'id' and a list 'runs'")
        if row["id"] in seen:
            raise InputFileError(path, f"{where}: duplicate row id {row['id']!r}")
        seen.add(row["id"])
        if row.get("kind", "method") not in KINDS:
            raise InputFileError(path, f"{where}: kind must be one of {', '.join(KINDS)}, not {row.get('kind')!r}")
    return manifest


def resolve(path: str | Path) -> Path:
    """Manifest paths are absolute or relative to the repository root (where the driver runs)."""
    path = Path(path)
    return path if path.is_absolute() else REPO / path


def load_row(row: dict, split: str) -> dict:
    """A manifest row with its runs loaded and pooled; absent run folders are listed, not fatal (a budget cut
    can leave a seed unfinished, and the rest of the table is still worth reading)."""
    dirs = [resolve(p) for p in row["runs"]]
    runs = [load_run(d, split) for d in dirs if d.is_dir()]
    scored = [r for r in runs if r["metrics"]]
    params = sorted({r["trainable_params"] for r in runs if r["trainable_params"] is not None})
    out = {
        "id": row["id"], "label": row.get("label") or row["id"], "kind": row.get("kind", "method"),
        "method": row.get("method"), "settings": row.get("settings"), "paper_method": row.get("paper_method"),
        "runs": [str(p) for p in row["runs"]],
        "missing_runs": [str(p) for p, d in zip(row["runs"], dirs) if not d.is_dir()],
        "unscored_runs": [r["name"] for r in runs if not r["metrics"]],
        "n_runs": len(scored),
        "trainable_params": params,
        "train_time_s": summarize((r["summary"] or {}).get("train_time_s") for r in runs),
        "dev_loss": summarize((r["summary"] or {}).get("best_valid_loss") for r in runs),
        "test_instances": sorted({(r["scores"] or {}).get("n") for r in scored if (r["scores"] or {}).get("n")}),
        "metrics": aggregate_runs(scored),
        "_runs": runs,
    }
    ref_count = row.get("paper_trainable_m")
    ref_count = ref_count * 1e6 if ref_count is not None else next(
        (r["paper_param_count"] or r["trainable_params"] for r in runs
         if (r["paper_param_count"] or r["trainable_params"]) is not None), None)
    paper = paper_row(DATASET, PAPER_MODEL, out["paper_method"], ref_count) if out["paper_method"] else None
    out["paper"] = _paper_entry(paper)
    return out


def _paper_entry(row: PaperRow | None) -> dict | None:
    if row is None:
        return None
    return {"label": row.label, "trainable_m": row.trainable_m, "family": row.family,
            "metrics": {k: {"value": f.value, "ci": f.ci} for k, f in row.metrics.items()}}


# ---------------------------------------------------------------- example hypotheses
def _eval_files(run: dict, split: str) -> tuple[list[list[str]], list[str]] | None:
    """(reference groups, hypotheses) from RUN/eval/<split>/ as nlg.decode.write_e2e wrote them."""
    folder = RunFolder(run["dir"]).eval_dir(split)
    if not (folder / "hypothesis.txt").is_file() or not (folder / "references.txt").is_file():
        return None
    try:
        hyps = read_hypotheses(folder / "hypothesis.txt")
        return read_e2e_references(folder / "references.txt", n_hyps=len(hyps)), hyps
    except InputFileError:  # unreadable eval files: the next seed's serve as examples instead
        return None


def _mr_contexts(candidates: list[Path], refs: list[list[str]]) -> tuple[list[str], str] | None:
    """The MRs of the reference groups, from the first formatted file whose grouping (nlg.decode's: by context,
    first-seen order) has as many groups and the same leading references; None when no file matches."""
    k = min(N_EXAMPLES, len(refs))
    for path in candidates:
        if not path.is_file():
            continue
        try:
            groups = list(group_references(read_formatted(path)).values())
        except InputFileError:
            continue
        if len(groups) == len(refs) and all([r.strip() for r in g.references] == refs[i]
                                            for i, g in enumerate(groups[:k])):
            return [g.context for g in groups[:k]], str(path)
    return None


def collect_examples(rows: list[dict], split: str, formatted: list[Path]) -> dict:
    """The first N test groups: MR (when found), references, and each row's hypothesis from its first run
    that has eval files. A row scored on other references than the first row's is marked, not mixed in."""
    common, hyps_by_row, sources, candidates = None, {}, {}, []
    for row in rows:
        for run in row["_runs"]:
            files = _eval_files(run, split)
            if files is None:
                continue
            refs, hyps = files
            if common is None:
                common = refs
            same = refs[:N_EXAMPLES] == common[:N_EXAMPLES]
            hyps_by_row[row["id"]] = hyps[:N_EXAMPLES] if same else None
            sources[row["id"]] = run["name"] if same else f"{run['name']} (other test references: not shown)"
            candidates.append(formatted_file(RunFolder(run["dir"]).data, split))
            break
    if common is None:
        return {"groups": [], "mr_source": None, "hypothesis_from": sources}
    candidates += formatted
    candidates.append(formatted_file(default_data_dir(DATASET), split))
    found = _mr_contexts(list(dict.fromkeys(candidates)), common)
    mrs, mr_source = found if found else ([None] * N_EXAMPLES, None)
    groups = []
    for i, refs in enumerate(common[:N_EXAMPLES]):
        groups.append({"index": i, "mr": mrs[i], "references": refs,
                       "hypotheses": {r["id"]: _pick(hyps_by_row.get(r["id"]), i) for r in rows}})
    return {"groups": groups, "mr_source": mr_source, "hypothesis_from": sources}


def _pick(hyps: list[str] | None, i: int) -> str | None:
    return hyps[i] if hyps is not None and i < len(hyps) else None


# ---------------------------------------------------------------- names written (eval.name_recall)
def names_written(rows: list[dict], split: str, train_formatted: Path, test_formatted: list[Path]) -> dict | None:
    """Per row, eval.name_recall's shares pooled over its runs' hypotheses (every run of a row answers the same
    MRs); None when the training or test MRs cannot be found."""
    candidates = test_formatted + [formatted_file(RunFolder(run["dir"]).data, split) for row in rows
                                   for run in row["_runs"]]
    test = next((p for p in candidates if p.is_file()), None)
    if not train_formatted.is_file() or test is None:
        return None
    try:
        known = trained_names(rec["context"] for _, rec in read_formatted(train_formatted))
        groups = group_references(read_formatted(test))
    except InputFileError:
        return None
    contexts = list(groups)
    reference = name_recall(contexts, [g.references[0] for g in groups.values()], known).as_dict()
    out = {}
    for row in rows:
        totals = [0, 0, 0, 0]
        for run in row["_runs"]:
            folder = RunFolder(run["dir"]).eval_dir(split)
            if not (folder / "hypothesis.txt").is_file():
                continue
            hyps = read_hypotheses(folder / "hypothesis.txt")
            if len(hyps) != len(contexts):
                continue
            one = name_recall(contexts, hyps, known)
            totals = [a + b for a, b in zip(totals, (one.seen_written, one.seen_total, one.unseen_written,
                                                     one.unseen_total))]
        if totals[1] + totals[3]:
            out[row["id"]] = type(one)(*totals).as_dict()
    return {"train_formatted": str(train_formatted), "test_formatted": str(test), "rows": out,
            "first_reference": reference}


def render_names(rows: list[dict], names: dict | None) -> list[str]:
    if not names or not names["rows"]:
        return ["Not counted: the training or test MRs were not found beside the manifest."]
    lines = ["| row | names seen in training, written | names never seen in training, written |", "|---|---|---|"]
    labelled = [(r["label"], names["rows"].get(r["id"])) for r in rows]
    for label, got in labelled + [("the first reference of each MR (a person)", names["first_reference"])]:
        if got:
            cells = [f"{100 * got[k]:.1f} % ({got[k + '_written']} of {got[k + '_total']})" if got[k] is not None
                     else "—" for k in ("seen", "unseen")]
            lines.append(f"| {cell(label)} | {cells[0]} | {cells[1]} |")
    lines += ["", "Each test MR's `name` and `near` values, counted as written when the hypothesis holds them verbatim "
                  "(`python -m eval.name_recall`), pooled over a row's seeds; \"seen\" when a training MR holds the "
                  "same value. A model writes a never-seen name only by copying it from the MR."]
    return lines


# ---------------------------------------------------------------- ordering
def ordering(rows: list[dict]) -> dict:
    """Method rows (kind 'method': the paper's recipes) by our mean BLEU, the same rows by the paper's BLEU, and
    which pairs the two orders disagree on (flagged when our gap is within one seed std)."""
    methods = [r for r in rows if r["kind"] == "method" and r["metrics"].get("BLEU", {}).get("mean") is not None]
    ours = sorted(methods, key=lambda r: -r["metrics"]["BLEU"]["mean"])
    both = [r for r in ours if r["paper"] and "BLEU" in r["paper"]["metrics"]]
    paper = sorted(both, key=lambda r: -r["paper"]["metrics"]["BLEU"]["value"])
    swapped, agree = [], 0
    for a, b in itertools.combinations(both, 2):  # a ranks above b in ours
        oa, ob = a["metrics"]["BLEU"], b["metrics"]["BLEU"]
        pa, pb = a["paper"]["metrics"]["BLEU"]["value"], b["paper"]["metrics"]["BLEU"]["value"]
        if (oa["mean"] - ob["mean"]) * (pa - pb) > 0:
            agree += 1
            continue
        stds = [s for s in (oa["std"], ob["std"]) if s is not None]
        swapped.append({"ours_higher": a["id"], "paper_higher_or_equal": b["id"],
                        "ours_gap": oa["mean"] - ob["mean"], "paper_gap": pb - pa,
                        # None: one seed each, so there is no spread to judge the gap by
                        "within_one_std": abs(oa["mean"] - ob["mean"]) <= max(stds) if stds else None})
    everything = sorted((r for r in rows if r["metrics"].get("BLEU", {}).get("mean") is not None),
                        key=lambda r: -r["metrics"]["BLEU"]["mean"])
    return {"ours": [r["id"] for r in ours], "paper": [r["id"] for r in paper],
            "without_paper_figure": [r["id"] for r in ours if r not in both],
            "pairs": len(both) * (len(both) - 1) // 2, "pairs_agreeing": agree, "swapped": swapped,
            "all_rows": [r["id"] for r in everything]}


# ---------------------------------------------------------------- text helpers
def headline(pretrain: dict | None) -> str:
    """The report's first line: what the model is, so nobody reads these numbers as OpenAI GPT-2's."""
    if not pretrain:
        return "Model: not recorded (the manifest has no pretrain record); do not read this as OpenAI's GPT-2."
    corpus = pretrain.get("corpus") or {}
    tokens = pretrain.get("tokens_seen", corpus.get("train_tokens"))
    tokens = f"{tokens:,}" if isinstance(tokens, (int, float)) else "an unrecorded number of"
    copies = f" + {corpus['copy_blocks']} synthetic copy blocks (random ids, each span repeated)" \
        if corpus.get("copy_blocks") else ""
    return (f"{pretrain.get('card', '?')} GPT-2 pretrained here on {tokens} tokens of "
            f"{corpus.get('label', 'an unrecorded corpus')}{copies}; not OpenAI's GPT-2")


def model_details(pretrain: dict | None) -> str | None:
    if not pretrain:
        return None
    corpus = pretrain.get("corpus") or {}
    shape = [f"{pretrain[k]} {name}" for k, name in (("n_layer", "layers"), ("n_embd", "wide"), ("n_head", "heads"))
             if pretrain.get(k) is not None]
    parts = [", ".join(shape)] if shape else []
    if corpus.get("train_tokens"):
        text = f"corpus of {corpus['train_tokens']:,} training tokens"
        if pretrain.get("tokens_seen"):
            text += f" (seen {pretrain['tokens_seen'] / corpus['train_tokens']:.1f} times)"
        parts.append(text)
    if pretrain.get("heldout_perplexity") is not None:
        parts.append(f"held-out perplexity {pretrain['heldout_perplexity']:.2f}")
    if pretrain.get("copy_gain_nats") is not None:  # eval.copy_probe: does the base copy from its context?
        parts.append(f"copy gain {pretrain['copy_gain_nats']:.2f} nats on repeated random tokens (eval.copy_probe)")
    if pretrain.get("train_time_s") is not None:
        parts.append(f"pretraining took {pretrain['train_time_s']:,.0f} s")
    return ("Model: " + "; ".join(parts) + ".") if parts else None


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h} h {m} min" if h else (f"{m} min {s} s" if m else f"{s} s")


def time_line(manifest: dict) -> str:
    wall, budget = manifest.get("wall_time_s"), manifest.get("budget_s")
    text = "Wall time: " + (f"{wall:,.0f} s ({duration(wall)})" if wall is not None else "not recorded")
    if budget:
        text += f" of a {budget:,.0f} s ({duration(budget)}) budget"
        if wall is not None:
            text += f" ({100 * wall / budget:.0f}%{', over budget' if wall > budget else ''})"
    if manifest.get("pretrain_time_s") is not None:
        made = " (made by an earlier call and cached: the time it took then)" if manifest.get("pretrain_cached") else ""
        text += f"; {manifest['pretrain_time_s']:,.0f} s of it pretraining the model{made}"
    calls = manifest.get("calls") or []
    if len(calls) > 1:
        parts = ", ".join(f"{c['runs_time_s']:,.0f} s" + (f" ({c['jobs_run']} run{'' if c['jobs_run'] == 1 else 's'})" if c.get("jobs_run") else "")
                          for c in calls)
        text += f"; the runs were made by {len(calls)} calls of the script: {parts}"
    return text + "."


def shown_path(path: str | Path) -> str:
    """A path as the reader would type it: relative to the repository root when inside it."""
    path = Path(path)
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


def cell(text) -> str:
    """A markdown table cell: pipes escaped (E2E MRs and outputs can hold them), newlines flattened."""
    return "—" if text is None or text == "" else str(text).replace("|", "\\|").replace("\n", " ")


def fmt_stat(stat: dict | None, digits: int, n_row: int) -> str:
    if not stat or stat["mean"] is None:
        return "—"
    text = f"{stat['mean']:.{digits}f}"
    if stat["std"] is not None:
        text += f" ± {stat['std']:.{digits}f}"
    if stat["n"] != n_row:
        text += f" (n={stat['n']})"
    return text


def fmt_params(params: list[int]) -> str:
    def one(n: int) -> str:
        return f"{n:,} ({n / 1e6:.3g}M)" if n else "0"
    if not params:
        return "—"
    return one(params[0]) if len(params) == 1 else f"{one(params[0])} – {one(params[-1])}"


def fmt_paper(fig: dict | None, metric: str) -> str:
    """A paper figure with the decimals the paper prints (46.0, not 46; NIST and CIDEr to 2)."""
    if fig is None:
        return "—"
    return f"{fig['value']:.{PAPER_DIGITS.get(metric, 1)}f}" + (f" ± {fig['ci']:g}" if fig["ci"] is not None else "")


# ---------------------------------------------------------------- markdown
def render_main_table(rows: list[dict]) -> list[str]:
    head = ["row", "kind", "settings", "trainable params", "seeds n"] + [METRIC_LABEL.get(m, m) for m in METRICS] \
        + ["dev loss (best)", "train time (mean s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        listed = len(r["runs"])
        seeds = str(r["n_runs"]) if r["n_runs"] == listed else f"{r['n_runs']} of {listed}"
        t = r["train_time_s"]
        cells = [r["label"], r["kind"], r["settings"], fmt_params(r["trainable_params"]), seeds]
        cells += [fmt_stat(r["metrics"].get(m), DIGITS.get(m, 2), r["n_runs"]) for m in METRICS]
        d = r["dev_loss"]
        cells.append(f"{d['mean']:.3f}" if d["mean"] is not None else "—")
        cells.append(f"{t['mean']:.1f}" if t["mean"] is not None else "—")
        lines.append("| " + " | ".join(cell(c) for c in cells) + " |")
    lines += ["", "BLEU, METEOR and ROUGE-L in percent, as the paper prints them; ± is the sample standard deviation "
                  "(ddof=1) over seeds. Dev loss: the lowest loss (no label smoothing) on the held-out dev slice, "
                  "the checkpoint each run keeps; the only figure any choice between rows was made on."]
    single = [r["label"] for r in rows if r["n_runs"] == 1]
    if single:
        lines.append(f"n = 1 (one seed, so no ± shown): {', '.join(single)}.")
    for r in rows:
        if r["missing_runs"]:
            lines.append(f"{r['label']}: run folder(s) missing: {', '.join(r['missing_runs'])}.")
        if r["unscored_runs"]:
            lines.append(f"{r['label']}: run(s) without scores (left out of the mean): {', '.join(r['unscored_runs'])}.")
    sizes = sorted({n for r in rows for n in r["test_instances"]})
    if len(sizes) > 1:
        lines.append(f"Warning: rows were scored on different numbers of test MRs ({', '.join(map(str, sizes))}); "
                     "their numbers are not comparable.")
    return lines


def render_paper_table(rows: list[dict]) -> list[str]:
    ours_by_label: dict[str, list[str]] = {}
    for r in rows:
        if r["paper"]:
            ours_by_label.setdefault(f"{r['paper']['label']}@{r['paper']['trainable_m']}", []).append(r["label"])
    head = ["paper row", "trainable params"] + [METRIC_LABEL.get(m, m) for m in METRICS] + ["our row(s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in PAPER_ROWS:
        if p.dataset != DATASET or p.model != PAPER_MODEL:
            continue
        cells = [p.label, f"{p.trainable_m:g}M"] + [
            fmt_paper({"value": p.metrics[m].value, "ci": p.metrics[m].ci} if m in p.metrics else None, m)
            for m in METRICS]
        cells.append(", ".join(ours_by_label.get(f"{p.label}@{p.trainable_m}", [])) or "—")
        lines.append("| " + " | ".join(cell(c) for c in cells) + " |")
    lines += ["", "Hu et al. (2022), Table 3, GPT-2 M (355M parameters, OpenAI's weights); the paper's ± as printed."]
    return lines


def render_ordering(rows: list[dict], order: dict) -> list[str]:
    by_id = {r["id"]: r for r in rows}

    def ours(ids):
        return " > ".join(f"{by_id[i]['label']} ({by_id[i]['metrics']['BLEU']['mean']:.2f})" for i in ids)

    if not order["ours"]:
        return ["No method row has a BLEU score yet."]
    lines = [f"- Ours (method rows, mean BLEU): {ours(order['ours'])}."]
    if order["paper"]:
        lines.append("- Paper, GPT-2 M, same methods: " + " > ".join(
            f"{by_id[i]['label']} ({fmt_paper(by_id[i]['paper']['metrics']['BLEU'], 'BLEU')})"
            for i in order["paper"]) + ".")
    if order["without_paper_figure"]:
        lines.append("- No paper figure (left out of the comparison): "
                     + ", ".join(by_id[i]["label"] for i in order["without_paper_figure"]) + ".")
    if order["pairs"]:
        if not order["swapped"]:
            lines.append(f"- Same order as the paper: all {order['pairs']} pairs of methods agree.")
        else:
            lines.append(f"- Different order from the paper: {order['pairs_agreeing']} of {order['pairs']} pairs agree.")
            for s in order["swapped"]:
                a, b = by_id[s["ours_higher"]]["label"], by_id[s["paper_higher_or_equal"]]["label"]
                lines.append(f"  - ours puts {a} above {b} (+{s['ours_gap']:.2f} BLEU), the paper puts {b} "
                             f"{'level with' if s['paper_gap'] == 0 else 'above'} {a} (+{s['paper_gap']:g})"
                             + {True: "; our gap is within one seed std", False: "",
                                None: "; one seed each, so the gap's noise is unknown"}[s["within_one_std"]] + ".")
    lines.append(f"- All rows by mean BLEU: {ours(order['all_rows'])}.")
    return lines


def render_examples(rows: list[dict], examples: dict) -> list[str]:
    if not examples["groups"]:
        return ["No run has eval files (eval/test/references.txt and hypothesis.txt) yet."]
    lines = [f"The first {len(examples['groups'])} test MRs (reference groups in test-file order); each row's "
             "hypothesis comes from its first seed: "
             + "; ".join(f"{r['label']}: {examples['hypothesis_from'].get(r['id'], 'no eval files')}"
                         for r in rows) + "."]
    lines.append(f"MRs from `{shown_path(examples['mr_source'])}`." if examples["mr_source"] else
                 "MRs not shown: no formatted test file matching the references was found.")
    labels = {r["id"]: r["label"] for r in rows}
    for g in examples["groups"]:
        lines += ["", f"### MR {g['index'] + 1}", ""]
        if g["mr"]:
            lines += [f"`{g['mr']}`", ""]
        lines += ["References:", ""] + [f"{i}. {ref}" for i, ref in enumerate(g["references"], 1)]
        lines += ["", "| row | hypothesis |", "|---|---|"]
        lines += [f"| {cell(labels[rid])} | {'(empty output)' if h == '' else cell(h)} |"
                  for rid, h in g["hypotheses"].items()]
    return lines


def render_markdown(manifest: dict, rows: list[dict], order: dict, examples: dict, images: dict,
                    names: dict | None = None) -> str:
    pretrain = manifest.get("pretrain")
    lines = [headline(pretrain), "", f"# {manifest.get('title') or 'Table 3 on E2E'}", ""]
    if model_details(pretrain):
        lines += [model_details(pretrain), ""]
    lines += [f"Command: `{manifest.get('command') or 'not recorded'}`", "",
              f"Machine: {manifest.get('machine') or 'not recorded'}", "", time_line(manifest), "",
              f"## Results on the E2E {manifest.get('split', 'test')} set", ""]
    lines += render_main_table(rows)
    failures = manifest.get("failures") or []
    if failures:
        lines += ["", f"**{len(failures)} run(s) failed** (their rows have fewer seeds or none):", ""]
        lines += [f"- {f}" for f in failures]
    lines += ["", "## Names written (does the model copy from its MR?)", ""] + render_names(rows, names)
    lines += ["", "## The paper's GPT-2 M rows", ""] + render_paper_table(rows)
    lines += ["", "## Ordering by BLEU", ""] + render_ordering(rows, order)
    notes = manifest.get("notes") or []
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    lines += ["", "## Figures", ""]
    lines += [f"![{what}]({name})" for what, name in (("metrics per row, paper hatched", images.get("metrics")),
                                                       ("training loss per row", images.get("loss"))) if name]
    if not any(images.values()):
        lines.append("No figures: nothing scored or logged yet.")
    lines += ["", "## Example hypotheses", ""] + render_examples(rows, examples)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- figures
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=100)


def plot_metrics(rows: list[dict], path: Path) -> bool:
    """One panel per metric, one bar per row (error bar: seed std), the paper's GPT-2 M figure hatched beside."""
    names = [m for m in METRICS if any(r["metrics"].get(m, {}).get("mean") is not None for r in rows)]
    if not names:
        return False
    plt = _pyplot()
    cols = min(3, len(names))
    nrows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(max(4.5, 0.55 * len(rows) + 1.5) * cols, 3.6 * nrows),
                             squeeze=False)
    xs = list(range(len(rows)))
    for ax, name in zip(axes.flat, names):
        stats = [r["metrics"].get(name) or {} for r in rows]
        ax.bar([x - 0.2 for x in xs], [s.get("mean") or 0.0 for s in stats], width=0.4,
               yerr=[s.get("std") or 0.0 for s in stats], capsize=3, label="ours (mean ± std)")
        paper = [(x, r["paper"]["metrics"][name]["value"]) for x, r in zip(xs, rows)
                 if r["paper"] and name in r["paper"]["metrics"]]
        if paper:
            ax.bar([x + 0.2 for x, _ in paper], [v for _, v in paper], width=0.4, hatch="//", fill=False,
                   label="paper GPT-2 M")
        ax.set_xticks(xs)
        ax.set_xticklabels([r["label"] for r in rows], rotation=35, ha="right", fontsize=7)
        ax.set_title(METRIC_LABEL.get(name, name))
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return True


def plot_losses(rows: list[dict], path: Path) -> bool:
    """Every row's first logged seed: training loss as a line, dev loss as points of the same colour."""
    curves = [(r, next((run for run in r["_runs"] if run["train_curve"] or run["valid_curve"]), None)) for r in rows]
    curves = [(r, run) for r, run in curves if run is not None]
    if not curves:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for r, run in curves:
        color = None
        if run["train_curve"]:
            xs, ys = zip(*run["train_curve"])
            (line,) = ax.plot(xs, ys, linewidth=1.2, label=f"{r['label']} ({run['name']})")
            color = line.get_color()
        if run["valid_curve"]:
            xs, ys = zip(*run["valid_curve"])
            ax.plot(xs, ys, "o", color=color, markersize=5, markerfacecolor="none",
                    label=None if color else f"{r['label']} dev ({run['name']})")
    ax.plot([], [], "o", color="gray", markerfacecolor="none", label="dev loss (circles)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (log scale)")
    ax.set_yscale("log")  # a random-init row starts near ln(50257) ~ 10.8; log keeps the others readable
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda y, _: f"{y:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.set_title("Training loss per row (first seed); circles: dev loss")
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return True


# ---------------------------------------------------------------- entry points
def build_table_report(manifest_path: str | Path, out_dir: str | Path) -> Path:
    """Write report.md, report.json, metrics.png and loss.png into out_dir; returns out_dir."""
    manifest = load_manifest(manifest_path)
    split = manifest.get("split", "test")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = [load_row(row, split) for row in manifest["rows"]]
    formatted = [resolve(manifest["test_formatted"])] if manifest.get("test_formatted") else []
    formatted.append(formatted_file(Path(manifest_path).parent / DATA, split))  # the driver's data/
    examples = collect_examples(rows, split, formatted)
    train_formatted = (resolve(manifest["train_formatted"]) if manifest.get("train_formatted")
                       else formatted_file(Path(manifest_path).parent / DATA, "train"))
    names = names_written(rows, split, train_formatted, formatted)
    order = ordering(rows)
    images = {"metrics": METRICS_PNG if plot_metrics(rows, out / METRICS_PNG) else None,
              "loss": LOSS_PNG if plot_losses(rows, out / LOSS_PNG) else None}
    written = RunFolder(out)  # a report folder: the file names of a run folder's report
    with atomic_open(written.report_md) as handle:
        handle.write(render_markdown(manifest, rows, order, examples, images, names))
    write_json(written.report_json, {
        "headline": headline(manifest.get("pretrain")),
        **{k: manifest.get(k) for k in PASSED_THROUGH},
        "notes": manifest.get("notes") or [],
        "failures": manifest.get("failures") or [],
        "split": split,
        "metric_names": METRICS,
        "scale": "BLEU, METEOR, ROUGE_L in percent (paper scale); std is the sample std (ddof=1), null for n=1",
        "rows": [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows],
        "ordering": order,
        "examples": examples,
        "names_written": names,
        "images": images,
    })
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.table_report", description=__doc__.split("\n\n")[0])
    ap.add_argument("manifest", help="the experiment driver's manifest JSON")
    ap.add_argument("--out", help="output folder (default: report/ beside the manifest)")
    args = ap.parse_args(argv)
    try:
        out = build_table_report(args.manifest, args.out or Path(args.manifest).parent / REPORT_DIR)
    except (InputFileError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    written = RunFolder(out)
    print(written.report_md.read_text(encoding="utf-8").split("\n", 1)[0])
    print(f"wrote {written.report_md}, {written.report_json.name}, {METRICS_PNG}, {LOSS_PNG}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
