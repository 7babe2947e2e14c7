"""Read references and hypotheses the way the official scorers mean them, without their file-reading accidents.

Lines are split on "\\n" only (a final newline terminates the last line, it does not add an empty one) and one
trailing "\\r" is dropped, so CRLF files read like LF files. Every problem raises InputFileError naming the file.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from nlg.io_utils import InputFileError, iter_jsonl


def read_lines(path: str | os.PathLike, allow_empty_file: bool = False) -> list[str]:
    """The lines of a UTF-8 text file (no line-ending characters); an empty file is an error unless allowed."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "no such file")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InputFileError(path, f"not valid UTF-8 ({exc.reason})", line) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    if not text:
        if allow_empty_file:
            return []
        raise InputFileError(path, "file is empty")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the newline ending the last line
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def read_e2e_references(path: str | os.PathLike, n_hyps: int | None = None) -> list[list[str]]:
    """E2E references: groups of lines separated by one blank line (as measure_scores.py reads them).

    Lines are stripped of surrounding blanks like the official reader. A file without any blank line is a
    single-reference file (one group per line) unless it holds exactly one instance's references
    (n_hyps == 1), which the official reader would misread.
    """
    lines = [line.strip() for line in read_lines(path)]
    groups: list[list[str]] = [[]]
    starts = [1]
    for lineno, line in enumerate(lines, 1):
        if line:
            groups[-1].append(line)
        else:
            if not groups[-1]:
                raise InputFileError(path, "empty reference group (two blank lines in a row, or a blank first line)",
                                     lineno)
            groups.append([])
            starts.append(lineno + 1)
    if not groups[-1]:
        groups.pop()  # blank line after the last group
    if not groups:
        raise InputFileError(path, "no references in file")
    if len(groups) == 1 and n_hyps != 1:
        groups = [[ref] for ref in groups[0]]
    return groups


def read_hypotheses(path: str | os.PathLike) -> list[str]:
    """One hypothesis per line (an empty line is an empty output), or the pipeline's JSONL with a "text" field."""
    path = Path(path)
    if path.suffix == ".jsonl":
        return [_jsonl_field(path, lineno, rec, ("text", "hypothesis")) for lineno, rec in _iter_jsonl_lines(path)]
    return read_lines(path)


def read_jsonl_references(path: str | os.PathLike) -> list[list[str]]:
    """The pipeline's JSONL references: one record per instance with a list under "references" (or "refs")."""
    path = Path(path)
    out = []
    for lineno, rec in _iter_jsonl_lines(path):
        refs = _jsonl_field(path, lineno, rec, ("references", "refs"))
        if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
            raise InputFileError(path, "references must be a list of strings", lineno)
        out.append(list(refs))
    return out


def multi_ref_files(refs: str | os.PathLike, num_refs: int | None = None) -> list[Path]:
    """GenerationEval's reference files: PREFIX0..PREFIX{N-1}, or DIR/reference0.. ; N found when not given."""
    refs = Path(refs)
    prefix = refs / "reference" if refs.is_dir() else refs
    if num_refs is None:
        files = []
        while Path(f"{prefix}{len(files)}").is_file():
            files.append(Path(f"{prefix}{len(files)}"))
        if not files and prefix.is_file():
            files = [prefix]
        if not files:
            raise InputFileError(refs, f"no reference files {prefix}0, {prefix}1, ... found")
        return files
    if num_refs < 1:
        raise InputFileError(refs, f"number of references must be at least 1, got {num_refs}")
    files = [prefix] if num_refs == 1 and prefix.is_file() else [Path(f"{prefix}{i}") for i in range(num_refs)]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        found = len(multi_ref_files(refs)) if Path(f"{prefix}0").is_file() else 0
        raise InputFileError(refs, f"expected {num_refs} reference files but {', '.join(missing)} "
                                   f"{'is' if len(missing) == 1 else 'are'} missing ({found} found)")
    extra = Path(f"{prefix}{num_refs}")
    if num_refs > 1 and extra.is_file():
        raise InputFileError(refs, f"expected {num_refs} reference files but {extra} exists too; "
                                   f"pass the right number of references (-nr)")
    return files


def read_multi_references(refs: str | os.PathLike, num_refs: int | None = None) -> list[list[str]]:
    """Per instance, the N references (missing ones are empty strings), checking every file's line count."""
    if Path(refs).suffix == ".jsonl":
        groups = read_jsonl_references(refs)
        width = num_refs or max(len(g) for g in groups)
        if any(len(g) > width for g in groups):
            raise InputFileError(refs, f"an instance has more than {width} references")
        return [g + [""] * (width - len(g)) for g in groups]
    files = multi_ref_files(refs, num_refs)
    columns = [read_lines(f, allow_empty_file=True) for f in files]
    lengths = {len(c) for c in columns}
    if len(lengths) != 1:
        detail = ", ".join(f"{f}: {len(c)}" for f, c in zip(files, columns))
        raise InputFileError(files[0], f"reference files have different numbers of lines ({detail})")
    if not columns[0]:
        raise InputFileError(files[0], "reference files are empty")
    return [list(group) for group in zip(*columns)]


def check_counts(refs_path, n_refs: int, hyps_path, n_hyps: int) -> None:
    """Hypothesis and reference instance counts must agree, and neither may be empty."""
    if n_hyps == 0:
        raise InputFileError(hyps_path, "no hypotheses")
    if n_refs != n_hyps:
        raise InputFileError(hyps_path, f"{n_hyps} hypotheses but {n_refs} reference instances in {refs_path}")


def _iter_jsonl_lines(path: Path):
    found = False
    for lineno, rec in iter_jsonl(path):
        found = True
        if not isinstance(rec, dict):
            raise InputFileError(path, "each line must be a JSON object", lineno)
        yield lineno, rec
    if not found:
        raise InputFileError(path, "file is empty")


def _jsonl_field(path: Path, lineno: int, rec: dict, names: tuple[str, ...]):
    for name in names:
        if name in rec:
            value = rec[name]
            if name in ("text", "hypothesis") and not isinstance(value, str):
                raise InputFileError(path, f'"{name}" must be a string', lineno)
            return value
    raise InputFileError(path, f"record has none of the fields {', '.join(map(json.dumps, names))}", lineno)
