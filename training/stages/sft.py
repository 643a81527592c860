"""Stages 2-5 and the text-only LLM step: next-token cross-entropy on the transcript, differing in which parts
train, and for IA-SFT in the encoder hot-swap it attaches and for context SFT in the hotwords its collator puts
into the prompt."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from training.callbacks.hot_swap import HotSwapCallback, probe_features
from training.config import StageConfig
from training.data.context import ContextInjector, distractor_pool
from training.data.loading import SpeechDataset
from training.stages.base import EntropyASRTrainer
from training.stages.folders import encoder_source, resolve_model_path, stage_dataset


class TextLMTrainer(EntropyASRTrainer):
    """Text-only causal-LM pretraining of the LLM (the laptop stand-in for a pretrained LLM)."""

    stage_name = "text_lm"
    default_trainable = {"encoder": False, "ctc_head": False, "adaptor": False, "llm": True}


class AlignTrainer(EntropyASRTrainer):
    """Stage 2: only the adaptor learns to map encoder frames into the LLM's embedding space."""

    stage_name = "align"
    default_trainable = {"encoder": False, "ctc_head": False, "adaptor": True, "llm": False}


class IASFTTrainer(EntropyASRTrainer):
    """Stage 3, iterative asynchronous SFT: adaptor + LLM train while the encoder stays frozen and is
    hot-swapped by `HotSwapCallback` when the newest pretraining snapshot has drifted (CKA < threshold) from
    the one in the model. The hot-swap state is saved in every checkpoint's stage_info.json and restored on
    resuming; the saved model records the last snapshot swapped in as its encoder's source."""

    stage_name = "ia_sft"
    default_trainable = {"encoder": False, "ctc_head": False, "adaptor": True, "llm": True}

    @classmethod
    def stage_callbacks(cls, config: StageConfig, model, processor, resume_dir: Path | None) -> list:
        eval_split = config.data.eval_split or config.data.train_split
        eval_ds = stage_dataset(config, eval_split, None, config.hot_swap.eval_samples)
        feats, mask = probe_features(processor, eval_ds, config.hot_swap.eval_samples)
        reference = config.hot_swap.reference or encoder_source(resolve_model_path(config.model))
        hot_swap = HotSwapCallback(model, feats, mask, config.hot_swap, reference)
        if resume_dir is not None and (resume_dir / "stage_info.json").is_file():
            state = json.loads((resume_dir / "stage_info.json").read_text()).get("hot_swap")
            if state:
                hot_swap.restore(state)
        return [hot_swap]

    def _hot_swap(self) -> HotSwapCallback | None:
        return next((cb for cb in self.callback_handler.callbacks if isinstance(cb, HotSwapCallback)), None)

    def extra_save_info(self) -> dict[str, Any]:
        hot_swap = self._hot_swap()
        return {"hot_swap": hot_swap.state_dict()} if hot_swap else {}

    def final_encoder_source(self, start: Path, out: Path) -> str | None:
        hot_swap = self._hot_swap()
        if hot_swap and hot_swap.current:  # IA-SFT ends on the last swapped-in snapshot
            return hot_swap.current
        return super().final_encoder_source(start, out)


class JointSFTTrainer(EntropyASRTrainer):
    """Stage 4: everything trains, at a low learning rate."""

    stage_name = "joint_sft"
    # the CTC head gets no gradient from the transcript loss: leaving it out keeps DDP free of unused parameters
    default_trainable = {"encoder": True, "ctc_head": False, "adaptor": True, "llm": True}


class ContextSFTTrainer(EntropyASRTrainer):
    """Stage 5: as joint SFT, with hotwords (and sound-alike distractors) injected into the prompt context."""

    stage_name = "context_sft"
    default_trainable = {"encoder": True, "ctc_head": False, "adaptor": True, "llm": True}

    @classmethod
    def context_injector(cls, config: StageConfig, dataset: SpeechDataset) -> ContextInjector:
        """A row's entities as its hotwords (`context.inject_prob`), with distractors from `context.hotwords_file`
        or, without one, from the entities of the whole training split."""
        c = config.context
        pool = distractor_pool(c.hotwords_file, dataset.dataset)
        return ContextInjector(pool, c.inject_prob, c.distractor_prob, c.max_distractors)
