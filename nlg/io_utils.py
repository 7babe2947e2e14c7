"""Small file helpers every stage shares: atomic writes and JSONL reading with file:line errors."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator


class InputFileError(ValueError):
    """Bad input, always naming the file (and the line or entry when there is one)."""

    def __init__(self, path: str | os.PathLike, message: str, line: int | None = None):
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")
        self.path, self.line = str(path), line


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8"):
    """Write to a temporary file beside ``path`` and rename it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        kwargs = {} if "b" in mode else {"encoding": encoding, "newline": "\n"}
        with open(tmp, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_jsonl(path: str | os.PathLike, records: Iterable[Any]) -> int:
    """Atomically write one JSON object per line; returns the count."""
    n = 0
    with atomic_open(path) as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            n += 1
    return n


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_open(path) as handle:
        json.dump(obj, handle, indent=2, ensure_ascii=False, sort_keys=True)
        handle.write("\n")


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """Yield (line number, record); a malformed line raises InputFileError naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "no such file")
    with open(path, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputFileError(path, f"not valid JSON ({exc.msg})", lineno) from None


def read_jsonl(path: str | os.PathLike) -> list[Any]:
    return [record for _, record in iter_jsonl(path)]


def host_reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """One short connection attempt: lets offline machines fail fast instead of retrying for minutes."""
    import socket

    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def read_json_object(path: str | os.PathLike, missing_ok: bool = False) -> dict | None:
    """A JSON object from a file: bad JSON names file:line; a missing file is an error, or None if missing_ok."""
    path = Path(path)
    if not path.is_file():
        if missing_ok:
            return None
        raise InputFileError(path, "no such file")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputFileError(path, f"not valid JSON ({exc.msg})", exc.lineno) from None
    if not isinstance(obj, dict):
        raise InputFileError(path, "expected a JSON object")
    return obj
