"""eval.score: file reading (CRLF, final newlines, JSONL), clear errors for bad input, and the run-folder form."""
from __future__ import annotations

import json
import math
import shutil

import pytest

from eval.readers import read_e2e_references, read_hypotheses, read_lines, read_multi_references
from eval.score import main
from nlg.io_utils import InputFileError
from tests.conftest import FIXTURES

EXPECTED = json.loads((FIXTURES / "eval_expected.json").read_text(encoding="utf-8"))["cases"]


def test_lines_crlf_and_final_newline(tmp_path):
    lf, crlf, bare = tmp_path / "lf", tmp_path / "crlf", tmp_path / "bare"
    lf.write_bytes(b"a b\n\nc\n")
    crlf.write_bytes(b"a b\r\n\r\nc\r\n")
    bare.write_bytes(b"a b\n\nc")
    assert read_lines(lf) == read_lines(crlf) == read_lines(bare) == ["a b", "", "c"]
    last_empty = tmp_path / "last_empty"
    last_empty.write_bytes(b"a\n\n")  # the last output is empty: two line ends
    assert read_lines(last_empty) == ["a", ""]


def test_e2e_reference_groups(tmp_path):
    refs = tmp_path / "refs.txt"
    refs.write_text("r1a\n r1b \n\nr2a\n\n", encoding="utf-8")
    assert read_e2e_references(refs, 2) == [["r1a", "r1b"], ["r2a"]]
    single = tmp_path / "single.txt"
    single.write_text("x\ny\n", encoding="utf-8")
    assert read_e2e_references(single, 2) == [["x"], ["y"]]  # no blank line: one reference per line
    assert read_e2e_references(single, 1) == [["x", "y"]]  # one instance with two references
    bad = tmp_path / "bad.txt"
    bad.write_text("a\n\n\nb\n", encoding="utf-8")
    with pytest.raises(InputFileError, match=r"bad\.txt:3: empty reference group"):
        read_e2e_references(bad, 2)


def test_jsonl_hypotheses_and_references(tmp_path):
    hyps = tmp_path / "predictions.test.jsonl"
    hyps.write_text('{"id": 0, "text": "a b"}\n{"id": 1, "text": ""}\n', encoding="utf-8")
    assert read_hypotheses(hyps) == ["a b", ""]
    refs = tmp_path / "refs.jsonl"
    refs.write_text('{"references": ["x", "y"]}\n{"references": ["z"]}\n', encoding="utf-8")
    assert read_multi_references(refs) == [["x", "y"], ["z", ""]]
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "a"}\n{"txt": "b"}\n', encoding="utf-8")
    with pytest.raises(InputFileError, match=r"broken\.jsonl:2: record has none of the fields"):
        read_hypotheses(broken)


def test_crlf_reference_file_reads_like_lf():
    crlf = read_multi_references(FIXTURES / "eval_webnlg_edge" / "reference", 3)
    assert (FIXTURES / "eval_webnlg_edge" / "reference1").read_bytes().count(b"\r\n") == 7
    assert crlf[1] == ["São Paulo is the birthplace of Alan Bean's co-pilot.",
                       "The co-pilot of Alan Bean was born in São Paulo.", ""]
    assert all(not r.endswith("\r") for g in crlf for r in g)


