"""eval.report on small fake run folders: headline, paper figures beside ours, files written, missing parts."""
from __future__ import annotations

import json

import pytest

from eval.paper import PAPER_ROWS, ours_in_paper_scale, paper_row
from eval.report import build_report, main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_run(root, name, *, dataset="e2e", model="gpt2-medium", method="lora", random_model=False,
             synthetic=False, metrics=None, summary=True, log=True, params=350000, seed=None):
    run = root / name
    run.mkdir(parents=True)
    recipe = {"dataset": dataset, "model": model, "method": method, "random_model": random_model,
              "trainable_params": params, "paper_param_count": params, "rank": 4}
    if synthetic:
        recipe["synthetic_data"] = True
    if seed is not None:
        recipe["seed"] = seed
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


def test_seeds_aggregate_to_mean_and_sample_std(tmp_path):
    """Three seeds of one recipe: mean ± sample std (ddof 1) per metric beside the paper's ±; another method's
    run and a metric one seed lacks are handled."""
    scores = [{"BLEU": 0.70, "NIST": 8.8, "METEOR": 0.46, "ROUGE_L": 0.72, "CIDEr": 2.50},
              {"BLEU": 0.71, "NIST": 8.9, "METEOR": 0.47, "ROUGE_L": 0.72, "CIDEr": 2.54},
              {"BLEU": 0.72, "NIST": 9.3, "METEOR": 0.48, "ROUGE_L": 0.72}]
    runs = [make_run(tmp_path, f"e2e-lora-s{seed}", metrics=m, seed=seed) for seed, m in zip((110, 111, 112), scores)]
    runs.append(make_run(tmp_path, "e2e-ft", method="ft", metrics=E2E_SCORES, params=354_920_000, seed=110))
    out = tmp_path / "e2e-lora-seeds"
    assert main([str(r) for r in runs] + ["--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    (group,) = report["seed_groups"]  # the ft run has no second seed: no group
    assert (group["dataset"], group["model"], group["method"], group["trainable_params"]) == (
        "e2e", "gpt2-medium", "lora", 350000)
    assert group["runs"] == ["e2e-lora-s110", "e2e-lora-s111", "e2e-lora-s112"] and group["seeds"] == [110, 111, 112]
    m = {e["metric"]: e for e in group["metrics"]}
    assert list(m) == ["BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr"]
    assert (m["BLEU"]["mean"], m["BLEU"]["std"], m["BLEU"]["n"]) == (pytest.approx(71.0), pytest.approx(1.0), 3)
    assert m["BLEU"]["paper"] == 70.4 and m["BLEU"]["paper_ci"] == 0.1 and m["BLEU"]["diff"] == pytest.approx(0.6)
    assert m["NIST"]["mean"] == pytest.approx(9.0) and m["NIST"]["std"] == pytest.approx(0.07 ** 0.5)  # ddof 1
    assert m["METEOR"]["mean"] == pytest.approx(47.0) and m["METEOR"]["std"] == pytest.approx(1.0)
    assert m["ROUGE_L"]["mean"] == pytest.approx(72.0) and m["ROUGE_L"]["std"] == pytest.approx(0.0, abs=1e-12)
    assert (m["CIDEr"]["mean"], m["CIDEr"]["std"], m["CIDEr"]["n"]) == (
        pytest.approx(2.52), pytest.approx(0.02 * 2 ** 0.5), 2)
    assert [r["seed"] for r in report["runs"]] == [110, 111, 112, 110]
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "### e2e gpt2-medium lora: 3 runs (seeds 110, 111, 112)" in md
    assert "| BLEU | 71.00 ± 1.00 | 3 | 70.4 ± 0.1 | +0.60 |" in md
    assert "| NIST | 9.0000 ± 0.2646 | 3 | 8.85 ± 0.02 | +0.15 |" in md
    assert "| CIDEr | 2.5200 ± 0.0283 | 2 | 2.53 ± 0.02 | -0.01 |" in md


def test_single_seed_has_no_spread_and_best_checkpoint_is_reported(tmp_path):
    run = make_run(tmp_path, "one", metrics=E2E_SCORES, seed=110)
    summary = json.loads((run / "train_summary.json").read_text())
    summary.update(best_step=20, best_valid_loss=1.4, checkpoint={"selected": "best", "step": 20,
                                                                  "select_by": "valid_loss"})
    (run / "train_summary.json").write_text(json.dumps(summary))
    build_report([run])
    report = json.loads((run / "report.json").read_text())
    assert report["seed_groups"] == []
    assert (report["runs"][0]["best_step"], report["runs"][0]["best_valid_loss"]) == (20, 1.4)
    md = (run / "report.md").read_text(encoding="utf-8")
    assert "Across seeds" not in md
    assert ("final valid loss 1.5000, best valid loss 1.4000 at step 20, 30 steps. The adapter holds the best "
            "weights (step 20, --select-by valid_loss).") in md
