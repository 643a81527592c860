"""`entropy-asr train CONFIG.yaml [key=value ...]`: run one stage; works unchanged under `accelerate launch`.

A stage is complete when its output folder holds `stage_complete.json` (then re-running skips it); otherwise
re-running resumes from the newest `checkpoint-N` (optimizer, scheduler, RNG, data position and, for IA-SFT,
the hot-swap state).

Disk: a stage keeps its `KEEP_FULL_CHECKPOINTS` newest checkpoints (`save_total_limit`), except pretraining,
whose every `checkpoint-N` is a snapshot that alignment and the IA-SFT hot-swap choose from; there the older
snapshots keep their model but drop the optimizer state, which only resuming reads (`SnapshotSlimmer`).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from training.config import ConfigError, StageConfig, load_stage_config, stage_config_to_dict
from training.hot_swap import numbered_checkpoints
from training.stages.lifecycle import (
    COMPLETE_MARKER,
    KEEP_FULL_CHECKPOINTS,
    TRAINING_DEFAULTS,
    complete_stage,
    encoder_source,
    latest_checkpoint,
    resolve_model_path,
    stage_dataset,
    write_rank_checksum,
)

logger = logging.getLogger(__name__)


@dataclass
class StageSpec:
    """How the runner builds one stage: its Trainer class and the kind of batches it eats."""

    trainer: Callable[[], type]
    batches: str  # "text" | "ctc" | "sft"


def _trainer(module: str, name: str) -> Callable[[], type]:
    def load() -> type:
        import importlib

        return getattr(importlib.import_module(module), name)

    return load


STAGE_SPECS: dict[str, StageSpec] = {
    "text_lm": StageSpec(_trainer("training.stages.sft", "TextLMTrainer"), "text"),
    "pretrain": StageSpec(_trainer("training.stages.pretrain", "PretrainTrainer"), "ctc"),
    "align": StageSpec(_trainer("training.stages.sft", "AlignTrainer"), "sft"),
    "ia_sft": StageSpec(_trainer("training.stages.sft", "IASFTTrainer"), "sft"),
    "joint_sft": StageSpec(_trainer("training.stages.sft", "JointSFTTrainer"), "sft"),
    "context_sft": StageSpec(_trainer("training.stages.sft", "ContextSFTTrainer"), "sft"),
}


def babble_talkers(dataset, count: int, seed: int) -> list:
    """`count` clips of `dataset` (a SpeechDataset; a seeded draw without replacement, all of them if it has
    fewer), decoded without its transform: the talkers that babble noise is mixed from."""
    import numpy as np

    from training.data.loading import SpeechDataset

    plain = SpeechDataset(dataset.dataset, target_sr=dataset.target_sr)
    n = len(plain)
    picks = np.random.default_rng([seed, 7]).permutation(n)[: min(count, n)]
    rows = (plain.example(int(i)) for i in sorted(picks))
    talkers = [row["audio"] for row in rows if row is not None]
    logger.info("babble: %d talker clips from the training split", len(talkers))
    return talkers


class _TextDataset(torch.utils.data.Dataset):
    def __init__(self, path: str, limit: int | None = None):
        self.lines = [
            line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()
        ]
        if limit:
            self.lines = self.lines[:limit]

    def __len__(self) -> int:
        return len(self.lines)

    def __getitem__(self, i: int) -> str:
        return self.lines[i]


class SnapshotSlimmer(TrainerCallback):
    """Pretraining keeps every `checkpoint-N` (the snapshots that alignment and the hot-swap choose from), but
    only the `keep` newest keep `optimizer.pt`: resuming reads the newest complete one, snapshots need only
    the model. Two, not one, so that a run killed while writing a checkpoint still resumes from the one before."""

    def __init__(self, keep: int = KEEP_FULL_CHECKPOINTS):
        self.keep = keep

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        full = [p for p in numbered_checkpoints(args.output_dir) if (p / "optimizer.pt").is_file()]
        for p in full[: -self.keep]:
            (p / "optimizer.pt").unlink()
            logger.debug("snapshot %s: optimizer state dropped", p.name)


class EpochCallback(TrainerCallback):
    """Tells the augmentation transform the epoch so its randomness is a function of (seed, epoch, index)."""

    def __init__(self, transform):
        self.transform = transform

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.transform.epoch = int(state.epoch or 0)


def _eval_features(processor, dataset, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    waves = []
    for i in range(len(dataset)):
        row = dataset[i]
        if row is not None:
            waves.append(row["audio"])
        if len(waves) >= n:
            break
    feats = processor.feature_extractor(
        waves, sampling_rate=processor.sampling_rate, return_attention_mask=True, return_tensors="pt"
    )
    return feats["input_features"], feats["attention_mask"].long()


def _use_char_ctc(model, processor, texts, seed: int) -> None:
    """Switch the CTC head to a character vocabulary built from the training transcripts (baseline). Its new
    output layer is drawn from `seed`: this runs before the Trainer seeds the process, and the global generator's
    state here depends on what the process did before (it made the conventional recipe differ run to run)."""
    from modeling.generation_entropy_asr import DecodingOptions
    from training.data.g2p import build_char_vocab

    vocab = build_char_vocab(texts)
    if list(processor.ctc_vocab) == vocab:
        return
    last = model.model.ctc_head.layers[-1]
    new = torch.nn.Linear(last.in_features, len(vocab))
    torch.nn.init.normal_(new.weight, std=0.02, generator=torch.Generator().manual_seed(seed))
    torch.nn.init.zeros_(new.bias)
    model.model.ctc_head.layers[-1] = new
    model.config.ctc_vocab_size = len(vocab)
    processor.ctc_vocab = vocab
    processor.phonemizer = None  # its phonemes are no longer the CTC head's units
    # hotword retrieval matches phonemes: with characters, every hotword given acts on every clip
    DecodingOptions.for_model(model, hotword_retrieval=False).save_to(model.generation_config)
    logger.info("CTC head switched to %d character units", len(vocab))


def build_trainer(config: StageConfig, resume_dir: Path | None = None):
    """Everything `run_stage` needs, without training: the Trainer with its data and callbacks."""
    from transformers import TrainingArguments

    from training.collators import AugmentTransform, CTCCollator, SFTCollator, TextCollator
    from training.data.augment import AugmentConfig, Augmenter
    from training.stages.base import load_model_and_processor

    spec = STAGE_SPECS.get(config.stage)
    if spec is None:
        raise ConfigError(f"stage: {config.stage!r} is run by its own entry point (see training/stages)")
    model, processor = load_model_and_processor(resolve_model_path(config.model))
    out = Path(config.output_dir)
    train_args = {**TRAINING_DEFAULTS, "seed": config.seed, "data_seed": config.seed}
    if config.stage == "pretrain":
        train_args["save_total_limit"] = None  # every checkpoint is a snapshot; SnapshotSlimmer trims them
    train_args.update(config.training)
    if not torch.cuda.is_available():
        train_args.setdefault("use_cpu", True)
    args = TrainingArguments(output_dir=str(out), **train_args)

    augment_cfg = None
    if config.augment not in (None, False) and spec.batches != "text":
        augment_cfg = AugmentConfig(**(config.augment if isinstance(config.augment, dict) else {}))
    augmenter = Augmenter(augment_cfg) if augment_cfg else None
    callbacks = []
    kwargs: dict[str, Any] = {}
    if spec.batches == "text":
        train_dataset = _TextDataset(config.data.text_corpus, config.data.max_train_samples)
        collator = TextCollator(processor.tokenizer, processor.end_of_turn_token)
    else:
        two_views = spec.batches == "ctc" and config.ctc.two_views and config.ctc.consistency_weight > 0
        transform = AugmentTransform(augment_cfg, seed=config.seed, two_views=two_views)
        train_dataset = stage_dataset(
            config, config.data.train_split, transform, config.data.max_train_samples, weighted=True
        )
        if augment_cfg is not None and augment_cfg.uses_babble:
            transform.babble_pool = babble_talkers(train_dataset, augment_cfg.babble_talkers, config.seed)
        callbacks.append(EpochCallback(transform))
        if spec.batches == "ctc":
            callbacks.append(SnapshotSlimmer())
            if config.ctc.units == "char":
                _use_char_ctc(model, processor, train_dataset.dataset["text"], config.seed)
            collator = CTCCollator(processor, units=config.ctc.units, augmenter=augmenter)
            kwargs["consistency_weight"] = config.ctc.consistency_weight if two_views else 0.0
        else:
            context_fn = None
            if config.stage == "context_sft":
                from training.context import ContextInjector

                c = config.context
                if c.hotwords_file:
                    pool = Path(c.hotwords_file).read_text(encoding="utf-8").split("\n")
                else:
                    pool = [e for ents in train_dataset.dataset["entities"] for e in ents]
                context_fn = ContextInjector(pool, c.inject_prob, c.distractor_prob, c.max_distractors)
            collator = SFTCollator(processor, augmenter=augmenter, context_fn=context_fn, seed=config.seed)
        if config.stage == "ia_sft":
            from training.hot_swap import HotSwapCallback

            eval_split = config.data.eval_split or config.data.train_split
            eval_ds = stage_dataset(config, eval_split, None, config.hot_swap.eval_samples)
            feats, mask = _eval_features(processor, eval_ds, config.hot_swap.eval_samples)
            reference = config.hot_swap.reference or encoder_source(resolve_model_path(config.model))
            hot_swap = HotSwapCallback(model, feats, mask, config.hot_swap, reference)
            if resume_dir is not None and (resume_dir / "stage_info.json").is_file():
                state = json.loads((resume_dir / "stage_info.json").read_text()).get("hot_swap")
                if state:
                    hot_swap.restore(state)
            callbacks.append(hot_swap)

    if config.lora is not None and spec.batches != "ctc":
        _apply_lora(model, config)
    trainer_cls = spec.trainer()
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=train_dataset,
        data_collator=collator,
        processing_class=processor,
        callbacks=callbacks,
        stage_config=config,
        trainable=config.trainable,
        **kwargs,
    )
    return trainer


def _apply_lora(model, config: StageConfig) -> None:
    from peft import LoraConfig, inject_adapter_in_model

    c = config.lora
    lora = LoraConfig(r=c.r, lora_alpha=c.alpha, lora_dropout=c.dropout, target_modules=c.target_modules)
    model.model.language_model = inject_adapter_in_model(lora, model.model.language_model)
    logger.info("LoRA adapters (r=%d) on %s of the LLM", c.r, c.target_modules)


def run_stage(config: StageConfig) -> Path:
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
    trainer = build_trainer(config, resume)
    if resume:
        logger.info("%s: resuming from %s", config.stage, resume)
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    if config.lora is not None:
        _merge_lora(trainer.model)
    trainer.save_model(str(out))
    write_rank_checksum(trainer, out)
    accelerator, is_main, metrics = trainer.accelerator, trainer.args.should_save, None
    if is_main:
        source = encoder_source(resolve_model_path(config.model))
        info = json.loads((out / "stage_info.json").read_text())
        info["encoder_source"] = str(out) if config.stage == "pretrain" else source
        from training.hot_swap import HotSwapCallback

        for cb in trainer.callback_handler.callbacks:
            if isinstance(cb, HotSwapCallback) and cb.current:  # IA-SFT ends on the last swapped-in snapshot
                info["encoder_source"] = cb.current
        (out / "stage_info.json").write_text(json.dumps(info, indent=2))
        metrics = {"stage": config.stage, "global_step": trainer.state.global_step, **result.metrics}
        metrics["log_history"] = trainer.state.log_history
    del trainer, result  # the no-speech calibration loads the saved model: free the training one first
    complete_stage(config, out, accelerator, is_main, metrics)
    return out


def _merge_lora(model) -> None:
    """Fold LoRA weights into the base linears and put the plain layers back (a loadable, adapter-free model)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.merge()
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, BaseTunerLayer):
                setattr(module, child_name, child.get_base_layer())


