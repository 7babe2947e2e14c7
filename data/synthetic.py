"""A small synthetic E2E-style dataset, so the quickstart runs on a fresh machine with no data and no network.

Restaurant names, most slot values and all sentence templates are invented here; only the slot set and the
line format (``MR||reference``, tokenised like the released files) follow E2E. The folder gets a
``synthetic.json`` marker, which the E2E preparer copies next to its outputs; a run trained on them records that in
its ``provenance.json`` (nlg.run_folder), from which reports say the data is synthetic. Nothing here measures
anything real.

    python -m data.synthetic [--out-dir DIR] [--seed 0] [--n-train 300] [--n-valid 50] [--n-test 50]
    python -m data.e2e.prepare --raw-dir DIR
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

from data.e2e.csv_format import mr_to_line_format, tokenize
from nlg.io_utils import atomic_open
from nlg.run_folder import SYNTHETIC_MARKER

DEFAULT_OUT = Path(__file__).resolve().parent / "e2e" / "raw_cache" / "synthetic"

NAMES = [
    "The Copper Kettle", "Blue Heron", "Saffron House", "The Lantern Room", "Olive Grove", "The Brass Anchor",
    "Maple Leaf Diner", "The Green Door", "Harbour Lights", "The Velvet Spoon", "Juniper", "The Iron Gate",
    "Little Fig", "The Red Fox", "Moonstone", "The Silver Birch", "Pepper Mill", "The Tall Ship", "Wildflower",
    "The Old Bakery",
]
LANDMARKS = [
    "the Town Museum", "Kingsley Station", "the Rose Theatre", "Elm Park", "the Corn Exchange", "St Anne's Church",
    "the Public Library", "Market Square",
]
VALUES = {
    "eatType": ["coffee shop", "pub", "restaurant"],
    "food": ["Thai", "Greek", "Mexican", "Spanish", "Korean", "Turkish", "Vegetarian"],
    "priceRange": ["cheap", "moderate", "high", "less than £15", "£15-30", "more than £40"],
    "customer rating": ["low", "average", "high", "2 out of 5", "4 out of 5"],
    "area": ["old town", "harbour front"],
    "familyFriendly": ["yes", "no"],
}
SLOT_ORDER = ["name", "eatType", "food", "priceRange", "customer rating", "area", "familyFriendly", "near"]

INTRO = [
    "{name} is a {eatType}",
    "There is a {eatType} called {name}",
    "You can visit {name} , a {eatType} ,",
    "If you are looking for a {eatType} , try {name} ,",
]
INTRO_NO_TYPE = ["{name} is a place", "There is a venue called {name}", "{name} is a spot"]
CLAUSES = {
    "food": ["serving {v} food", "that offers {v} dishes", "with a {v} menu"],
    "priceRange": {
        "word": ["with {v} prices", "in the {v} price range"],
        "amount": ["where a meal costs {v}", "with prices of {v}", "in the {v} price range"],
    },
    "customer rating": {
        "word": ["with a {v} customer rating", "rated {v} by its customers", "that diners rate {v}"],
        "amount": ["with a customer rating of {v}", "rated {v} by customers"],
    },
    "area": ["in the {v} area", "located in the {v}", "down in the {v}"],
    "near": ["near {v}", "close to {v}", "just by {v}"],
}
SENTENCES = {
    "food": ["It serves {v} food.", "The menu is {v}.", "The kitchen cooks {v} dishes."],
    "priceRange": {
        "word": ["Prices are {v}.", "It is {v}."],
        "amount": ["A meal costs {v}.", "Expect to pay {v}."],
    },
    "customer rating": {
        "word": ["Customers rate it {v}.", "Its customer rating is {v}."],
        "amount": ["It is rated {v}.", "Customers give it {v}."],
    },
    "area": ["It is in the {v} area.", "You can find it in the {v}."],
    "near": ["It is near {v}.", "It is close to {v}."],
}
FAMILY = {
    "yes": ["It is family-friendly.", "Children are welcome.", "It's a good place for kids."],
    "no": ["It is not family-friendly.", "It isn't suitable for children.", "Families should look elsewhere."],
}


def _pick(table: dict, slot: str, value: str, rng: random.Random) -> str:
    options = table[slot]
    if isinstance(options, dict):
        options = options["amount" if any(ch.isdigit() for ch in value) else "word"]
    return rng.choice(options).format(v=value)


def _clause(slot: str, value: str, rng: random.Random) -> str:
    return _pick(CLAUSES, slot, value, rng)


def _sentence(slot: str, value: str, rng: random.Random) -> str:
    return _pick(SENTENCES, slot, value, rng)


def random_mr(rng: random.Random) -> dict[str, str]:
    """A name plus 2 to 6 other slots, in E2E's slot order."""
    others = rng.sample(SLOT_ORDER[1:], rng.randint(2, 6))
    mr = {"name": rng.choice(NAMES)}
    for slot in SLOT_ORDER[1:]:
        if slot in others:
            mr[slot] = rng.choice(LANDMARKS) if slot == "near" else rng.choice(VALUES[slot])
    return mr


