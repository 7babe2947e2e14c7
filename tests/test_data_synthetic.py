"""The synthetic E2E sample: deterministic, E2E-shaped, marked as synthetic, and preparable like real data."""
from __future__ import annotations

import json
import re

import pytest

from data.common import SYNTHETIC_MARKER
from data.e2e.prepare import parse_line, prepare
from data.synthetic import is_synthetic, main, write_synthetic_e2e
from tests.data_test_utils import DATA_FIX, lines

LINE_SLOTS = ["name", "Type", "food", "price", "customer rating", "area", "family friendly", "near"]


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return write_synthetic_e2e(tmp_path_factory.mktemp("syn"), seed=0)


def _records(folder, split):
    path = folder / f"{split}.txt"
    return [parse_line(line, path, n) for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)]


def test_same_seed_same_bytes_other_seed_other_data(sample, tmp_path):
    again = write_synthetic_e2e(tmp_path / "again", seed=0)
    other = write_synthetic_e2e(tmp_path / "other", seed=1)
    for split in ("train", "valid", "test"):
        assert (again / f"{split}.txt").read_bytes() == (sample / f"{split}.txt").read_bytes()
    assert (other / "train.txt").read_bytes() != (sample / "train.txt").read_bytes()


def test_sizes_and_disjoint_mrs(sample):
    train, valid, test = (_records(sample, s) for s in ("train", "valid", "test"))
    assert len(train) == 300
    for recs in (valid, test):
        mrs = [r["context"] for r in recs]
        distinct = list(dict.fromkeys(mrs))
        assert len(distinct) == 50
        assert all(1 <= mrs.count(m) <= 3 for m in distinct)
        # the references of one MR are consecutive lines, as in the released E2E files
        assert sum(1 for a, b in zip(mrs, mrs[1:]) if a != b) == 49
    sets = [{r["context"] for r in recs} for recs in (train, valid, test)]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])


def test_lines_look_like_the_e2e_line_format(sample):
    for split in ("train", "valid", "test"):
        raw_lines = (sample / f"{split}.txt").read_text(encoding="utf-8").split("\n")
        assert raw_lines[-1] == "" and all(line.endswith(" ") for line in raw_lines[:-1])
        for rec in _records(sample, split):
            slots = [part.split(" : ")[0] for part in rec["context"].split(" | ")]
            assert slots[0] == "name" and slots == sorted(slots, key=LINE_SLOTS.index)
            # tokenised like the released files: punctuation, £ and hyphens between words stand alone
            assert not re.search(r"[^\W\d_][.,!?;:]|[,!?;:£]\w|£\d|[^\W_]-[^\W_]|  ", rec["completion"]), rec
            assert not re.search(r"£\d|[^\W_]-[^\W_]", rec["context"]), rec
            assert rec["context"].split(" | ")[0].split(" : ")[1] in rec["completion"]  # the name is mentioned


def test_marker_says_synthetic(sample):
    marker = json.loads((sample / SYNTHETIC_MARKER).read_text(encoding="utf-8"))
    assert marker["synthetic"] is True and marker["seed"] == 0
    assert marker["lines"]["train"] == 300
    assert is_synthetic(sample) and is_synthetic(sample / "train.txt") and not is_synthetic(DATA_FIX / "e2e")


def test_prepared_like_any_raw_dir_and_marker_follows(sample, tmp_path):
    out = tmp_path / "prepared"
    written = prepare(raw_dir=sample, out_dir=out)
    assert len(lines(written["train"][1])) == 300
    assert lines(written["valid"][0]) == _records(sample, "valid")
    assert is_synthetic(written["train"][1])
    prepare(raw_dir=DATA_FIX / "e2e", out_dir=out)  # real data into the same folder clears the marker
    assert not is_synthetic(out)


def test_cli(tmp_path, capsys):
    assert main(["--out-dir", str(tmp_path / "s"), "--n-train", "20", "--n-valid", "5", "--n-test", "4"]) == 0
    assert "python -m data.e2e.prepare --raw-dir" in capsys.readouterr().out
    assert len(_records(tmp_path / "s", "train")) == 20
    assert len({r["context"] for r in _records(tmp_path / "s", "test")}) == 4
