"""nlg.decode: the authors' gpt2_decode.py rules, byte for byte."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from nlg.decode import cut_text, decode_split, hypothesis_text, ids_to_text, main, tokenize_lower
from nlg.io_utils import InputFileError
from nlg.tokenizer import encode, get_tokenizer
from tests.conftest import FIXTURES
from tests.decode_cases import SPLITS, fixed_predictions, formatted_records, write_formatted, write_predictions


def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _pred(i, text, tail=()):
    return {"id": i, "predict": encode(text) + list(tail)}


# ------------------------------------------------------------------------------------------------ text rules
def test_text_is_cut_at_end_of_text_then_blank_line_then_stripped():
    assert cut_text("  A pub .<|endoftext|> junk\n\nmore") == "A pub ."
    assert cut_text(" first\n\nsecond<|endoftext|>") == "first"
    assert cut_text("one\ntwo \n") == "one\ntwo"
    ids = encode(" The Vine is cheap .") + [628] + encode(" Tail")
    assert hypothesis_text(ids) == "The Vine is cheap ."
    ids = encode(" Near the river") + [198, 198] + encode(" x")
    assert hypothesis_text(ids) == "Near the river"
    assert hypothesis_text(encode(" no end at all ")) == "no end at all"


def test_ids_decode_like_the_byte_level_vocabulary():
    text = " Café Ümlaut — £ 20 - 25 , 寿司 ."
    ids = encode(text)
    assert ids_to_text(ids) == text == get_tokenizer().decode(ids, clean_up_tokenization_spaces=False)
    lone = get_tokenizer().convert_tokens_to_ids("Ã")  # byte 0xC3 without its continuation byte
    assert ids_to_text(encode(" ok") + [lone] + encode(" then")) == " ok\ufffd then"
    with pytest.raises(ValueError, match="not in the GPT-2 vocabulary"):
        ids_to_text([50257])


def test_tokenize_lower_is_the_authors_regex_split():
    assert tokenize_lower("The Eagle's café, £20-25.") == "the eagle ' s café , £ 20 - 25 ."
    assert tokenize_lower("A  B\tC") == "a b c"
    assert tokenize_lower("Keep Case", tokenize=True, lower=False) == "Keep Case"
    assert tokenize_lower("x-y", tokenize=False, lower=True) == "x-y"


# ------------------------------------------------------------------------------------------------ layouts
def test_e2e_groups_first_seen_order_last_prediction_wins(tmp_path):
    fmt = _jsonl(tmp_path / "f.jsonl", [
        {"context": "name : A", "completion": "A is a pub ."},
        {"context": "name : B", "completion": "B serves tea . <|endoftext|> x"},
        {"context": "name : A", "completion": " A again .\n\nignored"},
        {"context": "name : C", "completion": "C ."},
        {"context": "name : B", "completion": "B two ."},
    ])
    preds = _jsonl(tmp_path / "p.jsonl", [
        _pred(0, " first A"), _pred(1, " B hyp", [50256, 11]), _pred(2, " last A"), _pred(3, " C hyp"),
        _pred(4, " Last B", [628]),
    ])
    out = tmp_path / "eval"
    paths = decode_split("e2e", fmt, preds, out)
    assert [p.name for p in paths] == ["references.txt", "hypothesis.txt"]
    assert (out / "references.txt").read_text() == "A is a pub .\nA again .\n\nB serves tea .\nB two .\n\nC .\n\n"
    assert (out / "hypothesis.txt").read_text() == "last A\nLast B\nC hyp\n"


def test_webnlg_seen_unseen_and_reference_padding(tmp_path):
    fmt = _jsonl(tmp_path / "f.jsonl", [
        {"context": "X : p : Y", "completion": "X's p is Y.", "cate": True},
        {"context": "Z : q : W", "completion": "Z-q, W!", "cate": False},
        {"context": "X : p : Y", "completion": "Second X ref.", "cate": True},
    ])
    preds = _jsonl(tmp_path / "p.jsonl", [_pred(0, " Hyp X"), _pred(1, " Hyp Z-W"), _pred(2, " Final X.")])
    out = tmp_path / "eval"
    decode_split("webnlg", fmt, preds, out, ref_num=3)
    assert (out / "all" / "hypothesis").read_text() == "final x .\nhyp z - w\n"
    assert (out / "all" / "reference0").read_text() == "x ' s p is y .\nz - q , w !\n"
    assert (out / "all" / "reference1").read_text() == "second x ref .\nz - q , w !\n"
    assert (out / "all" / "reference2").read_text() == "x ' s p is y .\nz - q , w !\n"
    assert (out / "seen" / "hypothesis").read_text() == "final x .\n"
    assert (out / "unseen" / "reference0").read_text() == "z - q , w !\n"
    assert sorted(p.name for p in (out / "unseen").iterdir()) == ["hypothesis", "reference0", "reference1", "reference2"]
    decode_split("webnlg", fmt, preds, tmp_path / "raw", ref_num=3, tokenize_lower_text=False)
    assert (tmp_path / "raw" / "all" / "hypothesis").read_text() == "Final X.\nHyp Z-W\n"


def test_dart_files_sit_directly_in_the_split_folder(tmp_path):
    fmt = _jsonl(tmp_path / "f.jsonl", [{"context": "a : b : c", "completion": "A B C."}])
    preds = _jsonl(tmp_path / "p.jsonl", [_pred(0, " Out.")])
    decode_split("dart", fmt, preds, tmp_path / "e")
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == ["hypothesis"] + [f"reference{i}" for i in range(6)]
    assert (tmp_path / "e" / "reference5").read_text() == "a b c .\n"


# ------------------------------------------------------------------------------------------------ CLI and errors
def test_cli_writes_into_run_eval_split(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    fmt = _jsonl(tmp_path / "test_formatted.jsonl", [{"context": "c", "completion": "R ."}])
    _jsonl(run / "predictions.test.jsonl", [_pred(0, " H .")])
    assert main(["--run-dir", str(run), "--dataset", "e2e", "--split", "test", "--formatted", str(fmt)]) == 0
    assert (run / "eval" / "test" / "hypothesis.txt").read_text() == "H .\n"
    assert (run / "eval" / "test" / "references.txt").read_text() == "R .\n\n"


def test_errors_name_the_file_and_line(tmp_path, capsys):
    fmt = _jsonl(tmp_path / "f.jsonl", [{"context": "a", "completion": "x"}, {"context": "b", "completion": "y"}])
    only_first = _jsonl(tmp_path / "p.jsonl", [_pred(0, " h")])
    with pytest.raises(InputFileError, match=r"p\.jsonl: 1 context group\(s\) have no prediction.*f\.jsonl:2"):
        decode_split("e2e", fmt, only_first, tmp_path / "o")
    bad_id = _jsonl(tmp_path / "bad.jsonl", [_pred(0, " h"), _pred(7, " h")])
    with pytest.raises(InputFileError, match=r"bad\.jsonl:2: id 7 does not index the 2 formatted records"):
        decode_split("e2e", fmt, bad_id, tmp_path / "o")
    no_cate = _jsonl(tmp_path / "w.jsonl", [{"context": "a", "completion": "x"}])
    with pytest.raises(InputFileError, match=r"w\.jsonl:1: WebNLG records need a boolean 'cate'"):
        decode_split("webnlg", no_cate, only_first, tmp_path / "o")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(InputFileError, match="empty"):
        decode_split("dart", empty, only_first, tmp_path / "o")
    assert not (tmp_path / "o").exists()  # nothing half-written
    run = tmp_path / "run"
    run.mkdir()
    assert main(["--run-dir", str(run), "--dataset", "dart", "--formatted", str(fmt)]) == 2
    assert "predictions.test.jsonl: no such file" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ golden
@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["e2e", "webnlg", "dart"])
def test_shared_splits_byte_identical_to_the_authors_decoder(dataset, shared_data, tmp_path):
    """Digests of the authors' gpt2_decode.py outputs (tests/fixtures/decode_golden/README.md) on the same inputs."""
    digests = json.loads((FIXTURES / "decode_golden" / "digests.json").read_text())
    checked = 0
    for split in SPLITS:
        records = formatted_records(dataset, split, shared_data)
        fmt = write_formatted(records, tmp_path / f"{split}_formatted.jsonl")
        preds = write_predictions(fixed_predictions(records), tmp_path / f"{split}_pred.jsonl")
        out = tmp_path / "eval" / split
        for path in decode_split(dataset, fmt, preds, out):
            key = f"{dataset}/{split}/{path.relative_to(out).as_posix()}"
            assert hashlib.sha256(path.read_bytes()).hexdigest() == digests[key], key
            checked += 1
    assert checked == {"e2e": 4, "webnlg": 42, "dart": 14}[dataset]


