"""The single `entropy-asr` command. Each subcommand lives in its own module exposing
`add_arguments(parser)` and `run(args) -> int`; modules are imported lazily so `--help` stays fast
and a broken optional dependency only affects its own subcommand."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "init-model": ("training.commands.init_model", "write a randomly initialised, loadable model folder"),
    "transcribe": ("training.commands.transcribe", "transcribe audio files with a model folder"),
    "make-corpus": ("training.commands.make_corpus", "synthesize the built-in bilingual in-car corpus"),
    "train": (
        "training.commands.train",
        "run one training stage from a stage YAML (works under accelerate launch)",
    ),
    "demo": (
        "training.commands.demo",
        "the whole method at laptop scale: corpus, both recipes, evaluation, report",
    ),
    "recipe": (
        "training.commands.recipe",
        "run a whole recipe of stages, skipping finished ones and resuming",
    ),
    "space": ("training.commands.space", "serve the Gradio demo (space/app.py) for a model folder or Hub id"),
    "analyze": ("training.commands.analyze", "entropy-allocation scores (NSE, PAI, CSAI, CKA) of encoders"),
    "evaluate": ("training.commands.evaluate", "decode dataset splits and write an ASR evaluation report"),
    "push": (
        "training.commands.push",
        "assemble the model, Space and metric folders and upload them to the Hub",
    ),
}


def configure_logging(level: int = logging.INFO, **kwargs) -> None:
    """The command's one log format ("HH:MM:SS LEVEL logger: message"; the demo reads its workers' logs by
    it); `kwargs` go to `logging.basicConfig` (e.g. stream, force)."""
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", **kwargs
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="entropy-asr",
        description="Entropy-allocation-aware LLM-based speech recognition.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # First pass finds the subcommand; its module then adds its own arguments.
    known, _ = parser.parse_known_args([a for a in argv if a not in ("-h", "--help")] or ["--help"])
    if known.command is None:
        parser.print_help()
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(SUBCOMMANDS[known.command][0])
    sub_parser = parser._subparsers._group_actions[0].choices[known.command]  # noqa: SLF001
    module.add_arguments(sub_parser)
    args = parser.parse_args(argv)
    configure_logging(logging.DEBUG if args.verbose else logging.INFO)
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
