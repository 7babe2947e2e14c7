"""Benchmark (not a test): wall time of our scorers vs the official scripts on the E2E test case and the DART case.

  python scripts/bench_eval.py [--cases ../shared/eval-cases] [--official-e2e DIR] [--official-webnlg DIR]
                               [--official-pythonpath P] [--only e2e|dart] [--out bench.json]

Each scorer runs as a fresh process, the way a user runs it (interpreter start, Java start and all). The
official scripts run only when their folders are given: DIR of a e2e-metrics clone (with the PTB and METEOR
jars in its pycocoevalcap/) and of a GenerationEval clone (metrics/meteor-1.5/ holding the jar and data/, the
unused bert_score/bleurt imports removed; its run() is called the way its command line would). Values are
compared at the precision each official script prints.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
E2E_CASE = ("e2e-test-tgen-std-run0", "references.txt", "tgen-std.run0.txt")
DART_CASE = ("dart-test-bart-large-lora-layout", "references/reference", "hypothesis", 6)


def timed(cmd: list[str], cwd: Path, env: dict) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return elapsed, proc.stdout


def ours(task: str, refs: Path, hyps: Path, nr: int | None, env: dict) -> tuple[float, dict]:
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-eval-{task}-{os.getpid()}.json"
    cmd = [sys.executable, "-m", "eval.score", "--task", task, "--refs", str(refs), "--hyps", str(hyps),
           "--out", str(out)]
    if nr:
        cmd += ["-nr", str(nr)]
    secs, _ = timed(cmd, REPO, env)
    metrics = json.loads(out.read_text())["metrics"]
    out.unlink()
    return secs, metrics


def official_e2e(folder: Path, refs: Path, hyps: Path, env: dict) -> tuple[float, dict]:
    secs, out = timed([sys.executable, "measure_scores.py", "-p", str(refs), str(hyps)], folder, env)
    return secs, {m: float(v) for m, v in re.findall(r"^(BLEU|NIST|METEOR|ROUGE_L|CIDEr): ([0-9.]+)$", out, re.M)}


# eval.py empties sys.argv when imported (for bleurt's flags), so its command line cannot take arguments;
# this calls the run() its command line would call, and prints the result as the script would round it.
_GE_DRIVER = (
    "import json, sys; refs, hyps, nr = sys.argv[1], sys.argv[2], int(sys.argv[3]); import eval as ge; "
    "r = ge.run(refs_path=refs, hyps_path=hyps, num_refs=nr, lng='en', metrics='bleu,meteor,chrf++,ter'); "
    "print(json.dumps({'BLEU': r['bleu'], 'BLEU NLTK': round(r['bleu_nltk'], 2), 'METEOR': round(r['meteor'], 2), "
    "'chrF++': round(r['chrf++'], 2), 'TER': round(r['ter'], 2)}))")


def official_webnlg(folder: Path, refs: Path, hyps: Path, nr: int, env: dict) -> tuple[float, dict]:
    cmd = [sys.executable, "-c", _GE_DRIVER, str(refs), str(hyps), str(nr)]
    secs, out = timed(cmd, folder, env)
    return secs, json.loads(out.strip().splitlines()[-1])


def same_values(task: str, mine: dict, theirs: dict) -> bool:
    if task == "e2e":
        return all(f"{mine[k]:.4f}" == f"{theirs[k]:.4f}" for k in theirs)
    keys = {"BLEU": "BLEU", "BLEU NLTK": "BLEU_NLTK", "METEOR": "METEOR", "chrF++": "chrF++", "TER": "TER"}
    return all(round(mine[keys[k]], 2) == theirs[k] for k in theirs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default=str(REPO.parent / "shared" / "eval-cases"))
    ap.add_argument("--official-e2e", help="folder of a prepared e2e-metrics clone")
    ap.add_argument("--official-webnlg", help="folder of a prepared GenerationEval clone")
    ap.add_argument("--official-pythonpath", default="", help="extra PYTHONPATH for the official scripts")
    ap.add_argument("--only", choices=("e2e", "dart"))
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()
    cases = Path(args.cases)
    env = dict(os.environ)
    env.setdefault("NLTK_DATA", str(REPO.parent / "shared" / "nltk_data"))
    off_env = dict(env)
    if args.official_pythonpath:
        off_env["PYTHONPATH"] = args.official_pythonpath + os.pathsep + off_env.get("PYTHONPATH", "")
    rows = []
    if args.only in (None, "e2e"):
        name, r, h = E2E_CASE
        refs, hyps = cases / name / r, cases / name / h
        row = {"case": name, "task": "e2e"}
        row["ours_s"], row["ours"] = ours("e2e", refs, hyps, None, env)
        if args.official_e2e:
            row["official_s"], row["official"] = official_e2e(Path(args.official_e2e), refs, hyps, off_env)
        rows.append(row)
    if args.only in (None, "dart"):
        name, r, h, nr = DART_CASE
        refs, hyps = cases / name / r, cases / name / h
        row = {"case": name, "task": "dart"}
        row["ours_s"], row["ours"] = ours("dart", refs, hyps, nr, env)
        if args.official_webnlg:
            row["official_s"], row["official"] = official_webnlg(Path(args.official_webnlg), refs, hyps, nr, off_env)
        rows.append(row)
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end")
    print("| case | ours (s) | official (s) | ours / official | same printed values |")
    print("|---|---|---|---|---|")
    for row in rows:
        if "official_s" in row:
            row["ratio"] = row["ours_s"] / row["official_s"]
            row["same_values"] = same_values(row["task"], row["ours"], row["official"])
            print(f"| {row['case']} | {row['ours_s']:.1f} | {row['official_s']:.1f} | {row['ratio']:.3f} "
                  f"({1 / row['ratio']:.1f}x faster) | {row['same_values']} |")
        else:
            print(f"| {row['case']} | {row['ours_s']:.1f} | not run | — | — |")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
