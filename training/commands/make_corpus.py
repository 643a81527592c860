"""`entropy-asr make-corpus --out DIR`: synthesize the built-in bilingual in-car corpus
(`training.data.corpus.build_corpus`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from training.data.corpus import SIZES, build_corpus


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--size", default="small", choices=sorted(SIZES), help="corpus size (default: small)")
    parser.add_argument("--seed", default=0, type=int, help="random seed (default: 0)")
    parser.add_argument("--workers", default=2, type=int, help="synthesis processes (default: 2)")


def run(args: argparse.Namespace) -> int:
    build_corpus(args.out, size=args.size, seed=args.seed, workers=args.workers)
    return 0
