"""The mteval-v13a "international-free" tokenisation shared by E2E BLEU/NIST and multi-bleu-detok.

Two flavours differ only in what counts as a blank: the E2E script's Python port uses Unicode blanks
(Python's default `\\s` and `str.strip`), the Perl scripts read bytes, where only ASCII blanks are blanks.
"""
from __future__ import annotations

import re

# language-independent normalisation: drop <skipped>, join hyphenated line ends and lines, unescape SGML
_SGML = (("&quot;", '"'), ("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">"))
# ASCII punctuation and symbols except apostrophe, period, comma, hyphen and digits get blanks around them:
# { | } ~  [ \ ] ^ _ `  space ! " # $ % &  ( ) * +  : ; < = > ? @  /
_PUNCT = r"([\{-\~\[-\` -\&\(-\+\:-\@\/])"
_PERIOD_AFTER_NONDIGIT = r"([^0-9])([\.,])"
_PERIOD_BEFORE_NONDIGIT = r"([\.,])([^0-9])"
_DASH_AFTER_DIGIT = r"([0-9])(-)"


def _compile(flags: int):
    return (re.compile(_PUNCT, flags), re.compile(_PERIOD_AFTER_NONDIGIT, flags),
            re.compile(_PERIOD_BEFORE_NONDIGIT, flags), re.compile(_DASH_AFTER_DIGIT, flags),
            re.compile(r"\s+", flags))


_UNICODE = _compile(0)
_ASCII = _compile(re.ASCII)


def _normalise(text: str) -> str:
    text = text.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    for entity, char in _SGML:
        text = text.replace(entity, char)
    return text


def tokenize_py(text: str) -> list[str]:
    """Tokens as the E2E script's Python mteval port makes them: an empty text gives [''] (one empty token)."""
    punct, after, before, dash, blanks = _UNICODE
    text = " " + _normalise(text) + " "
    text = punct.sub(r" \1 ", text)
    text = after.sub(r"\1 \2 ", text)
    text = before.sub(r" \1 \2", text)
    text = dash.sub(r"\1 \2 ", text)
    return blanks.sub(" ", text).strip().split(" ")


def tokenize_perl(text: str) -> list[str]:
    """Tokens as multi-bleu-detok.perl makes them (ASCII blanks only); an empty text gives []."""
    punct, after, before, dash, blanks = _ASCII
    text = " " + _normalise(text) + " "
    text = punct.sub(r" \1 ", text)
    text = after.sub(r"\1 \2 ", text)
    text = before.sub(r" \1 \2", text)
    text = dash.sub(r"\1 \2 ", text)
    return _ascii_split(blanks.sub(" ", text))


def _ascii_split(text: str) -> list[str]:
    # after collapsing ASCII blanks to single spaces, Perl's split ' ' is a split on spaces ignoring edges
    return [tok for tok in text.split(" ") if tok]
