"""eval.aggregate and eval.table_report on hand-written run folders in the pipeline's formats: seeds pooled to
mean ± sample std, the paper beside ours, the BLEU ordering, example hypotheses with their MRs, files written."""
from __future__ import annotations

import json
import math

import pytest

import eval.table_report as table_report
from eval.aggregate import aggregate_row, mean_std, summarize
from eval.table_report import build_table_report, main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MRS = ["name : The Eagle | Type : coffee shop", "name : Alimentum | food : Chinese", "name : Aromi | area : riverside",
       "name : Blue Spice | priceRange : high"]
REFS = [["The Eagle is a coffee shop.", "There is a coffee shop called The Eagle."],
        ["Alimentum serves Chinese food."],
        ["Aromi is by the riverside.", "By the riverside is Aromi.", "Aromi is on the riverside."],
        ["Blue Spice is expensive."]]
PRETRAIN = {"card": "mini", "n_layer": 4, "n_embd": 256, "n_head": 4, "tokens_seen": 1234567,
            "heldout_perplexity": 31.25, "train_time_s": 900.0,
            "corpus": {"label": "WebNLG 2017 + DART v1.1.1 texts (no E2E)", "train_tokens": 250000}}


def e2e_scores(bleu, nist, meteor, rouge, cider):
    return {"BLEU": bleu, "NIST": nist, "METEOR": meteor, "ROUGE_L": rouge, "CIDEr": cider}


def make_run(root, name, scores, hyps, *, method="lora", params=12288, train_time=100.0, trained=True,
             formatted=False):
    """A run folder as the pipeline leaves it (recipe, summary, log, scores, eval/test/ from write_e2e)."""
    run = root / name
    (run / "eval" / "test").mkdir(parents=True)
    recipe = {"dataset": "e2e", "model": "mini", "method": method, "trainable_params": params if trained else 0}
    if trained:
        recipe["paper_param_count"] = params
    (run / "recipe.json").write_text(json.dumps(recipe))
    if trained:
        (run / "train_summary.json").write_text(json.dumps({"train_time_s": train_time, "trainable_params": params,
                                                            "steps": 30, "final_train_loss": 1.2,
                                                            "best_valid_loss": train_time / 100}))
        (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
            {"step": 10, "loss": 3.0}, {"step": 20, "loss": 2.0}, {"step": 20, "valid_loss": 2.3},
            {"step": 30, "loss": 1.2}, {"step": 30, "valid_loss": 1.9}]))
    (run / "scores.test.json").write_text(json.dumps({"dataset": "e2e", "split": "test", "metrics": scores,
                                                      "n": len(REFS)}))
    (run / "eval" / "test" / "references.txt").write_text("".join("".join(r + "\n" for r in g) + "\n" for g in REFS))
    (run / "eval" / "test" / "hypothesis.txt").write_text("".join(h + "\n" for h in hyps))
    (run / "predictions.test.jsonl").write_text("".join(json.dumps({"id": i, "predict": [0]}) + "\n"
                                                        for i in range(len(hyps))))
    if formatted:  # the pipeline's copy of the formatted split
        write_formatted(run / "data")
    return run


