"""The paper's GPT-2 figures as typed data (Hu et al., ICLR 2022, Table 3 for E2E; the authors' README summary for
DART and WebNLG BLEU), for putting our results beside them.

Values are in the paper's printed scale (E2E BLEU, METEOR and ROUGE-L in percent); `ours_in_paper_scale`
converts our scorer output. The paper's appendix METEOR/TER for DART and WebNLG are not in the project's
transcription (shared/paper_tables.md), so they are absent here rather than guessed.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Figure:
    """A printed number and its +- confidence interval (None: a single run, from prior work)."""

    value: float
    ci: float | None = None

    def __str__(self) -> str:
        return f"{self.value:g}" + (f"±{self.ci:g}" if self.ci is not None else "")


@dataclass(frozen=True)
class PaperRow:
    dataset: str  # e2e | webnlg | dart
    model: str  # gpt2-medium | gpt2-large
    family: str  # ft | ft-top2 | adapter-l | adapter-h | adapter | prefix-layer | lora
    label: str  # as printed, e.g. "GPT-2 M (LoRA)"
    trainable_m: float  # trainable parameters in millions, as printed
    metrics: dict[str, Figure] = field(default_factory=dict)  # our metric keys; webnlg: "BLEU/unseen" etc.


def _f(text: str) -> Figure:
    if "±" in text:
        value, ci = text.split("±")
        return Figure(float(value), float(ci))
    return Figure(float(text))


_E2E_KEYS = ("BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr")
_E2E = [  # model, family, label, params, BLEU, NIST, MET, ROUGE-L, CIDEr
    ("gpt2-medium", "ft", "GPT-2 M (FT)", 354.92, "68.2", "8.62", "46.2", "71.0", "2.47"),
    ("gpt2-medium", "adapter-l", "GPT-2 M (Adapter^L)", 0.37, "66.3", "8.41", "45.0", "69.8", "2.40"),
    ("gpt2-medium", "adapter-l", "GPT-2 M (Adapter^L)", 11.09, "68.9", "8.71", "46.1", "71.3", "2.47"),
    ("gpt2-medium", "adapter-h", "GPT-2 M (Adapter^H)", 11.09, "67.3±.6", "8.50±.07", "46.0±.2", "70.7±.2", "2.44±.01"),
    ("gpt2-medium", "ft-top2", "GPT-2 M (FT^Top2)", 25.19, "68.1", "8.59", "46.0", "70.8", "2.41"),
    ("gpt2-medium", "prefix-layer", "GPT-2 M (PreLayer)", 0.35, "69.7", "8.81", "46.1", "71.4", "2.49"),
    ("gpt2-medium", "lora", "GPT-2 M (LoRA)", 0.35, "70.4±.1", "8.85±.02", "46.8±.2", "71.8±.1", "2.53±.02"),
    ("gpt2-large", "ft", "GPT-2 L (FT)", 774.03, "68.5", "8.78", "46.0", "69.9", "2.45"),
    ("gpt2-large", "adapter-l", "GPT-2 L (Adapter^L)", 0.88, "69.1±.1", "8.68±.03", "46.3±.0", "71.4±.2", "2.49±.0"),
    ("gpt2-large", "adapter-l", "GPT-2 L (Adapter^L)", 23.00, "68.9±.3", "8.70±.04", "46.1±.1", "71.3±.2", "2.45±.02"),
    ("gpt2-large", "prefix-layer", "GPT-2 L (PreLayer)", 0.77, "70.3", "8.85", "46.2", "71.7", "2.47"),
    ("gpt2-large", "lora", "GPT-2 L (LoRA)", 0.77, "70.4±.1", "8.89±.02", "46.8±.2", "72.0±.2", "2.47±.02"),
]
_DATA_TO_TEXT = [  # model, family, label, params, DART BLEU, WebNLG BLEU unseen, seen, all
    ("gpt2-medium", "ft", "GPT-2 M (Fine-Tune)", 354.92, "46.0", "30.4", "63.2", "47.6"),
    ("gpt2-medium", "adapter", "GPT-2 M (Adapter)", 0.37, "42.4", "45.1", "54.5", "50.2"),
    ("gpt2-medium", "prefix-layer", "GPT-2 M (Prefix)", 0.35, "45.7", "44.1", "63.1", "54.4"),
    ("gpt2-medium", "lora", "GPT-2 M (LoRA)", 0.35, "47.1±.2", "46.7±.4", "62.1±.2", "55.3±.2"),
    ("gpt2-large", "ft", "GPT-2 L (Fine-Tune)", 774.03, "46.5", "41.7", "64.6", "54.2"),
    ("gpt2-large", "adapter", "GPT-2 L (Adapter)", 0.88, "45.7±.1", "49.8±.0", "61.1±.0", "56.0±.0"),
    ("gpt2-large", "prefix-layer", "GPT-2 L (Prefix)", 0.77, "46.5", "47.0", "64.2", "56.4"),
    ("gpt2-large", "lora", "GPT-2 L (LoRA)", 0.77, "47.5±.1", "48.4±.3", "64.0±.3", "57.0±.1"),
]


def _rows() -> list[PaperRow]:
    rows = [PaperRow("e2e", m, fam, label, p, dict(zip(_E2E_KEYS, map(_f, vals))))
            for m, fam, label, p, *vals in _E2E]
    for m, fam, label, p, dart, unseen, seen, all_ in _DATA_TO_TEXT:
        rows.append(PaperRow("dart", m, fam, label, p, {"BLEU": _f(dart)}))
        rows.append(PaperRow("webnlg", m, fam, label, p,
                             {"BLEU/unseen": _f(unseen), "BLEU/seen": _f(seen), "BLEU/all": _f(all_)}))
    return rows


PAPER_ROWS: tuple[PaperRow, ...] = tuple(_rows())

# E2E metrics the paper prints in percent while the E2E script prints fractions
_PERCENT_IN_PAPER = {"e2e": {"BLEU", "METEOR", "ROUGE_L"}}


def ours_in_paper_scale(dataset: str, metric: str, value: float) -> float:
    """Our scorer's value converted to the scale the paper prints (E2E BLEU/METEOR/ROUGE-L x100)."""
    base = metric.split("/")[0]
    return value * 100 if base in _PERCENT_IN_PAPER.get(dataset, ()) else value


def _family(dataset: str, method: str) -> str:
    if dataset != "e2e" and method.startswith("adapter"):
        return "adapter"
    return method


def paper_row(dataset: str, model: str, method: str, trainable_params: float | None = None) -> PaperRow | None:
    """The paper's row for this dataset, model and method; with several (Adapter^L sizes), the one whose
    trainable parameter count is closest to ours. None when the paper has no such row (e.g. the tiny model)."""
    candidates = [r for r in PAPER_ROWS
                  if r.dataset == dataset and r.model == model and r.family == _family(dataset, method)]
    if not candidates:
        return None
    if trainable_params is None or len(candidates) == 1:
        return candidates[0]
    return min(candidates, key=lambda r: abs(r.trainable_m * 1e6 - trainable_params))
