"""What every stage shares: `StageTrainer`, the part of a stage's Trainer the stage runner
(`training.stages.lifecycle.run_stage`) talks to, and `EntropyASRTrainer`, the transformers `Trainer` of every
stage but GRPO, with the one builder that gives each of them its data, collator and callbacks."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer
from transformers import Trainer, TrainingArguments

from modeling.generation_entropy_asr import DecodingOptions
from training.build import register_auto_classes, write_remote_code
from training.callbacks.epoch import EpochCallback
from training.callbacks.snapshots import SnapshotSlimmer
from training.config import StageConfig
from training.data.augment import AugmentConfig, Augmenter
from training.data.collators import AugmentTransform, CTCCollator, SFTCollator, TextCollator
from training.data.g2p import build_char_vocab
from training.data.loading import LengthGroupedBatchOrder, SpeechDataset
from training.stages.folders import (
    TRAINING_DEFAULTS,
    encoder_source,
    load_model_and_processor,
    resolve_model_path,
    stage_dataset,
)

logger = logging.getLogger(__name__)


class StageTrainer:
    """Mixed into each stage's Trainer (before the transformers or TRL class). `build` makes the trainer of a
    stage config; every save (checkpoints and the final model) writes a folder that
    `AutoModel.from_pretrained(dir, trust_remote_code=True)` loads, with stage_info.json."""

    stage_name: ClassVar[str] = "base"

    @classmethod
    def build(cls, config: StageConfig, resume_dir: Path | None = None) -> StageTrainer:
        """The trainer for `config`, with its data and callbacks (`resume_dir`: the checkpoint it resumes from)."""
        raise NotImplementedError

    def finish(self) -> None:
        """After training, before the final save (e.g. fold LoRA adapters into the model)."""

    def final_encoder_source(self, start: Path, out: Path) -> str | None:
        """The pretraining snapshot the saved model's encoder comes from (`start`: the model it began from)."""
        return encoder_source(start)

    def extra_save_info(self) -> dict[str, Any]:
        """Stage-specific entries of stage_info.json."""
        return {}

    def _save(self, output_dir: str | None = None, state_dict=None):
        register_auto_classes()
        super()._save(output_dir, state_dict=state_dict)
        output_dir = output_dir or self.args.output_dir
        if self.args.should_save:
            write_remote_code(output_dir)
            info: dict[str, Any] = {"stage": self.stage_name, "global_step": self.state.global_step}
            info.update(self.extra_save_info())
            Path(output_dir, "stage_info.json").write_text(json.dumps(info, indent=2))


