"""What every stage shares: loading the model folder, per-part freezing, saving loadable model folders."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from transformers import Trainer

logger = logging.getLogger(__name__)


def load_model_and_processor(path: str | Path):
    """The model folder a stage starts from, with the project's classes (identical to the remote code)."""
    from modeling import EntropyASRForConditionalGeneration, EntropyASRProcessor

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a model folder (no config.json)")
    model = EntropyASRForConditionalGeneration.from_pretrained(path)
    processor = EntropyASRProcessor.from_pretrained(path, trust_remote_code=True)
    return model, processor


class EntropyASRTrainer(Trainer):
    """`Trainer` for one stage of the method. Subclasses set `default_trainable` (which parts the stage
    trains) and may override `compute_loss`. Every save (checkpoints and the final model) writes a folder that
    `AutoModel.from_pretrained(dir, trust_remote_code=True)` loads."""

    stage_name = "base"
    default_trainable: dict[str, bool] = {"encoder": True, "ctc_head": True, "adaptor": True, "llm": True}

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

    def _get_train_sampler(self, train_dataset=None):
        """`train_sampling_strategy: group_by_length` on a speech dataset: batches of similar duration, read from
        the dataset's durations (no decoding), with a seeded, resumable order (`LengthGroupedBatchOrder`)."""
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy == "group_by_length" and hasattr(dataset, "durations"):
            from training.data.loading import LengthGroupedBatchOrder

            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            return LengthGroupedBatchOrder(
                dataset.durations(), self.args.per_device_train_batch_size, seed=seed
            )
        return super()._get_train_sampler(train_dataset)

    def _save(self, output_dir: str | None = None, state_dict=None):
        from training.build import register_auto_classes, write_remote_code

        register_auto_classes()
        super()._save(output_dir, state_dict=state_dict)
        output_dir = output_dir or self.args.output_dir
        if self.args.should_save:
            write_remote_code(output_dir)
            info: dict[str, Any] = {"stage": self.stage_name, "global_step": self.state.global_step}
            info.update(self.extra_save_info())
            Path(output_dir, "stage_info.json").write_text(json.dumps(info, indent=2))

    def extra_save_info(self) -> dict[str, Any]:
        return {}
