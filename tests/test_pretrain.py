"""Pretraining a small GPT-2 here (nlg.pretrain, data.corpus): E2E text kept out, learning, caching, loading."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
import torch

from data.corpus import (EXCLUDED_SOURCES, HELD_OUT_EVERY, WORDNET_DIR, WORDNET_FILES, generated_documents, shared_corpus,
                         target_coverage, tokenized_style, wordnet_line_text, wordnet_texts)
from nlg.config import PretrainConfig
from nlg.models import ModelLoadError, load_model
import nlg.pretrain as pretrain_module
from nlg.pretrain import (COPY_SPAN, PretrainError, copy_blocks, kernel_paths, load_corpus, pack_blocks, pretrain,
                          recipe_key, resolve_precision)
from nlg.run_folder import describe_pretrained, pretrain_info
from nlg.tokenizer import EOS_ID

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
# tiny card, generated corpus, a few seconds per pretraining
TINY = PretrainConfig(card="tiny", corpus="generated", block_size=64, batch_size=8, max_steps=40, lr=1e-2,
                      warmup_steps=5, generated_documents=1000)


def _write_dart(folder: Path) -> None:
    entries = [
        {"tripleset": [["A", "b", "C"]], "annotations": [{"source": "WikiSQL_decl_sents", "text": "Kept sentence one."},
                                                         {"source": "e2e", "text": "The Eagle is a cheap pub."}]},
        {"tripleset": [["D", "e", "F"]], "annotations": [{"source": "E2E", "text": "Loch Fyne serves French food."},
                                                         {"source": "WebNLG", "text": "Kept sentence two."}]},
    ]
    (folder / "dart").mkdir(parents=True)
    (folder / "dart" / "dart-v1.1.1-full-dev.json").write_text(json.dumps(entries), encoding="utf-8")


def test_e2e_sourced_dart_annotations_are_dropped(tmp_path):
    _write_dart(tmp_path)
    corpus = shared_corpus(tmp_path)
    # the second document is written in the tokenized convention (spaces around punctuation)
    assert corpus.documents == ["Kept sentence one.", "Kept sentence two ."]
    assert corpus.excluded == {"dart source e2e": 2}
    assert corpus.conventions == {"as written": 1, "tokenized (spaces around punctuation)": 1}
    assert "e2e" in EXCLUDED_SOURCES


def test_triples_corpus_puts_each_text_after_its_triples_and_drops_e2e_entries_whole(tmp_path):
    _write_dart(tmp_path)
    # both fixture entries hold an E2E-sourced annotation: with triples each is dropped whole (its triples may be an
    # E2E meaning representation), so add one clean entry; the texts keep their punctuation convention, the triples not
    clean = {"tripleset": [["Ana_Berg", "birthPlace", "Port Elms, Norland"], ["Ana_Berg", "OCCUPATION", "painter"]],
             "annotations": [{"source": "WebNLG", "text": "Ana Berg, a painter, was born in Port Elms."},
                             {"source": "WikiSQL_decl_sents", "text": "Painter Ana Berg is from Port Elms, Norland."}]}
    path = tmp_path / "dart" / "dart-v1.1.1-full-dev.json"
    path.write_text(json.dumps(json.loads(path.read_text()) + [clean]), encoding="utf-8")
    corpus = shared_corpus(tmp_path, triples=True)
    data = "Ana_Berg : birthplace : Port Elms, Norland | Ana_Berg : occupation : painter"
    assert corpus.kind == "shared+triples"
    assert corpus.documents == [f"{data}\nAna Berg, a painter, was born in Port Elms.",
                                f"{data}\nPainter Ana Berg is from Port Elms , Norland ."]
    assert corpus.excluded == {"dart source e2e": 2, "dart entry with e2e annotations": 2}
    assert not any("Eagle" in d or "Loch Fyne" in d or "Kept" in d for d in corpus.documents)
    assert load_corpus(PretrainConfig(corpus="shared+triples"), tmp_path).documents == corpus.documents
    with pytest.raises(ValueError, match="one of WordNet, triples or entries"):
        shared_corpus(tmp_path, wordnet_dir=tmp_path, triples=True)


def test_entries_corpus_writes_each_entry_once_its_triples_then_its_texts(tmp_path):
    _write_dart(tmp_path)
    two = [{"tripleset": [["Ana_Berg", "birthPlace", "Port Elms, Norland"], ["Ana_Berg", "OCCUPATION", "painter"]],
            "annotations": [{"source": "WebNLG", "text": "Ana Berg, a painter, was born in Port Elms."},
                            {"source": "WikiSQL_decl_sents", "text": "Painter Ana Berg is from Port Elms, Norland."}]},
           {"tripleset": [["Port_Elms", "country", "Norland"]],
            "annotations": [{"source": "WebNLG", "text": "Port Elms is in Norland."},
                            {"source": "WebNLG", "text": "Ana Berg, a painter, was born in Port Elms."}]}]
    path = tmp_path / "dart" / "dart-v1.1.1-full-dev.json"
    path.write_text(json.dumps(json.loads(path.read_text()) + two), encoding="utf-8")
    corpus = shared_corpus(tmp_path, entries=True)
    assert corpus.kind == "shared+entries"
    # underscores written as spaces, so a name in the triples is token for token the name in the text; the second
    # entry is written in the tokenized convention, its triples not; a text seen before (a duplicate) is dropped
    assert corpus.documents == [
        "Ana Berg : birthplace : Port Elms, Norland | Ana Berg : occupation : painter\n"
        "Ana Berg, a painter, was born in Port Elms.\nPainter Ana Berg is from Port Elms, Norland.",
        "Port Elms : country : Norland\nPort Elms is in Norland ."]
    assert corpus.excluded == {"dart source e2e": 2, "dart entry with e2e annotations": 2, "duplicate": 1}
    assert corpus.conventions == {"as written": 1, "tokenized (spaces around punctuation)": 1}
    assert load_corpus(PretrainConfig(corpus="shared+entries"), tmp_path).documents == corpus.documents
    with pytest.raises(ValueError, match="one of WordNet, triples or entries"):
        shared_corpus(tmp_path, triples=True, entries=True)


# lines in the layout of WordNet 3.0's data.<pos> files, written here (invented synsets, not WordNet's)
_WN_LICENCE = "  1 This software and database is being provided to you, the LICENSEE, by\n"
_WN_NOUN = ("00000101 06 n 02 tea_room 0 teahouse 0 001 @ 00000202 n 0000 | a room where tea is served; "
            '"we met in the tea room"  \n')
_WN_ADJ = "00000303 00 s 02 plentiful(ip) 0 ample 0 000 | more than enough  \n"


def _write_wordnet(folder: Path) -> None:
    folder.mkdir(parents=True)
    for name in WORDNET_FILES:
        body = {"data.noun": _WN_NOUN, "data.adj": _WN_ADJ + _WN_NOUN}.get(name, "")  # a duplicate in data.adj
        (folder / name).write_text(_WN_LICENCE + body, encoding="latin-1")


def test_wordnet_synsets_become_documents(tmp_path):
    assert wordnet_line_text(_WN_LICENCE, "x:1") is None
    assert wordnet_line_text(_WN_NOUN, "x:2") == 'tea room, teahouse: a room where tea is served; "we met in the tea room"'
    assert wordnet_line_text(_WN_ADJ, "x:3") == "plentiful, ample: more than enough"  # position marker (ip) dropped
    with pytest.raises(ValueError, match=r"^data\.noun:7: not a WordNet synset line"):
        wordnet_line_text("00000101 06 n zz cafe 0 | a gloss\n", "data.noun:7")
    _write_wordnet(tmp_path / "wn")
    texts, files = wordnet_texts(tmp_path / "wn")
    assert files == list(WORDNET_FILES) and len(texts) == 3
    _write_dart(tmp_path / "data")
    corpus = shared_corpus(tmp_path / "data", wordnet_dir=tmp_path / "wn")
    # after the DART documents, the WordNet synsets once each (the repeat counted as a duplicate); every second
    # document of the whole corpus in the tokenized convention
    assert corpus.kind == "shared+wordnet"
    assert corpus.documents == ["Kept sentence one.", "Kept sentence two .", "tea room, teahouse: a room where tea is "
                                'served; "we met in the tea room"', "plentiful , ample : more than enough"]
    assert corpus.sources["wordnet"]["documents"] == 2 and corpus.excluded["duplicate"] == 1
    assert shared_corpus(tmp_path / "data").kind == "shared"  # WordNet only when asked for


def test_shared_wordnet_corpus_says_how_to_get_wordnet(tmp_path, monkeypatch):
    _write_dart(tmp_path / "data")
    monkeypatch.setenv("WORDNET_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="apt-get install wordnet-base"):
        load_corpus(PretrainConfig(corpus="shared+wordnet"), tmp_path / "data")
    with pytest.raises(PretrainError, match="unknown --corpus"):
        load_corpus(PretrainConfig(corpus="wordnet"), tmp_path / "data")


@pytest.mark.skipif(not (WORDNET_DIR / "data.noun").is_file(),
                    reason="WordNet 3.0 is not installed (Debian's wordnet-base; scripts/setup.sh installs it)")
def test_real_wordnet_holds_the_words_e2e_needs():
    texts, _ = wordnet_texts(WORDNET_DIR)
    assert len(texts) == 117659  # WordNet 3.0's synsets: 82,115 nouns, 13,767 verbs, 18,156 adjectives, 3,621 adverbs
    words = set(" ".join(texts).lower().split())
    assert {"coffee", "shop", "price", "rating", "riverside", "restaurant", "pub"} <= words


def test_target_coverage_counts_the_target_tokens_the_corpus_lacks():
    # " the", " a", " shop" are single GPT-2 tokens; the corpus holds " the" 3 times and " a" once, never " shop"
    c = target_coverage(["the the the a"], ["the shop", "a shop"], rare_below=2)
    assert c["target_tokens"] == 4 and c["corpus_tokens"] == 4
    # unseen: both " shop"; fewer than 2 times: also " a"; fewer than 4 times: every target token
    assert c["unseen_share"] == 0.5 and c["below_2_share"] == 0.75 and c["most_frequent_unseen"] == [" shop"]
    assert target_coverage(["the the the a"], ["the shop", "a shop"], rare_below=4)["below_4_share"] == 1.0


def test_tokenized_convention_changes_spacing_only():
    text = 'The Tower, built in 1,889 (rebuilt 2.5 times), is "tall"; its family-run shop opened.'
    out = tokenized_style(text)
    assert out == 'The Tower , built in 1,889 ( rebuilt 2.5 times ) , is " tall " ; its family - run shop opened .'
    assert out.replace(" ", "") == text.replace(" ", "")
    assert tokenized_style(out) == out  # already tokenized text stays as it is


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data (WebNLG 2017, DART) is not beside the checkout")
def test_shared_corpus_has_no_e2e_text():
    corpus = shared_corpus(SHARED)
    # the shared DART dev split alone holds 4,290 E2E-sourced annotations; dev + test are all dropped
    assert corpus.excluded["dart source e2e"] >= 4290
    docs = set(corpus.documents)
    e2e_refs = {line.split("||", 1)[1].strip() for line in (SHARED / "e2e" / "valid.txt").read_text().splitlines()}
    # E2E's references are tokenised ("family - friendly"); DART's copies are not: compare without spaces
    squash = {d.replace(" ", "") for d in docs}
    assert not {r.replace(" ", "") for r in e2e_refs} & squash
    assert set(corpus.sources) == {"webnlg", "dart"}


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data (WebNLG 2017, DART) is not beside the checkout")
def test_triples_corpus_has_no_e2e_meaning_representation():
    corpus = shared_corpus(SHARED, triples=True)
    assert corpus.excluded["dart source e2e"] >= 4290
    # E2E's MRs are DART triples with E2E's attributes (eatType, familyFriendly, customer rating, priceRange)
    keys = (" : eattype : ", " : familyfriendly : ", " : customer rating : ", " : pricerange : ")
    assert not [d for d in corpus.documents if any(k in d.split("\n", 1)[0].lower() for k in keys)]
    assert all("\n" in d for d in corpus.documents)  # every WebNLG and DART text has its triples


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data (WebNLG 2017, DART) is not beside the checkout")
def test_entries_corpus_has_every_triples_text_once_and_no_e2e():
    by_text = shared_corpus(SHARED, triples=True)
    corpus = shared_corpus(SHARED, entries=True)
    keys = (" : eattype : ", " : familyfriendly : ", " : customer rating : ", " : pricerange : ")
    assert not [d for d in corpus.documents if any(k in d.split("\n", 1)[0].lower() for k in keys)]
    # the same texts as the triples corpus, grouped: each entry's lines after its triples
    texts = [line for d in corpus.documents for line in d.split("\n")[1:]]
    assert len(texts) == len(by_text.documents) and len(corpus.documents) < len(texts) / 2
    assert corpus.excluded == by_text.excluded


def test_blocks_cover_the_stream_with_eos_separators():
    records, n = pack_blocks(["a b", "c"], block_size=3)
    stream = [r["context"] + r["completion"] for r in records]
    flat = [t for block in stream for t in block]
    assert flat[0] == EOS_ID and all(len(r["context"]) == 1 and len(r["completion"]) == 2 for r in records)
    assert len(flat) == n - n % 3 and flat.count(EOS_ID) >= 2


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def tiny_pretrained(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    return pretrain(TINY, root=root / "a", quiet=True), root


def test_pretraining_learns_on_a_fixed_corpus(tiny_pretrained):
    model_dir, _ = tiny_pretrained
    info = pretrain_info(model_dir)
    log = [json.loads(l) for l in (Path(info["run_dir"]) / "log.jsonl").read_text().splitlines()]
    first = next(r["loss"] for r in log if "loss" in r)
    # a random GPT-2 starts near ln(50257) = 10.8 (the first logged loss averages 10 warming-up steps); the
    # template corpus is easy: the held-out loss must fall below 4.5 (measured: about 3.5)
    assert first > 8.0
    assert info["heldout_loss"] < 4.5, info["heldout_loss"]
    assert info["tokens_seen"] == 40 * 8 * 64  # real input tokens per block
    unique = len(set(generated_documents(1000)))  # exact duplicates are kept once
    assert info["corpus"]["kind"] == "generated" and info["corpus"]["documents"] == unique
    assert info["corpus"]["heldout_documents"] == unique // HELD_OUT_EVERY
    line = describe_pretrained(info)
    assert "pretrained here from scratch" in line and "not OpenAI's GPT-2" in line


def test_cached_pretrain_is_reused_and_a_rerun_is_identical(tiny_pretrained, capsys):
    model_dir, root = tiny_pretrained
    before = _digest(model_dir.parent)
    again = pretrain(TINY, root=root / "a")
    assert again == model_dir and _digest(model_dir.parent) == before
    assert "reusing the cached pretrained model" in capsys.readouterr().err
    fresh = pretrain(TINY, root=root / "b", quiet=True)  # same seed, same corpus: the same weights
    a = load_model(str(model_dir)).state_dict()
    b = load_model(str(fresh)).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_every_model_flag_takes_the_folder(tiny_pretrained, monkeypatch, tmp_path):
    model_dir, _ = tiny_pretrained
    model = load_model(str(model_dir))
    assert model.config.n_layer == 2 and model.config.n_embd == 64
    assert model.transformer.wte.weight.data_ptr() == model.lm_head.weight.data_ptr()  # tied
    monkeypatch.setenv("NLG_CACHE_DIR", str(tmp_path))
    with pytest.raises(ModelLoadError, match="python -m nlg.pretrain"):
        load_model("mini")
    random_model = load_model("random:tiny")
    assert not torch.equal(random_model.transformer.h[0].attn.c_attn.weight, model.transformer.h[0].attn.c_attn.weight)


def test_generated_corpus_is_deterministic_and_not_restaurants():
    docs = generated_documents(200, seed=0)
    assert docs == generated_documents(200, seed=0)
    text = " ".join(docs).lower()
    assert not any(word in text for word in ("restaurant", "pub", "coffee shop", "eattype", "food"))


def test_copy_blocks_repeat_every_span_and_are_fixed_by_the_seed():
    vocab = list(range(1000, 1100))
    blocks = copy_blocks(3, 200, vocab, seed=7)
    assert blocks == copy_blocks(3, 200, vocab, seed=7) and blocks != copy_blocks(3, 200, vocab, seed=8)
    for block in blocks:
        stream = block["context"] + block["completion"]
        assert len(stream) == 200 and stream[0] == EOS_ID
        pieces = [p for p in " ".join(map(str, stream)).split(str(EOS_ID)) if p.strip()]
        whole = pieces[:-1]  # the last piece may be cut by the block's end
        assert whole and set(t for t in stream if t != EOS_ID) <= set(vocab)
        for piece in whole:
            ids = piece.split()
            half = len(ids) // 2
            assert len(ids) % 2 == 0 and ids[:half] == ids[half:] and COPY_SPAN[0] <= half <= COPY_SPAN[1]


def test_copy_share_adds_synthetic_blocks_recorded_beside_the_corpus(tmp_path):
    cfg = PretrainConfig(**{**TINY.__dict__, "max_steps": 2, "copy_share": 0.25})
    model_dir = pretrain(cfg, root=tmp_path / "c", quiet=True)
    info = pretrain_info(model_dir)["corpus"]
    text_blocks = info["train_blocks"] - info["copy_blocks"]
    assert info["copy_blocks"] == round(0.25 * text_blocks) > 0
    lines = (model_dir.parent / "corpus" / "train.jsonl").read_text().splitlines()
    assert len(lines) == info["train_blocks"]
    assert "synthetic copy blocks" in describe_pretrained(pretrain_info(model_dir))
    with pytest.raises(PretrainError, match="--copy-share 1.0 must be in"):
        pretrain(PretrainConfig(**{**cfg.__dict__, "copy_share": 1.0}), root=tmp_path / "d", quiet=True)


def test_recipe_key_leaves_out_a_neutral_copy_share():
    # models cached before copy_share existed keep their folder name: the key is the digest of the recipe without it
    cfg = PretrainConfig()
    recipe = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "copy_share"}
    digest = hashlib.sha256(json.dumps({"recipe": recipe, "corpus": "f" * 16}, sort_keys=True).encode()).hexdigest()
    assert recipe_key(cfg, "f" * 16) == f"mini-shared+entries-{digest[:12]}"
    assert recipe_key(dataclasses.replace(cfg, copy_share=0.1), "f" * 16) != recipe_key(cfg, "f" * 16)


def test_recipe_key_holds_the_pinned_kernel_paths_and_only_those(monkeypatch):
    cfg, fp = PretrainConfig(), "f" * 16
    monkeypatch.delenv("MKL_CBWR", raising=False)
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    assert kernel_paths() == {}
    unpinned = recipe_key(cfg, fp, kernel_paths())
    assert unpinned == recipe_key(cfg, fp)  # nothing pinned: the name models cached before the pin had
    monkeypatch.setenv("MKL_CBWR", "AVX2")
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    assert kernel_paths() == {"MKL_CBWR": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
    pinned = recipe_key(cfg, fp, kernel_paths())
    assert pinned != unpinned and pinned.startswith("mini-shared+entries-")
    monkeypatch.setenv("MKL_CBWR", "AUTO")
    assert recipe_key(cfg, fp, kernel_paths()) not in (pinned, unpinned)


@pytest.mark.parametrize("caps, vendor, expected", [
    ({"avx2": True}, "AuthenticAMD", "fp32"),  # AVX2 only: bf16 emulated
    ({"avx512_bf16": True}, "AuthenticAMD", "bf16"),  # Zen 4
    ({"avx512_bf16": True}, "GenuineIntel", "fp32"),  # AVX512-BF16 without AMX: MKL's fp32 is faster
    ({"avx512_bf16": True, "amx_bf16": True}, "GenuineIntel", "bf16"),  # Sapphire Rapids and later
])
def test_auto_precision_picks_the_faster_one_for_the_cpu(monkeypatch, caps, vendor, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)
    monkeypatch.setattr(pretrain_module, "cpu_vendor", lambda: vendor)
    assert resolve_precision(PretrainConfig()).precision == expected
    assert resolve_precision(PretrainConfig(precision="bf16")).precision == "bf16"  # asked for: kept


def test_the_description_says_when_cpu_kernels_were_pinned():
    info = {"card": "tiny", "n_layer": 2, "n_embd": 64, "tokens_seen": 2_000_000, "heldout_perplexity": 240.0,
            "corpus": {"train_tokens": 700_000, "label": "WebNLG 2017 + DART texts (no E2E)"}}
    assert "pinned" not in describe_pretrained(info)
    info["kernel_paths"] = {"MKL_CBWR": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
    assert ("(0.70M-token corpus: WebNLG 2017 + DART texts (no E2E)); CPU kernels pinned (MKL_CBWR=AVX2, "
            "ATEN_CPU_CAPABILITY=avx2); held-out perplexity 240.0; not OpenAI's GPT-2") in describe_pretrained(info)


def test_cpuinfo_field_reads_the_first_matching_line(monkeypatch, tmp_path):
    import nlg.cpu_info as cpu_info
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9R14\nflags\t\t: avx2 avx512f\n"
                    "processor\t: 1\nvendor_id\t: GenuineIntel\n")
    monkeypatch.setattr(cpu_info, "CPUINFO", info)
    assert cpu_info.cpuinfo_field("vendor_id") == "AuthenticAMD"
    assert cpu_info.cpuinfo_field("model name") == "AMD EPYC 9R14"
    assert pretrain_module.cpu_vendor() == "AuthenticAMD"
    assert cpu_info.cpuinfo_field("microcode") is None
    monkeypatch.setattr(cpu_info, "CPUINFO", tmp_path / "absent")
    assert cpu_info.cpuinfo_field("vendor_id") is None and pretrain_module.cpu_vendor() == ""
