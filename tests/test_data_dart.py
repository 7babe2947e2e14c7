"""DART preparer: property lower-cased, one record per annotation; the XML gives the JSON's records."""
from __future__ import annotations

import json

import pytest

from data.common import MissingSplitError
from data.dart.prepare import entries_from_xml, prepare
from nlg.io_utils import InputFileError
from nlg.tokenizer import EOS_ID, get_tokenizer
from tests.conftest import SHARED_DATA
from tests.data_test_utils import DATA_FIX, assert_authors_files, lines

DART_FIX = DATA_FIX / "dart"


def test_fixture_dev_records(tmp_path):
    written = prepare(raw_dir=DART_FIX, out_dir=tmp_path, splits=["valid"])
    assert lines(written["valid"][0]) == [
        {"context": "Lark Rise : founded : 1998 | Lark Rise : location : Elm Park",
         "completion": "Lark Rise, in Elm Park, was founded in 1998."},
        {"context": "Lark Rise : founded : 1998 | Lark Rise : location : Elm Park",
         "completion": "Founded in 1998, Lark Rise is in Elm Park."},
        {"context": "[TABLECONTEXT] : [title] : Marlowe | Marlowe : population_(2010) : 4,210",
         "completion": "Marlowe had 4,210 people in 2010 \u2014 \u201csmall\u201d."},
    ]
    first_line = written["valid"][0].read_text(encoding="utf-8").split("\n")[2]
    assert "\\u2014 \\u201csmall\\u201d" in first_line  # ASCII-escaped, as json.dumps writes by default
    tok = get_tokenizer()
    for rec, ids in zip(lines(written["valid"][0]), lines(written["valid"][1]), strict=True):
        assert ids == {"context": tok.encode(rec["context"], add_special_tokens=False) + [EOS_ID],
                       "completion": tok.encode(" " + rec["completion"], add_special_tokens=False) + [EOS_ID]}


def test_fixture_xml_gives_the_json_entries():
    from_json = json.loads((DART_FIX / "dart-v1.1.1-full-dev.json").read_text(encoding="utf-8"))
    from_xml = entries_from_xml(DART_FIX / "dart-v1.1.1-full-dev.xml")
    assert from_xml == [{"tripleset": e["tripleset"], "annotations": e["annotations"]} for e in from_json]


def test_fixture_xml_route_equals_json_route(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "dart-v1.1.1-full-dev.xml").symlink_to(DART_FIX / "dart-v1.1.1-full-dev.xml")
    from_xml = prepare(raw_dir=raw, out_dir=tmp_path / "xml", splits=["valid"])["valid"]
    from_json = prepare(raw_dir=DART_FIX, out_dir=tmp_path / "json", splits=["valid"])["valid"]
    assert from_xml[0].read_bytes() == from_json[0].read_bytes()
    assert from_xml[1].read_bytes() == from_json[1].read_bytes()


def test_empty_lex_is_an_empty_completion(tmp_path, capsys):
    written = prepare(raw_dir=DART_FIX, out_dir=tmp_path, splits=["test"])
    err = capsys.readouterr().err
    assert "1 empty annotation texts (entry 1 (eid='Id1'))" in err and "kept as empty completions and references" in err
    recs = lines(written["test"][0])
    assert [r["completion"] for r in recs] == [
        "Quayside Grill opened in 2004.", "", "The Wren is in the old town and rated low."
    ]
    assert recs[2]["context"] == "The Wren : rating : low | The Wren : area : old town"
    assert lines(written["test"][1])[1]["completion"] == [220, EOS_ID]  # " " alone is GPT-2 token 220


@pytest.mark.parametrize(
    "content, message",
    [
        ('[{"tripleset": [["a", "b"]], "annotations": []}]', "entry 1: triple ['a', 'b'] is not [subject, property, object]"),
        ('[{"tripleset": [["a", "b", "c"]]}]', "entry 1: expected an object with 'tripleset' and 'annotations'"),
        ('[{"tripleset": [], "annotations": [{"source": "x", "text": null}]}]', "entry 1: completion is None"),
        ('{"not": "a list"}', "expected a JSON list of entries"),
    ],
)
def test_bad_json_names_file_and_entry(tmp_path, content, message):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "dart-v1.1.1-full-dev.json").write_text(content, encoding="utf-8")
    with pytest.raises(InputFileError) as err:
        prepare(raw_dir=raw, out_dir=tmp_path / "out", splits=["valid"])
    assert "dart-v1.1.1-full-dev.json: " + message in str(err.value)
    assert not (tmp_path / "out").exists()


