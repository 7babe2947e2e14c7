"""Our scorers against the official scripts' own outputs (tests/fixtures/eval_expected.json, made by running
measure_scores.py -p and GenerationEval eval.py; see eval_expected.README.md).

Every metric must print the same to 4 decimals; BLEU of WebNLG/DART must lie within 0.01 of the unrounded Perl
value (it is in fact within 1e-6). Cases whose files trip the official scripts' reading accidents are compared
with the official run on cleaned copies, and we check the accident values differ where the note says so.
"""
from __future__ import annotations

import json

import pytest

from eval.e2e_metrics import score_e2e
from eval.meteor import Meteor
from eval.readers import read_e2e_references, read_hypotheses, read_multi_references
from eval.webnlg_metrics import score_webnlg
from tests.conftest import EVAL_CASES, FIXTURES

EXPECTED = json.loads((FIXTURES / "eval_expected.json").read_text(encoding="utf-8"))["cases"]
SLOW = {"dart-test-bart-large-lora-layout", "dart-test-bart-large-dartref3"}


@pytest.fixture(scope="module")
def meteor():
    """None: every case starts its own METEOR with the paraphrase entries its texts can use, as a scoring call
    does (test_filtered_paraphrases_give_the_whole_tables_statistics compares that with the whole table)."""
    return None


def _base(case: dict):
    if case["where"] == "fixtures":
        return FIXTURES
    if not EVAL_CASES.is_dir():
        pytest.skip(f"needs {EVAL_CASES} (the shared eval cases beside the checkout), which is absent here")
    return EVAL_CASES


def _score(case: dict, meteor: Meteor) -> dict:
    base = _base(case)
    hyps = read_hypotheses(base / case["hyps"])
    if case["scorer"] == "e2e":
        return score_e2e(hyps, read_e2e_references(base / case["refs"], len(hyps)), meteor=meteor)
    return score_webnlg(hyps, read_multi_references(base / case["refs"], case["num_refs"]), meteor=meteor)


def _check(ours: dict, official: dict, scorer: str) -> None:
    assert set(ours) == set(official)
    for name, fig in official.items():
        assert f"{ours[name]:.4f}" == f"{fig['value']:.4f}", (name, ours[name], fig)
        if scorer == "webnlg" and name == "BLEU":
            assert abs(ours[name] - fig["value"]) < 0.01
            assert abs(ours[name] - fig["value"]) < 1e-6
            assert f"{ours[name]:.2f}" == fig["printed"]
        else:
            assert ours[name] == pytest.approx(fig["value"], rel=1e-12, abs=1e-12), name


CASES = [pytest.param(name, marks=pytest.mark.slow) if name in SLOW else name
         for name in EXPECTED if name != "dart-test-bart-large-lora-layout-trailing-newline"]


@pytest.mark.parametrize("name", CASES)
def test_case_equals_official(name, meteor):
    case = EXPECTED[name]
    ours = _score(case, meteor)
    _check(ours, case["official"], case["scorer"])
    raw = case.get("official_on_raw_files")
    if raw:  # the accident really changes the official output, and we do not reproduce it
        differs = [k for k in raw if f"{raw[k]['value']:.4f}" != f"{case['official'][k]['value']:.4f}"]
        assert differs
        assert all(f"{ours[k]:.4f}" != f"{raw[k]['value']:.4f}" for k in differs)


def test_trailing_newline_reads_like_no_trailing_newline():
    """A final newline is a line end, not an extra empty instance (eval.py's METEOR -1 / TER accident)."""
    case = EXPECTED["dart-test-bart-large-lora-layout-trailing-newline"]
    base = _base(case)
    plain = EXPECTED["dart-test-bart-large-lora-layout"]
    assert (base / case["hyps"]).read_bytes() == (base / plain["hyps"]).read_bytes() + b"\n"
    assert read_hypotheses(base / case["hyps"]) == read_hypotheses(base / plain["hyps"])
    assert read_multi_references(base / case["refs"], 6) == read_multi_references(base / plain["refs"], 6)
    assert case["official_on_raw_files"]["METEOR"]["value"] == -1
    assert case["official"] == plain["official"]


@pytest.mark.parametrize("name", ["e2e-test-tgen-std-run0", "webnlg2020-generationeval-sample-en"])
def test_filtered_paraphrases_give_the_whole_tables_statistics(name):
    """METEOR fed the filtered paraphrase table answers every segment's statistics and the corpus score exactly
    as with the whole table, on a table a small fraction of the size."""
    from eval.meteor_paraphrase import load_index
    from eval.ptb import ptb_tokenize
    from eval.webnlg_metrics import tokenize_pair

    case = EXPECTED[name]
    base = _base(case)
    hyps = read_hypotheses(base / case["hyps"])
    if case["scorer"] == "e2e":
        refs = read_e2e_references(base / case["refs"], len(hyps))
        flat = ptb_tokenize([r.strip() for g in refs for r in g])
        hyps_tok, refs_tok, pos = ptb_tokenize([h.strip() for h in hyps]), [], 0
        for group in refs:
            refs_tok.append(flat[pos:pos + len(group)])
            pos += len(group)
    else:
        hyps_tok, refs_tok = tokenize_pair(hyps, read_multi_references(base / case["refs"], case["num_refs"]))
    texts = hyps_tok + [r for g in refs_tok for r in g]
    index = load_index()
    kept = int(index.keep(texts).sum())
    assert 0 < kept < index.entries // 10
    # E2E: the table is streamed through a named pipe to a process started before the texts were known
    later = case["scorer"] == "e2e"
    with Meteor(texts=None if later else texts, texts_later=later) as small, Meteor() as whole:
        assert small.filtered and not whole.filtered
        small_stats, whole_stats = small.stats(hyps_tok, refs_tok), whole.stats(hyps_tok, refs_tok)
        assert small_stats == whole_stats
        assert small.corpus_score(small_stats) == whole.corpus_score(whole_stats)


def test_a_process_waiting_for_its_table_closes_cleanly():
    meteor = Meteor(texts_later=True)
    folder = meteor._folder
    meteor.close()
    assert meteor.proc.returncode is not None and not folder.exists()


@pytest.mark.parametrize("env", [{"NLG_METEOR_FULL_TABLE": "1"}, {"NLG_CACHE_DIR": "/proc/no-index-here"}])
def test_whole_table_when_asked_or_when_no_index_can_be_built(env, monkeypatch, capsys):
    """The switch and the fallback (an unwritable cache: a warning, then the whole table) score the same."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if "NLG_CACHE_DIR" in env:
        from eval import meteor_paraphrase

        assert not meteor_paraphrase.index_folder().exists()
    case = EXPECTED["e2e-metrics-example"]
    _check(_score(case, None), case["official"], case["scorer"])
    if "NLG_CACHE_DIR" in env:
        assert "whole paraphrase table" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["eval_e2e_edge", "eval_webnlg_edge", "e2e-metrics-example",
                                  "webnlg2020-generationeval-sample-en"])
def test_meteor_under_a_german_default_locale_gives_the_official_figures(name, monkeypatch):
    """Under de-DE, Java's Scanner expects decimal commas: METEOR 1.5 crashes (InputMismatchException, the known
    GEM-metrics / nlg-eval failure) unless its locale is fixed, as eval.meteor does."""
    german = "-Duser.language=de -Duser.country=DE -Duser.language.format=de -Duser.country.format=DE"
    monkeypatch.setenv("JAVA_TOOL_OPTIONS", german)
    monkeypatch.setenv("LC_ALL", "de_DE.UTF-8")
    case = EXPECTED[name]
    _check(_score(case, None), case["official"], case["scorer"])