@pytest.mark.parametrize("args, message", [
    (["--task", "e2e", "--refs", "{F}/eval_e2e_edge/references.txt", "--hyps", "{T}/short.txt"],
     "short.txt: 2 hypotheses but 7 reference instances in"),
    (["--task", "e2e", "--refs", "{F}/eval_e2e_edge/references.txt", "--hyps", "{T}/empty.txt"],
     "empty.txt: file is empty"),
    (["--task", "dart", "--refs", "{F}/eval_webnlg_edge/reference", "--hyps", "{F}/eval_webnlg_edge/hypothesis",
      "-nr", "4"], "expected 4 reference files but {F}/eval_webnlg_edge/reference3 is missing (3 found)"),
    (["--task", "dart", "--refs", "{F}/eval_webnlg_edge/reference", "--hyps", "{F}/eval_webnlg_edge/hypothesis",
      "-nr", "2"], "expected 2 reference files but {F}/eval_webnlg_edge/reference2 exists too"),
    (["--task", "webnlg", "--refs", "{T}/uneven", "--hyps", "{T}/short.txt"],
     "reference files have different numbers of lines ({T}/uneven/reference0: 2, {T}/uneven/reference1: 1)"),
    (["--task", "webnlg", "--refs", "{T}/nothing", "--hyps", "{T}/short.txt"],
     "no reference files {T}/nothing0, {T}/nothing1, ... found"),
])
def test_bad_input_names_the_files(tmp_path, capsys, args, message):
    (tmp_path / "short.txt").write_text("a\nb\n", encoding="utf-8")
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "uneven").mkdir()
    (tmp_path / "uneven" / "reference0").write_text("a\nb\n", encoding="utf-8")
    (tmp_path / "uneven" / "reference1").write_text("a\n", encoding="utf-8")
    args = [a.replace("{F}", str(FIXTURES)).replace("{T}", str(tmp_path)) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message.replace("{F}", str(FIXTURES)).replace("{T}", str(tmp_path)) in err


def test_run_dir_e2e_writes_scores(tmp_path):
    folder = tmp_path / "run" / "eval" / "test"
    folder.mkdir(parents=True)
    shutil.copy(FIXTURES / "eval_e2e_edge" / "references.txt", folder / "references.txt")
    shutil.copy(FIXTURES / "eval_e2e_edge" / "hypothesis.txt", folder / "hypothesis.txt")
    assert main(["--run-dir", str(tmp_path / "run"), "--dataset", "e2e", "--split", "test"]) == 0
    record = json.loads((tmp_path / "run" / "scores.test.json").read_text())
    assert record["dataset"] == "e2e" and record["split"] == "test" and record["n"] == 7
    official = EXPECTED["eval_e2e_edge"]["official"]
    assert {k: f"{v:.4f}" for k, v in record["metrics"].items()} == {k: v["printed"] for k, v in official.items()}
    # the extra sacreBLEU: sacrebleu's own corpus score on the same texts, references padded with None
    from sacrebleu.metrics import BLEU
    hyps = read_hypotheses(folder / "hypothesis.txt")
    groups = read_e2e_references(folder / "references.txt", len(hyps))
    width = max(len(g) for g in groups)
    own = BLEU().corpus_score(hyps, [[g[i] if i < len(g) else None for g in groups] for i in range(width)])
    extra = record["extra"]["sacreBLEU"]
    assert extra["score"] == own.score and extra["signature"].startswith("nrefs:var|case:mixed|eff:no|tok:13a")


def test_run_dir_webnlg_categories(tmp_path):
    folder = tmp_path / "run" / "eval" / "test"
    src = FIXTURES / "eval_webnlg_edge"
    for cat in ("all", "seen", "unseen"):
        (folder / cat).mkdir(parents=True)
        for name in ("reference0", "reference1", "reference2", "hypothesis"):
            if cat == "unseen":
                (folder / cat / name).write_bytes(b"")  # a category with no instances
            else:
                shutil.copy(src / name, folder / cat / name)
    assert main(["--run-dir", str(tmp_path / "run"), "--dataset", "webnlg"]) == 0
    record = json.loads((tmp_path / "run" / "scores.test.json").read_text())
    assert record["n"] == {"all": 8, "seen": 8, "unseen": 0}
    assert record["metrics"]["unseen"] is None
    assert record["metrics"]["seen"] == record["metrics"]["all"]
    official = EXPECTED["eval_webnlg_edge"]["official"]
    assert {k: f"{v:.4f}" for k, v in record["metrics"]["all"].items()} == \
        {k: f"{v['value']:.4f}" for k, v in official.items()}
    assert record["extra"]["unseen"] is None and record["extra"]["seen"] == record["extra"]["all"]
    assert 0 < record["extra"]["all"]["sacreBLEU"]["score"] <= 100


def test_sacrebleu_extra_values_and_variable_references():
    from eval.sacrebleu_extra import sacrebleu_extra

    same = sacrebleu_extra(["the cat sat on the mat ."], [["the cat sat on the mat ."]])
    assert same["score"] == pytest.approx(100.0) and same["signature"].startswith("nrefs:1|")
    # brevity only: 4 of the reference's 6 tokens, every n-gram matching -> BP = exp(1 - 6/4) -> 60.65
    short = sacrebleu_extra(["the cat sat on"], [["the cat sat on the mat"]])
    assert abs(short["score"] - 100 * math.exp(1 - 6 / 4)) < 1e-9
    # an empty reference slot is no reference: same score as the group without it, signed nrefs:var
    with_gap = sacrebleu_extra(["a b c d", "e f g h"], [["a b c d", "x"], ["e f g h", ""]])
    assert with_gap["score"] == pytest.approx(100.0) and "nrefs:var" in with_gap["signature"]
    # an instance with no reference at all is left out and counted
    alone = sacrebleu_extra(["a b c d", "zzz"], [["a b c d"], ["", " "]])
    assert alone["score"] == pytest.approx(100.0) and (alone["instances"], alone["without_reference"]) == (1, 1)
    with pytest.raises(ValueError, match="2 hypotheses but 1"):
        sacrebleu_extra(["a", "b"], [["a"]])