def test_missing_train_lists_both_formats(tmp_path):
    with pytest.raises(MissingSplitError) as err:
        prepare(raw_dir=DART_FIX, out_dir=tmp_path, splits=["train"])
    msg = str(err.value)
    assert "dart-v1.1.1-full-train.json" in msg and "dart-v1.1.1-full-train.xml" in msg and "Yale-LILY/dart" in msg


# ---------------------------------------------------------------------------------- real shared data


@pytest.fixture(scope="module")
def shared_dart(tmp_path_factory):
    root = SHARED_DATA / "dart"
    if not root.is_dir():
        pytest.skip(f"needs {root} (the shared raw data beside the checkout), which is absent here")
    out = tmp_path_factory.mktemp("dart_shared")
    return prepare(raw_dir=root, out_dir=out, splits=["valid", "test"])  # valid from JSON, test from XML


def test_shared_counts(shared_dart):
    valid, test = lines(shared_dart["valid"][0]), lines(shared_dart["test"][0])
    assert (len(valid), len(test)) == (6980, 12552)
    assert (len({r["context"] for r in valid}), len({r["context"] for r in test})) == (2721, 4159)
    assert valid[0] == {"context": "Mars Hill College : joined : 1973 | Mars Hill College : location : Mars Hill, North Carolina",
                        "completion": "A school from Mars Hill, North Carolina, joined in 1973."}


@pytest.mark.parametrize("split", ["valid", "test"])
def test_shared_outputs_byte_identical_to_the_authors(shared_dart, split):
    assert_authors_files("dart", split, *shared_dart[split])


def test_shared_dev_xml_equals_json(shared_data):
    from_json = json.loads((shared_data / "dart" / "dart-v1.1.1-full-dev.json").read_text(encoding="utf-8"))
    from_xml = entries_from_xml(shared_data / "dart" / "dart-v1.1.1-full-dev.xml")
    assert from_xml == [{"tripleset": e["tripleset"], "annotations": e["annotations"]} for e in from_json]


def test_shared_test_xml_empty_lex(shared_data):
    entries = entries_from_xml(shared_data / "dart" / "dart-v1.1.1-full-test.xml")
    assert len(entries) == 5097 and sum(len(e["annotations"]) for e in entries) == 12552
    empty = [(i, a) for i, e in enumerate(entries) for a in e["annotations"] if a["text"] == ""]
    assert empty == [(115, {"source": "WikiTableQuestions_lily", "text": ""})]  # eid Id116


def test_entries_without_an_annotation_are_counted_and_named(tmp_path, capsys):
    from data.dart.prepare import read

    xml = tmp_path / "dart-v1.1.1-full-dev.xml"
    xml.write_text('<benchmark><entries>'
                   '<entry eid="Id1"><modifiedtripleset><mtriple>A | b | C</mtriple></modifiedtripleset>'
                   '<lex comment="WikiSQL_decl_sents">A b C.</lex></entry>'
                   '<entry eid="Id2"><modifiedtripleset><mtriple>D | e | F</mtriple></modifiedtripleset></entry>'
                   '<entry eid="Id3"><modifiedtripleset><mtriple>G | h | I</mtriple></modifiedtripleset>'
                   '<lex comment="webnlg"></lex></entry>'
                   '</entries></benchmark>', encoding="utf-8")
    recs = read(xml)
    assert [r["completion"] for r in recs] == ["A b C.", ""]
    err = capsys.readouterr().err
    assert (f"warning: {xml}: 1 entries without an annotation (entry 2 (eid='Id2')): they give no record, as in "
            "the authors' converter") in err
    assert "1 empty annotation texts (entry 3 (eid='Id3'))" in err
