"""`entropy-asr recipe configs/recipes/NAME.yaml`: run a whole recipe (`training.recipe.run_recipe`), skipping
complete stages and resuming an interrupted one."""

from __future__ import annotations

import argparse

from training.config import ConfigError, parse_overrides


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="recipe YAML (configs/recipes/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="recipe-level key=value overrides, e.g. workdir=runs/x")
    parser.add_argument("--only", nargs="*", help="run only these stage names")
    parser.add_argument("--step-scale", type=float, default=1.0, help="multiply every stage's step counts")


def run(args: argparse.Namespace) -> int:
    from training.recipe import run_recipe  # lazy: --help stays fast

    try:
        run_recipe(args.recipe, parse_overrides(args.overrides), args.only, args.step_scale)
    except ConfigError as err:
        raise SystemExit(f"config error: {err}") from None
    return 0
