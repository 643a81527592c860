"""The `entropy-asr` subcommands (one module each) and argument types they share."""

import argparse


def positive_int(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def add_phonemes_per_edit_argument(parser: argparse.ArgumentParser) -> None:
    """`--phonemes-per-edit` (None unless given) of the commands that retrieve hotwords with edits."""
    from training.hotwords import FUZZY_MIN_PHONEMES, PHONEMES_PER_EDIT

    parser.add_argument(
        "--phonemes-per-edit",
        type=int,
        default=None,
        help="with --max-hotword-edits: one phoneme error tolerated per this many phonemes of a hotword (>= 2; "
        f"default {PHONEMES_PER_EDIT}; hotwords under {FUZZY_MIN_PHONEMES} phonemes stay exact)",
    )


def nonnegative_int(value: str) -> int:
    n = int(value)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {n}")
    return n
