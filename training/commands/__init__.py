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


def add_decoding_arguments(parser: argparse.ArgumentParser) -> None:
    """`--ctc-weight`, `--beam-size`, `--ctc-candidates`: joint CTC / LLM beam search (training.joint_decoding)."""
    from training.joint_decoding import (
        DEFAULT_BEAM_SIZE,
        DEFAULT_CANDIDATES,
        DEFAULT_CTC_WEIGHT,
        DEFAULT_UNIT_BONUS,
    )

    parser.add_argument(
        "--ctc-weight",
        type=float,
        default=0.0,
        help="decode by joint CTC / LLM beam search, the CTC head's prefix score weighted by this (in [0, 1); "
        f"0 = the LLM's greedy decoding; {DEFAULT_CTC_WEIGHT} is what the demo uses); needs a model with a CTC head",
    )
    parser.add_argument(
        "--beam-size",
        type=positive_int,
        default=None,
        help=f"with --ctc-weight: hypotheses kept per step (default {DEFAULT_BEAM_SIZE})",
    )
    parser.add_argument(
        "--ctc-candidates",
        type=positive_int,
        default=None,
        help=f"with --ctc-weight: the LLM's most likely next tokens scored per hypothesis (default {DEFAULT_CANDIDATES})",
    )
    parser.add_argument(
        "--unit-bonus",
        type=float,
        default=None,
        help="with --ctc-weight: length bonus per word or Hanzi written, which keeps short hypotheses from crowding "
        f"out long ones (>= 0; default {DEFAULT_UNIT_BONUS})",
    )


def decoding_error(args: argparse.Namespace) -> str | None:
    """What is wrong with the decoding arguments of `add_decoding_arguments`, or None."""
    from training.joint_decoding import check_ctc_weight, check_unit_bonus

    try:
        check_ctc_weight(args.ctc_weight)
    except ValueError as err:
        return f"--ctc-weight: {err}"
    joint_only = (args.beam_size, args.ctc_candidates, args.unit_bonus)
    if not args.ctc_weight and any(value is not None for value in joint_only):
        return "--beam-size, --ctc-candidates and --unit-bonus need --ctc-weight > 0"
    if args.unit_bonus is not None:
        try:
            check_unit_bonus(args.unit_bonus)
        except ValueError as err:
            return f"--unit-bonus: {err}"
    return None


def nonnegative_int(value: str) -> int:
    n = int(value)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {n}")
    return n
