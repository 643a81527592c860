"""`entropy-asr init-model`: a randomly initialised (or pretrained-parts) model folder from a model YAML."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="model YAML, e.g. configs/model/tiny.yaml")
    parser.add_argument(
        "--tokenizer-corpus", help="text file (one sentence per line) to train the BPE tokenizer on"
    )
    parser.add_argument("--out", required=True, help="output model folder")
    parser.add_argument("--seed", type=int, default=0, help="initialises the weights built from scratch")


def run(args: argparse.Namespace) -> int:
    from training.build import (  # lazy: --help stays fast
        build_model_and_processor,
        load_yaml,
        save_model_folder,
    )

    texts = None
    if args.tokenizer_corpus:
        path = Path(args.tokenizer_corpus)
        if not path.is_file():
            raise SystemExit(f"--tokenizer-corpus {path} does not exist")
        texts = path.read_text(encoding="utf-8").splitlines()
    model, processor = build_model_and_processor(
        load_yaml(args.config), tokenizer_texts=texts, seed=args.seed
    )
    out = save_model_folder(model, processor, args.out)
    parts = model.num_parameters_by_part()
    logger.info("parameters: %s (total %.2fM)", parts, sum(parts.values()) / 1e6)
    print(f"wrote {out}")
    return 0
