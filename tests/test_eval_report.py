"""eval.report on small fake run folders: headline, paper figures beside ours, files written, missing parts."""
from __future__ import annotations

import json

import pytest

from eval.paper import PAPER_ROWS, ours_in_paper_scale, paper_row
from eval.report import build_report, main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_run(root, name, *, dataset="e2e", model="gpt2-medium", method="lora", random_model=False,
             synthetic=False, metrics=None, summary=True, log=True, params=350000):
    run = root / name
    run.mkdir(parents=True)
    recipe = {"dataset": dataset, "model": model, "method": method, "random_model": random_model,
              "trainable_params": params, "paper_param_count": params, "rank": 4}
    if synthetic:
        recipe["synthetic_data"] = True
    (run / "recipe.json").write_text(json.dumps(recipe))
    if summary:
        (run / "train_summary.json").write_text(json.dumps({
            "trainable_params": params, "train_time_s": 42.0, "tokens_per_s": 1500.0,
            "final_train_loss": 1.25, "final_valid_loss": 1.5, "steps": 30}))
    if log:
        (run / "log.jsonl").write_text("\n".join(json.dumps(r) for r in [
            {"step": 10, "loss": 3.0, "lr": 1e-4}, {"step": 20, "loss": 2.0, "lr": 2e-4},
            {"step": 20, "epoch": 0, "valid_loss": 2.2}, {"step": 30, "loss": 1.25, "lr": 2e-4}]) + "\n")
    if metrics is not None:
        (run / "scores.test.json").write_text(json.dumps({"dataset": dataset, "split": "test", "metrics": metrics}))
    return run


E2E_SCORES = {"BLEU": 0.7, "NIST": 8.9, "METEOR": 0.465, "ROUGE_L": 0.72, "CIDEr": 2.5}


def test_single_run_report_beside_table_3(tmp_path):
    run = make_run(tmp_path, "e2e-gpt2-medium-lora", metrics=E2E_SCORES)
    assert main([str(run)]) == 0
    md = (run / "report.md").read_text(encoding="utf-8")
    assert md.splitlines()[0] == "# Results beside the paper"
    assert "| BLEU | 70.00 | 70.4 ± 0.1 | 🔴 -0.40 |" in md
    assert "| NIST | 8.9000 | 8.85 ± 0.02 | 🟢 +0.05 |" in md
    assert "| METEOR | 46.50 | 46.8 ± 0.2 | 🔴 -0.30 |" in md
    report = json.loads((run / "report.json").read_text())
    (entry,) = report["runs"]
    assert entry["paper_label"] == "GPT-2 M (LoRA)"
    assert entry["train_time_s"] == 42.0 and entry["tokens_per_s"] == 1500.0 and entry["trainable_params"] == 350000
    assert [e["metric"] for e in entry["comparison"]] == ["BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr"]
    assert entry["comparison"][4]["paper"] == 2.53 and entry["comparison"][4]["diff"] == pytest.approx(-0.03)
    assert (run / "loss.png").read_bytes().startswith(PNG_MAGIC)
    assert entry["loss_png"] == "loss.png"


def test_random_model_and_synthetic_data_are_said_first(tmp_path):
    run = make_run(tmp_path, "quick", model="tiny", random_model=True, synthetic=True, metrics=E2E_SCORES)
    build_report([run])
    first = (run / "report.md").read_text(encoding="utf-8").splitlines()[0]
    assert "Randomly initialised model" in first and "synthetic data" in first
    report = json.loads((run / "report.json").read_text())
    assert report["headline"] == first
    assert all(e["paper"] is None for e in report["runs"][0]["comparison"])  # no paper row for the tiny model


def test_missing_summary_log_and_scores_are_tolerated(tmp_path):
    run = make_run(tmp_path, "bare", summary=False, log=False, metrics=None)
    build_report([run])
    md = (run / "report.md").read_text(encoding="utf-8")
    assert "Missing: train_summary.json, scores.test.json, log.jsonl." in md
    assert "No scores yet." in md
    assert not (run / "loss.png").exists()


def test_several_runs_webnlg_categories_and_bar_chart(tmp_path):
    cats = {c: {"BLEU": b, "BLEU_NLTK": 0.5, "METEOR": 0.4, "TER": 0.45, "chrF++": 0.6}
            for c, b in (("all", 55.0), ("seen", 62.5), ("unseen", 46.0))}
    runs = [make_run(tmp_path, "webnlg-lora", dataset="webnlg", metrics=cats),
            make_run(tmp_path, "webnlg-ft", dataset="webnlg", method="ft", metrics=cats, params=354_920_000)]
    out = tmp_path / "out"
    assert main([str(r) for r in runs] + ["--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    lora = {e["metric"]: e for e in report["runs"][0]["comparison"]}
    assert lora["BLEU/unseen"]["paper"] == 46.7 and lora["BLEU/unseen"]["diff"] == pytest.approx(-0.7)
    assert lora["BLEU/seen"]["paper"] == 62.1 and lora["BLEU/all"]["paper"] == 55.3
    assert lora["TER/all"]["paper"] is None  # not in the transcribed tables
    ft = {e["metric"]: e for e in report["runs"][1]["comparison"]}
    assert ft["BLEU/unseen"]["paper"] == 30.4 and ft["BLEU/unseen"]["better_or_equal"] is True
    for name in ("metrics.png", "loss-webnlg-lora.png", "loss-webnlg-ft.png"):
        assert (out / name).read_bytes().startswith(PNG_MAGIC)
    assert "![metrics across runs](metrics.png)" in (out / "report.md").read_text(encoding="utf-8")


def test_paper_rows_lookup_and_scale():
    assert len([r for r in PAPER_ROWS if r.dataset == "e2e"]) == 12
    assert paper_row("e2e", "gpt2-medium", "adapter-l", 11_090_000).trainable_m == 11.09
    assert paper_row("e2e", "gpt2-medium", "adapter-l", 370_000).trainable_m == 0.37
    assert paper_row("dart", "gpt2-large", "lora").metrics["BLEU"].value == 47.5
    assert paper_row("dart", "gpt2-medium", "adapter-h").label == "GPT-2 M (Adapter)"
    assert paper_row("e2e", "tiny", "lora") is None
    assert ours_in_paper_scale("e2e", "BLEU", 0.704) == pytest.approx(70.4)
    assert ours_in_paper_scale("e2e", "NIST", 8.85) == 8.85
    assert ours_in_paper_scale("webnlg", "BLEU/all", 55.3) == 55.3
