"""The run folder has one owner (issue 14): its file and folder names live in nlg.run_folder only, a training run
records its provenance there once, and the data package's shell and downloader no longer import each other."""
from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest

from nlg import run_folder
from nlg.config import paper_train_config
from nlg.run_folder import PROVENANCE, RunFolder, read_provenance
from nlg.train import train
from tests.conftest import FIXTURES

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("nlg", "data", "eval")
DATA = FIXTURES / "authors_train_step" / "train.jsonl"
SPLIT_NAMES = ("train", "valid", "test", run_folder.HELDOUT)
TOO_COMMON = {run_folder.DATA}  # ../shared/data, the packages' own data folders: not a run folder's data/


def _names() -> tuple[set[str], set[str], set[str]]:
    """From nlg.run_folder's constants: file names (whole string literals elsewhere are forbidden), folder names
    (forbidden as the right side of ``path / "name"`` and as a ``"name/..."`` prefix) and the fixed parts of the
    ``{split}``/``{name}`` templates (forbidden as a literal's start, or as its end after a placeholder)."""
    files, folders, fixed = set(), set(), set()
    for key, value in vars(run_folder).items():
        if not key.isupper() or not isinstance(value, str):
            continue
        if "{" in value:
            head, _, rest = value.partition("{")
            tail = rest.partition("}")[2]
            fixed |= {part for part in (head, tail) if part}
            files |= {value.format(split=s, name=s) for s in SPLIT_NAMES}
        elif "." in value:
            files.add(value)
        elif value not in TOO_COMMON:
            folders.add(value)
    return files, folders, fixed


def _literal_problems(tree: ast.AST, files: set[str], folders: set[str], fixed: set[str]) -> list[str]:
    problems = []
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                  and node.body and isinstance(node.body[0], ast.Expr)}
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and isinstance(node.right, ast.Constant) \
                and node.right.value in folders | files:
            problems.append(f"line {node.lineno}: / {node.right.value!r}")
        elif isinstance(node, ast.JoinedStr):
            parts = node.values
            for i, part in enumerate(parts):
                if not isinstance(part, ast.Constant) or not isinstance(part.value, str):
                    continue
                after_value = i > 0 and not isinstance(parts[i - 1], ast.Constant)
                if (i == 0 and any(part.value.startswith(f) for f in fixed if f[0].isalpha())) or \
                        (after_value and part.value in fixed) or \
                        (i == 0 and any(part.value.startswith(d + "/") for d in folders)):
                    problems.append(f"line {node.lineno}: f-string part {part.value!r}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            if node.value in files or any(node.value.startswith(d + "/") for d in folders):
                problems.append(f"line {node.lineno}: {node.value!r}")
    return problems


def test_no_module_but_run_folder_spells_a_run_folder_name():
    files, folders, fixed = _names()
    assert {"recipe.json", "provenance.json", "train_summary.json", "predictions.test.jsonl", "synthetic.json",
            "test_formatted.jsonl"} <= files and {"adapter", "checkpoints", "eval", "runs"} <= folders
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == ROOT / "nlg" / "run_folder.py":
                continue
            problems = _literal_problems(ast.parse(path.read_text(encoding="utf-8")), files, folders, fixed)
            if problems:
                found[str(path.relative_to(ROOT))] = problems
    assert not found, "use the names in nlg/run_folder.py instead:\n" + "\n".join(
        f"{p}: {'; '.join(lines)}" for p, lines in found.items())


def test_the_scan_finds_what_it_is_meant_to():
    files, folders, fixed = _names()
    code = ('run / "recipe.json"\nrun / "adapter"\nf"predictions.{split}.jsonl"\nf"{split}_formatted.jsonl"\n'
            'x = "eval/test"\n"""recipe.json in a docstring is prose"""\n{"adapter": None}\n')
    flagged = {int(p.split(":")[0].split()[1]) for p in _literal_problems(ast.parse(code), files, folders, fixed)}
    assert flagged == {1, 2, 3, 4, 5}  # not the docstring, not a dict key that happens to be a folder name


def _tiny_run(tmp_path, train_data):
    cfg = paper_train_config("e2e", model="tiny", train_data=str(train_data), valid_data=str(DATA),
                             out_dir=str(tmp_path / "run"), seq_len=16, batch_size=4, warmup_steps=1, lr=1e-2,
                             log_interval=1, save_interval=10, max_steps=1)
    return train(cfg, quiet=True)


@pytest.mark.usefixtures("one_thread")
def test_training_writes_the_provenance_of_a_random_model_on_synthetic_data(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(DATA, data / "train.jsonl")
    marker = {"synthetic": True, "generator": "data.synthetic", "seed": 0}
    (data / run_folder.SYNTHETIC_MARKER).write_text(json.dumps(marker))
    (data / run_folder.DATA_SOURCE).write_text(json.dumps({"source": "synthetic", "train_split": "train"}))
    run = _tiny_run(tmp_path, data / "train.jsonl")
    record = json.loads((run / PROVENANCE).read_text())
    assert record["model"]["name"] == "tiny" and record["model"]["random"] is True
    assert record["model"]["pretrained_here"] is None
    assert record["data"]["synthetic"] is True and record["data"]["synthetic_marker"] == marker
    read = read_provenance(run)
    assert read["recorded_in"] == PROVENANCE and read["model"]["random"] and read["data"]["synthetic"]
    assert read["data"]["source"] == {"source": "synthetic", "train_split": "train"}
    recipe = json.loads(RunFolder(run).recipe.read_text())
    assert "random_model" not in recipe and "synthetic_data" not in recipe  # recorded once, in provenance.json


@pytest.mark.usefixtures("one_thread")
def test_a_marker_in_a_parent_folder_does_not_make_data_synthetic(tmp_path):
    (tmp_path / run_folder.SYNTHETIC_MARKER).write_text(json.dumps({"synthetic": True}))
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(DATA, data / "train.jsonl")
    run = _tiny_run(tmp_path, data / "train.jsonl")
    assert read_provenance(run)["data"]["synthetic"] is False


def test_an_older_run_folder_is_read_from_its_recipe_and_data_source(tmp_path):
    (tmp_path / "recipe.json").write_text(json.dumps({"model": "tiny", "random_model": True}))
    (tmp_path / "data_source.json").write_text(json.dumps({"source": "synthetic", "synthetic_data": True}))
    read = read_provenance(tmp_path)
    assert read["model"]["random"] and read["data"]["synthetic"] and read["data"]["source"]["source"] == "synthetic"
    assert read["recorded_in"] == "recipe.json, data_source.json"
    assert read_provenance(tmp_path / "empty")["recorded_in"] is None


def _module_imports(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return out


def test_data_common_and_data_download_do_not_import_each_other():
    common, download = _module_imports(ROOT / "data" / "common.py"), _module_imports(ROOT / "data" / "download.py")
    assert not any(m == "data.common" or m.startswith("data.common.") for m in download)
    assert "data.splits" in download and "data.splits" in common