def test_e2e_line_break_in_a_hypothesis_becomes_one_space_so_counts_match(tmp_path):
    """A predicted single newline (id 198) would split one hypothesis over two lines of the authors' file."""
    nl = 198
    fmt = _jsonl(tmp_path / "f.jsonl", [{"context": "name : A", "completion": "A is a pub ."},
                                        {"context": "name : B", "completion": "B is\n a cafe ."}])
    line_break = encode(" A is a pub .") + [nl] + encode("It is cheap .")
    preds = _jsonl(tmp_path / "p.jsonl", [{"id": 0, "predict": line_break}, _pred(1, " B hyp")])
    out = tmp_path / "eval"
    decode_split("e2e", fmt, preds, out)
    assert (out / "hypothesis.txt").read_text() == "A is a pub . It is cheap .\nB hyp\n"
    assert (out / "references.txt").read_text() == "A is a pub .\n\nB is a cafe .\n\n"


# ------------------------------------------------------------------------------------------------ provenance
def _prepared(folder: Path, contexts) -> tuple[Path, Path]:
    """A split as the preparer writes it: (formatted, encoded)."""
    from data.common import write_split

    return write_split(folder, "test", [{"context": c, "completion": f"{c} ."} for c in contexts])


def _generated(run: Path, encoded: Path, *extra: str) -> Path:
    from nlg.generate import main as generate_main

    assert generate_main(["--run-dir", str(run), "--dataset", "e2e", "--model", "tiny", "--data", str(encoded),
                          "--max-new-tokens", "2", "--beam", "2", "--quiet", *extra]) == 0
    return run / "predictions.test.jsonl"


