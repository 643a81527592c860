"""`entropy-asr transcribe --model DIR FILE...`: transcripts (greedy, or joint CTC / LLM beam search with
`--ctc-weight`), one line per file."""

from __future__ import annotations

import argparse
import logging
import sys

from training.commands import (
    add_decoding_arguments,
    add_phonemes_per_edit_argument,
    decoding_error,
    nonnegative_int,
    positive_int,
)

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model folder or Hub id")
    parser.add_argument("files", nargs="+", help="audio files (wav, flac, mp3, ...)")
    parser.add_argument("--context", default=None, help="comma-separated hotwords for the prompt's context")
    parser.add_argument(
        "--hotwords-file",
        default=None,
        help="hotword list (one per line): those whose phonemes the CTC head hears in a clip join its context",
    )
    parser.add_argument(
        "--max-hotwords", type=positive_int, default=8, help="at most this many retrieved per clip"
    )
    parser.add_argument(
        "--ignore-tones", action="store_true", help="match Mandarin hotwords without their tones"
    )
    parser.add_argument(
        "--max-hotword-edits",
        type=nonnegative_int,
        default=0,
        help="also retrieve hotwords heard with up to this many phoneme errors, one per --phonemes-per-edit "
        "phonemes of the hotword (0 = exact matches only, as in the paper)",
    )
    add_phonemes_per_edit_argument(parser)
    parser.add_argument(
        "--hotword-bonus",
        type=float,
        default=0.0,
        help="add this to the logits of tokens that continue one of a clip's hotwords (--context or retrieved) "
        "while decoding (contextual biasing; 0 = prompt only)",
    )
    parser.add_argument(
        "--no-prompt-hotwords",
        dest="prompt_hotwords",
        action="store_false",
        help="keep the hotwords out of the prompt: they act through --hotword-bonus alone (the better choice for "
        "a model without context SFT)",
    )
    add_decoding_arguments(parser)
    parser.add_argument(
        "--phonemes", action="store_true", help="also print the CTC head's phoneme hypothesis"
    )
    parser.add_argument("--batch-size", type=int, default=8)


def run(args: argparse.Namespace) -> int:
    from training.inference import Transcriber, check_hotword_bonus

    try:
        check_hotword_bonus(args.hotword_bonus)
    except ValueError:
        print(
            f"entropy-asr transcribe: --hotword-bonus must be >= 0, got {args.hotword_bonus}", file=sys.stderr
        )
        return 2
    problem = decoding_error(args)
    if problem:
        print(f"entropy-asr transcribe: {problem}", file=sys.stderr)
        return 2
    if args.hotword_bonus > 0 and not (args.context or args.hotwords_file):
        print("entropy-asr transcribe: --hotword-bonus needs --context or --hotwords-file", file=sys.stderr)
        return 2
    if args.max_hotword_edits and not args.hotwords_file:
        print("entropy-asr transcribe: --max-hotword-edits needs --hotwords-file", file=sys.stderr)
        return 2
    if args.phonemes_per_edit is not None and not args.max_hotword_edits:
        print("entropy-asr transcribe: --phonemes-per-edit needs --max-hotword-edits", file=sys.stderr)
        return 2
    if args.phonemes_per_edit is not None and args.phonemes_per_edit < 2:
        print(
            f"entropy-asr transcribe: --phonemes-per-edit must be >= 2, got {args.phonemes_per_edit}",
            file=sys.stderr,
        )
        return 2
    if not args.prompt_hotwords and not args.hotword_bonus > 0:
        print("entropy-asr transcribe: --no-prompt-hotwords needs --hotword-bonus > 0", file=sys.stderr)
        return 2
    index = None
    if args.hotwords_file:
        from training.hotwords import PHONEMES_PER_EDIT, HotwordIndex

        try:
            index = HotwordIndex.from_file(
                args.hotwords_file,
                ignore_tones=args.ignore_tones,
                max_edits=args.max_hotword_edits,
                phonemes_per_edit=args.phonemes_per_edit or PHONEMES_PER_EDIT,
            )
        except (FileNotFoundError, ValueError) as err:
            print(f"entropy-asr transcribe: {err}", file=sys.stderr)
            return 2
        if len(index) == 0:
            print(f"entropy-asr transcribe: no usable hotword in {args.hotwords_file}", file=sys.stderr)
            return 2
        if index.skipped:
            logger.warning(
                "%d hotwords too short to match (fewer than %d phonemes): %s",
                len(index.skipped),
                index.min_phonemes,
                ", ".join(index.skipped[:10]),
            )
    transcriber = Transcriber.from_pretrained(args.model)
    if args.ctc_weight and not transcriber.processor.ctc_vocab:
        print(f"entropy-asr transcribe: {args.model} has no CTC head for --ctc-weight", file=sys.stderr)
        return 2
    if index is not None and not transcriber.has_phoneme_ctc:
        print(
            f"entropy-asr transcribe: {args.model} has no phoneme CTC head to retrieve hotwords with",
            file=sys.stderr,
        )
        return 2
    context = [w.strip() for w in args.context.split(",")] if args.context else None
    failed = 0
    results = transcriber.transcribe_files(
        args.files,
        context=context,
        batch_size=args.batch_size,
        hotwords=index,
        max_hotwords=args.max_hotwords,
        hotword_bonus=args.hotword_bonus,
        prompt_hotwords=args.prompt_hotwords,
        ctc_weight=args.ctc_weight,
        beam_size=args.beam_size,
        ctc_candidates=args.ctc_candidates,
        unit_bonus=args.unit_bonus,
    )
    for path, result in zip(args.files, results):
        if "error" in result:
            failed += 1
            print(f"{path}\tERROR: {result['error']}")
            continue
        line = f"{path}\t{' '.join(result['text'].split())}"
        if args.phonemes:
            line += f"\t[{result['phonemes']}]"
        if index is not None:
            line += f"\thotwords: {', '.join(result['hotwords']) or '-'}"
        print(line)
    return 1 if failed else 0
