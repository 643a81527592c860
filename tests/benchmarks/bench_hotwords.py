"""Hotword retrieval at scale (run by `make bench`): an Aho-Corasick index of 1M hotwords over the en-zh
phoneme inventory, its build time and memory, and the time to scan one CTC hypothesis (the companion paper:
millions of entries, sub-millisecond per query). Hotwords are random phoneme strings of 4-12 symbols; 100 of
them are planted in random hypotheses of 60 phonemes, and every planted one must come back."""

from __future__ import annotations

import time

import numpy as np
import psutil
import pytest

from modeling.generation_entropy_asr import HotwordIndex
from training.data.g2p import phoneme_symbols

pytestmark = pytest.mark.slow

N_HOTWORDS, HYP_LEN, N_QUERIES = 1_000_000, 60, 2_000


def test_million_hotwords_build_and_query():
    rng = np.random.default_rng(0)
    symbols = np.array(phoneme_symbols()[1:])
    lengths = rng.integers(4, 13, size=N_HOTWORDS)
    codes = rng.integers(0, len(symbols), size=int(lengths.sum()))
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    keys = [symbols[codes[a:b]].tolist() for a, b in zip(bounds[:-1], bounds[1:])]
    rss = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    index = HotwordIndex()
    for i, key in enumerate(keys):
        index.add(f"w{i}", key)
    index.build()
    build_s = time.perf_counter() - t0
    grown_mb = (psutil.Process().memory_info().rss - rss) / 2**20

    hyps, planted = [], []
    for q in range(N_QUERIES):
        hyp = symbols[rng.integers(0, len(symbols), size=HYP_LEN)].tolist()
        if q < 100:
            i = int(rng.integers(N_HOTWORDS))
            start = int(rng.integers(0, HYP_LEN - len(keys[i])))
            hyp[start : start + len(keys[i])] = keys[i]
            planted.append(f"w{i}")
        hyps.append(hyp)
    t0 = time.perf_counter()
    found = [index.retrieve(h) for h in hyps]
    query_ms = 1000 * (time.perf_counter() - t0) / N_QUERIES
    print(
        f"\n[bench_hotwords] {N_HOTWORDS:,} hotwords ({int(lengths.sum()):,} phonemes): build {build_s:.1f} s, "
        f"+{grown_mb:.0f} MB resident; query ({HYP_LEN} phonemes): {query_ms:.3f} ms mean over {N_QUERIES}"
    )
    assert all(p in f for p, f in zip(planted, found))
    assert query_ms < 5.0


@pytest.mark.parametrize(("max_edits", "per_edit"), [(1, 6), (4, 3)])  # the default spacing; the demo's
def test_fuzzy_retrieval_build_and_query(max_edits, per_edit):
    """`max_edits` (one per `per_edit` phonemes) over 100k hotwords of 6-12 phonemes, a third of them ending in one of 30 shared 3-phoneme
    endings (as names ending in -son do: pieces many hotwords share), queried with hypotheses holding several of
    those endings: the piece automaton's cost and the query time with the edit-distance checks. Hotwords planted
    with one substitution must come back."""
    n = 100_000
    rng = np.random.default_rng(1)
    symbols = np.array(phoneme_symbols()[1:])
    endings = [symbols[rng.integers(0, len(symbols), size=3)].tolist() for _ in range(30)]
    keys = []
    for i in range(n):
        key = symbols[rng.integers(0, len(symbols), size=rng.integers(6, 13))].tolist()
        keys.append(key[:-3] + endings[i % 30] if i % 3 == 0 else key)
    rss = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    index = HotwordIndex.from_phonemes(
        {f"w{i}": k for i, k in enumerate(keys)}, max_edits=max_edits, phonemes_per_edit=per_edit
    )
    build_s = time.perf_counter() - t0
    grown_mb = (psutil.Process().memory_info().rss - rss) / 2**20
    hyps, planted = [], []
    for q in range(500):
        hyp = symbols[rng.integers(0, len(symbols), size=HYP_LEN)].tolist()
        for _ in range(3):  # shared endings heard in the clip
            start = int(rng.integers(0, HYP_LEN - 3))
            hyp[start : start + 3] = endings[int(rng.integers(30))]
        if q < 100:
            i = int(rng.integers(n))
            heard = list(keys[i])
            pos = int(rng.integers(len(heard)))
            heard[pos] = next(s for s in symbols if s != heard[pos])
            start = int(rng.integers(0, HYP_LEN - len(heard)))
            hyp[start : start + len(heard)] = heard
            planted.append(f"w{i}")
        hyps.append(hyp)
    t0 = time.perf_counter()
    found = [index.retrieve(h) for h in hyps]
    query_ms = 1000 * (time.perf_counter() - t0) / len(hyps)
    print(
        f"\n[bench_hotwords] {n:,} hotwords (a third sharing 30 endings), max_edits={max_edits} (one per {per_edit} "
        f"phonemes): build {build_s:.1f} s, "
        f"+{grown_mb:.0f} MB resident; query ({HYP_LEN} phonemes, 3 shared endings): {query_ms:.2f} ms mean over "
        f"{len(hyps)}"
    )
    assert all(p in f for p, f in zip(planted, found))
    assert query_ms < 100.0
