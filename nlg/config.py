"""Every paper default in one place: training and decoding recipes per dataset and model size.

Sources: Hu et al. (ICLR 2022) Table 11 (GPT-2 LoRA hyper-parameters) and the authors' examples/NLG README
command (AdamW betas (0.9, 0.999), eps 1e-6, correct_bias, clip 0, seq_len 512, seed 110, eos 628 for decoding).
Table 11: E2E / WebNLG / DART share batch 8, 5 epochs, 500 warm-up steps, linear schedule, lr 2e-4, r_q = r_v = 4,
alpha 32, beam 10, no-repeat-n-gram 4; they differ in weight decay (0.01 / 0.01 / 0.0), LoRA dropout
(0.1 / 0.1 / 0.0), label smoothing (0.1 / 0.1 / 0.0) and length penalty (0.9 / 0.8 / 0.8).
"""
from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml

from nlg.methods.registry import BUILTIN_NAMES
from nlg.run_folder import DATA

DATASETS = ("e2e", "webnlg", "dart")
PRETRAIN_DATASET = "corpus"  # TrainConfig.dataset of a pretraining run (nlg.pretrain): no paper recipe applies
MODEL_CARDS = ("tiny", "mini", "gpt2", "gpt2-medium", "gpt2-large")
METHODS = BUILTIN_NAMES  # the --method choices, declared once in nlg.methods.registry


KERNELS = ("fast", "reference")


@dataclass
class TrainConfig:
    """One training run. Defaults are the paper's E2E recipe for GPT-2 medium with LoRA."""

    dataset: str = "e2e"
    model: str = "gpt2-medium"  # model card, hub id, local HF folder or original pytorch_model.bin
    method: str = "lora"
    train_data: str | None = None  # encoded <split>.jsonl; default data/<dataset>/train.jsonl
    valid_data: str | None = None  # default data/<dataset>/valid.jsonl
    out_dir: str | None = None  # run folder; default runs/<dataset>-<model>-<method>-r<rank>
    # LoRA
    rank: int = 4
    lora_alpha: float = 32.0
    lora_dropout: float = 0.1
    lora_targets: tuple[str, ...] = ("q", "v")
    # baselines (issue: the paper's baselines)
    adapter_dim: int = 0
    prefix_len: int = 0
    infix_len: int = 0
    prefix_mid_dim: int = 512  # prefix-layer reparameterisation MLP width (Li & Liang's mid_dim)
    # LoRA of this rank on the tied token embedding beside a frozen-base method (adapters, prefixes, ft-top2),
    # scaled by lora_alpha / wte_rank; 0: none (the paper). For lora itself: --lora-targets ...,wte
    wte_rank: int = 0
    # optimisation (AdamW as in the authors' optimizer.py)
    lr: float = 2e-4
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-6
    correct_bias: bool = True
    clip: float = 0.0
    scheduler: str = "linear"
    warmup_steps: int = 500
    epochs: int = 5
    max_steps: int | None = None  # overrides epochs when set
    batch_size: int = 8  # per process
    grad_acc: int = 1
    valid_batch_size: int = 4
    seq_len: int = 512
    label_smooth: float = 0.1
    seed: int = 110
    # engineering options (never change paper numbers when left at their defaults)
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast)
    # "fast": this project's CPU speed-ups (packed rows, fused LM head + loss, MKL pre-packing, CPU LoRA dropout,
    # fused GELU); "reference": plain modules a reader follows (loralib's LoRA forward with nn.Dropout,
    # transformers' GPT-2 forward on padded batches, F.cross_entropy); docs/training.md says what fast changes
    kernels: str = "fast"
    bucket_by_length: bool = False
    cpu_prepack: bool = True  # CPU fp32: frozen base weights pre-packed for MKL's GEMM (nlg/kernels/mkl_prepack.py)
    save_interval: int = 1000
    log_interval: int = 100
    eval_interval: int = 0  # also validate every N updates (0: only at epoch ends, as the authors do)
    select_by: str = "last"  # adapter/ holds: "last" (the final weights, as the authors) | "valid_loss" (best dev)
    report_to: str = "none"  # "tensorboard": mirror log.jsonl into RUN/tensorboard/ (nlg/tensorboard_log.py)
    resume: bool = False

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TrainConfig":
        raw = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        raw = {k: v for k, v in raw.items() if k in known}
        if "lora_targets" in raw:
            raw["lora_targets"] = tuple(raw["lora_targets"])
        return cls(**raw)


