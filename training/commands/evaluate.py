"""`entropy-asr evaluate --model DIR --data DATASET --out DIR`: decode every split (batched) and write a
report: error rates per language and split, hallucination rates (rule and probes), entropy-allocation
scores, RTF and the worst examples, as report.json and README.md with plots.

See `eval.runners.evaluate` for the outputs and the JSON schema.
"""

from __future__ import annotations

import argparse
import logging

from training.commands import add_decoding_arguments, decoding_overrides, flag_message
from training.commands.analyze import add_allocation_arguments, parse_options, set_threads

logger = logging.getLogger(__name__)
CONTEXT_OPTIONS = ("hotwords", "hotwords_file")  # the hotwords come from --context


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model folder or Hub id")
    parser.add_argument("--data", required=True, help="dataset (save_to_disk folder, audiofolder, manifest)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--splits",
        nargs="+",
        default=None,
        help="splits to decode (default: test, or every non-train split without one, plus every probe_* split)",
    )
    parser.add_argument("--max-utterances", type=int, default=None, help="evenly spaced subset of each split")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument(
        "--length-ratio", type=float, default=1.5, help="hallucination rule: hypothesis/reference length"
    )
    parser.add_argument(
        "--max-unigram-precision",
        type=float,
        default=0.1,
        help="hallucination rule: unigram precision below which overlap is negligible",
    )
    parser.add_argument("--worst", type=int, default=10, help="worst examples listed per split")
    parser.add_argument("--no-analysis", action="store_true", help="skip the entropy-allocation scores")
    parser.add_argument(
        "--analysis-max-utterances",
        type=int,
        default=None,
        help="run the entropy-allocation scores on an evenly spaced subset of this many utterances of the primary "
        "split, whatever --max-utterances decodes (default: the decoded ones)",
    )
    parser.add_argument(
        "--context",
        choices=("none", "entities", "retrieved"),
        default="none",
        help="prompt context while decoding: none; entities (each row's own `entities` column: what a perfect "
        "hotword retriever would give); retrieved (--hotwords-file looked up in each clip's CTC hypothesis)",
    )
    parser.add_argument("--hotwords-file", default=None, help="hotword list for --context retrieved")
    add_decoding_arguments(parser, exclude=CONTEXT_OPTIONS)
    add_allocation_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from eval.runners.evaluate import EvaluateConfig, run_evaluation  # lazy: --help stays fast

    set_threads(args)
    try:
        config = EvaluateConfig(
            model=args.model,
            data=args.data,
            out=args.out,
            splits=args.splits,
            max_utterances=args.max_utterances,
            batch_size=args.batch_size,
            device=args.device,
            reference_model=args.reference_model,
            label_model=args.label_model,
            analysis=not args.no_analysis,
            analysis_max_utterances=args.analysis_max_utterances,
            decoder_entropy=not args.no_decoder_entropy,
            length_ratio=args.length_ratio,
            max_unigram_precision=args.max_unigram_precision,
            worst_k=args.worst,
            allocation_options=parse_options(args.option),
            context=args.context,
            hotwords_file=args.hotwords_file,
            decoding=decoding_overrides(args, exclude=CONTEXT_OPTIONS),
        )
        result = run_evaluation(config)
    except (FileNotFoundError, KeyError, ValueError, TypeError) as err:
        logger.debug("evaluate failed", exc_info=True)
        logger.error("evaluate failed: %s", flag_message(str(err)))
        return 2

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.2f}%"

    print(
        f"WER en {pct(result['wer_en'])}  CER zh {pct(result['cer_zh'])}  "
        + (
            f"PER en {pct(result['per_en'])} zh {pct(result['per_zh'])}  "
            if result.get("per_en") is not None or result.get("per_zh") is not None
            else ""
        )
        + f"hallucination rule {pct(result['hallucination_rule'])} probes {pct(result['hallucination_probe'])}  "
        f"RTF {'-' if result['rtf'] is None else format(result['rtf'], '.4f')}"
    )
    print(f"wrote {args.out}/report.json and {args.out}/README.md")
    return 0