def test_predictions_are_decoded_only_against_the_split_they_came_from(tmp_path, capsys):
    fmt_a, enc_a = _prepared(tmp_path / "a", ["name : Alpha", "name : Beta"])
    fmt_b, _ = _prepared(tmp_path / "b", ["name : Gamma", "name : Delta"])  # same count, other records
    run = tmp_path / "run"
    pred = _generated(run, enc_a)
    record = json.loads((run / "generate.test.json").read_text())
    assert record["predictions_sha256"] == hashlib.sha256(pred.read_bytes()).hexdigest()
    assert record["data_sha256"] == hashlib.sha256(enc_a.read_bytes()).hexdigest()
    capsys.readouterr()
    argv = ["--run-dir", str(run), "--dataset", "e2e", "--split", "test", "--formatted"]
    assert main(argv + [str(fmt_b)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {fmt_b}: not the split {pred} was decoded from (its contexts differ from those of {enc_a}, per "
        "generate.test.json); decode with the _formatted.jsonl prepared together with that file")
    assert not (run / "eval").exists()
    assert main(argv + [str(fmt_a)]) == 0
    assert len((run / "eval" / "test" / "hypothesis.txt").read_text().splitlines()) == 2
    assert "note:" not in capsys.readouterr().err


def test_predictions_no_record_describes_are_decoded_with_a_note(tmp_path, capsys):
    """The authors' predictions, or a file changed since nlg.generate wrote it: only ids and counts can be checked."""
    fmt_a, enc_a = _prepared(tmp_path / "a", ["name : Alpha", "name : Beta"])
    fmt_b, _ = _prepared(tmp_path / "b", ["name : Gamma", "name : Delta"])
    run = tmp_path / "run"
    pred = _generated(run, enc_a)
    _jsonl(pred, [_pred(0, " one"), _pred(1, " two")])  # replaced by hand: generate.test.json describes another file
    capsys.readouterr()
    assert main(["--run-dir", str(run), "--dataset", "e2e", "--formatted", str(fmt_b)]) == 0
    assert capsys.readouterr().err.splitlines()[0] == (
        f"note: {pred}: no generate.*.json beside it records what it was decoded from; only its ids are checked "
        f"against {fmt_b}")


def test_predictions_of_a_limited_generate_say_how_to_decode_them(tmp_path):
    fmt_a, enc_a = _prepared(tmp_path / "a", ["name : Alpha", "name : Beta", "name : Gamma"])
    pred = _generated(tmp_path / "run", enc_a, "--limit", "1")
    with pytest.raises(InputFileError) as err:
        decode_split("e2e", fmt_a, pred, tmp_path / "o")  # the first record is the one decoded: the check passes
    assert str(err.value) == (
        f"{pred}: 2 context group(s) have no prediction, e.g. the one starting at {fmt_a}:2: 1 of its 3 records have "
        "one (an nlg.generate --limit run?); generate the whole split, or prepare the split with that --limit")
