"""PTB tokenisation as the MS-COCO caption scripts do it: Stanford PTBTokenizer 3.4.1 (the jar pycocoevalcap
ships), -preserveLines -lowerCase, then the punctuation tokens dropped. It runs in the background so the caller
can compute other metrics meanwhile.

Differs from the COCO wrapper only where that one breaks: characters the tokeniser takes as line ends
(CR, VT, FF, U+2028, U+2029) become blanks first, so one text is always one line.
"""
from __future__ import annotations

import os
import subprocess
import tempfile
from typing import Sequence

from .java import JavaError, java_binary, ptb_jar

PUNCTUATION = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-",
                         ".", "?", "!", ",", ":", "-", "--", "...", ";"])
_LINE_BREAKERS = str.maketrans({"\r": " ", "\x0b": " ", "\x0c": " ", "\u2028": " ", "\u2029": " ", "\n": " "})


class PTBJob:
    """One tokeniser process over a list of texts; `result()` waits and returns one string per text."""

    def __init__(self, texts: Sequence[str]):
        self.n = len(texts)
        body = "\n".join(t.translate(_LINE_BREAKERS) for t in texts)
        fd, self.path = tempfile.mkstemp(prefix="ptb-", suffix=".txt")
        with os.fdopen(fd, "wb") as handle:
            handle.write(body.encode("utf-8"))
        cmd = [java_binary(), "-cp", str(ptb_jar()), "edu.stanford.nlp.process.PTBTokenizer",
               "-preserveLines", "-lowerCase", self.path]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def result(self) -> list[str]:
        try:
            out, err = self.proc.communicate()
        finally:
            os.unlink(self.path)
        if self.proc.returncode != 0:
            raise JavaError(f"PTB tokeniser failed (exit {self.proc.returncode}): {err.decode('utf-8', 'replace')[-500:]}")
        lines = out.decode("utf-8").split("\n")
        if len(lines) < self.n or any(lines[self.n:]):
            raise JavaError(f"PTB tokeniser returned {len(lines)} lines for {self.n} texts")
        return [" ".join(w for w in line.rstrip().split(" ") if w not in PUNCTUATION) for line in lines[: self.n]]


def ptb_tokenize(texts: Sequence[str]) -> list[str]:
    return PTBJob(texts).result()
