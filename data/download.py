"""Fetch the raw files the LoRA authors prepared from, into a cache, when no ``--raw-dir`` is given.

Source: the authors' own copies in github.com/microsoft/LoRA, pinned to commit c4593f0 and checked against the
git blob id that commit lists for each file, so a download is exactly the authors' input or an error:

* E2E: ``examples/NLG/data/e2e/{train,valid,test}.txt`` (the Prefix-Tuning line format of the official
  E2E release, github.com/tuetschek/e2e-dataset);
* WebNLG 2017: ``examples/NLG/data/webnlg_challenge_2017/{train,dev,test}.json`` (the 2017 challenge XML in JSON);
* DART v1.1.1: ``examples/NLG/data/dart/dart-v1.1.1-full-{train,dev,test}.json`` (github.com/Yale-LILY/dart
  ``data/v1.1.1/``, with LF line endings).

Cache: ``$NLG_LORA_CACHE`` or ``~/.cache/nlg-lora/raw``, one folder per dataset. ``$NLG_LORA_DATA_URL`` replaces
the base URL (a mirror holding the same relative paths).

    python -m data.download e2e webnlg dart [--splits train valid test] [--cache-dir DIR]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from data.splits import SPLITS, check_splits
from nlg.io_utils import atomic_open

LORA_COMMIT = "c4593f060e6a368d7bb5af5273b8e42810cdef90"
DEFAULT_BASE_URL = f"https://raw.githubusercontent.com/microsoft/LoRA/{LORA_COMMIT}/examples/NLG/data"


@dataclass(frozen=True)
class RemoteFile:
    path: str  # relative to the base URL; the local file keeps the last component as its name
    git_blob: str  # sha1 of "blob <size>\0" + content, as listed in the pinned LoRA tree

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


FILES: dict[str, dict[str, RemoteFile]] = {
    "e2e": {
        "train": RemoteFile("e2e/train.txt", "2f92a2790c00a48574dcc89465a326f33d7e7cc6"),
        "valid": RemoteFile("e2e/valid.txt", "94f87112e11198710d65a1d5dc7d0b8d9155a07d"),
        "test": RemoteFile("e2e/test.txt", "084da9f4409d98058bcb020614afa83824440484"),
    },
    "webnlg": {
        "train": RemoteFile("webnlg_challenge_2017/train.json", "461766d1fe902bd659b821a03f49310c22403686"),
        "valid": RemoteFile("webnlg_challenge_2017/dev.json", "180f096ff49a7e597dd7c507ea0c5441e839b770"),
        "test": RemoteFile("webnlg_challenge_2017/test.json", "7f552799b7e3b5badf95b725c20d955e0886811e"),
    },
    "dart": {
        "train": RemoteFile("dart/dart-v1.1.1-full-train.json", "66d6ce4aeb5d01c318c7fc15d7747ef39ea320be"),
        "valid": RemoteFile("dart/dart-v1.1.1-full-dev.json", "e3a7a497677e7edd9c45a3aaadb3ab8fd5493f75"),
        "test": RemoteFile("dart/dart-v1.1.1-full-test.json", "c3de833701dcd475ff3bf0b72cd96e13aeeb6b68"),
    },
}


class DownloadError(RuntimeError):
    """A file could not be fetched or is not the file the authors used."""


def git_blob_id(path: Path) -> str:
    digest = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cache_root() -> Path:
    return Path(os.environ.get("NLG_LORA_CACHE") or Path.home() / ".cache" / "nlg-lora" / "raw")


def download_file(url: str, dest: Path, expected_blob: str | None = None, timeout: float = 60.0) -> Path:
    """Stream ``url`` into ``dest`` atomically with a progress bar; verify the git blob id when given."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, atomic_open(dest, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {dest.name}", mininterval=1.0) as bar:
                for chunk in iter(lambda: response.read(1 << 16), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
            if expected_blob is not None:
                out.flush()
                got = git_blob_id(Path(out.name))
                if got != expected_blob:
                    raise DownloadError(
                        f"{url}: the downloaded file is not the expected one (git blob {got}, expected {expected_blob})"
                    )
    except (urllib.error.URLError, OSError) as exc:
        raise DownloadError(
            f"could not download {url} ({exc}); download it by hand and pass its folder with --raw-dir"
        ) from exc
    return dest


def fetch(dataset: str, splits=SPLITS, cache_dir: str | os.PathLike | None = None, base_url: str | None = None) -> Path:
    """Make sure ``<cache>/<dataset>/`` holds the verified raw file of every split; return that folder."""
    if dataset not in FILES:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(FILES)}")
    base = (base_url or os.environ.get("NLG_LORA_DATA_URL") or DEFAULT_BASE_URL).rstrip("/")
    folder = Path(cache_dir) if cache_dir is not None else cache_root() / dataset
    for split in check_splits(splits):
        remote = FILES[dataset][split]
        dest = folder / remote.name
        if dest.is_file() and git_blob_id(dest) == remote.git_blob:
            continue
        download_file(f"{base}/{remote.path}", dest, remote.git_blob)
    return folder


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data.download", description="Download the raw datasets.")
    parser.add_argument("datasets", nargs="+", choices=sorted(FILES))
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS)
    parser.add_argument("--cache-dir", help="folder to download into (default: <cache>/<dataset>/)")
    args = parser.parse_args(argv)
    try:
        for name in args.datasets:
            print(f"{name}: {fetch(name, args.splits, args.cache_dir)}")
    except DownloadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