def realise(mr: dict[str, str], rng: random.Random) -> str:
    """One reference: an intro naming the venue with up to two slots as clauses, then one sentence per slot."""
    intro = rng.choice(INTRO if "eatType" in mr else INTRO_NO_TYPE).format(**mr)
    slots = [s for s in SLOT_ORDER[2:] if s in mr and s != "familyFriendly"]
    rng.shuffle(slots)
    head = slots[: rng.randint(0, 2)]
    tail = slots[len(head):]
    text = " ".join([intro] + [" and ".join(_clause(s, mr[s], rng) for s in head)]).rstrip(" ,") + "."
    for slot in tail:
        text += " " + _sentence(slot, mr[slot], rng)
    if "familyFriendly" in mr:
        text += " " + rng.choice(FAMILY[mr["familyFriendly"]])
    return tokenize(text)


def mr_line(mr: dict[str, str]) -> str:
    return mr_to_line_format(", ".join(f"{slot}[{value}]" for slot, value in mr.items()))


def _unique_mrs(rng: random.Random, n: int, taken: set[str]) -> list[dict[str, str]]:
    out = []
    while len(out) < n:
        mr = random_mr(rng)
        key = mr_line(mr)
        if key not in taken:
            taken.add(key)
            out.append(mr)
    return out


def write_synthetic_e2e(out_dir: str | os.PathLike = DEFAULT_OUT, seed: int = 0, n_train: int = 300,
                        n_valid: int = 50, n_test: int = 50, max_refs: int = 3) -> Path:
    """Write ``train.txt`` (``n_train`` lines), ``valid.txt``/``test.txt`` (``n_valid``/``n_test`` MRs with
    1..``max_refs`` references each, no MR shared between splits) and the ``synthetic.json`` marker."""
    rng = random.Random(seed)
    out_dir = Path(out_dir)
    taken: set[str] = set()
    eval_mrs = {split: _unique_mrs(rng, n, taken) for split, n in (("valid", n_valid), ("test", n_test))}
    train_mrs = _unique_mrs(rng, max(1, n_train // 2), taken)
    splits = {"train": [(m, realise(m, rng)) for m in (train_mrs * 2)[:n_train]]}
    for split, mrs in eval_mrs.items():
        splits[split] = [(m, realise(m, rng)) for m in mrs for _ in range(rng.randint(1, max_refs))]
    counts = {}
    for split, pairs in splits.items():
        with atomic_open(out_dir / f"{split}.txt") as handle:
            for mr, ref in pairs:
                handle.write(f"{mr_line(mr)}||{ref} \n")
        counts[split] = len(pairs)
    marker = {"synthetic": True, "generator": "data.synthetic", "seed": seed, "lines": counts,
              "note": "invented E2E-style data for offline demos; scores on it say nothing about the paper"}
    with atomic_open(out_dir / SYNTHETIC_MARKER) as handle:
        json.dump(marker, handle, indent=2, sort_keys=True)
        handle.write("\n")
    return out_dir


def is_synthetic(path: str | os.PathLike) -> bool:
    """True if ``path`` (a data folder or a file in one) carries the synthetic marker."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    return (folder / SYNTHETIC_MARKER).is_file()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data.synthetic", description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", default=str(DEFAULT_OUT))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-train", type=int, default=300)
    parser.add_argument("--n-valid", type=int, default=50)
    parser.add_argument("--n-test", type=int, default=50)
    args = parser.parse_args(argv)
    out = write_synthetic_e2e(args.out_dir, args.seed, args.n_train, args.n_valid, args.n_test)
    print(f"synthetic E2E sample -> {out}  (prepare it: python -m data.e2e.prepare --raw-dir {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
