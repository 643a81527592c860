"""`entropy-asr analyze --model DIR [DIR ...] --data DATASET --out DIR`: entropy-allocation scores (NSE,
PAI, CSAI, CKA) of one or several models on one split, as JSON, a Markdown table and a bar plot.

See `eval.runners.analyze` for the outputs and the JSON schema, `eval.runners.features` for the frame labels.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from eval.runners.keys import figure_text
from training.config import parse_yaml

logger = logging.getLogger(__name__)


def parse_options(items: list[str] | None) -> dict[str, Any]:
    """`KEY=VALUE` strings -> dict, values parsed as YAML scalars (`epochs=4`, `log_base=2.718`, `x=null`)."""

    options: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"--option expects KEY=VALUE, got {item!r}")
        options[key.strip().replace("-", "_")] = parse_yaml(value)
    return options


def set_threads(args: argparse.Namespace) -> None:
    """Apply `--threads` (added by `add_allocation_arguments`) to torch."""
    if args.threads:
        import torch  # lazy: --help stays fast

        torch.set_num_threads(args.threads)


def add_allocation_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by `analyze` and `evaluate`: torch threads and the entropy-allocation options."""
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's; 1 is fastest on a busy machine)",
    )
    parser.add_argument(
        "--reference-model",
        default=None,
        help="model whose encoder states on the same frames give CKA (e.g. the pretrained encoder)",
    )
    parser.add_argument(
        "--label-model",
        default=None,
        help="phoneme-CTC model that labels the frames of every analysed model (default: each model's own "
        "head; a character-CTC model without it is labelled by character alignment)",
    )
    parser.add_argument(
        "--option",
        action="append",
        metavar="KEY=VALUE",
        help="entropy-allocation option (any AllocationConfig/ProbeConfig field: log_base, heldout_fraction, "
        "split_seed, unseen_units, epochs, l2, seed, ...); repeatable",
    )
    parser.add_argument(
        "--no-decoder-entropy",
        action="store_true",
        help="skip the decoder-side token entropies with and without audio",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", nargs="+", required=True, help="model folder(s) or Hub id(s)")
    parser.add_argument("--names", nargs="+", default=None, help="display names, one per --model")
    parser.add_argument("--data", required=True, help="dataset (save_to_disk folder, audiofolder, manifest)")
    parser.add_argument("--split", default="test", help="split to analyse (default: test)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--max-utterances", type=int, default=None, help="evenly spaced subset of the split")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument(
        "--decoder-splits",
        nargs="+",
        default=None,
        help="splits for the decoder-side token entropies (default: --split)",
    )
    add_allocation_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from eval.runners.analyze import AnalyzeConfig, run_analysis  # lazy: --help stays fast

    set_threads(args)
    config = AnalyzeConfig(
        models=list(args.model),
        data=args.data,
        out=args.out,
        split=args.split,
        names=args.names,
        reference_model=args.reference_model,
        label_model=args.label_model,
        max_utterances=args.max_utterances,
        batch_size=args.batch_size,
        device=args.device,
        decoder_entropy=not args.no_decoder_entropy,
        decoder_splits=args.decoder_splits,
        allocation_options=parse_options(args.option),
    )
    try:
        result = run_analysis(config)
    except (FileNotFoundError, KeyError, ValueError, TypeError) as err:
        logger.debug("analyze failed", exc_info=True)
        logger.error("analyze failed: %s", err)
        return 2
    for m in result["models"]:
        cka = "" if m["cka_to_reference"] is None else f" CKA {m['cka_to_reference']:.4f}"
        print(
            f"{m['name']}: NSE {m['nse']:.4f} PAI {m['pai_bits']:.3f} bits ({m['pai_normalised']:.3f}) "
            f"CSAI {figure_text(m['csai_bits'], m['csai_ci95'], m['csai_stopped_at_start'])} bits "
            f"(frame-phoneme CSAI {figure_text(m['csai_frame_bits'], m['csai_frame_ci95'], m['csai_frame_stopped_at_start'])})"
            f"{cka} [{m['n_frames']} frames]"
        )
    print(f"wrote {args.out}")
    return 0
