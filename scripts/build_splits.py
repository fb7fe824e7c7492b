"""Build the bundled SST-2 and RTE splits by source, from the team's copies of GLUE's train files.

    python scripts/build_splits.py [--shared ../shared/data] [--out data] [--held-apart .cache/held_apart]

SST-2 (GLUE's train file is every phrase of SST's training parse trees): the test role
(`validation.jsonl`), the development role (`dev.jsonl`) and a held-apart sample (written outside
the repository, never bundled, never read by a choice) are *full sentences*, phrases inside no other
phrase (sweep/data/grouping.py); every phrase equal to or inside one of them is removed from
`train.jsonl`, and so from every demonstration pool. RTE: examples grouped by premise, premises that
share a 13-gram joined (the leakage audit's rule), whole groups to one side. Deterministic (a fixed
seed, rows in GLUE order); the counts and hashes go in data/README.md, and
tests/test_bundled_splits.py fails if the bundled files break the rules.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sweep.data.grouping import PhraseIndex, full_sentences, words  # noqa: E402
from sweep.scoring.leakage import NGRAM, doc_text  # noqa: E402

SEED = 20261207
SST2_SIZES = {"validation": 1000, "dev": 600, "held_apart": 872}  # (872: the size of GLUE's own dev set)
RTE_SIZES = {"validation": 250, "dev": 400}
log = logging.getLogger("build_splits")


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write(path: Path, rows: list[dict]) -> str:
    """Write JSONL; return its sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def glue_rows(folder: Path) -> list[dict]:
    """The whole GLUE train file, in its order (the shared copy keeps it as train + validation)."""
    rows = read(folder / "train.jsonl") + read(folder / "validation.jsonl")
    rows.sort(key=lambda r: r["idx"])
    return rows


def split_sst2(rows: list[dict]) -> dict[str, list[dict]]:
    """{role: rows}: full sentences for validation, dev and held_apart; train the phrases related to none."""
    texts = [words(r["sentence"]) for r in rows]
    candidates = full_sentences(texts)
    random.Random(SEED).shuffle(candidates)
    out, start = {}, 0
    for role, size in SST2_SIZES.items():
        out[role] = sorted((rows[i] for i in candidates[start:start + size]), key=lambda r: r["idx"])
        start += size
    index = PhraseIndex(texts)
    taken = set().union(*(index.related_to(words(r["sentence"])) for role in SST2_SIZES for r in out[role]))
    out["train"] = [r for i, r in enumerate(rows) if i not in taken]
    return out


def rte_groups(rows: list[dict]) -> list[list[dict]]:
    """RTE's examples grouped by source: one premise (normalised) with its hypotheses, and premises
    whose texts share a 13-gram of words (the same news story edited: the leakage audit's n-gram
    rule), joined into one group."""
    parent = list(range(len(rows)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[tuple, int] = {}
    for i, r in enumerate(rows):
        w = words(doc_text(r))  # (the text the audit reads)
        keys = [("premise", words(r["sentence1"]))] + [("gram", w[k:k + NGRAM]) for k in range(len(w) - NGRAM + 1)]
        for key in keys:
            j = first.setdefault(key, i)
            parent[find(i)] = find(j)
    groups: dict[int, list[dict]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(find(i), []).append(r)
    return list(groups.values())


def split_rte(rows: list[dict]) -> dict[str, list[dict]]:
    """{role: rows}: whole source groups (`rte_groups`), in a seeded order, filling validation then dev exactly."""
    groups = rte_groups(rows)
    random.Random(SEED).shuffle(groups)
    out = {role: [] for role in (*RTE_SIZES, "train")}
    for group in groups:
        role = next((role for role, size in RTE_SIZES.items() if len(out[role]) + len(group) <= size), "train")
        out[role] += group
    return {role: sorted(rs, key=lambda r: r["idx"]) for role, rs in out.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--out", type=Path, default=ROOT / "data")
    p.add_argument("--held-apart", type=Path, default=ROOT / ".cache" / "held_apart",
                   help="a data folder whose sst2 validation split is the held-apart sample (paths.data=...)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for folder in ("sst2", "rte"):
        if not (args.shared / folder / "train.jsonl").is_file():
            p.error(f"{args.shared / folder}/train.jsonl not found: pass --shared <the team's shared/data folder>")
    sst2 = split_sst2(glue_rows(args.shared / "sst2"))
    rte = split_rte(glue_rows(args.shared / "rte"))
    for task, roles in (("sst2", sst2), ("rte", rte)):
        for role in ("train", "dev", "validation"):
            digest = write(args.out / task / f"{role}.jsonl", roles[role])
            log.info("%s  %s/%s.jsonl  %d rows", digest, task, role, len(roles[role]))
    held = args.held_apart / "sst2"
    write(held / "validation.jsonl", sst2["held_apart"])
    for role in ("train", "dev"):
        write(held / f"{role}.jsonl", sst2[role])
    log.info("held-apart: %d full sentences in %s/validation.jsonl (score with paths.data=%s)",
             len(sst2["held_apart"]), held, args.held_apart)
    return 0


if __name__ == "__main__":
    sys.exit(main())
