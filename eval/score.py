"""Score system outputs with the official-equal metrics.

  python -m eval.score --task e2e --refs REFS.txt --hyps HYPS.txt [--out scores.json]
  python -m eval.score --task webnlg|dart --refs PREFIX_OR_DIR --hyps HYPS [-nr 6] [--out scores.json]
  python -m eval.score --run-dir RUN --dataset e2e|webnlg|dart [--split test]

Besides the official-equal ``metrics``, every score record holds ``extra``: sacreBLEU with its signature
(eval.sacrebleu_extra), labelled as such and never compared with the paper's BLEU.

The run-folder form reads RUN/eval/<split>/ (e2e: references.txt + hypothesis.txt; dart: reference0.. +
hypothesis; webnlg: all/ seen/ unseen/ each like dart) and writes RUN/scores.<split>.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from nlg.io_utils import InputFileError, cli_error, write_json
from nlg.run_folder import RunFolder, RunLock, RunLockedError

from .e2e_metrics import score_e2e
from .java import JavaError
from .meteor import Meteor
from .readers import check_counts, read_e2e_references, read_hypotheses, read_multi_references
from .sacrebleu_extra import LABEL as SACREBLEU, sacrebleu_extra
from .webnlg_metrics import NltkDataError, score_webnlg, tokenize_pair

TASKS = ("e2e", "webnlg", "dart")
WEBNLG_CATEGORIES = ("all", "seen", "unseen")


def score_e2e_files(refs: str | Path, hyps: str | Path, meteor: Meteor | None = None) -> dict:
    hyp_list = read_hypotheses(hyps)
    if Path(refs).suffix == ".jsonl":
        ref_groups = read_multi_references(refs)
        ref_groups = [[r for r in g if r.strip()] for g in ref_groups]
    else:
        ref_groups = read_e2e_references(refs, n_hyps=len(hyp_list))
    check_counts(refs, len(ref_groups), hyps, len(hyp_list))
    empty = [i + 1 for i, g in enumerate(ref_groups) if not g]
    if empty:
        raise InputFileError(refs, f"instance {empty[0]} has no reference")
    return {"metrics": score_e2e(hyp_list, ref_groups, meteor=meteor), "n": len(hyp_list),
            "extra": {SACREBLEU: sacrebleu_extra(hyp_list, ref_groups)}}


def _read_multi_ref_files(refs: str | Path, hyps: str | Path,
                          num_refs: int | None = None) -> tuple[list[str], list[list[str]]]:
    hyp_list = read_hypotheses(hyps)
    ref_groups = read_multi_references(refs, num_refs)
    check_counts(refs, len(ref_groups), hyps, len(hyp_list))
    return hyp_list, ref_groups


def score_multi_ref_files(refs: str | Path, hyps: str | Path, num_refs: int | None = None,
                          meteor: Meteor | None = None) -> dict:
    hyp_list, ref_groups = _read_multi_ref_files(refs, hyps, num_refs)
    return {"metrics": score_webnlg(hyp_list, ref_groups, meteor=meteor), "n": len(hyp_list),
            "num_refs": len(ref_groups[0]), "extra": {SACREBLEU: sacrebleu_extra(hyp_list, ref_groups)}}


def has_categories(folder: Path) -> bool:
    return folder.is_dir() and all((folder / c).is_dir() for c in WEBNLG_CATEGORIES)


def score_webnlg_categories(folder: Path, num_refs: int | None = None) -> dict:
    """all / seen / unseen sub-folders, sharing one METEOR process; an empty category scores as null."""
    out: dict = {"metrics": {}, "n": {}, "extra": {}}
    read: dict[str, tuple] = {}  # category -> (hypotheses, references, their tokenised forms)
    for cat in WEBNLG_CATEGORIES:
        sub = folder / cat
        hyps = sub / "hypothesis"
        if hyps.is_file() and hyps.stat().st_size == 0:
            out["metrics"][cat], out["n"][cat] = None, 0
            continue
        hyp_list, ref_groups = _read_multi_ref_files(sub, hyps, num_refs)
        read[cat] = (hyp_list, ref_groups, tokenize_pair(hyp_list, ref_groups))
    # METEOR is told every text it will be sent over all categories, so it loads the paraphrases they can use
    texts = [t for _, _, (hyps_tok, refs_tok) in read.values() for t in [*hyps_tok, *(r for g in refs_tok for r in g)]]
    with Meteor(texts=texts) as meteor:
        for cat, (hyp_list, ref_groups, tokenized) in read.items():
            out["metrics"][cat] = score_webnlg(hyp_list, ref_groups, meteor=meteor, tokenized=tokenized)
            out["n"][cat] = len(hyp_list)
            out["extra"][cat] = {SACREBLEU: sacrebleu_extra(hyp_list, ref_groups)}
    return {"metrics": {c: out["metrics"][c] for c in WEBNLG_CATEGORIES},
            "n": {c: out["n"][c] for c in WEBNLG_CATEGORIES},
            "extra": {c: out["extra"].get(c) for c in WEBNLG_CATEGORIES}}


def score_run_dir(run_dir: str | Path, dataset: str, split: str = "test", num_refs: int | None = None) -> Path:
    """Score RUN/eval/<split>/ and write RUN/scores.<split>.json; returns that path."""
    run_dir = Path(run_dir)
    folder = RunFolder(run_dir).eval_dir(split)
    if not folder.is_dir():
        raise InputFileError(folder, "no such folder: run the decode stage first (it writes the reference and "
                                     "hypothesis files)")
    started = time.perf_counter()
    if dataset == "e2e":
        res = score_e2e_files(folder / "references.txt", folder / "hypothesis.txt")
    elif dataset == "webnlg":
        if not has_categories(folder):
            raise InputFileError(folder, "expected sub-folders all/ seen/ unseen/")
        res = score_webnlg_categories(folder, num_refs)
    elif dataset == "dart":
        res = score_multi_ref_files(folder, folder / "hypothesis", num_refs)
    else:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(TASKS)}")
    record = {"dataset": dataset, "split": split, "metrics": res["metrics"], "n": res["n"],
              "extra": res["extra"], "scoring_time_s": round(time.perf_counter() - started, 2)}
    out = RunFolder(run_dir).scores(split)
    write_json(out, record)
    return out


def format_metrics(metrics: dict) -> str:
    if metrics and all(isinstance(v, dict) or v is None for v in metrics.values()):
        return "\n".join(f"[{cat}] " + (format_metrics(m) if m else "no instances") for cat, m in metrics.items())
    return "  ".join(f"{k}: {v:.4f}" for k, v in metrics.items())


def format_extra(extra: dict | None) -> str:
    """The extra figures, one line each (per category for WebNLG), labelled as not the paper's."""
    if not extra:
        return ""
    if SACREBLEU in extra:
        e = extra[SACREBLEU]
        return f"extra (not the paper's BLEU): {SACREBLEU} {e['score']:.2f}  [{e['signature']}]"
    return "\n".join(f"[{cat}] " + format_extra(sub) for cat, sub in extra.items() if sub)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.score", description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", choices=TASKS, help="which official script to equal (with --refs/--hyps)")
    ap.add_argument("--refs", help="e2e: reference file (groups separated by blank lines) or JSONL; "
                                   "webnlg/dart: reference file prefix (PREFIX0, PREFIX1, ...) or folder")
    ap.add_argument("--hyps", help="one hypothesis per line, or the pipeline's JSONL with a 'text' field")
    ap.add_argument("-nr", "--num-refs", type=int, default=None,
                    help="webnlg/dart: number of reference files (default: as many as exist)")
    ap.add_argument("--out", help="also write the scores as JSON here")
    ap.add_argument("--run-dir", help="score RUN/eval/<split>/ and write RUN/scores.<split>.json")
    ap.add_argument("--dataset", choices=TASKS, help="with --run-dir")
    ap.add_argument("--split", default="test", help="with --run-dir (default: test)")
    args = ap.parse_args(argv)
    try:
        if args.run_dir:
            dataset = args.dataset or args.task
            if not dataset:
                ap.error("--run-dir needs --dataset")
            with RunLock(args.run_dir, "score", create=False):
                out = score_run_dir(args.run_dir, dataset, args.split, args.num_refs)
            record = json.loads(out.read_text())
            print(format_metrics(record["metrics"]))
            print(format_extra(record.get("extra")))
            print(f"wrote {out}")
            return 0
        if not (args.task and args.refs):
            ap.error("give --task, --refs and --hyps (or --run-dir and --dataset)")
        started = time.perf_counter()
        refs = Path(args.refs)
        if args.task == "e2e":
            if not args.hyps:
                ap.error("--hyps is required")
            res = score_e2e_files(refs, args.hyps)
        elif args.task == "webnlg" and has_categories(refs) and not args.hyps:
            res = score_webnlg_categories(refs, args.num_refs)
        else:
            if not args.hyps:
                ap.error("--hyps is required")
            res = score_multi_ref_files(refs, args.hyps, args.num_refs)
        record = {"task": args.task, "refs": str(refs), "hyps": args.hyps, **res,
                  "scoring_time_s": round(time.perf_counter() - started, 2)}
        print(format_metrics(res["metrics"]))
        print(format_extra(res.get("extra")))
        if args.out:
            write_json(args.out, record)
            print(f"wrote {args.out}")
        return 0
    except (InputFileError, JavaError, NltkDataError, RunLockedError, ValueError, OSError) as exc:
        return cli_error(exc)


if __name__ == "__main__":
    sys.exit(main())