# What nlg.train writes into recipe.json beyond the TrainConfig fields: facts about the run, not settings. A recipe
# file may carry them (a run's own recipe.json does) and they are ignored when it is read back. random_model and
# synthetic_data are in the recipes of runs from before provenance.json (nlg.run_folder) held them.
RECIPE_RECORD_KEYS = ("random_model", "synthetic_data", "trainable_params", "paper_param_count", "saved_params",
                      "world_size", "total_steps", "train_examples", "valid_examples", "data_sha256")


class RecipeFileError(ValueError):
    """A recipe file that cannot be read as TrainConfig values; the message names the file (and the key)."""


def _field_value(name: str, hint, value, path: Path):
    """``value`` from a recipe file as the field's type, or a RecipeFileError naming file and key."""
    try:
        return field_value(name, hint, value)
    except ValueError as exc:
        raise RecipeFileError(f"{path}: {exc}") from None


def field_value(name: str, hint, value):
    """``value`` read from a file (a recipe, an adapter's train_config) as TrainConfig field ``name``'s type; a
    ValueError ``key 'rank' must be int, got 'four'`` otherwise (a dataclass would take it and fail much later)."""
    base = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    kind = base[0] if isinstance(base[0], type) else str
    optional = type(None) in typing.get_args(hint)
    bad = ValueError(f"key {name!r} must be {kind.__name__}{' or null' if optional else ''}, got {value!r}")
    if value is None:
        if optional:
            return None
        raise bad
    if name == "lora_targets":
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(t, str) for t in items):
            raise bad
        return tuple(t.strip() for t in items if t.strip())
    if kind is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if kind is float:  # YAML 1.1 reads 2e-4 as a string: numbers written as strings are accepted
        try:
            number = float(value) if not isinstance(value, bool) else math.nan
        except (TypeError, ValueError):
            raise bad from None
        if not math.isfinite(number):
            raise bad
        return number
    if not isinstance(value, str):
        raise bad
    return value


