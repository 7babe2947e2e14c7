"""E2E from the hub's Parquet files through ``datasets`` (data.e2e.hub): the same prepared bytes as the csv route.

No network: the tests write the Parquet file themselves (``datasets.Dataset.to_parquet``) and pass it as
``data_files``, which is what ``load_dataset`` reads from the hub."""
from __future__ import annotations

import csv
import shutil

import pytest

from data.e2e import hub
from data.e2e.prepare import prepare
from tests.conftest import SHARED_DATA

ROWS = [  # our own rows, with what the csv layout has to survive: commas, quotes, £, non-ASCII, a newline-free
    ("name[Fenwick Hall], eatType[coffee shop], area[harbour front]",
     "Fenwick Hall is a coffee shop on the harbour front, near \"the pier\"."),
    ("name[Café Lindqvist], priceRange[£20-25], familyFriendly[yes]",
     "Café Lindqvist isn't expensive: £20-25, and it's family-friendly."),
    ("name[The Salt Cellar], customer rating[5 out of 5]", "The Salt Cellar is rated 5 out of 5. in town"),
]


def _parquet(rows, path):
    from datasets import Dataset

    Dataset.from_dict({"meaning_representation": [r[0] for r in rows],
                       "human_reference": [r[1] for r in rows]}).to_parquet(str(path))
    return path


def _release_csv(rows, path):
    with open(path, "w", encoding="utf-8", newline="") as handle:  # the release quotes every field with a comma
        writer = csv.writer(handle, quoting=csv.QUOTE_MINIMAL, lineterminator="\r\n")
        writer.writerow(["mr", "ref"])
        writer.writerows(rows)
    return path


def _prepared_bytes(raw, out, split="valid"):
    written = prepare(raw_dir=raw, out_dir=out, splits=(split,))
    return [p.read_bytes() for p in written[split]]


@pytest.mark.parametrize("variant", ["official", "cleaned"])
def test_hub_route_prepares_the_same_bytes_as_the_csv(tmp_path, variant):
    csv_raw = tmp_path / "csv"
    csv_raw.mkdir()
    _release_csv(ROWS, csv_raw / hub.CSV_NAMES[variant]["valid"])
    written = hub.fetch(tmp_path / "hub", variant, ("valid",), {"valid": _parquet(ROWS, tmp_path / "v.parquet")})
    assert written == {"valid": tmp_path / "hub" / hub.CSV_NAMES[variant]["valid"]}
    assert _prepared_bytes(tmp_path / "hub", tmp_path / "out-hub") == _prepared_bytes(csv_raw, tmp_path / "out-csv")


@pytest.mark.skipif(not (SHARED_DATA / "e2e" / "devset.csv").is_file(),
                    reason="../shared/data/e2e/devset.csv (the official release's dev csv) is not beside the checkout")
def test_hub_route_equals_the_release_devset(tmp_path):
    with open(SHARED_DATA / "e2e" / "devset.csv", encoding="utf-8", newline="") as handle:
        rows = [tuple(r) for r in list(csv.reader(handle))[1:]]
    csv_raw = tmp_path / "csv"
    csv_raw.mkdir()
    shutil.copy(SHARED_DATA / "e2e" / "devset.csv", csv_raw / "devset.csv")
    hub.fetch(tmp_path / "hub", "official", ("valid",), {"valid": _parquet(rows, tmp_path / "dev.parquet")})
    assert len(rows) == 4672
    assert _prepared_bytes(tmp_path / "hub", tmp_path / "o1") == _prepared_bytes(csv_raw, tmp_path / "o2")


def test_missing_columns_and_offline_fail_in_one_line(tmp_path, monkeypatch):
    from datasets import Dataset

    Dataset.from_dict({"mr": ["x"], "target": ["y"]}).to_parquet(str(tmp_path / "bad.parquet"))
    with pytest.raises(hub.HubUnavailable, match="no column.*meaning_representation"):
        hub.fetch(tmp_path / "out", "official", ("valid",), {"valid": tmp_path / "bad.parquet"})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(hub.HubUnavailable, match="tuetschek/e2e_nlg: cannot load E2E split 'test'.*--raw-dir"):
        hub.load_split("official", "test")
    assert hub.main(["--out", str(tmp_path / "o"), "--splits", "test"]) == 2
