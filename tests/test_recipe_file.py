"""``nlg.train --config FILE``: a JSON or YAML recipe (a run's own recipe.json included) reproduces that run;
command-line flags override the file; unknown keys and wrong types are errors naming the key and the file."""
from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from nlg.config import RECIPE_RECORD_KEYS, RecipeFileError, TrainConfig, load_recipe_file
from nlg.train import build_parser, config_from_args, main
from tests.conftest import FIXTURES

DATA = FIXTURES / "authors_train_step" / "train.jsonl"
pytestmark = pytest.mark.usefixtures("one_thread")


def _flags(out):
    return ["--model", "tiny", "--train-data", str(DATA), "--valid-data", str(DATA), "--out-dir", str(out),
            "--seq-len", "16", "--batch-size", "4", "--warmup-steps", "2", "--lr", "1e-2", "--max-steps", "4",
            "--lora-dropout", "0.1", "--quiet"]


def _config(argv):
    return config_from_args(build_parser().parse_args(argv))[0]


def test_a_runs_recipe_json_reproduces_its_adapter_bit_for_bit(tmp_path):
    assert main(_flags(tmp_path / "first")) == 0
    recipe = tmp_path / "first" / "recipe.json"
    assert set(json.loads(recipe.read_text())) - {f for f in TrainConfig.__dataclass_fields__} <= \
        set(RECIPE_RECORD_KEYS)  # everything the trainer records is known to the reader
    assert main(["--config", str(recipe), "--out-dir", str(tmp_path / "again"), "--quiet"]) == 0
    a = load_file(str(tmp_path / "first" / "adapter" / "adapter.safetensors"))
    b = load_file(str(tmp_path / "again" / "adapter" / "adapter.safetensors"))
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    again = json.loads((tmp_path / "again" / "recipe.json").read_text())
    first = json.loads(recipe.read_text())
    assert {k: v for k, v in again.items() if k != "out_dir"} == {k: v for k, v in first.items() if k != "out_dir"}


def test_flags_override_the_file_and_the_file_overrides_the_paper(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("dataset: dart\nlr: 2e-4\nrank: 8\nlora_targets: [q, k, v]\nmax_steps: 10\n", encoding="utf-8")
    cfg = _config(["--config", str(path), "--rank", "16"])
    assert (cfg.dataset, cfg.rank, cfg.lr, cfg.lora_targets, cfg.max_steps) == ("dart", 16, 2e-4, ("q", "k", "v"), 10)
    assert cfg.weight_decay == 0.0 and cfg.label_smooth == 0.0  # DART's paper recipe under the file
    assert _config(["--config", str(path), "--dataset", "e2e"]).label_smooth == 0.1


@pytest.mark.parametrize("text,suffix,message", [
    ('{"lr": 1e-3, "lerning_rate": 2}', ".json", "unknown key 'lerning_rate'"),
    ('{"rank": "four"}', ".json", "key 'rank' must be int"),
    ('{"epochs": 2.5}', ".json", "key 'epochs' must be int"),
    ('{"lr": "fast"}', ".json", "key 'lr' must be float"),
    ('{"lr": 1e-3,\n "rank": }', ".json", ":2: not valid JSON"),
    ("lr: [1, 2\n", ".yaml", "not valid YAML"),
    ("- lr\n", ".yml", "holds one mapping"),
])
def test_bad_recipe_files_name_the_file_and_key(tmp_path, capsys, text, suffix, message):
    path = tmp_path / f"recipe{suffix}"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(RecipeFileError, match=message.replace("[", r"\[")):
        load_recipe_file(path)
    assert main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "Traceback" not in err
