"""The general-domain English corpus the small GPT-2 is pretrained on here: WebNLG 2017 and DART texts, never E2E.

Documents are the human-written sentences of WebNLG 2017 (every lexicalisation of train, dev and test) and
DART v1.1.1 (every annotation of the splits present) whose source is not E2E: DART carries E2E sentences
(annotations with ``"source": "e2e"``, ``comment="e2e"`` in the XML), and a model that is later adapted and
scored on E2E must not have seen them. Exact duplicates are kept once (DART's WebNLG partition repeats WebNLG's
texts), in a fixed order, so the corpus is a pure function of its inputs. Every 50th document is held out to
measure perplexity.

Punctuation is written two ways, as in web text: every second document (by corpus position) is rewritten in the
tokenized convention of corpora such as the E2E files, with spaces around punctuation and word-internal hyphens
(``family-friendly, 5.0.`` -> ``family - friendly , 5.0 .``), the others are kept as written. Only spacing changes,
never a word: otherwise " ." and " ," (13 % of the E2E training text's tokens) would be tokens the pretrained
model has almost never seen.

WordNet 3.0 (``--corpus shared+wordnet``) adds general-domain English the two datasets lack: one document per
synset, its words and its gloss (definition and usage examples), read from the database files Debian's
``wordnet-base`` package installs (``/usr/share/wordnet``, or ``$WORDNET_DIR``). WebNLG and DART describe people,
places and companies; words such as " coffee", " shop", " price" and " rating" never occur in them, so a model
pretrained on them alone has untrained embedding rows for a fifth of E2E's target tokens. WordNet holds no E2E
text; it is a dictionary.

With triples (``--corpus shared+triples``) every document is its text preceded by the data it verbalises: the
triples as the dataset preparers write them (``Aarhus : leaderName : Jacob_Bundsgaard``), a newline, then the
text. Still plain causal language modelling on WebNLG and DART and never E2E (a DART entry with any E2E-sourced
annotation is dropped whole, triples included), but the model sees, across domains, text that repeats names and
values from a structured context before it: the skill a frozen base must bring to E2E, where names and values of
the meaning representation reappear in the sentence. Without the triples that skill has to come from E2E's own
training data, which is what FT from random initialisation learns it from.

By entry (``--corpus shared+entries``) every document is one entry: its triples with WebNLG's underscores written
as spaces (``Aarhus Airport : cityServed : Aarhus``), then each of its texts on a line of its own. The texts of one
entry name the same things, and in E2E's format (``name : Blue Spice | ...`` then ``Blue Spice is ...``) a name
in the text is token for token the name in the context; so, unlike ``shared+triples`` (where ``Aarhus_Airport``
and `` Aarhus Airport`` share few tokens), copying a span from earlier in the context pays on almost every entry,
which is what a model needs to write a name it was never trained on (a third of E2E's test records name a
restaurant that its dev split, the CPU Table 3's training data, never does). Same texts, same exclusions as
``shared+triples``; the punctuation convention is chosen per entry, so one entry's texts share it.

Offline with no raw data, :func:`generated_documents` writes an English corpus from templates invented here
(facts about invented people, places and things, no restaurants), labelled ``"generated"`` wherever it is used.
"""
from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from data.common import load_json
from data.dart.prepare import entries_from_xml
from data.dart.prepare import locate as dart_locate
from data.dart.prepare import triples_context
from data.webnlg.prepare import locate as webnlg_locate
from data.webnlg.prepare import read as webnlg_read

HELD_OUT_EVERY = 50  # document i (from 0) is held out when i % 50 == 49
EXCLUDED_SOURCES = ("e2e",)  # DART annotation sources never put into the corpus (compared lower-cased)
SUBDIRS = {"webnlg": "webnlg_challenge_2017", "dart": "dart"}
WORDNET_DIR = Path("/usr/share/wordnet")  # where Debian's wordnet-base puts WordNet 3.0; $WORDNET_DIR overrides
WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
TOKENIZED_EVERY = 2  # document i is written in the tokenized convention when i % 2 == 1

_SPLIT_PERIOD_COMMA = re.compile(r"(?<!\d)([.,])|([.,])(?!\d)")  # not inside numbers: 5.0, 1,000
_SPLIT_OTHER = re.compile(r'([;:!?()"])')
_SPLIT_HYPHEN = re.compile(r"(?<=\w)-(?=\w)")


