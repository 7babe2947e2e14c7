"""Unit-level equivalence of the fast metric pieces with plain restatements of the original algorithms."""
from __future__ import annotations

import math
import random

import pytest

from eval.bleu import e2e_bleu, multi_bleu_detok
from eval.chrf import chrf_plus_plus
from eval.mteval_tok import tokenize_perl, tokenize_py
from eval.rouge import lcs_length, rouge_l_instance
from eval.ter import generation_eval_ter, ter


def _edit_distance(a, b):
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, y in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y))
        prev = cur
    return prev[-1]


def _slow_pyter(hyp, ref):
    """pyter's semantics stated plainly: greedy best shift (ties: greatest shifted list) until no gain."""
    words, shifts = list(hyp), 0
    while True:
        current = _edit_distance(words, ref)
        candidates = []
        for i in range(len(words)):
            for j in range(len(ref)):
                if i != j and words[i] == ref[j]:
                    n = 1
                    while i + n < len(words) and j + n < len(ref) and words[i + n] == ref[j + n]:
                        n += 1
                    rest = words[:i] + words[i + n:]
                    shifted = rest[:j] + words[i:i + n] + rest[j:]
                    candidates.append((current - _edit_distance(shifted, ref), shifted))
        if not candidates:
            break
        gain, shifted = max(candidates)
        if gain <= 0:
            break
        shifts, words = shifts + 1, shifted
    return (shifts + _edit_distance(words, ref)) / len(ref)


def test_ter_equals_plain_pyter_semantics_on_random_sentences():
    rng = random.Random(7)
    for _ in range(600):
        vocab = "abcdefg"[: rng.randint(1, 7)]
        hyp = [rng.choice(vocab) for _ in range(rng.randint(0, 13))]
        ref = [rng.choice(vocab) for _ in range(rng.randint(1, 13))]
        assert ter(hyp, ref) == _slow_pyter(hyp, ref), (hyp, ref)


def test_ter_long_references_beyond_64_words():
    rng = random.Random(3)
    ref = [rng.choice("abcdefghij") for _ in range(90)]
    hyp = ref[30:60] + ref[:30] + [rng.choice("abcdefghij") for _ in range(25)]
    assert ter(hyp, ref) == _slow_pyter(hyp, ref)


def test_ter_known_value_and_empty_cases():
    ref = "SAUDI ARABIA denied THIS WEEK information published in the AMERICAN new york times".split()
    hyp = "THIS WEEK THE SAUDIS denied information published in the new york times".split()
    assert ter(hyp, ref) == 4 / 13  # one shift + three edits over 13 reference words
    assert ter([], ["a", "b"]) == 1.0
    with pytest.raises(ZeroDivisionError):
        ter(["a"], [])
    # GenerationEval: an empty reference slot scores 1, the minimum over slots is kept, plain mean
    assert generation_eval_ter(["a b", "x"], [["a b", ""], ["", ""]]) == (0.0 + 1) / 2


def test_lcs_matches_dynamic_programming():
    rng = random.Random(11)
    for _ in range(500):
        a = [rng.choice("abcd") for _ in range(rng.randint(0, 20))]
        b = [rng.choice("abcd") for _ in range(rng.randint(0, 20))]
        table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
        for i in range(1, len(a) + 1):
            for j in range(1, len(b) + 1):
                table[i][j] = table[i - 1][j - 1] + 1 if a[i - 1] == b[j - 1] else max(table[i - 1][j], table[i][j - 1])
        assert lcs_length(a, b) == table[-1][-1]


def test_rouge_l_instance_by_hand():
    # LCS("the cat sat", "the cat was here") = 2: P = 2/3, R = 2/4; beta 1.2
    p, r = 2 / 3, 2 / 4
    expected = (1 + 1.2 ** 2) * p * r / (r + 1.2 ** 2 * p)
    assert rouge_l_instance("the cat sat", ["the cat was here", "dog"]) == pytest.approx(expected, abs=0, rel=1e-15)
    assert rouge_l_instance("", ["a b"]) == 0.0


def test_mteval_tokenisation_quirks():
    # the Python port turns an empty text into one empty token; the Perl script into none
    assert tokenize_py("") == [""]
    assert tokenize_perl("") == []
    assert tokenize_py("It costs £20.50, right?") == ["It", "costs", "£20.50", ",", "right", "?"]
    assert tokenize_py("a&amp;b 1-2 x.y") == ["a", "&", "b", "1", "-", "2", "x", ".", "y"]
    # a no-break space is a blank for Python but not for the byte-reading Perl script
    assert tokenize_py("a\u00a0b") == ["a", "b"]
    assert tokenize_perl("a\u00a0b") == ["a\u00a0b"]


def test_e2e_bleu_counts_empty_output_as_one_token():
    # candidate lengths 3 and 1 (the empty output); one reference of 3 words each
    hyps, refs = ["a b c", ""], [["a b c"], ["d e f"]]
    hits, lens = [3, 2, 1, 0], [4, 2, 0, -2]
    log_sum = sum(math.log(max(h, 1e-15) / max(n, 1e-9)) for h, n in zip(hits, lens))
    bp = math.exp(1 - 6 / 4)
    assert e2e_bleu(hyps, refs) == bp * math.exp(log_sum / 4)


def test_multi_bleu_detok_empty_reference_slot_competes_for_closest_length():
    # hypothesis of 2 words; slots of 5 words and empty: the empty slot (diff 2) is closer than 5 (diff 3)
    hyps, refs = ["x y"], [["x y a b c", ""]]
    # precisions 2/2, 1/1, 0, 0 -> log(0) taken as -9999999999; ref length 0 < hyp length 2: no penalty
    expected = 100 * math.exp((0 + 0 - 9999999999 - 9999999999) / 4)
    assert multi_bleu_detok(hyps, refs) == expected
    assert multi_bleu_detok(["the cat"], [["the cat"]]) == 0.0  # no 3-grams: log(0) twice, as in Perl
    assert multi_bleu_detok(["a b c d"], [["a b c d", ""]]) == 100.0


def test_chrf_identical_texts_score_one_and_skip_empty_reference_instances():
    assert chrf_plus_plus(["The cat sat."], [["The cat sat."]]) == pytest.approx(1.0, abs=1e-15)
    a = chrf_plus_plus(["The cat sat.", "x"], [["The cat sat.", ""], ["", ""]])
    assert a == chrf_plus_plus(["The cat sat."], [["The cat sat."]])
