"""`entropy-asr train CONFIG.yaml [key=value ...]`: run one stage (`training.stages.lifecycle.run_stage`); works
unchanged under `accelerate launch`."""

from __future__ import annotations

import argparse
import logging

from training.config import ConfigError, load_stage_config

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="stage YAML (configs/stages/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. training.max_steps=20")


def run(args: argparse.Namespace) -> int:
    from training.stages.lifecycle import run_stage  # lazy: --help stays fast

    try:
        config = load_stage_config(args.config, args.overrides)
    except ConfigError as err:
        raise SystemExit(f"config error: {err}") from None
    out = run_stage(config)
    logger.info("stage %s done: %s", config.stage, out)
    return 0