class EntropyASRTrainer(StageTrainer, Trainer):
    """`Trainer` for one stage of the method. Subclasses set `default_trainable` (which parts the stage
    trains) and may override `compute_loss`, `stage_callbacks` (IA-SFT: the hot-swap) and `context_injector`
    (context SFT: hotwords in the prompt)."""

    default_trainable: ClassVar[dict[str, bool]] = {
        "encoder": True,
        "ctc_head": True,
        "adaptor": True,
        "llm": True,
    }

    def __init__(self, *args, stage_config=None, trainable: dict[str, bool] | None = None, **kwargs):
        self.stage_config = stage_config
        model = kwargs.get("model") if "model" in kwargs else args[0]
        parts = {**self.default_trainable, **(trainable or {})}
        model.set_trainable(**parts)
        llm = model.model.language_model
        if any("lora_" in n for n, _ in llm.named_parameters()):  # LoRA: only the adapters of the LLM train
            for n, p in llm.named_parameters():
                p.requires_grad_(parts["llm"] and "lora_" in n)
            model.lm_head.requires_grad_(False)
        counts = model.num_parameters_by_part(only_trainable=True)
        logger.info("%s: trainable parameters per part %s", self.stage_name, counts)
        if sum(counts.values()) == 0:
            raise ValueError(f"{self.stage_name}: no trainable parameters (trainable={parts})")
        super().__init__(*args, **kwargs)

    # ---- what a stage adds -------------------------------------------------------------------------------
    @classmethod
    def stage_callbacks(cls, config: StageConfig, model, processor, resume_dir: Path | None) -> list:
        """This stage's own callbacks, beside those of every speech stage (the augmentation epoch; pretraining's
        snapshot slimmer)."""
        return []

    @classmethod
    def context_injector(cls, config: StageConfig, dataset: SpeechDataset):
        """The SFT collator's `context_fn` (hotwords put into the prompt), or None."""
        return None

    # ---- building -----------------------------------------------------------------------------------------
    @classmethod
    def build(cls, config: StageConfig, resume_dir: Path | None = None) -> EntropyASRTrainer:
        model, processor = load_model_and_processor(resolve_model_path(config.model))
        kind = config.kind
        train_args = {**TRAINING_DEFAULTS, "seed": config.seed, "data_seed": config.seed}
        if kind.snapshots:  # every checkpoint is a snapshot; SnapshotSlimmer trims them
            train_args["save_total_limit"] = None
        train_args.update(config.training)
        if not torch.cuda.is_available():
            train_args.setdefault("use_cpu", True)
        args = TrainingArguments(output_dir=config.output_dir, **train_args)

        augment_cfg = None
        if config.augment not in (None, False) and kind.batches != "text":
            augment_cfg = AugmentConfig(**(config.augment if isinstance(config.augment, dict) else {}))
        augmenter = Augmenter(augment_cfg) if augment_cfg else None
        callbacks = []
        kwargs: dict[str, Any] = {}
        if kind.batches == "text":
            train_dataset = TextLines(config.data.text_corpus, config.data.max_train_samples)
            collator = TextCollator(processor.tokenizer, processor.end_of_turn_token)
        else:
            two_views = kind.batches == "ctc" and config.ctc.two_views and config.ctc.consistency_weight > 0
            transform = AugmentTransform(augment_cfg, seed=config.seed, two_views=two_views)
            train_dataset = stage_dataset(
                config, config.data.train_split, transform, config.data.max_train_samples, weighted=True
            )
            if augment_cfg is not None and augment_cfg.uses_babble:
                transform.babble_pool = babble_talkers(train_dataset, augment_cfg.babble_talkers, config.seed)
            callbacks.append(EpochCallback(transform))
            if kind.snapshots:
                callbacks.append(SnapshotSlimmer())
            if kind.batches == "ctc":
                if config.chunking.feature_stats_clips and processor.feature_stats is None:
                    clips = stage_dataset(
                        config, config.data.train_split, None, config.chunking.feature_stats_clips
                    )
                    processor.set_feature_stats(
                        processor.estimate_feature_stats([torch.as_tensor(row["audio"]) for row in clips])
                    )
                if config.ctc.units == "char":
                    use_char_ctc(model, processor, train_dataset.dataset["text"], config.seed)
                collator = CTCCollator(processor, units=config.ctc.units, augmenter=augmenter)
                kwargs["consistency_weight"] = config.ctc.consistency_weight if two_views else 0.0
            else:
                context_fn = cls.context_injector(config, train_dataset)
                collator = SFTCollator(
                    processor, augmenter=augmenter, context_fn=context_fn, seed=config.seed
                )
            callbacks += cls.stage_callbacks(config, model, processor, resume_dir)

        if config.lora is not None and kind.batches != "ctc":
            apply_lora(model, config)
        return cls(
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

    def finish(self) -> None:
        if self.stage_config is not None and self.stage_config.lora is not None:
            merge_lora(self.model)

    def _get_train_sampler(self, train_dataset=None):
        """`train_sampling_strategy: group_by_length` on a speech dataset: batches of similar duration, read from
        the dataset's durations (no decoding), with a seeded, resumable order (`LengthGroupedBatchOrder`)."""
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy == "group_by_length" and hasattr(dataset, "durations"):
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            return LengthGroupedBatchOrder(
                dataset.durations(), self.args.per_device_train_batch_size, seed=seed
            )
        return super()._get_train_sampler(train_dataset)


class TextLines(torch.utils.data.Dataset):
    """The non-empty lines of a text file (the text-only LLM stage's sentences), the first `limit` of them."""

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


def babble_talkers(dataset: SpeechDataset, count: int, seed: int) -> list:
    """`count` clips of `dataset` (a seeded draw without replacement, all of them if it has fewer), decoded
    without its transform: the talkers that babble noise is mixed from."""
    plain = SpeechDataset(dataset.dataset, target_sr=dataset.target_sr)
    n = len(plain)
    picks = np.random.default_rng([seed, 7]).permutation(n)[: min(count, n)]
    rows = (plain.example(int(i)) for i in sorted(picks))
    talkers = [row["audio"] for row in rows if row is not None]
    logger.info("babble: %d talker clips from the training split", len(talkers))
    return talkers


def use_char_ctc(model, processor, texts, seed: int) -> None:
    """Switch the CTC head to a character vocabulary built from the training transcripts (baseline). Its new
    output layer is drawn from `seed`: this runs before the Trainer seeds the process, and the global generator's
    state here depends on what the process did before (it made the conventional recipe differ run to run)."""
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


def apply_lora(model, config: StageConfig) -> None:
    """LoRA adapters on the LLM, drawn from the stage's seed: like `use_char_ctc`, this runs before the Trainer
    seeds the process, where the global generator's state depends on what the process did before (a stage run
    after another in the same process, as `recipe` runs them, started from other adapters than when run alone).
    The global generator is left as it was."""
    c = config.lora
    lora = LoraConfig(r=c.r, lora_alpha=c.alpha, lora_dropout=c.dropout, target_modules=c.target_modules)
    devices = [model.device.index or 0] if model.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(config.seed)
        model.model.language_model = inject_adapter_in_model(lora, model.model.language_model)
    logger.info("LoRA adapters (r=%d) on %s of the LLM", c.r, c.target_modules)


def merge_lora(model) -> None:
    """Fold LoRA weights into the base linears and put the plain layers back (a loadable, adapter-free model)."""
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.merge()
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, BaseTunerLayer):
                setattr(module, child_name, child.get_base_layer())
