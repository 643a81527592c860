"""Stage 1: encoder pretraining with CR-CTC (consistency-regularised CTC) on phonemes, or plain character CTC
for the conventional baseline. The LLM is not run."""

from __future__ import annotations

from pathlib import Path

import torch

from training.stages.base import EntropyASRTrainer


def consistency_kl(logits_a: torch.Tensor, logits_b: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Symmetric KL between two views' frame posteriors, each direction with a stop-gradient on its target:
    KL(sg(p_b) || p_a) + KL(sg(p_a) || p_b), summed over the vocabulary, averaged over valid frames."""
    log_a, log_b = logits_a.float().log_softmax(-1), logits_b.float().log_softmax(-1)
    kl_ab = (log_b.detach().exp() * (log_b.detach() - log_a)).sum(-1)  # target b, trains a
    kl_ba = (log_a.detach().exp() * (log_a.detach() - log_b)).sum(-1)  # target a, trains b
    valid = torch.arange(logits_a.shape[1], device=logits_a.device)[None, :] < lengths[:, None]
    return ((kl_ab + kl_ba) * valid).sum() / valid.sum().clamp(min=1)


def draw_chunking(config, generator: torch.Generator | None = None) -> dict[str, int]:
    """One batch's encoder context under dynamic chunk training (`ChunkingConfig`): full context (chunk 0) with
    probability `full_context_prob`, else a chunk of 1..max_chunk_frames frames with 0..max_left_chunks chunks of
    left context (-1: all). Drawn from torch's RNG, which checkpoints save and resuming restores."""
    if torch.rand((), generator=generator).item() < config.full_context_prob:
        return {"encoder_chunk_frames": 0, "encoder_left_chunks": -1}
    chunk = int(torch.randint(1, config.max_chunk_frames + 1, (), generator=generator))
    left = -1
    if config.max_left_chunks >= 0:
        left = int(torch.randint(0, config.max_left_chunks + 1, (), generator=generator))
    return {"encoder_chunk_frames": chunk, "encoder_left_chunks": left}


class PretrainTrainer(EntropyASRTrainer):
    """Batches from `CTCCollator`: `input_features` holds V views stacked along the batch (V = 1 or 2)."""

    stage_name = "pretrain"
    default_trainable = {"encoder": True, "ctc_head": True, "adaptor": False, "llm": False}

    def __init__(self, *args, consistency_weight: float = 0.2, **kwargs):
        self.consistency_weight = consistency_weight
        super().__init__(*args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["ctc_labels"]
        chunking = self.stage_config.chunking if self.stage_config is not None else None
        out = model(
            input_features=inputs["input_features"],
            input_features_mask=inputs["input_features_mask"],
            **(
                draw_chunking(chunking)
                if chunking is not None and chunking.dynamic and model.training
                else {}
            ),
        )
        core = self.accelerator.unwrap_model(model)
        b = labels.shape[0]
        views = out.ctc_logits.shape[0] // b
        logits = out.ctc_logits.split(b)
        lengths = out.encoder_lengths.split(b)
        ctc = [core.ctc_loss(logits[v], lengths[v], labels) for v in range(views)]
        loss = sum(ctc)
        metrics = {"ctc_loss": float(sum(c.item() for c in ctc) / views)}
        if views == 2 and self.consistency_weight > 0:
            kl = consistency_kl(logits[0], logits[1], lengths[0])
            loss = loss + self.consistency_weight * kl
            metrics["consistency_kl"] = float(kl.item())
        self._stage_metrics = metrics
        return (loss, out) if return_outputs else loss

    def final_encoder_source(self, start: Path, out: Path) -> str | None:
        return str(out)  # the encoder pretraining trains is its own source

    def log(self, logs, *args, **kwargs):
        if getattr(self, "_stage_metrics", None) and "loss" in logs:
            logs = {**logs, **self._stage_metrics}
        super().log(logs, *args, **kwargs)
