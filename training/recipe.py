"""Recipes (`entropy-asr recipe configs/recipes/NAME.yaml`): a whole recipe run, each stage starting from the previous
stage's output, skipping complete stages and resuming an interrupted one.

    name: entropy-aware-tiny
    workdir: runs/entropy-aware-tiny
    model: runs/shared/text_lm          # the folder the first stage starts from
    defaults: {data: {path: data/corpus/dataset}}        # merged into every stage
    stages:
      - name: pretrain                   # output: WORKDIR/pretrain
        config: configs/stages/pretrain.yaml
        overrides: {training: {max_steps: 400}}
      - name: align
        config: configs/stages/align.yaml
        model: pretrain@alignment        # optional: a named earlier stage (+ @alignment), default: previous

Stages must follow the method's order (text_lm, pretrain, align, ia_sft, joint_sft, context_sft, grpo); a
recipe that breaks it fails before anything runs. `{workdir}` and `{stage:NAME}` are substituted in strings.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from training.config import STAGES, ConfigError, StageConfig, load_stage_config, merge, parse_yaml
from training.stages.lifecycle import choose_alignment_snapshot, run_stage

logger = logging.getLogger(__name__)
_RECIPE_KEYS = {"name", "workdir", "model", "defaults", "stages", "description"}
_ENTRY_KEYS = {"name", "config", "overrides", "model"}


def _substitute(value: Any, mapping: dict[str, str]) -> Any:
    if isinstance(value, str):
        for k, v in mapping.items():
            value = value.replace("{" + k + "}", v)
        return value
    if isinstance(value, dict):
        return {k: _substitute(v, mapping) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, mapping) for v in value]
    return value


def load_recipe(
    path: str | Path,
    overrides: dict[str, Any] | None = None,
    step_scale: float = 1.0,
    stage_overrides: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], list[StageConfig]]:
    """Validate a recipe and all its stage configs (before anything runs). `step_scale` multiplies every
    stage's step counts (max_steps, save_steps, warm-up, hot-swap interval), keeping their ratios;
    `stage_overrides` is merged into every stage last (e.g. a smaller batch for a quick run)."""
    recipe = parse_yaml(Path(path).read_text(encoding="utf-8")) or {}
    if overrides:
        recipe = merge(recipe, overrides)
    for key in recipe:
        if key not in _RECIPE_KEYS:
            raise ConfigError(f"{key}: unknown recipe key (known: {', '.join(sorted(_RECIPE_KEYS))})")
    for key in ("workdir", "model", "stages"):
        if key not in recipe:
            raise ConfigError(f"{key}: required recipe key missing")
    workdir = str(recipe["workdir"])
    outputs: dict[str, str] = {}
    configs: list[StageConfig] = []
    previous_model = str(recipe["model"])
    last_rank = -1
    for i, entry in enumerate(recipe["stages"]):
        where = f"stages[{i}]"
        for key in entry:
            if key not in _ENTRY_KEYS:
                raise ConfigError(f"{where}.{key}: unknown key (known: {', '.join(sorted(_ENTRY_KEYS))})")
        name = entry.get("name") or f"stage{i}"
        data = parse_yaml(Path(entry["config"]).read_text(encoding="utf-8")) if entry.get("config") else {}
        data = merge(merge(recipe.get("defaults") or {}, data), entry.get("overrides") or {})
        data = merge(data, stage_overrides or {})
        model = entry.get("model")
        if model:
            base, _, suffix = str(model).partition("@")
            model = (outputs[base] if base in outputs else base) + (f"@{suffix}" if suffix else "")
        data["model"] = model or data.get("model") or previous_model
        data["output_dir"] = f"{workdir}/{name}"
        data = _substitute(data, {"workdir": workdir, **{f"stage:{k}": v for k, v in outputs.items()}})
        if step_scale != 1.0:
            data = _scale_steps(data, step_scale)
        try:
            config = load_stage_config(data)
        except ConfigError as err:
            raise ConfigError(f"{where} ({name}): {err}") from None
        rank = STAGES.index(config.stage)
        if rank < last_rank:
            raise ConfigError(f"{where}.stage: {config.stage!r} cannot come after {STAGES[last_rank]!r}")
        last_rank = rank
        outputs[name] = config.output_dir
        previous_model = config.output_dir
        configs.append(config)
    return recipe, configs


def _scale_steps(data: dict[str, Any], scale: float) -> dict[str, Any]:
    data = {**data, "training": dict(data.get("training") or {})}
    for key in ("max_steps", "save_steps", "warmup_steps"):
        if key in data["training"]:
            data["training"][key] = max(1, round(data["training"][key] * scale))
    schedule = data["training"].get("lr_scheduler_kwargs")
    if isinstance(schedule, dict):  # a warm-up / stable / decay schedule's phases, e.g. num_decay_steps
        data["training"]["lr_scheduler_kwargs"] = {
            k: max(1, round(v * scale)) if k in ("num_decay_steps", "num_stable_steps") else v
            for k, v in schedule.items()
        }
    if "interval_steps" in (data.get("hot_swap") or {}):
        data["hot_swap"] = {
            **data["hot_swap"],
            "interval_steps": max(1, round(data["hot_swap"]["interval_steps"] * scale)),
        }
    return data


def run_recipe(
    path: str | Path,
    overrides: dict[str, Any] | None = None,
    only: list[str] | None = None,
    step_scale: float = 1.0,
    stage_overrides: dict[str, Any] | None = None,
) -> list[Path]:
    recipe, configs = load_recipe(path, overrides, step_scale, stage_overrides)
    done = []
    t0 = time.time()
    for i, config in enumerate(configs):
        name = Path(config.output_dir).name
        if only and name not in only:
            continue
        logger.info(
            "[%s] stage %d/%d: %s (%s) -> %s",
            recipe.get("name", path),
            i + 1,
            len(configs),
            name,
            config.stage,
            config.output_dir,
        )
        if config.kind.snapshots and i + 1 < len(configs) and configs[i + 1].model.endswith("@alignment"):
            config.training.setdefault("save_steps", 50)
        done.append(run_stage(config))
        if config.kind.snapshots and any(c.model == f"{config.output_dir}@alignment" for c in configs):
            choose_alignment_snapshot(config)
        logger.info("[%s] %s done after %.1f min", recipe.get("name", path), name, (time.time() - t0) / 60)
    return done
