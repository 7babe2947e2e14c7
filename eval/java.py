"""Where Java and the two jars pycocoevalcap ships live (METEOR 1.5 with its paraphrase table, Stanford PTB)."""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path


class JavaError(RuntimeError):
    """Java or a jar is missing, or a Java helper failed."""


def java_binary() -> str:
    java = shutil.which("java")
    if not java:
        raise JavaError("Java not found on PATH: METEOR 1.5 and the PTB tokeniser need a Java runtime "
                        "(`bash scripts/setup.sh` installs one; on Debian/Ubuntu: apt-get install default-jre-headless)")
    return java


def _pycocoevalcap_dir() -> Path:
    spec = importlib.util.find_spec("pycocoevalcap")
    if spec is None or not spec.submodule_search_locations:
        raise JavaError("pycocoevalcap is not installed (pip install pycocoevalcap==1.2): it ships the METEOR 1.5 "
                        "jar, its paraphrase table and the Stanford PTB tokeniser jar")
    return Path(list(spec.submodule_search_locations)[0])


def meteor_paraphrase_table() -> Path:
    """The paraphrase table METEOR 1.5 loads by default (beside its jar)."""
    return _pycocoevalcap_dir() / "meteor" / "data" / "paraphrase-en.gz"


def meteor_jar() -> Path:
    jar = _pycocoevalcap_dir() / "meteor" / "meteor-1.5.jar"
    for path in (jar, meteor_paraphrase_table()):
        if not path.is_file():
            raise JavaError(f"{path} is missing from the pycocoevalcap install (reinstall pycocoevalcap==1.2)")
    return jar


def ptb_jar() -> Path:
    jar = _pycocoevalcap_dir() / "tokenizer" / "stanford-corenlp-3.4.1.jar"
    if not jar.is_file():
        raise JavaError(f"{jar} is missing from the pycocoevalcap install (reinstall pycocoevalcap==1.2)")
    return jar