def load_recipe_file(path: str | Path) -> dict:
    """TrainConfig values from a JSON or YAML recipe file (``.json``, ``.yaml``/``.yml``; a run's recipe.json
    included): every key must be a TrainConfig field (or one of RECIPE_RECORD_KEYS, ignored); values are checked
    against the field's type. Returns only the keys the file sets."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeFileError(f"{path}: cannot read the recipe file ({exc})") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f":{mark.line + 1}" if mark is not None else ""
            raise RecipeFileError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    else:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RecipeFileError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(raw, dict):
        raise RecipeFileError(f"{path}: a recipe file holds one mapping of TrainConfig keys to values")
    hints = typing.get_type_hints(TrainConfig)
    values = {}
    for key, value in raw.items():
        if key in RECIPE_RECORD_KEYS:
            continue
        if key not in hints:
            raise RecipeFileError(f"{path}: unknown key {key!r} (a TrainConfig field, e.g. lr, rank, epochs, "
                                  f"or one that nlg.train records: {', '.join(RECIPE_RECORD_KEYS)})")
        values[key] = _field_value(key, hints[key], value, path)
    return values


@dataclass
class PretrainConfig:
    """Pretraining a small GPT-2 here from scratch (nlg.pretrain); no paper number depends on these values.

    Sized for the 2-core CPU machine: ``mini`` (4 layers, 256 wide) over the WebNLG 2017 + DART corpus
    (data.corpus, no E2E text), one document per entry (its triples, then its texts: a name in the text is the
    name in the triples, so copying from the context pays; results/cpu_table3_entries), in blocks of 256 tokens, 8
    per update (the 2,048 tokens per update of the earlier 16 x 128, but an entry's lines mostly share a block),
    1,600 updates: the corpus about three times (800, once and a half, gave FT 41.28 against 43.72; results/cpu_table3_800).
    A small model trains well with a larger learning rate and a shorter-memory second moment than the paper's
    GPT-2 fine-tuning (nanoGPT's small runs use 1e-3 and beta2 0.99).
    """

    card: str = "mini"
    # "shared" (WebNLG + DART from --data-dir), "shared+wordnet" (those + WordNet 3.0's glosses, data.corpus),
    # "shared+triples" (each of those texts after its triples, data.corpus), "shared+entries" (each entry's triples,
    # then all its texts) or "generated" (the offline template corpus)
    corpus: str = "shared+entries"
    block_size: int = 256
    batch_size: int = 8
    max_steps: int = 1600
    lr: float = 2e-3
    warmup_steps: int = 50
    weight_decay: float = 0.1
    adam_beta2: float = 0.99
    clip: float = 1.0
    seed: int = 110
    # "auto": bf16 autocast where it trains faster than fp32 (nlg.pretrain.bf16_faster: CUDA; a CPU with AMX; an
    # AMD CPU with AVX512-BF16), fp32 elsewhere (an Intel CPU with AVX512-BF16 but no AMX runs bf16 at 0.64x fp32,
    # an AVX2-only CPU emulates it at a tenth); the recipe and cache name record the precision it resolved to
    precision: str = "auto"
    generated_documents: int = 3000  # size of the offline corpus
    # synthetic copy blocks added to the training blocks, as a share of them (nlg.pretrain.copy_blocks: spans of
    # the corpus's token ids each followed by its repeat, which only copying from the context predicts); 0: none,
    # plain language modelling on the corpus alone
    copy_share: float = 0.0

    def train_config(self, train_data: str, valid_data: str, out_dir: str, resume: bool) -> TrainConfig:
        """The trainer's view of this pretraining run: full fine-tuning of a randomly initialised model."""
        return TrainConfig(
            dataset=PRETRAIN_DATASET, model=f"random:{self.card}", method="ft", train_data=train_data,
            valid_data=valid_data, out_dir=out_dir, lr=self.lr, weight_decay=self.weight_decay,
            adam_beta2=self.adam_beta2, clip=self.clip, warmup_steps=self.warmup_steps, max_steps=self.max_steps,
            batch_size=self.batch_size, valid_batch_size=self.batch_size, seq_len=self.block_size, label_smooth=0.0,
            seed=self.seed, precision=self.precision, lora_dropout=0.0, save_interval=100, log_interval=10,
            resume=resume)


@dataclass
class DecodeConfig:
    """Beam search as in the authors' gpt2_beam.py; defaults are the paper's E2E inference settings."""

    beam: int = 10
    length_penalty: float = 0.9
    no_repeat_ngram_size: int = 4
    repetition_penalty: float = 1.0
    max_new_tokens: int = 64  # the authors' --eval_len
    min_length: int = 0
    eos_token_ids: tuple[int, ...] = (50256, 628)
    seq_len: int = 512
    batch_size: int = 16

    def check(self) -> None:
        """Refuse settings the search cannot honour (before any model is loaded): a ValueError naming the flag."""
        for name in ("beam", "max_new_tokens", "seq_len", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be an integer >= 1, got {getattr(self, name)!r}")
        for name in ("no_repeat_ngram_size", "min_length"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be an integer >= 0, got {getattr(self, name)!r}")
        if not math.isfinite(self.length_penalty):
            raise ValueError(f"--length-penalty must be a finite number, got {self.length_penalty!r}")
        if not (math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0):
            raise ValueError(f"--repetition-penalty must be a finite number > 0, got {self.repetition_penalty!r}")
        if not self.eos_token_ids:
            raise ValueError("--eos-token-ids: at least one end token is needed")


# Per-dataset differences from the E2E recipe (paper Table 11).
_TRAIN_OVERRIDES: dict[str, dict] = {
    "e2e": {},
    "webnlg": {},
    "dart": {"weight_decay": 0.0, "lora_dropout": 0.0, "label_smooth": 0.0},
}
_DECODE_OVERRIDES: dict[str, dict] = {
    "e2e": {"length_penalty": 0.9},
    "webnlg": {"length_penalty": 0.8},
    "dart": {"length_penalty": 0.8},
}
# How many references the authors write per group for the GenerationEval scorer.
REF_NUM = {"e2e": None, "webnlg": 6, "dart": 6}


def _check_dataset(dataset: str) -> None:
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")


def paper_train_config(dataset: str = "e2e", model: str = "gpt2-medium", **overrides) -> TrainConfig:
    """The paper's training recipe for ``dataset`` (model size does not change Table 11's values)."""
    _check_dataset(dataset)
    values = {"dataset": dataset, "model": model, **_TRAIN_OVERRIDES[dataset], **overrides}
    return TrainConfig(**values)


def paper_decode_config(dataset: str = "e2e", **overrides) -> DecodeConfig:
    """The paper's beam-search settings for ``dataset``."""
    _check_dataset(dataset)
    return DecodeConfig(**{**_DECODE_OVERRIDES[dataset], **overrides})


def default_data_dir(dataset: str) -> Path:
    """Where the preparers write and the trainer reads by default: data/<dataset>/ in the checkout."""
    _check_dataset(dataset)
    return Path(__file__).resolve().parent.parent / DATA / dataset
