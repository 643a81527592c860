"""The `entropy-asr` subcommands (one module each) and argument types they share."""

import argparse
import re

# The decoding options as command-line flags (`DecodingOptions` in modeling/generation_entropy_asr.py holds their
# meaning, defaults and checks; a flag not given leaves the model's saved default).
DECODING_FLAGS = {
    "ctc_weight": ("--ctc-weight", float, "weight of the CTC head in the joint CTC / LLM beam search, in [0, 1); 0: "
                   "the LLM's greedy decoding alone"),
    "beam_size": ("--beam-size", int, "joint search: hypotheses kept per clip"),
    "ctc_candidates": ("--ctc-candidates", int, "joint search: the LLM's most likely next tokens scored per "
                       "hypothesis"),
    "beam_margin": ("--beam-margin", float, "joint search: drop hypotheses ranked more than this below their "
                    "clip's best (a score in nats; default: keep beam-size)"),
    "unit_bonus": ("--unit-bonus", float, "joint search: length bonus per word or Hanzi written (>= 0)"),
    "max_new_tokens": ("--max-new-tokens", int, "at most this many transcript tokens (default: the clip's "
                       "duration bound)"),
    "hotwords": ("--hotwords", str, "comma-separated names the audio may contain"),
    "hotwords_file": ("--hotwords-file", str, "a UTF-8 file of such names, one per line"),
    "hotword_retrieval": ("--hotword-retrieval", bool, "only the hotwords whose phonemes the CTC head hears in a "
                          "clip act on it (--no-hotword-retrieval: all of them on every clip)"),
    "hotword_bonus": ("--hotword-bonus", float, "added to the scores of tokens that continue a clip's hotword"),
    "prompt_hotwords": ("--prompt-hotwords", bool, "also put a clip's hotwords into the prompt's context"),
    "max_hotwords": ("--max-hotwords", int, "retrieval: at most this many hotwords per clip"),
    "max_hotword_edits": ("--max-hotword-edits", int, "retrieval: phoneme errors tolerated in a heard name "
                          "(0: exact matches, as in the paper)"),
    "phonemes_per_edit": ("--phonemes-per-edit", int, "retrieval: one phoneme error per this many phonemes of a "
                          "name (>= 2)"),
    "hotword_margin": ("--hotword-margin", float, "retrieval: a name found with phoneme errors acts only if the "
                       "CTC head finds it at most this many nats less likely than what it heard there"),
    "ignore_tones": ("--ignore-tones", bool, "retrieval: match Mandarin names without their tones"),
    "use_gates": ("--gates", bool, "apply the model's calibrated no-speech gates (--no-gates: never empty a clip)"),
    "no_speech_threshold": ("--no-speech-threshold", float, "override the model's no-speech gate, in (0, 1]"),
    "min_speech_confidence": ("--min-speech-confidence", float, "override the model's speech-confidence gate, "
                              "in (0, 1]"),
}  # fmt: skip


def positive_int(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def nonnegative_int(value: str) -> int:
    n = int(value)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {n}")
    return n


def positive_float(value: str) -> float:
    x = float(value)
    if not x > 0 or x == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {value}")
    return x


def nonnegative_float(value: str) -> float:
    x = float(value)
    if not x >= 0 or x == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number at least 0, got {value}")
    return x


def add_decoding_arguments(parser: argparse.ArgumentParser, exclude: tuple[str, ...] = ()) -> None:
    """One flag per decoding option (`DECODING_FLAGS`); a flag left out keeps the model's saved default."""
    group = parser.add_argument_group("decoding (defaults: the model's saved decoding options)")
    for name, (flag, kind, help_text) in DECODING_FLAGS.items():
        if name in exclude:
            continue
        if kind is bool:
            group.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        else:
            group.add_argument(flag, dest=name, type=kind, default=None, help=help_text)


def decoding_overrides(args: argparse.Namespace, exclude: tuple[str, ...] = ()) -> dict:
    """The decoding options the command line gave (`add_decoding_arguments` with the same `exclude`)."""
    return {
        name: getattr(args, name)
        for name in DECODING_FLAGS
        if name not in exclude and getattr(args, name, None) is not None
    }


def flag_message(message: str) -> str:
    """A decoding-option error with each option named by its flag (`ctc_weight` -> `--ctc-weight`)."""
    for name, (flag, _, _) in DECODING_FLAGS.items():
        message = re.sub(rf"'?\b{name}\b'?", flag, message)
    return message
