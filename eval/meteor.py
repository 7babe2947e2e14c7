"""METEOR 1.5 (-l en -norm), one Java process per scoring call, fed in bulk.

The process starts as soon as the object is made. Given the texts it will score, it loads only the paraphrase
entries those texts can use (eval.meteor_paraphrase: the same scores, about a second to start instead of six);
without them it loads the whole table. With ``texts_later=True`` Java starts at once and waits on a named pipe for
its paraphrase table, which :meth:`Meteor.provide_texts` filters and streams once the texts are known (the E2E
scorer does this while the PTB tokeniser runs). Segment statistics come from SCORE lines, the corpus score from one
EVAL line over the aggregated statistics -- the way both the MS-COCO wrapper (E2E) and METEOR's own file mode
(GenerationEval, -r N) reach their corpus score. Several EVAL calls (WebNLG all/seen/unseen) share the process.
"""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterable, Sequence

from .java import JavaError, java_binary, meteor_jar, meteor_paraphrase_table
from .meteor_paraphrase import load_index

FULL_TABLE_ENV = "NLG_METEOR_FULL_TABLE"  # set to 1 to always load the whole paraphrase table
# METEOR reads and writes its statistics with java.util.Scanner / String.format in the default locale: under a
# German one "0,5" is expected and "0.5" fails (InputMismatchException). Fixed to en-US on the command line, which
# overrides JAVA_TOOL_OPTIONS and the LANG / LC_* the JVM would take it from; the *.format properties are the ones
# Scanner and String.format actually consult (Locale.Category.FORMAT), should anything set them.
LOCALE_FLAGS = ("-Duser.language=en", "-Duser.country=US", "-Duser.language.format=en", "-Duser.country.format=US")


def _filtering() -> bool:
    return os.environ.get(FULL_TABLE_ENV, "") in ("", "0")


def _filtered_table(texts: Iterable[str], out: Path) -> bool:
    """Write the paraphrase entries usable for ``texts`` to ``out``; False (with a warning) when the index
    cannot be had, and the whole table must be used."""
    try:
        load_index().write_filtered(texts, out)
        return True
    except (OSError, ValueError, MemoryError) as exc:
        print(f"warning: METEOR loads its whole paraphrase table (no filtered copy: {exc})", file=sys.stderr)
        return False


class Meteor:
    """One METEOR 1.5 process.

    ``texts``: every hypothesis and reference it will be sent (tokenised as sent): only the usable paraphrase
    entries are loaded. ``texts_later``: start now, give the texts to :meth:`provide_texts` before the first
    request. Neither: the whole table (``NLG_METEOR_FULL_TABLE=1`` forces that in every case)."""

    def __init__(self, memory: str = "2G", texts: Iterable[str] | None = None, texts_later: bool = False):
        self._stderr = tempfile.TemporaryFile()
        self._folder: Path | None = None
        self._pipe: Path | None = None
        cmd = [java_binary(), f"-Xmx{memory}", *LOCALE_FLAGS, "-jar", str(meteor_jar()), "-", "-", "-stdio", "-l",
               "en", "-norm"]
        if texts_later and not hasattr(os, "mkfifo"):  # no named pipes here: the whole table
            texts_later = False
        if _filtering() and (texts is not None or texts_later):
            self._folder = Path(tempfile.mkdtemp(prefix="meteor-"))
            table = self._folder / "paraphrase-en.gz"
            if texts_later:
                os.mkfifo(table)
                self._pipe = table
                cmd += ["-a", str(table)]
            elif _filtered_table(texts, table):
                cmd += ["-a", str(table)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr)

    @property
    def filtered(self) -> bool:
        """Whether this process reads a filtered paraphrase table (or waits for one)."""
        return self._folder is not None and (self._pipe is not None or any(self._folder.iterdir()))

    def provide_texts(self, texts: Iterable[str]) -> None:
        """Stream the paraphrase entries usable for ``texts`` to the waiting process (``texts_later=True``); a
        no-op otherwise."""
        pipe, self._pipe = self._pipe, None
        if pipe is None:
            return
        table = pipe.with_name("filtered.gz")
        source = table if _filtered_table(texts, table) else meteor_paraphrase_table()
        fd = None
        while fd is None:  # the reader must be there before a write end opens without blocking
            try:
                fd = os.open(pipe, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    raise
                if self.proc.poll() is not None:
                    raise JavaError(f"METEOR exited before reading its paraphrase table: {self._error_text()}")
                time.sleep(0.005)
        os.set_blocking(fd, True)
        try:
            with open(source, "rb") as handle, os.fdopen(fd, "wb") as out:
                fd = None
                shutil.copyfileobj(handle, out, 1 << 20)
        except BrokenPipeError:
            raise JavaError(f"METEOR stopped reading its paraphrase table: {self._error_text()}") from None
        finally:
            if fd is not None:
                os.close(fd)

    def _error_text(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace")[-1000:]

    def __enter__(self) -> "Meteor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._pipe is not None and self.proc.poll() is None:  # still waiting for a table nobody will send
            self.proc.kill()
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.wait()
        self._stderr.close()
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def _exchange(self, lines: Sequence[str], n_answers: int) -> "_Exchange":
        """Send lines and collect n_answers answer lines in background threads; `.wait()` returns them."""
        return _Exchange(self, lines, n_answers)

    def submit_stats(self, hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> "_Exchange":
        """Start computing sufficient statistics per segment; `.wait()` returns them."""
        if self._pipe is not None:
            self.provide_texts([*hyps, *(r for g in refs for r in g)])
        lines = []
        for hyp, group in zip(hyps, refs):
            hyp = hyp.replace("|||", "").replace("  ", " ")
            lines.append(" ||| ".join(["SCORE", " ||| ".join(r.replace("|||", "") for r in group), hyp]))
        return self._exchange(lines, len(lines))

    def stats(self, hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> list[str]:
        """Sufficient statistics per segment (hypothesis against all its references)."""
        return self.submit_stats(hyps, refs).wait()

    def corpus_score(self, stats: Sequence[str]) -> float:
        """The corpus METEOR from aggregated statistics (not an average of segment scores)."""
        if not stats:
            raise ValueError("no segments to score")
        answers = self._exchange(["EVAL ||| " + " ||| ".join(stats)], len(stats) + 1).wait()
        return float(answers[-1])


class _Exchange:
    """A writer thread feeds the lines while a reader thread collects the answers, so no pipe fills up and the
    caller is free to compute other metrics meanwhile."""

    def __init__(self, meteor: Meteor, lines: Sequence[str], n_answers: int):
        self.meteor, self.n = meteor, n_answers
        self.answers: list[str] = []
        self.failure: list[BaseException] = []
        self.writer = threading.Thread(target=self._feed, args=(lines,), daemon=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.writer.start()
        self.reader.start()

    def _feed(self, lines: Sequence[str]) -> None:
        proc = self.meteor.proc
        try:
            proc.stdin.write("".join(line + "\n" for line in lines).encode("utf-8"))
            proc.stdin.flush()
        except BaseException as exc:  # noqa: BLE001 -- reported by wait() with Java's own message
            self.failure.append(exc)

    def _read(self) -> None:
        stdout = self.meteor.proc.stdout
        for _ in range(self.n):
            line = stdout.readline()
            if not line:
                break
            self.answers.append(line.decode("utf-8").strip())

    def wait(self) -> list[str]:
        self.writer.join()
        self.reader.join()
        if len(self.answers) < self.n or self.failure:
            err = self.meteor._error_text()
            raise JavaError(f"METEOR stopped answering after {len(self.answers)} of {self.n} lines: "
                            f"{err or self.failure}")
        return self.answers
