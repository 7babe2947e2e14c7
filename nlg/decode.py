"""Predictions to reference/hypothesis files, by the rules of the authors' ``gpt2_decode.py``.

- text = the byte-level decoding of the predicted ids, cut at the first ``<|endoftext|>``, then at the first blank
  line (``\\n\\n``), then stripped; references get the same cut;
- references are grouped by identical context string, in first-seen order; a group's hypothesis is the prediction
  of its last record in prediction-file order;
- E2E: ``references.txt`` (each group's references, one per line, then a blank line) and ``hypothesis.txt``; a
  line break inside a text (a predicted ``\\n`` token: the authors' files would then split one hypothesis over
  two lines and the scorer's counts no longer match) is written as one space (``one_line``), so decode and score
  always agree on counts; texts without one are written unchanged;
- WebNLG and DART: ``reference0 .. reference{N-1}`` (a group with fewer references repeats its first) and
  ``hypothesis``, lower-cased then tokenised with ``re.split('(\\W)')`` (on by default for both, as the authors
  always ran them); WebNLG is written three times, for all, seen (``cate`` true) and unseen categories.

Predictions are paired with the formatted split they were decoded from, not merely one of the same size: when a
``generate.<split>.json`` beside the predictions describes them (its ``predictions_sha256``), the formatted
split's contexts, encoded as the preparer encodes them, must give its ``contexts_sha256``.

CLI: ``python -m nlg.decode --run-dir RUN --dataset D --split test`` writes ``RUN/eval/<split>/``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from nlg.config import DATASETS, REF_NUM, default_data_dir
from nlg.io_utils import InputFileError, atomic_group, cli_error, file_sha256, iter_jsonl, read_json_object
from nlg.run_folder import GENERATE_RECORD, RunFolder, RunLock, RunLockedError, formatted_file
from nlg.tokenizer import EOS_ID, get_tokenizer

END_TEXT = "<|endoftext|>"
WEBNLG_FILTERS = ("all", "seen", "unseen")


# --------------------------------------------------------------------------------------------- text rules
def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable-character -> byte table (inverse of its bytes-to-unicode map)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


_BYTE_DECODER = None
_ID_TO_TOKEN = None


def ids_to_text(ids: Sequence[int]) -> str:
    """The authors' decoder: token strings -> bytes -> UTF-8 with replacement characters for broken sequences."""
    global _BYTE_DECODER, _ID_TO_TOKEN
    if _ID_TO_TOKEN is None:
        vocab = get_tokenizer().get_vocab()
        _ID_TO_TOKEN = {i: t for t, i in vocab.items()}
        _BYTE_DECODER = _byte_decoder()
    try:
        chars = "".join(_ID_TO_TOKEN[int(i)] for i in ids)
    except KeyError as exc:
        raise ValueError(f"token id {exc.args[0]} is not in the GPT-2 vocabulary") from None
    return bytes(_BYTE_DECODER[c] for c in chars).decode("utf-8", errors="replace")


def cut_text(text: str) -> str:
    """Keep what precedes the first ``<|endoftext|>`` and the first blank line, stripped."""
    return text.split(END_TEXT)[0].split("\n\n")[0].strip()


def hypothesis_text(ids: Sequence[int]) -> str:
    return cut_text(ids_to_text(ids))


def one_line(text: str) -> str:
    """``text`` with every line break (and the spaces around it) replaced by one space: one record, one line."""
    return re.sub(r"[ \t]*[\r\n\v\f\x1c-\x1e\x85\u2028\u2029]+[ \t]*", " ", text)


def tokenize_lower(sent: str, tokenize: bool = True, lower: bool = True) -> str:
    """The authors' post-processing: lower-case, then split around every non-word character, single spaces."""
    if lower:
        sent = sent.lower()
    if tokenize:
        sent = " ".join(" ".join(re.split(r"(\W)", sent)).split())
    return sent


# --------------------------------------------------------------------------------------------- grouping
@dataclass
class Group:
    context: str
    references: list[str]
    hypothesis: str | None = None
    first_line: int = 0


def read_formatted(path: str | Path, need_cate: bool = False) -> list[tuple[int, dict]]:
    """``<split>_formatted.jsonl`` records (``context``, ``completion`` strings; ``cate`` for WebNLG) with line numbers."""
    records = []
    for line, rec in iter_jsonl(path):
        if not isinstance(rec, dict) or not isinstance(rec.get("context"), str) or not isinstance(rec.get("completion"), str):
            raise InputFileError(path, "expected an object with string fields 'context' and 'completion'", line)
        if need_cate and not isinstance(rec.get("cate"), bool):
            raise InputFileError(path, "WebNLG records need a boolean 'cate' (seen category) to filter seen/unseen", line)
        records.append((line, rec))
    if not records:
        raise InputFileError(path, "no records: the formatted split is empty")
    return records


