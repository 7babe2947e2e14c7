"""Small file helpers every stage shares: atomic writes and JSONL reading with file:line errors."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator


DEBUG_ENV = "NLG_DEBUG"  # set (to anything but 0) to see the traceback of an error a CLI reports in one line


def cli_error(exc: BaseException) -> int:
    """Report an expected error of a CLI as one line on stderr (an OS error as ``PATH: reason``) and return the
    exit code 2; with ``NLG_DEBUG=1`` re-raise it, traceback included. Call it from an ``except`` block."""
    if os.environ.get(DEBUG_ENV, "0") not in ("", "0"):
        raise exc
    if isinstance(exc, OSError) and exc.strerror and exc.filename:
        message = f"{exc.filename}: {exc.strerror}"
    elif isinstance(exc, OSError) and exc.strerror:
        message = exc.strerror
    else:
        message = str(exc)
    print(f"error: {message}", file=sys.stderr)
    return 2


class InputFileError(ValueError):
    """Bad input, always naming the file (and the line or entry when there is one)."""

    def __init__(self, path: str | os.PathLike, message: str, line: int | None = None):
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")
        self.path, self.line = str(path), line


def current_umask() -> int:
    """The process umask (read by setting and restoring it: there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def permit_as_created(path: str | os.PathLike, directory: bool = False) -> None:
    """Give a file or folder made by ``mkstemp``/``mkdtemp`` (always 0600/0700) the mode ``open``/``mkdir`` would."""
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes: the fingerprint runs record of their inputs."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _temp_beside(path: Path) -> str:
    """An empty temporary file in ``path``'s folder (created if needed), with the mode the umask gives new files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        permit_as_created(tmp)
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
FULL_BELOW = 16 << 20  # free bytes under which a failed torch write is put down to a full disk


class SaveError(OSError):
    """A save that could not be completed (a full disk); the message says what was kept as it was."""


def free_bytes(folder: str | os.PathLike) -> int | None:
    """Free space where ``folder`` (or its nearest existing parent) lives; None when it cannot be told."""
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def torch_write_failure(exc: BaseException) -> str | None:
    """The gist of torch.save's zip-writer error for a short write (``unexpected pos 1408 vs 1302``, ``file write
    failed``): it writes through C, so a full disk reaches Python as this RuntimeError, not as ENOSPC. None for
    any other error."""
    if not isinstance(exc, RuntimeError):
        return None
    text = str(exc).strip()
    if not re.search(r"unexpected pos|file write failed|PytorchStreamWriter failed", text):
        return None
    gist = re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", text)
    return (gist.splitlines() or [""])[0][:120]


@contextlib.contextmanager
def saving(path: str | os.PathLike, what: str, kept: str):
    """Turn a full disk while saving ``what`` to ``path`` into one SaveError line (``PATH: no space left on device
    while saving WHAT; KEPT``). Use it inside the block that removes the temporary files, so that torch's
    RuntimeError is judged by the free space while they still fill the disk."""
    try:
        yield
    except SaveError:
        raise
    except OSError as exc:
        if exc.errno not in NO_SPACE:
            raise
        reason = os.strerror(exc.errno).lower()
        raise SaveError(exc.errno, f"{reason} while saving {what}; {kept}", str(path)) from exc
    except RuntimeError as exc:
        gist = torch_write_failure(exc)
        if gist is None:
            raise
        free = free_bytes(Path(path).parent)
        if free is not None and free < FULL_BELOW:
            raise SaveError(errno.ENOSPC, f"no space left on device while saving {what}; {kept}", str(path)) from exc
        raise SaveError(errno.EIO, f"torch could not write {what} ({gist}); {kept}", str(path)) from exc


def remove_paths(paths: Iterable[Path]) -> None:
    """Remove each file or folder that exists (folders with everything in them)."""
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8"):
    """Write to a temporary file beside ``path`` and rename it into place only if the block succeeds."""
    path = Path(path)
    tmp = _temp_beside(path)
    try:
        kwargs = {} if "b" in mode else {"encoding": encoding, "newline": "\n"}
        with open(tmp, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        _raise_naming(exc, path)


@contextlib.contextmanager
def atomic_group(paths: Iterable[str | os.PathLike], encoding: str = "utf-8", mode: str = "w"):
    """Files that appear together or not at all: each is written to a temporary file beside it; only when
    every one is written, flushed and synced are they renamed into place (a full disk while writing any of them
    leaves all the old ones). Yields the handles in the order of ``paths``; ``mode="wb"`` for bytes."""
    paths = [Path(p) for p in paths]
    temps, handles = [], []
    kwargs = {} if "b" in mode else {"encoding": encoding, "newline": "\n"}
    current = None  # the file being worked on, named by an OSError that names none
    try:
        for path in paths:
            current = path
            temps.append(_temp_beside(path))
            handles.append(open(temps[-1], mode, **kwargs))
        folders = {path.parent for path in paths}
        current = folders.pop() if len(folders) == 1 else None  # a write in the block: which handle is unknown
        yield handles
        for path, handle in zip(paths, handles):
            current = path
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
        for tmp, path in zip(temps, paths):
            current = path
            os.replace(tmp, path)
    except BaseException as exc:
        for handle in handles:
            with contextlib.suppress(OSError):
                handle.close()
        for tmp in temps:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        _raise_naming(exc, current)


def _raise_naming(exc: BaseException, path: Path | None):
    """Re-raise ``exc``; an OSError that names no file (a write on a full disk) first gets ``path``, so the
    one-line CLI error says which file could not be written."""
    if isinstance(exc, OSError) and exc.filename is None and exc.errno is not None and path is not None:
        named = OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(path))
        raise named from exc
    raise exc


def write_jsonl(path: str | os.PathLike, records: Iterable[Any]) -> int:
    """Atomically write one JSON object per line; returns the count."""
    n = 0
    with atomic_open(path) as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            n += 1
    return n


def json_text(obj: Any) -> str:
    """The project's JSON file layout (indented, sorted keys, UTF-8 as is, final newline)."""
    return json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=True) + "\n"


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_open(path) as handle:
        handle.write(json_text(obj))


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """Yield (line number, record); a malformed line raises InputFileError naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "no such file")
    with open(path, "rb") as handle:  # bytes, decoded line by line: a bad byte is reported at its own line
        for lineno, raw in enumerate(handle, 1):
            line = _utf8_line(raw, path, lineno)
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputFileError(path, f"not valid JSON ({exc.msg})", lineno) from None


def _utf8_line(raw: bytes, path: Path, lineno: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputFileError(path, f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); "
                                   "re-save it as UTF-8", lineno) from None


def read_jsonl(path: str | os.PathLike) -> list[Any]:
    return [record for _, record in iter_jsonl(path)]


def host_reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """One short connection attempt: lets offline machines fail fast instead of retrying for minutes."""
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


def check_output(path: str | os.PathLike) -> None:
    """Fail in one line, before any work, when ``path`` cannot be written: a folder in its place, a file where its
    folder should be, or a folder this process may not write into."""
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{path}: is a folder; the output must be a file path")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise OutputPathError(f"{parent}: is a file, cannot hold {path}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputPathError(f"{parent}: not writable (read-only or no permission), cannot write {path}")


class OutputPathError(ValueError):
    """An output location that cannot be written."""