def write_formatted(folder):
    """<split>_formatted.jsonl as data.e2e.prepare writes it: one record per reference, the MR as context."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "test_formatted.jsonl").write_text("".join(
        json.dumps({"context": mr, "completion": " " + ref + " "}) + "\n" for mr, g in zip(MRS, REFS) for ref in g))


def hyps_of(tag):
    return [f"{tag} hypothesis {i + 1}" for i in range(len(REFS))]


@pytest.fixture
def experiment(tmp_path, monkeypatch):
    monkeypatch.setattr(table_report, "REPO", tmp_path)  # manifest paths are relative to the repository root
    runs = tmp_path / "runs" / "cpu-table3"
    lora = [make_run(runs, f"lora-s{s}", e2e_scores(b, n, m, r, c), hyps_of(f"lora s{s}"), train_time=t,
                     formatted=s == 110)
            for s, b, n, m, r, c, t in ((110, 0.60, 8.0, 0.40, 0.66, 2.0, 100.0), (111, 0.62, 8.2, 0.41, 0.67, 2.1, 110.0),
                                        (112, 0.64, 8.4, 0.42, 0.68, 2.2, 120.0))]
    ft_hyps = ["FT says | pipes", "", "ft 3", "ft 4"]
    ft = [make_run(runs, f"ft-s{s}", e2e_scores(b, 8.5, 0.43, 0.69, 2.3), ft_hyps, method="ft", params=10_500_000,
                   train_time=300.0)
          for s, b in ((110, 0.65), (111, 0.66))]
    pre = make_run(runs, "prefix-embed-s110", e2e_scores(0.50, 7.0, 0.35, 0.60, 1.5), hyps_of("pre"),
                   method="prefix-embed", params=5120, train_time=90.0)
    none = make_run(runs, "no-adapt", e2e_scores(0.10, 2.0, 0.15, 0.30, 0.2), hyps_of("raw"), trained=False)
    rel = lambda p: str(p.relative_to(tmp_path))
    manifest = {
        "title": "CPU Table 3", "command": "bash scripts/cpu_table3.sh", "machine": "Intel Xeon test, 2 cores",
        "wall_time_s": 4321.0, "budget_s": 5400, "pretrain_time_s": 950.0, "pretrain": PRETRAIN,
        "failures": ["prefix-embed-s111: train failed (exit 1); see logs/train.log"],
        "notes": ["sizes scaled to the mini model", "learning rates tuned on the dev set"],
        "rows": [
            {"id": "lora", "label": "LoRA", "method": "lora", "kind": "method", "settings": "r=4 on W_q,W_v",
             "paper_method": "lora", "runs": [rel(p) for p in lora]},
            {"id": "ft", "label": "FT", "method": "ft", "kind": "method", "settings": "all weights",
             "paper_method": "ft", "runs": [str(p) for p in ft]},
            {"id": "prefix-embed", "label": "PreEmbed", "method": "prefix-embed", "kind": "method",
             "settings": "10+10 tokens", "paper_method": None,
             "runs": [rel(pre), "runs/cpu-table3/prefix-embed-s111"]},
            {"id": "no-adapt", "label": "pretrained, no adaptation", "method": None, "kind": "control",
             "settings": "zero-shot", "paper_method": None, "runs": [rel(none)]},
        ],
    }
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest))
    return path, lora


def test_mean_std_edge_cases():
    assert mean_std([5.0]) == (5.0, None)
    assert mean_std([0.60, 0.62, 0.64]) == (pytest.approx(0.62), pytest.approx(0.02))
    assert mean_std([1, 2, 3, 4])[1] == pytest.approx(math.sqrt(5 / 3))  # ddof=1, not ddof=0
    assert mean_std([2.0, 2.0]) == (2.0, 0.0)
    with pytest.raises(ValueError):
        mean_std([])
    assert summarize([None, 3.0]) == {"mean": 3.0, "std": None, "n": 1, "values": [3.0]}
    assert summarize([None]) == {"mean": None, "std": None, "n": 0, "values": []}


def test_aggregate_row_in_paper_scale(experiment):
    _, lora = experiment
    agg = aggregate_row(lora)
    assert list(agg) == ["BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr"]
    assert agg["BLEU"]["mean"] == pytest.approx(62.0) and agg["BLEU"]["std"] == pytest.approx(2.0)
    assert agg["NIST"]["mean"] == pytest.approx(8.2) and agg["NIST"]["std"] == pytest.approx(0.2)  # not scaled
    assert agg["BLEU"]["n"] == 3 and agg["BLEU"]["values"] == pytest.approx([60.0, 62.0, 64.0])
    assert aggregate_row(lora[:1])["METEOR"] == {"mean": pytest.approx(40.0), "std": None, "n": 1,
                                                 "values": [pytest.approx(40.0)]}


def test_table_report_markdown(experiment, tmp_path):
    manifest, _ = experiment
    out = build_table_report(manifest, tmp_path / "report")
    md = (out / "report.md").read_text(encoding="utf-8")
    lines = md.splitlines()
    assert lines[0] == ("mini GPT-2 pretrained here on 1,234,567 tokens of WebNLG 2017 + DART v1.1.1 texts (no E2E); "
                        "not OpenAI's GPT-2")
    assert "# CPU Table 3" in lines
    assert ("Model: 4 layers, 256 wide, 4 heads; corpus of 250,000 training tokens (seen 4.9 times); "
            "held-out perplexity 31.25; pretraining took 900 s.") in lines
    assert "Command: `bash scripts/cpu_table3.sh`" in lines and "Machine: Intel Xeon test, 2 cores" in lines
    assert ("Wall time: 4,321 s (1 h 12 min) of a 5,400 s (1 h 30 min) budget (80%); 950 s of it pretraining "
            "the model.") in lines
    assert "**1 run(s) failed** (their rows have fewer seeds or none):" in lines
    assert "- prefix-embed-s111: train failed (exit 1); see logs/train.log" in lines
    assert ("| row | kind | settings | trainable params | seeds n | BLEU | NIST | METEOR | ROUGE-L | CIDEr | "
            "dev loss (best) | train time (mean s) |") in lines
    assert ("| LoRA | method | r=4 on W_q,W_v | 12,288 (0.0123M) | 3 | 62.00 ± 2.00 | 8.2000 ± 0.2000 | 41.00 ± 1.00 | "
            "67.00 ± 1.00 | 2.1000 ± 0.1000 | 1.100 | 110.0 |") in lines
    assert ("| FT | method | all weights | 10,500,000 (10.5M) | 2 | 65.50 ± 0.71 | 8.5000 ± 0.0000 | 43.00 ± 0.00 | "
            "69.00 ± 0.00 | 2.3000 ± 0.0000 | 3.000 | 300.0 |") in lines
    assert ("| PreEmbed | method | 10+10 tokens | 5,120 (0.00512M) | 1 of 2 | 50.00 | 7.0000 | 35.00 | 60.00 | "
            "1.5000 | 0.900 | 90.0 |") in lines
    assert ("| pretrained, no adaptation | control | zero-shot | 0 | 1 | 10.00 | 2.0000 | 15.00 | "
            "30.00 | 0.2000 | — | — |") in lines
    assert "n = 1 (one seed, so no ± shown): PreEmbed, pretrained, no adaptation." in lines
    assert "PreEmbed: run folder(s) missing: runs/cpu-table3/prefix-embed-s111." in lines
    # the paper's GPT-2 M rows, with ours mapped to them
    assert "| GPT-2 M (LoRA) | 0.35M | 70.4 ± 0.1 | 8.85 ± 0.02 | 46.8 ± 0.2 | 71.8 ± 0.1 | 2.53 ± 0.02 | LoRA |" in lines
    assert "| GPT-2 M (FT) | 354.92M | 68.2 | 8.62 | 46.2 | 71.0 | 2.47 | FT |" in lines
    assert "| GPT-2 M (PreLayer) | 0.35M | 69.7 | 8.81 | 46.1 | 71.4 | 2.49 | — |" in lines
    # ordering by BLEU: ours FT > LoRA, the paper LoRA > FT
    assert "- Ours (method rows, mean BLEU): FT (65.50) > LoRA (62.00) > PreEmbed (50.00)." in lines
    assert "- Paper, GPT-2 M, same methods: LoRA (70.4 ± 0.1) > FT (68.2)." in lines
    assert "| GPT-2 M (Adapter^L) | 0.37M | 66.3 | 8.41 | 45.0 | 69.8 | 2.40 | — |" in lines
    assert "- No paper figure (left out of the comparison): PreEmbed." in lines
    assert "- Different order from the paper: 0 of 1 pairs agree." in lines
    assert "  - ours puts FT above LoRA (+3.50 BLEU), the paper puts LoRA above FT (+2.2)." in lines
    assert ("- All rows by mean BLEU: FT (65.50) > LoRA (62.00) > PreEmbed (50.00) > "
            "pretrained, no adaptation (10.00).") in lines
    assert "- sizes scaled to the mini model" in lines and "- learning rates tuned on the dev set" in lines
    assert "![metrics per row, paper hatched](metrics.png)" in lines and "![training loss per row](loss.png)" in lines


def test_table_report_examples(experiment, tmp_path):
    manifest, _ = experiment
    out = build_table_report(manifest, tmp_path / "report")
    md = (out / "report.md").read_text(encoding="utf-8")
    examples = md.split("## Example hypotheses", 1)[1]
    lines = examples.splitlines()
    assert "MRs from `runs/cpu-table3/lora-s110/data/test_formatted.jsonl`." in lines  # relative to the repo
    assert "hypothesis comes from its first seed: LoRA: lora-s110; FT: ft-s110; PreEmbed: prefix-embed-s110; " \
           "pretrained, no adaptation: no-adapt." in examples
    assert [line for line in lines if line.startswith("### ")] == ["### MR 1", "### MR 2", "### MR 3"]
    mr1 = examples.split("### MR 1", 1)[1].split("### MR 2", 1)[0].strip().splitlines()
    assert mr1 == ["`name : The Eagle | Type : coffee shop`", "", "References:", "",
                   "1. The Eagle is a coffee shop.", "2. There is a coffee shop called The Eagle.", "",
                   "| row | hypothesis |", "|---|---|", "| LoRA | lora s110 hypothesis 1 |",
                   "| FT | FT says \\| pipes |", "| PreEmbed | pre hypothesis 1 |",
                   "| pretrained, no adaptation | raw hypothesis 1 |"]
    assert "| FT | (empty output) |" in examples.split("### MR 2", 1)[1]
    assert "3. Aromi is on the riverside." in lines and "lora s110 hypothesis 4" not in examples


def test_table_report_json_and_images(experiment, tmp_path):
    manifest, _ = experiment
    out = build_table_report(manifest, tmp_path / "report")
    for name in ("metrics.png", "loss.png"):
        assert (out / name).read_bytes().startswith(PNG_MAGIC)
    report = json.loads((out / "report.json").read_text())
    assert report["headline"].startswith("mini GPT-2 pretrained here on 1,234,567 tokens")
    assert report["images"] == {"metrics": "metrics.png", "loss": "loss.png"}
    assert report["metric_names"] == ["BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr"]
    assert (report["wall_time_s"], report["budget_s"], report["pretrain"]) == (4321.0, 5400, PRETRAIN)
    assert report["pretrain_time_s"] == 950.0 and len(report["failures"]) == 1
    assert report["notes"] == ["sizes scaled to the mini model", "learning rates tuned on the dev set"]
    rows = {r["id"]: r for r in report["rows"]}
    assert list(rows) == ["lora", "ft", "prefix-embed", "no-adapt"]
    lora = rows["lora"]
    assert lora["n_runs"] == 3 and lora["trainable_params"] == [12288] and lora["test_instances"] == [4]
    assert lora["metrics"]["BLEU"]["mean"] == pytest.approx(62.0) and lora["metrics"]["BLEU"]["std"] == pytest.approx(2.0)
    assert lora["train_time_s"] == {"mean": 110.0, "std": 10.0, "n": 3, "values": [100.0, 110.0, 120.0]}
    assert lora["paper"]["label"] == "GPT-2 M (LoRA)" and lora["paper"]["metrics"]["BLEU"] == {"value": 70.4, "ci": 0.1}
    assert rows["no-adapt"]["metrics"]["BLEU"]["std"] is None and rows["no-adapt"]["paper"] is None
    assert rows["no-adapt"]["train_time_s"]["mean"] is None
    assert rows["prefix-embed"]["missing_runs"] == ["runs/cpu-table3/prefix-embed-s111"]
    assert report["ordering"]["ours"] == ["ft", "lora", "prefix-embed"]
    assert report["ordering"]["paper"] == ["lora", "ft"]
    assert report["ordering"]["swapped"] == [{"ours_higher": "ft", "paper_higher_or_equal": "lora",
                                              "ours_gap": pytest.approx(3.5), "paper_gap": pytest.approx(2.2),
                                              "within_one_std": False}]
    groups = report["examples"]["groups"]
    assert [g["mr"] for g in groups] == [
        "name : The Eagle | Type : coffee shop", "name : Alimentum | food : Chinese", "name : Aromi | area : riverside"]
    assert groups[1]["references"] == ["Alimentum serves Chinese food."]
    assert groups[2]["hypotheses"] == {"lora": "lora s110 hypothesis 3", "ft": "ft 3",
                                       "prefix-embed": "pre hypothesis 3", "no-adapt": "raw hypothesis 3"}


def test_mr_sources_and_cli(experiment, tmp_path, capsys):
    manifest, lora = experiment
    (lora[0] / "data" / "test_formatted.jsonl").unlink()
    write_formatted(tmp_path / "data")  # the driver's layout: data/ beside manifest.json
    build_table_report(manifest, tmp_path / "beside")
    assert "MRs from `data/test_formatted.jsonl`." in (tmp_path / "beside" / "report.md").read_text(encoding="utf-8")
    other = tmp_path / "data" / "test_formatted.jsonl"  # a formatted file of another test set is not used
    other.write_text(other.read_text().replace("Alimentum serves", "Alimentum has"))
    assert main([str(manifest), "--out", str(tmp_path / "cli")]) == 0  # no MR source: refs and hyps still shown
    md = (tmp_path / "cli" / "report.md").read_text(encoding="utf-8")
    assert "MRs not shown: no formatted test file matching the references was found." in md
    assert "`name : The Eagle" not in md and "| LoRA | lora s110 hypothesis 1 |" in md
    assert capsys.readouterr().out.splitlines()[0].startswith("mini GPT-2 pretrained here")


def test_bad_manifest(tmp_path):
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"rows": [{"id": "a", "runs": []}, {"id": "a", "runs": []}]}))
    assert main([str(path), "--out", str(tmp_path / "o")]) == 2
    path.write_text(json.dumps({"rows": []}))
    with pytest.raises(ValueError, match="non-empty list 'rows'"):
        build_table_report(path, tmp_path / "o")


def test_table_report_counts_names_written(experiment, tmp_path):
    manifest, _ = experiment
    (tmp_path / "data").mkdir()  # the driver's data/ beside the manifest: the training MRs
    (tmp_path / "data" / "train_formatted.jsonl").write_text("".join(
        json.dumps({"context": mr, "completion": " x "}) + "\n" for mr in ("name : The Eagle | food : Thai",
                                                                           "name : Aromi | area : city centre")))
    for seed in (110, 111):  # FT writes The Eagle (seen) and both unseen names, not Aromi (seen)
        (tmp_path / "runs" / "cpu-table3" / f"ft-s{seed}" / "eval" / "test" / "hypothesis.txt").write_text(
            "The Eagle is a coffee shop .\nAlimentum serves food .\nIt is by the river .\nBlue Spice .\n")
    out = build_table_report(manifest, tmp_path / "report")
    md = (out / "report.md").read_text(encoding="utf-8")
    names = md.split("## Names written", 1)[1].split("\n## ", 1)[0]
    assert "| FT | 50.0 % (2 of 4) | 100.0 % (4 of 4) |" in names  # pooled over the two seeds
    assert "| LoRA | 0.0 % (0 of 6) | 0.0 % (0 of 6) |" in names
    assert "| the first reference of each MR (a person) | 100.0 % (2 of 2) | 100.0 % (2 of 2) |" in names
    got = json.loads((out / "report.json").read_text())["names_written"]
    assert got["rows"]["ft"]["seen_written"] == 2 and got["rows"]["no-adapt"]["unseen_total"] == 2
