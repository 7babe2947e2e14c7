"""The CPU Table 3 driver end to end at CI size: a tiny model pretrained here, three rows, two seeds, a report."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from nlg.config import PretrainConfig
from nlg.cpu_table3 import (DEFAULT_ROWS, ROW_IDS, ROWS, TUNED_FROZEN, WTE_FLAGS, Budget, Options, jobs,
                             parse_args, run_table, split_dev_by_mr)


def test_dev_split_by_mr_keeps_every_mr_on_one_side(tmp_path):
    fmt = [{"context": f"mr{i % 23}", "completion": f"ref {i}"} for i in range(100)]
    enc = [{"context": [i % 23, 50256], "completion": [i, 50256]} for i in range(100)]
    for name, recs in (("f.jsonl", fmt), ("e.jsonl", enc)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in recs))
    counts = split_dev_by_mr(tmp_path / "f.jsonl", tmp_path / "e.jsonl", tmp_path, every=10)
    train = [json.loads(l) for l in (tmp_path / "train_formatted.jsonl").read_text().splitlines()]
    valid = [json.loads(l) for l in (tmp_path / "valid_formatted.jsonl").read_text().splitlines()]
    assert {r["context"] for r in valid} == {"mr9", "mr19"}  # the 10th and 20th distinct MRs
    assert not {r["context"] for r in train} & {r["context"] for r in valid}
    assert counts == {"train_records": len(train), "valid_records": len(valid), "train_mrs": 21, "valid_mrs": 2}
    enc_valid = [json.loads(l) for l in (tmp_path / "valid.jsonl").read_text().splitlines()]
    assert [r["completion"][0] for r in enc_valid] == [int(r["completion"].split()[1]) for r in valid]  # paired


def test_rows_cover_every_method_and_both_controls():
    from nlg.config import METHODS

    assert {r.method for r in ROWS if r.kind == "method"} == set(METHODS)
    assert {r.id for r in ROWS if r.kind == "control"} == {"no-adapt", "ft-random"}
    opts = Options(rows=("lora", "ft", "adapter-l"), seeds=(1, 2, 3))
    assert sorted((r.id, s) for r, s in jobs(opts)) == sorted(
        [("lora", 1), ("lora", 2), ("lora", 3), ("ft", 1), ("ft", 2), ("ft", 3), ("adapter-l", 1)])



def test_default_rows_are_the_papers_protocol_and_all_adds_the_tuned_ones():
    by_id = {r.id: r for r in ROWS}
    assert parse_args([])[0].rows == DEFAULT_ROWS
    assert {by_id[r].kind for r in DEFAULT_ROWS} == {"method", "control"}
    assert len(DEFAULT_ROWS) == sum(r.kind != "tuned" for r in ROWS) == 9
    assert parse_args(["--rows", "all"])[0].rows == ROW_IDS
    assert parse_args(["--rows", "lora", "ft"])[0].rows == ("lora", "ft")


def test_pretraining_flags_reach_the_pretraining_recipe():
    default = parse_args([])[0].pretrain
    assert (default.max_steps, default.precision) == (1600, "auto")
    opts = parse_args(["--pretrain-steps", "800", "--pretrain-precision", "bf16"])[0]
    assert (opts.pretrain.max_steps, opts.pretrain.precision) == (800, "bf16")


def test_wte_rows_are_their_tuned_rows_plus_the_embedding_update():
    by_id = {r.id: r for r in ROWS}
    for base in TUNED_FROZEN:
        assert by_id[base.id] is base
        wte = by_id[f"{base.id}-wte"]
        assert (wte.method, wte.kind, wte.flags) == (base.method, "tuned", (*base.flags, *WTE_FLAGS))
        three = by_id[f"{base.id}-wte-3ep"]
        assert (three.method, three.base, three.flags) == (base.method, "pretrained", (*wte.flags, "--epochs", "3"))
    control = by_id["ft-random-lr-3ep"]  # the 3-epoch rows' control: FT from scratch given the same budget
    assert (control.method, control.base, control.kind) == ("ft", "random", "tuned")
    assert control.flags == by_id["ft-lr-3ep"].flags


def test_three_epoch_rows_differ_from_the_two_epoch_rows_only_in_epochs():
    by_id = {r.id: r for r in ROWS}
    for two in ("ft-lr-2ep", "lora-r16-all-wte-2ep"):
        three = by_id[two.replace("2ep", "3ep")]
        flags = list(by_id[two].flags)
        flags[flags.index("--epochs") + 1] = "3"
        assert (three.method, three.kind, three.flags) == (by_id[two].method, "tuned", tuple(flags))
    assert by_id["lora-r16-all-wte-3ep"].seeds == by_id["ft-lr-3ep"].seeds == 3  # the gap is judged over seeds

def test_table_end_to_end_tiny(tmp_path):
    opts = Options(out=tmp_path / "table", rows=("no-adapt", "lora"), seeds=(110, 111), workers=2,
                   budget=Budget(epochs=1, warmup_steps=2, max_steps=6, train_limit=48, test_limit=6,
                                 decode_batch=8),
                   pretrain=PretrainConfig(card="tiny", corpus="generated", block_size=32, batch_size=8,
                                           max_steps=8, warmup_steps=2, generated_documents=300))
    report = run_table(opts, command="pytest")
    manifest = json.loads((opts.out / "manifest.json").read_text())
    assert manifest["failures"] == []
    assert [r["id"] for r in manifest["rows"]] == ["no-adapt", "lora"]  # in ROWS order
    runs = {r["id"]: r["runs"] for r in manifest["rows"]}
    assert len(runs["lora"]) == 2 and len(runs["no-adapt"]) == 1  # LoRA runs three seeds, controls one
    for run in runs["lora"]:
        cfg = json.loads((Path(run) / "adapter" / "adapter_config.json").read_text())
        assert cfg["checkpoint"]["select_by"] == "valid_loss"
        assert (Path(run) / "scores.test.json").is_file()
    seeds = {json.loads((Path(r) / "recipe.json").read_text())["seed"] for r in runs["lora"]}
    assert seeds == {110, 111}
    text = (report / "report.md").read_text()
    assert "pretrained here" in text.splitlines()[0]
    gain = manifest["pretrain"]["copy_gain_nats"]  # eval.copy_probe on the pretrained base, in the model line
    assert isinstance(gain, float) and f"copy gain {gain:.2f} nats" in text
    assert (report / "metrics.png").is_file() and (report / "loss.png").is_file()
    # eval.name_recall over the decoded MRs: every run answers the same MRs as the references do
    names = json.loads((report / "report.json").read_text())["names_written"]
    ref = names["first_reference"]
    assert ref["seen_total"] + ref["unseen_total"] > 0 and "## Names written" in text
    for rid in ("no-adapt", "lora"):
        got = names["rows"][rid]
        assert (got["seen_total"], got["unseen_total"]) == (ref["seen_total"] * len(runs[rid]),
                                                            ref["unseen_total"] * len(runs[rid]))
    # a second call finds everything done and changes nothing
    before = (Path(runs["lora"][0]) / "scores.test.json").read_bytes()
    run_table(opts, command="pytest")
    assert (Path(runs["lora"][0]) / "scores.test.json").read_bytes() == before
    # a call that adds a row runs only that row, and the table's runs time counts both calls
    first = json.loads((opts.out / "manifest.json").read_text())["runs_time_s"]
    opts.rows = ("no-adapt", "lora", "ft")
    report = run_table(opts, command="pytest")
    manifest = json.loads((opts.out / "manifest.json").read_text())
    assert [r["id"] for r in manifest["rows"]] == ["no-adapt", "ft", "lora"]
    assert [c["jobs_run"] for c in manifest["calls"]] == [None, 2]  # ft: both seeds
    assert manifest["calls"][0]["runs_time_s"] == pytest.approx(first, abs=0.1)
    assert manifest["runs_time_s"] == pytest.approx(sum(c["runs_time_s"] for c in manifest["calls"]), abs=0.1)
    assert "made by 2 calls of the script" in (report / "report.md").read_text()
