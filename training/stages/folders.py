"""Where a stage starts and what its folder records, for every stage: the model it starts from (`DIR` or
`DIR@alignment`), its data (`stage_dataset`), the Trainer defaults, and the pretraining snapshot its encoder
came from (`encoder_source`, recorded in stage_info.json)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from modeling import EntropyASRForConditionalGeneration, EntropyASRProcessor
from training.callbacks.snapshots import KEEP_FULL_CHECKPOINTS
from training.config import ConfigError, StageConfig
from training.data.loading import SpeechDataset, load_stage_split, weight_languages

logger = logging.getLogger(__name__)
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


def load_model_and_processor(path: str | Path):
    """The model folder a stage starts from, with the project's classes (identical to the remote code)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a model folder (no config.json)")
    model = EntropyASRForConditionalGeneration.from_pretrained(path)
    processor = EntropyASRProcessor.from_pretrained(path, trust_remote_code=True)
    return model, processor


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
