"""WebNLG 2017 preparer: the JSON and XML routes give the authors' records; XML rebuilds the released JSON."""
from __future__ import annotations

import shutil

import pytest

from data.common import MissingSplitError
from data.webnlg import xml_reader
from data.webnlg.prepare import SEEN_CATEGORIES, prepare
from nlg.io_utils import InputFileError
from nlg.tokenizer import EOS_ID, get_tokenizer
from tests.conftest import SHARED_DATA
from tests.data_test_utils import DATA_FIX, assert_authors_files, lines

WEB_FIX = DATA_FIX / "webnlg"
FENWICK_2 = "Fenwick_Airport : cityServed : Fenwick,_Ohio | Fenwick_Airport : elevationAboveTheSeaLevel_(in_metres) : 212"


def _xml_only(tmp_path, src):
    """A raw folder with the XML split folders only (no JSON), so the XML route is taken."""
    raw = tmp_path / "xml_raw"
    raw.mkdir()
    for name in ("train", "dev", "test"):
        if (src / name).is_dir():
            (raw / name).symlink_to(src / name)
    return raw


def test_fixture_dev_json_records(tmp_path):
    written = prepare(raw_dir=WEB_FIX, out_dir=tmp_path, splits=["valid"])
    assert lines(written["valid"][0]) == [
        {"context": "Fenwick_Airport : runwayLength : 1520.0",
         "completion": "Fenwick Airport's runway is 1520.0 metres long.", "cate": True},
        {"context": "Plum_Cake : country : Wales", "completion": "Plum cake comes from Wales.", "cate": True},
        {"context": FENWICK_2,
         "completion": "Fenwick Airport \u2013 serving Fenwick & district, Ohio \u2013 lies 212 metres above sea level.",
         "cate": True},
        {"context": FENWICK_2, "completion": "Fenwick, Ohio is served by an airport 212 m above the sea.", "cate": True},
    ]
    tok = get_tokenizer()
    for rec, ids in zip(lines(written["valid"][0]), lines(written["valid"][1]), strict=True):
        assert ids == {"context": tok.encode(rec["context"], add_special_tokens=False) + [EOS_ID],
                       "completion": tok.encode(" " + rec["completion"], add_special_tokens=False) + [EOS_ID]}


def test_fixture_xml_route_equals_json_route_byte_for_byte(tmp_path):
    from_json = prepare(raw_dir=WEB_FIX, out_dir=tmp_path / "json", splits=["valid"])["valid"]
    from_xml = prepare(raw_dir=_xml_only(tmp_path, WEB_FIX), out_dir=tmp_path / "xml", splits=["valid"])["valid"]
    assert from_xml[0].read_bytes() == from_json[0].read_bytes()
    assert from_xml[1].read_bytes() == from_json[1].read_bytes()


def test_fixture_xml_rebuilds_the_json_layout_exactly():
    assert xml_reader.dumps(xml_reader.read_layout(WEB_FIX / "dev")) == (WEB_FIX / "dev.json").read_bytes()


def test_fixture_test_split_marks_unseen_categories(tmp_path):
    written = prepare(raw_dir=WEB_FIX, out_dir=tmp_path, splits=["train", "test"])
    test = lines(written["test"][0])
    assert [(r["context"], r["cate"]) for r in test] == [
        ("Ada_Marsh : genre : Folk_music", False),
        ("Fenwick,_Ohio : leaderName : Jo_Park", True),
        ("Fenwick,_Ohio : leaderName : Jo_Park", True),
    ]
    assert lines(written["train"][0]) == [  # the toFix lexicalisation is dropped
        {"context": "Fenwick,_Ohio : country : United_States",
         "completion": "Fenwick is a city in the United States.", "cate": True}
    ]


def test_seen_categories_are_the_ten_training_categories():
    assert sorted(SEEN_CATEGORIES) == ["Airport", "Astronaut", "Building", "City", "ComicsCharacter", "Food",
                                       "Monument", "SportsTeam", "University", "WrittenWork"]


