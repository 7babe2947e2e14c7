"""The three splits every dataset has, and the check of a requested list of them.

Its own module because both the preparers' shell (data.common) and the downloader (data.download) need it, and
the shell calls the downloader: here neither has to import the other to learn what a split is.
"""
from __future__ import annotations

from typing import Iterable

SPLITS = ("train", "valid", "test")


def check_splits(splits: Iterable[str]) -> tuple[str, ...]:
    """``splits`` as a tuple, or a ValueError naming the unknown ones (or the empty request)."""
    splits = tuple(splits)
    bad = [s for s in splits if s not in SPLITS]
    if bad or not splits:
        raise ValueError(f"unknown split(s) {bad or splits}; expected some of {', '.join(SPLITS)}")
    return splits
