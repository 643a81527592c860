"""`entropy-asr transcribe --model DIR FILE...`: one line per file, decoded by the model folder's pipeline with its
saved decoding options (the joint CTC / LLM search of the demo's models); every option can be overridden.
`--stream` replays each file through a streaming session (`model.stream`) in real time (or `--speed` times faster),
printing each partial transcript as it changes, then the final line."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from training.commands import (
    add_decoding_arguments,
    decoding_overrides,
    flag_message,
    nonnegative_float,
    positive_float,
    positive_int,
)

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
    parser.add_argument(
        "--stream",
        action="store_true",
        help="replay each file through a streaming session, printing partial transcripts as they change",
    )
    parser.add_argument(
        "--chunk-seconds", type=positive_float, default=0.64, help="with --stream: audio per push (seconds)"
    )
    parser.add_argument(
        "--speed",
        type=nonnegative_float,
        default=1.0,
        help="with --stream: replay speed (1: real time, 4: four times faster, 0: as fast as it decodes)",
    )
    add_decoding_arguments(parser)


def stream_file(pipe, path: str, wave, chunk_seconds: float, speed: float, options: dict) -> dict:
    """`wave` pushed `chunk_seconds` at a time (waiting to keep `speed` times real time), each changed partial
    printed with the audio heard and the push's compute; the final result returned."""
    rate = pipe.processor.sampling_rate
    session = pipe.model.stream(pipe.processor, chunk_seconds=chunk_seconds, **options)
    step, shown, start = max(1, round(chunk_seconds * rate)), "", time.perf_counter()
    for at in range(0, wave.numel(), step):
        began = time.perf_counter()
        partial = session.push(wave[at : at + step], rate)
        took = time.perf_counter() - began
        heard = min(at + step, wave.numel()) / rate
        if partial != shown:
            print(f"{path}\t{heard:6.2f} s\t{' '.join(partial.split())}\t({1000 * took:.0f} ms)", flush=True)
            shown = partial
        if speed > 0:  # the next chunk arrives when real time (divided by the speed) says
            time.sleep(max(0.0, start + heard / speed - time.perf_counter()))
    session.finish()
    return session.result


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
        if args.stream:
            results = [
                stream_file(pipe, args.files[i], waves[i], args.chunk_seconds, args.speed, options)
                for i in usable
            ]
        else:
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
