"""`entropy-asr transcribe --model DIR FILE...`: greedy transcripts, one line per file."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model folder or Hub id")
    parser.add_argument("files", nargs="+", help="audio files (wav, flac, mp3, ...)")
    parser.add_argument("--context", default=None, help="comma-separated hotwords for the prompt's context")
    parser.add_argument(
        "--phonemes", action="store_true", help="also print the CTC head's phoneme hypothesis"
    )
    parser.add_argument("--batch-size", type=int, default=8)


def run(args: argparse.Namespace) -> int:
    from training.inference import Transcriber

    transcriber = Transcriber.from_pretrained(args.model)
    context = [w.strip() for w in args.context.split(",")] if args.context else None
    failed = 0
    for path, result in zip(
        args.files, transcriber.transcribe_files(args.files, context=context, batch_size=args.batch_size)
    ):
        if "error" in result:
            failed += 1
            print(f"{path}\tERROR: {result['error']}")
            continue
        line = f"{path}\t{' '.join(result['text'].split())}"
        if args.phonemes:
            line += f"\t[{result['phonemes']}]"
        print(line)
    return 1 if failed else 0
