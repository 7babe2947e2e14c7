"""E2E NLG (official or cleaned) from the Hugging Face hub, through ``datasets``, into the official csv layout.

For users with the hub but without the csv files: ``load_dataset`` reads the hub's Parquet files of
``tuetschek/e2e_nlg`` (the official release) or ``tuetschek/e2e_nlg_cleaned`` (Dušek et al.'s cleaned E2E), and
each split is written as the csv the release ships (header ``mr,ref``, rows in the hub's order, which is the
release's), under the file name data.e2e.prepare looks for. The preparer then converts it exactly as it converts
the downloaded csv (data.e2e.csv_format), so both routes give the same prepared bytes.

    python -m data.e2e.hub --out RAW_DIR [--cleaned] [--splits train valid test]
    python -m data.e2e.prepare --raw-dir RAW_DIR

The paper's own E2E input is the authors' line-format files (data.download fetches those, pinned); the hub route
is for the csv-based variants. DART is never taken from the hub: its hub copy's test split has 5,097 entries, not
the 12,552 annotations of the v1.1.1 release the paper scores on.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from nlg.io_utils import atomic_open

HUB_IDS = {"official": "tuetschek/e2e_nlg", "cleaned": "tuetschek/e2e_nlg_cleaned"}
HUB_SPLITS = {"train": "train", "valid": "validation", "test": "test"}
CSV_NAMES = {  # the names data.e2e.prepare looks for (its RAW_NAMES), per variant
    "official": {"train": "trainset.csv", "valid": "devset.csv", "test": "testset_w_refs.csv"},
    "cleaned": {"train": "train-fixed.no-ol.csv", "valid": "devel-fixed.no-ol.csv", "test": "test-fixed.csv"},
}
COLUMNS = ("meaning_representation", "human_reference")


class HubUnavailable(RuntimeError):
    """The hub cannot be reached (offline) or does not hold what was asked for."""


def load_split(variant: str, split: str, data_files: str | Path | None = None):
    """One split as a ``datasets.Dataset``: from the hub, or from a local Parquet file given as ``data_files``."""
    from datasets import load_dataset

    try:
        if data_files is not None:
            return load_dataset("parquet", data_files={"split": str(data_files)}, split="split")
        return load_dataset(HUB_IDS[variant], split=HUB_SPLITS[split])
    except (ConnectionError, OSError, ValueError) as exc:
        where = data_files or HUB_IDS[variant]
        raise HubUnavailable(f"{where}: cannot load E2E split {split!r} from the hub ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else exc}); offline, give the csv or line-format "
                             f"files with --raw-dir instead") from None


def write_csv(rows, path: Path) -> int:
    """The release's csv layout: header ``mr,ref``, one row per (MR, reference); returns the row count."""
    missing = [c for c in COLUMNS if c not in rows.column_names]
    if missing:
        raise HubUnavailable(f"{path.name}: the hub split has no column(s) {', '.join(missing)} "
                             f"(it has {', '.join(rows.column_names)})")
    n = 0
    with atomic_open(path) as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["mr", "ref"])
        for mr, ref in zip(rows[COLUMNS[0]], rows[COLUMNS[1]]):
            writer.writerow([mr, ref])
            n += 1
    return n


def fetch(out_dir: str | Path, variant: str = "official", splits=("train", "valid", "test"),
          data_files: dict[str, str | Path] | None = None) -> dict[str, Path]:
    """Write the csv of each split into ``out_dir``; returns {split: path}. ``data_files``: local Parquet per split
    instead of the hub (tests; mirrors)."""
    if variant not in HUB_IDS:
        raise ValueError(f"unknown E2E variant {variant!r}; expected one of {', '.join(HUB_IDS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for split in splits:
        rows = load_split(variant, split, (data_files or {}).get(split))
        path = out_dir / CSV_NAMES[variant][split]
        write_csv(rows, path)
        written[split] = path
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m data.e2e.hub", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="raw folder to write the csv files into")
    p.add_argument("--cleaned", action="store_true", help="the cleaned E2E (tuetschek/e2e_nlg_cleaned)")
    p.add_argument("--splits", nargs="+", default=["train", "valid", "test"], choices=list(HUB_SPLITS))
    a = p.parse_args(argv)
    try:
        written = fetch(a.out, "cleaned" if a.cleaned else "official", a.splits)
    except (HubUnavailable, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for split, path in written.items():
        print(f"{split}: {path}")
    print(f"next: python -m data.e2e.prepare --raw-dir {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
