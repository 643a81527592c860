"""`entropy-asr transcribe --model DIR FILE...`: one line per file, decoded by the model folder's pipeline with its
saved decoding options (the joint CTC / LLM search of the demo's models); every option can be overridden."""

from __future__ import annotations

import argparse
import logging
import sys

from training.commands import add_decoding_arguments, decoding_overrides, flag_message, positive_int

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model folder or Hub id")
    parser.add_argument("files", nargs="+", help="audio files (wav, flac, mp3, ...)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="clips decoded together")
    parser.add_argument(
        "--phonemes", action="store_true", help="also print the CTC head's phoneme hypothesis"
    )
    parser.add_argument(
        "--timestamps", action="store_true", help="also print each word's start and end (seconds)"
    )
    add_decoding_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from training.inference import load_pipeline, transcribe_batches  # lazy: --help stays fast

    options = decoding_overrides(args)
    if args.phonemes:
        options["return_phonemes"] = True
    if args.timestamps:
        options["return_timestamps"] = "word"
    try:
        pipe = load_pipeline(args.model, args.device)
        pipe.model.decoding_options(**options)  # every bad option refused before any audio is read
    except (OSError, ValueError) as err:  # DecodingOptionError is a ValueError
        print(f"entropy-asr transcribe: {flag_message(str(err))}", file=sys.stderr)
        return 2
    waves, lines = {}, {}
    for i, path in enumerate(args.files):
        try:
            waves[i] = pipe.processor.prepare_audio(path, long_form=True)  # any length: cut at pauses
        except ValueError as err:
            lines[i] = f"{path}\tERROR: {err}"
    usable = sorted(waves)
    try:
        results = transcribe_batches(pipe, [waves[i] for i in usable], args.batch_size, **options)
    except (
        ValueError
    ) as err:  # a decoding option (DecodingOptionError), a hotword or a folder the decoder refuses
        print(f"entropy-asr transcribe: {flag_message(str(err))}", file=sys.stderr)
        return 2
    for i, result in zip(usable, results):
        line = f"{args.files[i]}\t{' '.join(result['text'].split())}"
        if args.phonemes:
            line += f"\t[{result['phonemes']}]"
        if "hotwords" in result:
            line += f"\thotwords: {', '.join(result['hotwords']) or '-'}"
        if args.timestamps:
            line += "\t" + " ".join(
                f"{c['text']}@{c['timestamp'][0]:.2f}-{c['timestamp'][1]:.2f}"
                if c["timestamp"][0] is not None
                else f"{c['text']}@?"
                for c in result["chunks"]
            )
        lines[i] = line
    for i in sorted(lines):
        print(lines[i])
    failed = len(args.files) - len(usable)
    return 1 if failed else 0