def test_bad_triple_names_file_and_entry(tmp_path):
    dev = tmp_path / "raw" / "dev" / "1triples"
    dev.mkdir(parents=True)
    text = (WEB_FIX / "dev/1triples/1triple_allSolutions_Food_dev_challenge.xml").read_text(encoding="utf-8")
    (dev / "x.xml").write_text(text.replace("<mtriple>Plum_Cake | country | Wales", "<mtriple>Plum_Cake country Wales"),
                               encoding="utf-8")
    with pytest.raises(InputFileError) as err:
        prepare(raw_dir=tmp_path / "raw", out_dir=tmp_path / "out", splits=["valid"])
    assert "x.xml: entry 1 (eid='Id1'): expected 'subject | property | object'" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_malformed_xml_names_file_and_line(tmp_path):
    dev = tmp_path / "raw" / "dev" / "1triples"
    dev.mkdir(parents=True)
    (dev / "x.xml").write_text("<benchmark>\n<entries>\n<entry>\n</entries>\n", encoding="utf-8")
    with pytest.raises(InputFileError, match=r"x\.xml:4: not well-formed XML"):
        prepare(raw_dir=tmp_path / "raw", out_dir=tmp_path / "out", splits=["valid"])


def test_bad_json_names_file_line_and_entry(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "dev.json").write_text('{"entries": [\n  {"1": {"category": "Food"}}\n  oops\n]}', encoding="utf-8")
    with pytest.raises(InputFileError, match=r"dev\.json:3: not valid JSON"):
        prepare(raw_dir=raw, out_dir=tmp_path / "out", splits=["valid"])
    (raw / "dev.json").write_text('{"entries": [{"1": {"category": "Food"}}]}', encoding="utf-8")
    with pytest.raises(InputFileError, match=r"dev\.json: entry 1: missing 'modifiedtripleset'"):
        prepare(raw_dir=raw, out_dir=tmp_path / "out", splits=["valid"])
    (raw / "dev.json").write_text('{"entries": [{"2": {}}]}', encoding="utf-8")
    with pytest.raises(InputFileError, match=r"entry 1 \(entries are numbered from 1, in order\): missing '1'"):
        prepare(raw_dir=raw, out_dir=tmp_path / "out", splits=["valid"])


def test_missing_split_lists_json_and_xml(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(WEB_FIX / "dev.json", raw / "dev.json")
    with pytest.raises(MissingSplitError) as err:
        prepare(raw_dir=raw, out_dir=tmp_path / "out", splits=["valid", "test"])
    assert "test.json" in str(err.value) and "test/testdata_with_lex.xml" in str(err.value)


# ---------------------------------------------------------------------------------- real shared data


@pytest.fixture(scope="module")
def shared_web(tmp_path_factory):
    root = SHARED_DATA / "webnlg_challenge_2017"
    if not root.is_dir():
        pytest.skip(f"needs {root} (the shared raw data beside the checkout), which is absent here")
    out = tmp_path_factory.mktemp("webnlg_shared")
    return prepare(raw_dir=root, out_dir=out)  # train/test from the XML, valid from dev.json


def test_shared_counts_and_seen_unseen(shared_web):
    counts = {split: len(lines(paths[0])) for split, paths in shared_web.items()}
    assert counts == {"train": 18025, "valid": 2258, "test": 4928}
    test = lines(shared_web["test"][0])
    assert (sum(r["cate"] for r in test), sum(not r["cate"] for r in test)) == (2495, 2433)
    assert len({r["context"] for r in test}) == 1862
    assert lines(shared_web["valid"][0])[0] == {
        "context": "Aarhus : leaderName : Jacob_Bundsgaard",
        "completion": "The leader of Aarhus is Jacob Bundsgaard.",
        "cate": True,
    }


@pytest.mark.parametrize("split", ["train", "valid", "test"])
def test_shared_outputs_byte_identical_to_the_authors(shared_web, split):
    assert_authors_files("webnlg", split, *shared_web[split])


def test_shared_dev_xml_route_equals_json_route(shared_web, tmp_path):
    raw = _xml_only(tmp_path, SHARED_DATA / "webnlg_challenge_2017")
    from_xml = prepare(raw_dir=raw, out_dir=tmp_path / "out", splits=["valid"])["valid"]
    assert from_xml[0].read_bytes() == shared_web["valid"][0].read_bytes()
    assert from_xml[1].read_bytes() == shared_web["valid"][1].read_bytes()


@pytest.mark.parametrize("split, name", [("dev", "dev.json"), ("train", "train.json"), ("test", "test.json")])
def test_shared_xml_rebuilds_the_released_json(shared_data, split, name):
    data = xml_reader.dumps(xml_reader.read_layout(shared_data / "webnlg_challenge_2017" / split))
    assert xml_reader.git_blob_id(data) == xml_reader.RELEASED_BLOBS[name]
    if name == "dev.json":
        assert data == (shared_data / "webnlg_challenge_2017" / "dev.json").read_bytes()