def run_any_stage(config: StageConfig) -> Path:
    if config.stage == "grpo":
        from training.stages.grpo import run_grpo_stage

        return run_grpo_stage(config)
    return run_stage(config)


def choose_alignment_snapshot(config: StageConfig) -> dict[str, Any]:
    """After pretraining: pick the snapshot alignment starts from (CKA rule of the paper) and record it with
    its CKA curve in OUT/alignment_snapshot.json (read by `DIR@alignment` model references)."""
    from training.hot_swap import select_alignment_snapshot
    from training.stages.base import load_model_and_processor

    out = Path(config.output_dir)
    target = out / "alignment_snapshot.json"
    if target.is_file():
        return json.loads(target.read_text())
    model, processor = load_model_and_processor(out)
    eval_split = config.data.eval_split or config.data.train_split
    eval_ds = stage_dataset(config, eval_split, None, config.hot_swap.eval_samples)
    feats, mask = _eval_features(processor, eval_ds, config.hot_swap.eval_samples)
    choice = select_alignment_snapshot(model, feats, mask, out, config.hot_swap.threshold)
    target.write_text(json.dumps(choice, indent=2))
    logger.info("alignment starts from %s", choice["snapshot"])
    return choice


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="stage YAML (configs/stages/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. training.max_steps=20")


def run(args: argparse.Namespace) -> int:
    try:
        config = load_stage_config(args.config, args.overrides)
    except ConfigError as err:
        raise SystemExit(f"config error: {err}") from None
    out = run_any_stage(config)
    logger.info("stage %s done: %s", config.stage, out)
    return 0
