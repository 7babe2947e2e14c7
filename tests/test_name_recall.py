"""eval.name_recall: the names of an E2E MR written verbatim, split by whether training MRs hold them."""
from __future__ import annotations

import json

import pytest

from eval.name_recall import NameRecall, main, mr_slots, name_recall, score_files, trained_names

TRAIN = ["name : The Eagle | Type : pub | near : Burger King", "name : Aromi | area : riverside"]
TEST = ["name : The Eagle | near : Café Rouge",  # seen name, unseen near
        "name : Zizzi | area : city centre",  # unseen
        "name : Aromi | near : Burger King"]  # seen, seen


def test_slots_and_known_names():
    assert mr_slots("name : Blue Spice | customer rating : 5 out of 5") == {"name": "Blue Spice",
                                                                          "customer rating": "5 out of 5"}
    assert trained_names(TRAIN) == {"The Eagle", "Burger King", "Aromi"}


def test_counts_seen_and_unseen_names_verbatim():
    hyps = ["The Eagle is near Café Rouge .", "Zizzi is in the city centre .", "Aromi is a place ."]
    got = name_recall(TEST, hyps, trained_names(TRAIN))
    assert got == NameRecall(seen_written=2, seen_total=3, unseen_written=2, unseen_total=2)
    assert got.seen == pytest.approx(2 / 3) and got.unseen == 1.0
    # a wrong or altered name is not written: case and spelling count
    got = name_recall(TEST, ["the eagle is near Cafe Rouge", "Alimentum is a pub .", "Aromi near Burger King"],
                      trained_names(TRAIN))
    assert (got.seen_written, got.unseen_written) == (2, 0)
    assert str(got) == "names written: 66.7 % of 3 seen in training, 0.0 % of 2 never seen"
    with pytest.raises(ValueError, match="3 MRs but 2 hypotheses"):
        name_recall(TEST, hyps[:2], set())


def test_files_and_cli(tmp_path, capsys):
    def formatted(path, mrs, copies=1):  # one record per reference, as data.e2e.prepare writes them
        path.write_text("".join(json.dumps({"context": m, "completion": f" ref {k} "}) + "\n"
                                for m in mrs for k in range(copies)))
    formatted(tmp_path / "train.jsonl", TRAIN)
    formatted(tmp_path / "test.jsonl", TEST, copies=2)  # grouped by MR: one hypothesis line per MR
    (tmp_path / "hyp.txt").write_text("The Eagle .\nZizzi .\nnothing\n")
    assert score_files(tmp_path / "train.jsonl", tmp_path / "test.jsonl", tmp_path / "hyp.txt") == NameRecall(1, 3, 1, 2)
    assert main([str(tmp_path / "hyp.txt"), "--train", str(tmp_path / "train.jsonl"),
                 "--test", str(tmp_path / "test.jsonl")]) == 0
    assert capsys.readouterr().out.strip() == "names written: 33.3 % of 3 seen in training, 50.0 % of 2 never seen"
    (tmp_path / "short.txt").write_text("one\n")
    assert main([str(tmp_path / "short.txt"), "--train", str(tmp_path / "train.jsonl"),
                 "--test", str(tmp_path / "test.jsonl")]) == 2
    assert "3 MRs but 1 hypotheses" in capsys.readouterr().err
