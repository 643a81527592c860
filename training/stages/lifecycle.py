"""The life of a stage's output folder, for every stage runner (`training.train.run_stage` and GRPO's): where it
starts (the model spec, the newest checkpoint to resume from), its data, what it records (the encoder's source,
each rank's weights checksum) and how it ends (`complete_stage`: the no-speech gates calibrated, then the
completion marker that makes re-running skip it)."""

from __future__ import annotations

import gc
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch

from training.config import ConfigError, StageConfig
from training.data.loading import SpeechDataset, load_stage_split, weight_languages
from training.hot_swap import COMPLETE_MARKER, numbered_checkpoints
from training.no_speech import calibrate_stage_output

logger = logging.getLogger(__name__)
KEEP_FULL_CHECKPOINTS = 2
TRAINING_DEFAULTS: dict[str, Any] = {
    "per_device_train_batch_size": 8,
    "logging_steps": 10,
    "save_steps": 50,
    "save_strategy": "steps",
    "save_total_limit": KEEP_FULL_CHECKPOINTS,
    "report_to": ["tensorboard"],
    "remove_unused_columns": False,
    "dataloader_num_workers": 0,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0,
    "weight_decay": 0.0,
    "eval_strategy": "no",
    "save_only_model": False,
    "ddp_find_unused_parameters": False,
}


def latest_checkpoint(out: Path) -> Path | None:
    """The newest complete checkpoint (its trainer_state.json is written last)."""
    found = [p for p in numbered_checkpoints(out) if (p / "trainer_state.json").is_file()]
    return found[-1] if found else None


def resolve_model_path(spec: str) -> Path:
    """`DIR` or `DIR@alignment` (the snapshot a pretraining run's CKA monitor chose for alignment)."""
    if spec.endswith("@alignment"):
        root = Path(spec[: -len("@alignment")])
        info = json.loads((root / "alignment_snapshot.json").read_text())
        return Path(info["snapshot"])
    return Path(spec)


def stage_dataset(
    config: StageConfig, split: str, transform=None, limit: int | None = None, weighted: bool = False
):
    """`split` as a SpeechDataset: its first `limit` rows, then (`weighted`: the training split) each language's
    rows repeated by `config.data.language_weights`."""
    ds = load_stage_split(config.data, split)
    if limit is not None and limit < len(ds):
        ds = ds.select(range(limit))
    if weighted and config.data.language_weights:
        try:
            ds = weight_languages(ds, config.data.language_weights, config.seed)
        except ValueError as err:
            raise ConfigError(f"data.language_weights: {err}") from None
        logger.info("language weights %s: %d training rows", config.data.language_weights, len(ds))
    return SpeechDataset(ds, transform=transform)


def encoder_source(model_dir: Path) -> str | None:
    """Which pretraining snapshot a model's encoder came from (recorded by every stage in stage_info.json)."""
    info_path = model_dir / "stage_info.json"
    if not info_path.is_file():
        return None
    info = json.loads(info_path.read_text())
    if info.get("stage") == "pretrain":
        return str(model_dir)
    return info.get("encoder_source")


def weights_checksum(model) -> str:
    """SHA-256 over all parameters in name order: equal on every rank of a correct data-parallel run.
    (Buffers such as BatchNorm running statistics are left out: DDP re-broadcasts them from rank 0 at every
    forward, so after the last step each rank holds its own, and the saved model carries rank 0's.)"""
    digest = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        digest.update(name.encode())
        digest.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def write_rank_checksum(trainer, out: Path) -> None:
    """This rank's `weights_checksum` in the stage folder (the tests compare them across ranks)."""
    rank = trainer.args.process_index
    model = trainer.accelerator.unwrap_model(trainer.model)
    (out / f"weights_checksum.rank{rank}.txt").write_text(weights_checksum(model) + "\n")


def complete_stage(config, out: Path, accelerator, is_main: bool, metrics: dict | None) -> None:
    """The end of every training stage, once its trainer is released: the main process calibrates the
    no-speech gates and writes the completion marker; every process then waits for it (the next stage reads the
    saved config)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if is_main:
        calibrate_stage_output(config, out)
        (out / COMPLETE_MARKER).write_text(json.dumps(metrics, indent=2))
    accelerator.wait_for_everyone()
