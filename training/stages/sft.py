"""Stages 2-5 and the text-only LLM step: next-token cross-entropy on the transcript, differing only in which
parts train (and, for IA-SFT and context SFT, in a callback or the collator the runner attaches)."""

from __future__ import annotations

from typing import Any

from training.stages.base import EntropyASRTrainer


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
    hot-swapped by `HotSwapCallback` when the newest pretraining snapshot has drifted (CKA < threshold)."""

    stage_name = "ia_sft"
    default_trainable = {"encoder": False, "ctc_head": False, "adaptor": True, "llm": True}

    def extra_save_info(self) -> dict[str, Any]:
        from training.hot_swap import HotSwapCallback

        for cb in self.callback_handler.callbacks:
            if isinstance(cb, HotSwapCallback):
                return {"hot_swap": cb.state_dict()}
        return {}


class JointSFTTrainer(EntropyASRTrainer):
    """Stage 4: everything trains, at a low learning rate."""

    stage_name = "joint_sft"
    # the CTC head gets no gradient from the transcript loss: leaving it out keeps DDP free of unused parameters
    default_trainable = {"encoder": True, "ctc_head": False, "adaptor": True, "llm": True}


class ContextSFTTrainer(EntropyASRTrainer):
    """Stage 5: as joint SFT, with hotwords (and sound-alike distractors) injected into the prompt context."""

    stage_name = "context_sft"
    default_trainable = {"encoder": True, "ctc_head": False, "adaptor": True, "llm": True}
