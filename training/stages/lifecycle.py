"""The one runner of every stage (`entropy-asr train`, recipes, the demo), GRPO's included:

    build (the stage's Trainer class from its config) -> train (resuming from the newest checkpoint-N) ->
    finish (e.g. fold LoRA adapters in) -> save a loadable model folder (stage_info.json: the encoder's source;
    each rank's weights checksum) -> calibrate the no-speech gates -> mark complete.

A stage is complete when its output folder holds `stage_complete.json` (then re-running skips it); otherwise
re-running resumes from the newest `checkpoint-N` (optimizer, scheduler, RNG, data position and, for IA-SFT,
the hot-swap state). After a pretraining stage that a later stage starts from as `DIR@alignment`, a recipe calls
`choose_alignment_snapshot`."""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from training.callbacks.hot_swap import probe_features, select_alignment_snapshot
from training.callbacks.no_speech import calibrate_stage_output
from training.callbacks.snapshots import COMPLETE_MARKER, latest_checkpoint
from training.config import ConfigError, StageConfig, stage_config_to_dict
from training.stages.base import StageTrainer
from training.stages.folders import load_model_and_processor, resolve_model_path, stage_dataset
from training.stages.grpo import AudioGRPOTrainer
from training.stages.pretrain import PretrainTrainer
from training.stages.sft import (
    AlignTrainer,
    ContextSFTTrainer,
    IASFTTrainer,
    JointSFTTrainer,
    TextLMTrainer,
)

logger = logging.getLogger(__name__)

# the Trainer class of each stage (`training.config.STAGE_KINDS` holds what configs know of it)
TRAINERS: dict[str, type[StageTrainer]] = {
    cls.stage_name: cls
    for cls in (
        TextLMTrainer,
        PretrainTrainer,
        AlignTrainer,
        IASFTTrainer,
        JointSFTTrainer,
        ContextSFTTrainer,
        AudioGRPOTrainer,
    )
}


def build_trainer(config: StageConfig, resume_dir: Path | None = None) -> StageTrainer:
    """The stage's trainer with its data and callbacks, without training."""
    return TRAINERS[config.stage].build(config, resume_dir)


def skip_unused_deepspeed_kernels() -> None:
    """Under a DeepSpeed launch without CUDA, keeps DeepSpeed from compiling its shared-memory collective (a C++
    kernel it builds with ninja when it sets up communication, 40-150 s on two cores, again for every new
    virtual environment): only tensor-parallel inference's all-reduce uses it; ZeRO's collectives go through
    gloo, and the weights come out the same to the bit."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true" or torch.cuda.is_available():
        return
    # lazy: DeepSpeed is optional (the dev extra), and only a DeepSpeed launch reaches here
    import deepspeed.ops

    compatible = getattr(deepspeed.ops, "__compatible_ops__", None)  # what DeepSpeed builds on first use
    if isinstance(compatible, dict):
        compatible["deepspeed_shm_comm"] = False


def run_stage(config: StageConfig) -> Path:
    """Run one stage to completion (or skip it when its folder is complete); returns the output folder."""
    out = Path(config.output_dir)
    if (out / COMPLETE_MARKER).is_file():
        logger.info("%s: already complete in %s, skipping", config.stage, out)
        return out
    model_dir = config.model[: -len("@alignment")] if config.model.endswith("@alignment") else config.model
    if not (Path(model_dir) / "config.json").is_file():
        raise ConfigError(
            f"model: {config.model} is not a model folder (run the previous stage or init-model first)"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / "stage_config.json").write_text(json.dumps(stage_config_to_dict(config), indent=2, default=str))
    resume = latest_checkpoint(out)
    skip_unused_deepspeed_kernels()
    trainer = build_trainer(config, resume)
    check_sharding(trainer)
    if resume:
        logger.info("%s: resuming from %s", config.stage, resume)
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    trainer.finish()
    trainer.save_model(str(out))
    write_rank_checksum(trainer, out)
    accelerator, is_main, metrics = trainer.accelerator, trainer.args.should_save, None
    if is_main:
        info = json.loads((out / "stage_info.json").read_text())
        info["encoder_source"] = trainer.final_encoder_source(resolve_model_path(config.model), out)
        (out / "stage_info.json").write_text(json.dumps(info, indent=2))
        metrics = {"stage": config.stage, "global_step": trainer.state.global_step, **result.metrics}
        metrics["log_history"] = trainer.state.log_history
    del trainer, result  # the no-speech calibration loads the saved model: free the training one first
    complete_stage(config, out, accelerator, is_main, metrics)
    return out


def check_sharding(trainer) -> None:
    """Fail when the launcher asked for FSDP or DeepSpeed and the trainer got plain data parallelism instead:
    accelerate falls back to DDP without a word where these cannot run (FSDP without CUDA devices: accelerate
    enables it only for GPU-like backends), which would train an unsharded model the size of the whole model on
    every process."""
    wanted = {
        "FSDP": os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true",
        "DeepSpeed": os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true",
    }
    got = {"FSDP": trainer.is_fsdp_enabled, "DeepSpeed": trainer.is_deepspeed_enabled}
    for name in wanted:
        if wanted[name] and not got[name]:
            raise RuntimeError(
                f"{name} was requested by the accelerate launch but accelerate set up "
                f"{trainer.accelerator.state.distributed_type.value} ({trainer.args.device}): {name} needs GPUs "
                "here; for data parallelism on CPU use configs/accelerate/cpu-2proc.yaml"
            )


def complete_stage(config: StageConfig, out: Path, accelerator, is_main: bool, metrics: dict | None) -> None:
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


def choose_alignment_snapshot(config: StageConfig) -> dict[str, Any]:
    """After pretraining: pick the snapshot alignment starts from (CKA rule of the paper) and record it with
    its CKA curve in OUT/alignment_snapshot.json (read by `DIR@alignment` model references)."""
    out = Path(config.output_dir)
    target = out / "alignment_snapshot.json"
    if target.is_file():
        return json.loads(target.read_text())
    model, processor = load_model_and_processor(out)
    eval_split = config.data.eval_split or config.data.train_split
    eval_ds = stage_dataset(config, eval_split, None, config.hot_swap.eval_samples)
    feats, mask = probe_features(processor, eval_ds, config.hot_swap.eval_samples)
    choice = select_alignment_snapshot(model, feats, mask, out, config.hot_swap.threshold)
    target.write_text(json.dumps(choice, indent=2))
    logger.info("alignment starts from %s", choice["snapshot"])
    return choice