def read_predictions(path: str | Path, n_records: int) -> list[tuple[int, int, list[int]]]:
    """(line, id, predicted ids) in file order; ids must index the formatted records."""
    preds = []
    for line, rec in iter_jsonl(path):
        if not isinstance(rec, dict) or not isinstance(rec.get("id"), int) or not isinstance(rec.get("predict"), list):
            raise InputFileError(path, "expected an object with an integer 'id' and a list 'predict'", line)
        if not 0 <= rec["id"] < n_records:
            raise InputFileError(path, f"id {rec['id']} does not index the {n_records} formatted records", line)
        preds.append((line, rec["id"], rec["predict"]))
    if not preds:
        raise InputFileError(path, "no predictions: the file is empty")
    return preds


def group_references(records: Iterable[tuple[int, dict]], keep: str = "all") -> dict[str, Group]:
    """References grouped by context in first-seen order (WebNLG ``keep`` = all / seen / unseen)."""
    groups: dict[str, Group] = {}
    for line, rec in records:
        if keep == "seen" and not rec["cate"]:
            continue
        if keep == "unseen" and rec["cate"]:
            continue
        group = groups.get(rec["context"])
        if group is None:
            group = groups[rec["context"]] = Group(rec["context"], [], None, line)
        group.references.append(cut_text(rec["completion"]))
    return groups


def attach_hypotheses(groups: dict[str, Group], contexts: list[str], predictions, pred_path, formatted_path) -> None:
    """Each prediction sets its context's hypothesis (a later one replaces an earlier one, as in the authors' loop)."""
    for _, rec_id, ids in predictions:
        group = groups.get(contexts[rec_id])
        if group is not None:
            group.hypothesis = hypothesis_text(ids)
    missing = [g for g in groups.values() if g.hypothesis is None]
    if missing:
        covered = len({rec_id for _, rec_id, _ in predictions})
        raise InputFileError(
            pred_path,
            f"{len(missing)} context group(s) have no prediction, e.g. the one starting at "
            f"{formatted_path}:{missing[0].first_line}: {covered} of its {len(contexts)} records have one (an "
            "nlg.generate --limit run?); generate the whole split, or prepare the split with that --limit",
        )


# --------------------------------------------------------------------------------------------- provenance
def contexts_sha256(contexts: Iterable[Sequence[int]]) -> str:
    """Digest of context token ids in order: nlg.generate records it for what it decoded, and it can be
    recomputed from a formatted split, so predictions are never scored against another split of the same size."""
    digest = hashlib.sha256()
    for ids in contexts:
        digest.update(json.dumps([int(i) for i in ids], separators=(",", ":")).encode("ascii") + b"\n")
    return digest.hexdigest()


def encode_contexts(contexts: Sequence[str]) -> list[list[int]]:
    """Context strings as the preparer encodes them (data.common.encode_records: ids, then <|endoftext|>)."""
    if not contexts:
        return []
    return [ids + [EOS_ID] for ids in get_tokenizer()(list(contexts), add_special_tokens=False)["input_ids"]]


def generation_record(predictions: str | Path) -> tuple[Path, dict] | None:
    """(path, content) of the ``generate.*.json`` beside ``predictions`` that describes exactly this file (same
    sha256), or None: predictions from elsewhere (the authors'), an older run, or a file changed since."""
    predictions = Path(predictions)
    candidates = sorted(predictions.parent.glob(GENERATE_RECORD.format(split="*"))) if predictions.is_file() else []
    digest = file_sha256(predictions) if candidates else None
    for path in candidates:
        try:
            record = read_json_object(path)
        except InputFileError:
            continue
        if record.get("predictions_sha256") == digest:
            return path, record
    return None


def check_decoded_from(formatted: str | Path, predictions: str | Path, contexts: Sequence[str]) -> bool:
    """Refuse a formatted split that is not the one the predictions were decoded from: its first ``records``
    contexts, encoded, must give the digest nlg.generate recorded. Returns whether there was a record to check."""
    found = generation_record(predictions)
    if found is None or not isinstance(found[1].get("contexts_sha256"), str):
        return False
    record_path, record = found
    n = record.get("records")
    n = n if isinstance(n, int) and n > 0 else len(contexts)
    if len(contexts) < n or contexts_sha256(encode_contexts(contexts[:n])) != record["contexts_sha256"]:
        raise InputFileError(formatted, f"not the split {predictions} was decoded from (its contexts differ from "
                                        f"those of {record.get('data')}, per {record_path.name}); decode with the "
                                        "_formatted.jsonl prepared together with that file")
    return True


