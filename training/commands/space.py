"""`entropy-asr space --model DIR_OR_REPO_ID [--port N]`: serve the Gradio demo in space/app.py locally."""

from __future__ import annotations

import argparse
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model folder (loaded offline) or Hub id")
    parser.add_argument(
        "--port", type=int, default=None, help="port (default: Gradio's, 7860 or the next free)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0 for all)")
    parser.add_argument(
        "--examples",
        default=None,
        help="folder of example clips (wav/flac/ogg/mp3, optional NAME.hotwords.txt)",
    )


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from space.app import launch  # lazy: gradio reads GRADIO_ANALYTICS_ENABLED when it is imported

    launch(model=args.model, port=args.port, host=args.host, examples_dir=args.examples, block=True)
    return 0
