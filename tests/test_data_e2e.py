"""E2E preparer: the authors' records and ids, the csv conversion, and clear errors with nothing half-written."""
from __future__ import annotations

import shutil

import pytest

from data.common import MissingSplitError, encode_records
from data.e2e import csv_format
from data.e2e.prepare import main, prepare
from nlg.io_utils import InputFileError
from nlg.tokenizer import EOS_ID, get_tokenizer
from tests.conftest import SHARED_DATA
from tests.data_test_utils import DATA_FIX, assert_authors_files, lines

E2E_FIX = DATA_FIX / "e2e"


@pytest.fixture(scope="module")
def fixture_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e_fix")
    return prepare(raw_dir=E2E_FIX, out_dir=out), out


def test_fixture_records_are_the_stripped_halves_of_each_line(fixture_out):
    written, _ = fixture_out
    assert set(written) == {"train", "valid", "test"}
    assert lines(written["valid"][0]) == [
        {"context": "name : Fenwick Hall | Type : coffee shop | area : harbour front",
         "completion": "Fenwick Hall is a coffee shop on the harbour front ."},
        {"context": "name : Fenwick Hall | Type : coffee shop | area : harbour front",
         "completion": "There is a coffee shop called Fenwick Hall on the harbour front ."},
        {"context": "name : Marlowe | food : Greek | family friendly : no",
         "completion": "Marlowe serves Greek food but isn 't family - friendly ."},
    ]
    assert len(lines(written["train"][0])) == 4 and len(lines(written["test"][0])) == 3


def test_fixture_files_are_written_like_the_authors_json_dumps(fixture_out):
    written, _ = fixture_out
    first = written["test"][0].read_text(encoding="utf-8").split("\n")[0]
    assert first == ('{"context": "name : Caf\\u00e9 Rosa | Type : restaurant | price : cheap", '
                     '"completion": "Caf\\u00e9 Rosa is a cheap restaurant ."}')
    encoded_first = written["test"][1].read_text(encoding="utf-8").split("\n")[0]
    assert encoded_first.startswith('{"context": [') and '], "completion": [' in encoded_first


def test_ids_are_the_tokenizers_plus_eos(fixture_out):
    written, _ = fixture_out
    tok = get_tokenizer()
    for split, (formatted, encoded) in written.items():
        for rec, ids in zip(lines(formatted), lines(encoded), strict=True):
            assert ids["context"] == tok.encode(rec["context"], add_special_tokens=False) + [EOS_ID]
            assert ids["completion"] == tok.encode(" " + rec["completion"], add_special_tokens=False) + [EOS_ID]


def test_encoding_known_gpt2_ids():
    # GPT-2 BPE: "Hello" = 15496, " world" = 995; the completion gets the leading space, both get 50256
    assert encode_records([{"context": "Hello", "completion": "world"}]) == [
        {"context": [15496, EOS_ID], "completion": [995, EOS_ID]}
    ]


def test_limit_keeps_the_first_records(tmp_path):
    written = prepare(raw_dir=E2E_FIX, out_dir=tmp_path, splits=["train"], limit=2)
    assert [r["completion"] for r in lines(written["train"][0])] == [
        "The Plum Tree is a Thai pub in the old town .",
        "In the old town , The Plum Tree serves Thai food .",
    ]
    assert len(lines(written["train"][1])) == 2


def test_crlf_lines_read_as_the_authors_text_mode_reads_them(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "valid.txt").write_bytes((E2E_FIX / "valid.txt").read_bytes().replace(b"\n", b"\r\n"))
    crlf = prepare(raw_dir=raw, out_dir=tmp_path / "a", splits=["valid"])["valid"]
    lf = prepare(raw_dir=E2E_FIX, out_dir=tmp_path / "b", splits=["valid"])["valid"]
    assert crlf[0].read_bytes() == lf[0].read_bytes() and crlf[1].read_bytes() == lf[1].read_bytes()


# ------------------------------------------------------------------------------------------- bad input


def _raw_with_valid(tmp_path, content: bytes):
    raw = tmp_path / "raw"
    raw.mkdir(exist_ok=True)
    (raw / "valid.txt").write_bytes(content)
    return raw