# --------------------------------------------------------------------------------------------- writers
def write_e2e(out_dir: Path, groups: Sequence[Group], tokenize: bool = False, lower: bool = False) -> list[Path]:
    ref_path, hyp_path = out_dir / "references.txt", out_dir / "hypothesis.txt"
    with atomic_group([ref_path, hyp_path]) as (refs, hyps):  # both renamed into place, or neither
        for g in groups:
            for r in g.references:
                refs.write(one_line(tokenize_lower(r, tokenize, lower)) + "\n")
            refs.write("\n")
            hyps.write(one_line(tokenize_lower(g.hypothesis, tokenize, lower)) + "\n")
    return [ref_path, hyp_path]


def write_multi_ref(out_dir: Path, groups: Sequence[Group], ref_num: int, tokenize: bool = True, lower: bool = True) -> list[Path]:
    paths = [out_dir / f"reference{i}" for i in range(ref_num)] + [out_dir / "hypothesis"]
    with atomic_group(paths) as handles:  # every file is renamed into place only if all were written
        *refs, hyps = handles
        for g in groups:
            for i, handle in enumerate(refs):
                ref = g.references[i] if len(g.references) > i else g.references[0]
                handle.write(tokenize_lower(ref, tokenize, lower) + "\n")
            hyps.write(tokenize_lower(g.hypothesis, tokenize, lower) + "\n")
    return paths


def decode_split(
    dataset: str,
    formatted: str | Path,
    predictions: str | Path,
    out_dir: str | Path,
    ref_num: int | None = None,
    tokenize_lower_text: bool | None = None,
) -> list[Path]:
    """Write the scorer files for one split; returns the paths written."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    out_dir = Path(out_dir)
    ref_num = ref_num if ref_num is not None else (REF_NUM[dataset] or 0)
    if dataset != "e2e" and ref_num < 1:
        raise ValueError(f"--ref-num must be >= 1 for {dataset}")
    tl = tokenize_lower_text if tokenize_lower_text is not None else dataset != "e2e"
    records = read_formatted(formatted, need_cate=dataset == "webnlg")
    contexts = [rec["context"] for _, rec in records]
    check_decoded_from(formatted, predictions, contexts)
    preds = read_predictions(predictions, len(records))
    written: list[Path] = []
    filters = WEBNLG_FILTERS if dataset == "webnlg" else ("all",)
    for keep in filters:
        groups = group_references(records, keep)
        attach_hypotheses(groups, contexts, preds, predictions, formatted)
        target = out_dir / keep if dataset == "webnlg" else out_dir
        if dataset == "e2e":
            written += write_e2e(target, list(groups.values()), tl, tl)
        else:
            written += write_multi_ref(target, list(groups.values()), ref_num, tl, tl)
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nlg.decode", description="Predictions -> reference/hypothesis files "
                                 "in the official scorers' layout (the authors' gpt2_decode.py rules).")
    ap.add_argument("--run-dir", required=True, type=Path, help="run folder holding predictions.<split>.jsonl")
    ap.add_argument("--dataset", required=True, choices=DATASETS)
    ap.add_argument("--split", default="test")
    ap.add_argument("--formatted", type=Path, help="<split>_formatted.jsonl (default data/<dataset>/<split>_formatted.jsonl)")
    ap.add_argument("--predictions", type=Path, help="default RUN/predictions.<split>.jsonl")
    ap.add_argument("--out-dir", type=Path, help="default RUN/eval/<split>/")
    ap.add_argument("--ref-num", type=int, default=None, help="references per group for WebNLG/DART (default 6)")
    ap.add_argument("--tokenize-lower", dest="tokenize_lower", action=argparse.BooleanOptionalAction, default=None,
                    help="lower-case and tokenise hypotheses and references (default: on for webnlg/dart, off for e2e)")
    args = ap.parse_args(argv)
    formatted = args.formatted or formatted_file(default_data_dir(args.dataset), args.split)
    predictions = args.predictions or RunFolder(args.run_dir).predictions(args.split)
    out_dir = args.out_dir or RunFolder(args.run_dir).eval_dir(args.split)
    try:
        if Path(predictions).is_file() and generation_record(predictions) is None:
            print(f"note: {predictions}: no generate.*.json beside it records what it was decoded from; only its "
                  f"ids are checked against {formatted}", file=sys.stderr)
        with RunLock(args.run_dir, "decode", create=False):
            paths = decode_split(args.dataset, formatted, predictions, out_dir, args.ref_num, args.tokenize_lower)
    except (InputFileError, RunLockedError, ValueError, OSError) as exc:
        return cli_error(exc)
    print(f"wrote {len(paths)} files under {out_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
