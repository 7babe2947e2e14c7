"""METEOR 1.5 (-l en -norm), one Java process per scoring call, fed in bulk.

The process starts as soon as the object is made (loading the paraphrase table takes seconds), so callers create
it first and do other work meanwhile. Segment statistics come from SCORE lines, the corpus score from one EVAL
line over the aggregated statistics -- the way both the MS-COCO wrapper (E2E) and METEOR's own file mode
(GenerationEval, -r N) reach their corpus score. Several EVAL calls (WebNLG all/seen/unseen) share the process.
"""
from __future__ import annotations

import subprocess
import tempfile
import threading
from typing import Sequence

from .java import JavaError, java_binary, meteor_jar


class Meteor:
    def __init__(self, memory: str = "2G"):
        self._stderr = tempfile.TemporaryFile()
        cmd = [java_binary(), f"-Xmx{memory}", "-jar", str(meteor_jar()), "-", "-", "-stdio", "-l", "en", "-norm"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr)

    def __enter__(self) -> "Meteor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
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
        self._stderr.close()

    def _exchange(self, lines: Sequence[str], n_answers: int) -> "_Exchange":
        """Send lines and collect n_answers answer lines in background threads; `.wait()` returns them."""
        return _Exchange(self, lines, n_answers)

    def submit_stats(self, hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> "_Exchange":
        """Start computing sufficient statistics per segment; `.wait()` returns them."""
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
            err_file = self.meteor._stderr
            err_file.seek(0)
            err = err_file.read().decode("utf-8", "replace")[-1000:]
            raise JavaError(f"METEOR stopped answering after {len(self.answers)} of {self.n} lines: "
                            f"{err or self.failure}")
        return self.answers