@pytest.mark.parametrize(
    "content, message",
    [
        (b"name : A||Fine .\nname : B no separator\n", "valid.txt:2: expected exactly one '||'"),
        (b"name : A||x||y\n", "valid.txt:1: expected exactly one '||' (MR||reference), found 2"),
        (b"name : A||Fine .\n\nname : B||Fine .\n", "valid.txt:2: empty line"),
        (b"name : A||Fine .\nname : Caf\xe9||x\n", "valid.txt:2: not UTF-8 text"),
        # an empty half is an error at its line, as the csv reader makes an empty mr or ref field
        (b"name : A||Fine .\nname : B||\n", "valid.txt:2: empty reference"),
        (b"name : A|| \n", "valid.txt:1: empty reference"),
        (b"name : A||Fine .\n||Fine .\n", "valid.txt:2: empty MR"),
        (b"", "valid.txt: the file is empty"),
        (b"\n \n", "valid.txt: the file is empty"),
    ],
)
def test_bad_lines_name_file_and_line_and_write_nothing(tmp_path, content, message):
    raw = _raw_with_valid(tmp_path, content)
    out = tmp_path / "out"
    with pytest.raises(InputFileError) as err:
        prepare(raw_dir=raw, out_dir=out, splits=["valid"])
    assert message in str(err.value)
    assert not out.exists() or list(out.iterdir()) == []


@pytest.mark.parametrize("row, message", [('"name[B]",""', "empty reference"), ('"","B is fine ."', "empty MR")])
def test_empty_fields_are_the_same_error_in_the_csv_and_the_line_format(tmp_path, row, message):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "devset.csv").write_text(f'mr,ref\n"name[A]","A is fine ."\n{row}\n', encoding="utf-8")
    with pytest.raises(InputFileError) as err:
        prepare(raw_dir=raw, out_dir=tmp_path / "out", splits=["valid"])
    assert str(err.value) == f"{raw / 'devset.csv'}:3: {message}"
    assert not (tmp_path / "out").exists()


def test_failure_leaves_previous_outputs_untouched(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "valid.jsonl").write_text("previous\n")
    raw = _raw_with_valid(tmp_path, b"no separator here\n")
    with pytest.raises(InputFileError):
        prepare(raw_dir=raw, out_dir=out, splits=["valid"])
    assert sorted(p.name for p in out.iterdir()) == ["valid.jsonl"]
    assert (out / "valid.jsonl").read_text() == "previous\n"


