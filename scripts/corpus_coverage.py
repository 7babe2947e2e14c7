"""How much of E2E's training text each pretraining corpus has seen (python scripts/corpus_coverage.py).

A frozen-base method cannot write a word whose embedding row pretraining never trained; this prints, for the
``shared`` corpus (WebNLG 2017 + DART) and ``shared+wordnet`` (plus WordNet 3.0's glosses), the share of the
E2E dev split's reference tokens (the CPU Table 3's training text) that the corpus never holds or holds rarely.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data.corpus import WORDNET_DIR, shared_corpus, target_coverage  # noqa: E402
from data.e2e.prepare import locate, read  # noqa: E402
from nlg.pipeline import SHARED_DATA  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=SHARED_DATA, help="WebNLG / DART / E2E folders")
    p.add_argument("--wordnet-dir", type=Path, default=WORDNET_DIR)
    a = p.parse_args(argv)
    targets = [r["completion"] for r in read(locate(a.data_dir / "e2e", "valid"))]
    print(f"E2E dev split: {len(targets)} references")
    for kind, wordnet in (("shared", None), ("shared+wordnet", a.wordnet_dir)):
        c = target_coverage(shared_corpus(a.data_dir, wordnet_dir=wordnet).documents, targets)
        print(f"{kind:15s} corpus {c['corpus_tokens']:>9,} tokens: {100 * c['unseen_share']:5.1f}% of E2E's "
              f"{c['target_tokens']:,} reference tokens never in it, {100 * c['below_20_share']:5.1f}% fewer than "
              f"20 times; most frequent unseen: {', '.join(repr(t) for t in c['most_frequent_unseen'][:8])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