def tokenized_style(text: str) -> str:
    """``text`` with spaces around punctuation and word-internal hyphens, the words unchanged."""
    text = _SPLIT_PERIOD_COMMA.sub(lambda m: f" {m.group(1) or m.group(2)} ", text)
    text = _SPLIT_HYPHEN.sub(" - ", _SPLIT_OTHER.sub(r" \1 ", text))
    return " ".join(text.split())


@dataclass
class Corpus:
    """Documents in corpus order with where they came from and what was left out."""

    documents: list[str] = field(default_factory=list)
    sources: dict[str, dict] = field(default_factory=dict)  # per source: files, documents kept
    excluded: dict[str, int] = field(default_factory=dict)  # reason -> count
    kind: str = "shared"  # "shared" (the real datasets) or "generated" (the offline template corpus)
    conventions: dict[str, int] = field(default_factory=dict)  # punctuation convention -> documents
    data: list[str] = field(default_factory=list)  # per document, the triples it verbalises ("" for none)

    def add(self, source: str, texts, seen: set[str], data=None) -> None:
        """Append ``texts`` (with ``data``, the triples of each, when given), dropping empties and duplicates."""
        kept = 0
        data = data if data is not None else [""] * len(texts)
        for text, datum in zip(texts, data, strict=True):
            text = " ".join(text.split())
            if not text:
                self.excluded["empty"] = self.excluded.get("empty", 0) + 1
            elif text in seen:
                self.excluded["duplicate"] = self.excluded.get("duplicate", 0) + 1
            else:
                seen.add(text)
                self.documents.append(text)
                self.data.append(datum)
                kept += 1
        self.sources.setdefault(source, {"documents": 0})["documents"] += kept

    def write_both_conventions(self) -> None:
        """Every ``TOKENIZED_EVERY``-th document in the tokenized convention (see the module's docstring)."""
        for i, doc in enumerate(self.documents):
            if i % TOKENIZED_EVERY == TOKENIZED_EVERY - 1:
                self.documents[i] = tokenized_style(doc)
        self.conventions = {"as written": len(self.documents) - len(self.documents) // TOKENIZED_EVERY,
                            "tokenized (spaces around punctuation)": len(self.documents) // TOKENIZED_EVERY}

    def prefix_data(self) -> None:
        """Every document with triples becomes ``triples\ntext`` (after the punctuation conventions, which are the
        text's; the triples stay as the preparers write them)."""
        self.documents = [f"{d}\n{t}" if d else t for d, t in zip(self.data, self.documents, strict=True)]

    def group_entries(self) -> None:
        """Consecutive documents with the same triples become one (see the module's docstring): the triples with
        underscores as spaces, then each text on its own line, every ``TOKENIZED_EVERY``-th entry's texts in the
        tokenized convention. Replaces :meth:`write_both_conventions` and :meth:`prefix_data`."""
        groups: list[tuple[str, list[str]]] = []
        for text, datum in zip(self.documents, self.data, strict=True):
            if groups and datum and datum == groups[-1][0]:
                groups[-1][1].append(text)
            else:
                groups.append((datum, [text]))
        documents, tokenized = [], 0
        for i, (datum, texts) in enumerate(groups):
            if i % TOKENIZED_EVERY == TOKENIZED_EVERY - 1:
                texts, tokenized = [tokenized_style(t) for t in texts], tokenized + 1
            lines = ([datum.replace("_", " ")] if datum else []) + texts
            documents.append("\n".join(lines))
        self.documents, self.data = documents, [d for d, _ in groups]
        self.conventions = {"as written": len(documents) - tokenized, "tokenized (spaces around punctuation)": tokenized}

    def split(self) -> tuple[list[str], list[str]]:
        """(train documents, held-out documents)."""
        train = [d for i, d in enumerate(self.documents) if i % HELD_OUT_EVERY != HELD_OUT_EVERY - 1]
        held = [d for i, d in enumerate(self.documents) if i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1]
        return train, held

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for doc in self.documents:
            digest.update(doc.encode("utf-8") + b"\n")
        return digest.hexdigest()[:16]


def dart_texts(entries: list, counts: dict[str, int], whole_entries: bool = False) -> tuple[list[str], list[str]]:
    """(annotation texts of DART entries, the triples of each as the DART preparer's context), leaving out every
    annotation from an excluded source (E2E). With ``whole_entries`` an entry with any excluded annotation is
    dropped whole: its triples are an E2E meaning representation even where another annotation's source is not."""
    texts, data = [], []
    for entry in entries:
        annotations = entry.get("annotations", [])
        sources = [str(ann.get("source") or "").strip().lower() for ann in annotations]
        whole_entry_out = whole_entries and any(s in EXCLUDED_SOURCES for s in sources)
        for ann, source in zip(annotations, sources):
            if source in EXCLUDED_SOURCES or whole_entry_out:
                reason = f"dart source {source}" if source in EXCLUDED_SOURCES else "dart entry with e2e annotations"
                counts[reason] = counts.get(reason, 0) + 1
                continue
            texts.append(ann.get("text") or "")
            data.append(triples_context(entry.get("tripleset", [])))
    return texts, data


def _dart_entries(path: Path) -> list:
    return entries_from_xml(path) if path.suffix.lower() == ".xml" else load_json(path)


def wordnet_line_text(line: str, where: str) -> str | None:
    """One line of a WordNet ``data.<pos>`` file as a document (``"cafe, coffee shop: a small restaurant ..."``);
    None for the licence lines at the top of the file. ``where`` (file:line) names a malformed line."""
    if line.startswith("  "):
        return None
    head, bar, gloss = line.partition(" | ")
    fields = head.split()
    try:
        count = int(fields[3], 16)
        words = [fields[4 + 2 * i].replace("_", " ") for i in range(count)]
    except (IndexError, ValueError):
        raise ValueError(f"{where}: not a WordNet synset line (offset lex_filenum ss_type w_cnt word ... | gloss)")
    if not bar or not words:
        raise ValueError(f"{where}: a WordNet synset line without words or gloss")
    words = [re.sub(r"\((a|p|ip)\)$", "", w) for w in words]  # adjective position markers: "galore(ip)"
    return f"{', '.join(dict.fromkeys(words))}: {gloss.strip()}"


def wordnet_texts(wordnet_dir: str | Path) -> tuple[list[str], list[str]]:
    """(documents, files read): every synset of WordNet's four ``data.<pos>`` files, in file order."""
    wordnet_dir = Path(wordnet_dir)
    missing = [n for n in WORDNET_FILES if not (wordnet_dir / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{wordnet_dir}: no WordNet 3.0 database ({', '.join(missing)} missing); install "
                                "Debian's wordnet-base (apt-get install wordnet-base) or set WORDNET_DIR")
    texts = []
    for name in WORDNET_FILES:
        path = wordnet_dir / name
        with open(path, encoding="latin-1") as f:  # WordNet 3.0's files are Latin-1 (a few accented glosses)
            for number, line in enumerate(f, 1):
                text = wordnet_line_text(line, f"{path}:{number}")
                if text is not None:
                    texts.append(text)
    return texts, list(WORDNET_FILES)


def shared_corpus(data_dir: str | Path, wordnet_dir: str | Path | None = None, triples: bool = False,
                  entries: bool = False) -> Corpus:
    """The corpus from a folder laid out like ``../shared/data`` (``webnlg_challenge_2017/``, ``dart/``), with
    WordNet's synsets after them when ``wordnet_dir`` is given (kind ``"shared+wordnet"``), each text preceded
    by its triples when ``triples`` (kind ``"shared+triples"``), or one document per entry, its triples then its
    texts, when ``entries`` (kind ``"shared+entries"``; see the module's docstring).

    Splits that are absent are skipped (and not listed); at least one must be present.
    """
    if sum([triples, entries, wordnet_dir is not None]) > 1:
        raise ValueError("the corpus takes one of WordNet, triples or entries")
    data_dir = Path(data_dir)
    kind = ("shared+triples" if triples else "shared+entries" if entries
            else "shared" if wordnet_dir is None else "shared+wordnet")
    with_data = triples or entries
    corpus, seen = Corpus(kind=kind), set()
    for split in ("train", "valid", "test"):
        try:
            source = webnlg_locate(data_dir / SUBDIRS["webnlg"], split)
        except FileNotFoundError:
            continue
        records = webnlg_read(source, split)
        corpus.add("webnlg", [r["completion"] for r in records], seen,
                   data=[r["context"] for r in records] if with_data else None)
        corpus.sources["webnlg"].setdefault("files", []).append(str(source.relative_to(data_dir)))
    for split in ("train", "valid", "test"):
        try:
            source = dart_locate(data_dir / SUBDIRS["dart"], split)
        except FileNotFoundError:
            continue
        texts, data = dart_texts(_dart_entries(source), corpus.excluded, whole_entries=with_data)
        corpus.add("dart", texts, seen, data=data if with_data else None)
        corpus.sources["dart"].setdefault("files", []).append(str(source.relative_to(data_dir)))
    if not corpus.documents:
        raise FileNotFoundError(f"{data_dir}: no WebNLG 2017 or DART split found to pretrain on "
                                f"(looked in {SUBDIRS['webnlg']}/ and {SUBDIRS['dart']}/)")
    if wordnet_dir is not None:
        texts, files = wordnet_texts(wordnet_dir)
        corpus.add("wordnet", texts, seen)
        corpus.sources["wordnet"]["files"] = [str(Path(wordnet_dir) / n) for n in files]
    if entries:
        corpus.group_entries()
        return corpus
    corpus.write_both_conventions()
    if triples:
        corpus.prefix_data()
    return corpus


def target_coverage(documents: list[str], targets: list[str], rare_below: int = 20) -> dict:
    """How much of ``targets``' text (token by token) the corpus has seen: the share of target tokens whose id never
    occurs in ``documents``, and of those occurring fewer than ``rare_below`` times (each text encoded with a
    leading space, as completions are)."""
    from collections import Counter

    from nlg.tokenizer import get_tokenizer

    tok = get_tokenizer()

    def counts(texts):
        c = Counter()
        for ids in tok([" " + t for t in texts], add_special_tokens=False)["input_ids"]:
            c.update(ids)
        return c

    seen, wanted = counts(documents), counts(targets)
    total = sum(wanted.values())
    return {"target_tokens": total, "corpus_tokens": sum(seen.values()),
            "unseen_share": sum(n for t, n in wanted.items() if seen[t] == 0) / total,
            f"below_{rare_below}_share": sum(n for t, n in wanted.items() if seen[t] < rare_below) / total,
            "most_frequent_unseen": [tok.decode([t]) for t, _ in wanted.most_common() if seen[t] == 0][:12]}


# ------------------------------------------------------------------ the offline template corpus
_PEOPLE = ["Anna Berg", "Tomas Reyes", "Mira Okafor", "Jonas Lind", "Priya Natarajan", "Leo Castell", "Ines Duarte",
           "Kofi Mensah", "Sara Holm", "Daniel Weiss", "Yuki Tanaka", "Omar Haddad"]
_PLACES = ["Northbridge", "Castelvero", "Lake Arden", "Port Elms", "Riverton", "Valmont", "Kestrel Bay", "Ostrava Hill"]
_COUNTRIES = ["Norland", "Estavia", "Marrow", "the Kingdom of Pell", "Vastria"]
_JOBS = ["an engineer", "a painter", "a footballer", "a politician", "an astronaut", "a composer", "a novelist"]
_THINGS = ["bridge", "university", "airport", "river", "museum", "stadium", "cathedral", "railway station"]
_TEMPLATES = [
    "{person} was born in {place} , {country} .",
    "{person} is {job} who lives in {place} .",
    "The {thing} in {place} was built in {year} .",
    "{place} is a city in {country} with a population of {number} .",
    "{person} , who was born in {year} , works as {job} .",
    "The {thing} of {place} is located in {country} .",
    "{person} studied at the university of {place} and later became {job} .",
    "{place} lies on the coast of {country} and is known for its {thing} .",
    "In {year} , {person} moved from {place} to {country} .",
    "The {thing} near {place} is {number} metres long .",
]


def generated_documents(n: int = 3000, seed: int = 0) -> list[str]:
    """``n`` English sentences of invented facts (no E2E slot, value or template), for offline machines."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        k = rng.randint(1, 3)
        sentences = [rng.choice(_TEMPLATES).format(
            person=rng.choice(_PEOPLE), place=rng.choice(_PLACES), country=rng.choice(_COUNTRIES),
            job=rng.choice(_JOBS), thing=rng.choice(_THINGS), year=rng.randint(1800, 2020),
            number=rng.randint(2, 900) * 100) for _ in range(k)]
        docs.append(" ".join(sentences))
    return docs


def generated_corpus(n: int = 3000, seed: int = 0) -> Corpus:
    corpus = Corpus(kind="generated")
    corpus.add("generated", generated_documents(n, seed), set())
    return corpus