def test_missing_split_lists_what_was_looked_for_before_writing_anything(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(E2E_FIX / "valid.txt", raw / "valid.txt")
    out = tmp_path / "out"
    with pytest.raises(MissingSplitError) as err:
        prepare(raw_dir=raw, out_dir=out, splits=["valid", "train"])
    msg = str(err.value)
    for name in ("train.txt", "trainset.csv", "train-fixed.no-ol.csv", str(raw), "github.com/microsoft/LoRA"):
        assert name in msg
    assert not out.exists()


def test_cli_success_and_error(tmp_path, capsys):
    assert main(["--raw-dir", str(E2E_FIX), "--out-dir", str(tmp_path), "--splits", "valid"]) == 0
    assert "e2e valid: 3 records" in capsys.readouterr().out
    assert main(["--raw-dir", str(tmp_path / "nowhere"), "--out-dir", str(tmp_path), "--splits", "valid"]) == 1
    assert "is not a folder" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ csv


def test_csv_fixture_converts_to_the_hand_written_line_format():
    same, total, diffs = csv_format.compare(DATA_FIX / "e2e_csv" / "devset.csv", DATA_FIX / "e2e_csv" / "valid.txt")
    assert (same, total, diffs) == (3, 3, [])


@pytest.mark.parametrize(
    "raw, tokens",
    [
        ("family-friendly.", "family - friendly ."),
        ("It's £20-£25, isn't it?", "It 's £ 20- £ 25 , isn 't it ?"),
        ("rated 5 out of 5. in town", "rated 5 out of 5. in town"),
        ("rated 5 out of 5. It is", "rated 5 out of 5 . It is"),
        ("under £30. its menu", "under £ 30 . its menu"),
        ("costs 30.99 today", "costs 30.99 today"),
        ("a 1-star place...really", "a 1 - star place ... really"),
        ("called 'Rosa'.", "called ' Rosa ' ."),
        ("  extra   spaces  ", "extra spaces"),
    ],
)
def test_csv_tokenisation_rules(raw, tokens):
    assert csv_format.tokenize(raw) == tokens


def test_mr_slots_renamed_in_order():
    mr = "name[The Eagle], eatType[coffee shop], priceRange[£20-25], customer rating[high], familyFriendly[no]"
    assert csv_format.mr_to_line_format(mr) == (
        "name : The Eagle | Type : coffee shop | price : £ 20 - 25 | customer rating : high | family friendly : no"
    )


def test_csv_route_gives_the_txt_routes_records(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(DATA_FIX / "e2e_csv" / "devset.csv", raw / "devset.csv")
    from_csv = prepare(raw_dir=raw, out_dir=tmp_path / "csv", splits=["valid"])["valid"]
    shutil.copy(DATA_FIX / "e2e_csv" / "valid.txt", raw / "valid.txt")  # .txt now takes precedence
    from_txt = prepare(raw_dir=raw, out_dir=tmp_path / "txt", splits=["valid"])["valid"]
    assert from_csv[0].read_bytes() == from_txt[0].read_bytes()
    assert from_csv[1].read_bytes() == from_txt[1].read_bytes()


@pytest.mark.parametrize(
    "content, message",
    [
        ("MR\n\"name[A], area[riverside]\"\n", "devset.csv:1: no 'ref' column"),
        ("mr,ref\n\"name[A], area[riverside]\",Fine.\n\"name[B], area riverside\",Bad MR.\n", "devset.csv:3: malformed MR"),
        ("mr,ref\n\"name[A]\",Fine.,extra\n", "devset.csv:2: expected 2 columns, got 3"),
        # an unclosed bracket swallowing the next slot (once read as "name : Foo , area [ city centre")
        ("mr,ref\n\"name[Foo, area[city centre]\",Bad MR.\n", "devset.csv:2: malformed MR"),
    ],
)
def test_bad_csv_names_file_and_line(tmp_path, content, message):
    path = tmp_path / "devset.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InputFileError) as err:
        csv_format.csv_to_lines(path)
    assert message in str(err.value)


# ---------------------------------------------------------------------------------- real shared data


@pytest.fixture(scope="module")
def shared_e2e(tmp_path_factory):
    if not (SHARED_DATA / "e2e").is_dir():
        pytest.skip(f"needs {SHARED_DATA / 'e2e'} (the shared raw data beside the checkout), which is absent here")
    out = tmp_path_factory.mktemp("e2e_shared")
    return prepare(raw_dir=SHARED_DATA / "e2e", out_dir=out, splits=["valid", "test"])


def test_shared_counts_and_first_record(shared_e2e):
    valid = lines(shared_e2e["valid"][0])
    assert (len(valid), len(lines(shared_e2e["test"][0]))) == (4672, 4693)
    assert valid[0] == {
        "context": "name : Alimentum | area : city centre | family friendly : no",
        "completion": "There is a place in the city centre , Alimentum , that is not family - friendly .",
    }


@pytest.mark.parametrize("split", ["valid", "test"])
def test_shared_outputs_byte_identical_to_the_authors(shared_e2e, split):
    assert_authors_files("e2e", split, *shared_e2e[split])


def test_shared_csv_reproduces_every_line_of_valid_txt(shared_data):
    same, total, diffs = csv_format.compare(shared_data / "e2e" / "devset.csv", shared_data / "e2e" / "valid.txt")
    assert (same, total) == (4672, 4672), diffs[:3]


def test_shared_test_csv_agreement_measured(shared_data):
    # test.txt was tokenised by another tool ("is n't", "5-star", "£ 20-£25", "d'oeuvre" kept whole): the 136
    # lines that differ differ only in where the spaces are
    same, total, diffs = csv_format.compare(
        shared_data / "e2e" / "testset_w_refs.csv", shared_data / "e2e" / "test.txt"
    )
    assert (same, total) == (4557, 4693)
    assert all("".join(ours.split()) == "".join(theirs.split()) for _, ours, theirs in diffs)
    assert sum("n't" in theirs for _, _, theirs in diffs) == 91


def test_shared_csv_route_is_byte_identical_to_the_authors(shared_data, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "devset.csv").symlink_to(shared_data / "e2e" / "devset.csv")
    written = prepare(raw_dir=raw, out_dir=tmp_path / "out", splits=["valid"])
    assert_authors_files("e2e", "valid", *written["valid"])


def test_shared_folder_has_no_train_split_and_says_where_to_get_it(shared_data, tmp_path):
    with pytest.raises(MissingSplitError) as err:
        prepare(raw_dir=shared_data / "e2e", out_dir=tmp_path, splits=["train", "valid"])
    assert "train.txt" in str(err.value) and "trainset.csv" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_while_writing_a_split_leaves_the_old_pair_whole(tmp_path, monkeypatch):
    """The formatted and encoded files of a split are one commit: ENOSPC in either keeps both old files."""
    import errno
    import os

    from data.common import write_split

    recs = [{"context": "name : A", "completion": "A is a pub ."}]
    write_split(tmp_path, "valid", recs)
    old = {p.name: p.read_bytes() for p in tmp_path.glob("valid*.jsonl")}
    real_fsync, calls = os.fsync, []

    def fsync_full_on_second(fd):  # the second file's data does not fit
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_full_on_second)
    with pytest.raises(OSError, match="No space left"):
        write_split(tmp_path, "valid", recs * 3)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert {p.name: p.read_bytes() for p in tmp_path.glob("valid*.jsonl")} == old
    assert not list(tmp_path.glob(".*.tmp"))  # no half-written temporaries left either
