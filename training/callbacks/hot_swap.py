"""CKA-guided encoder hot-swap for iterative asynchronous SFT (method.md section 3), and the CKA monitor that
picks the pretraining snapshot alignment starts from.

Snapshots are the `checkpoint-N` folders of a pretraining run (full model folders) plus, once that run has
finished (`stage_complete.json` present), its final model folder. Drift is linear CKA between the encoder
outputs of the snapshot and of the reference encoder on a fixed evaluation set (valid frames only).
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from transformers import TrainerCallback

from eval.entropy_allocation.allocation import linear_cka
from training.callbacks.snapshots import COMPLETE_MARKER, numbered_checkpoints
from training.data.collators import clip_features

logger = logging.getLogger(__name__)
SWAPPED_PREFIXES = ("model.encoder.", "model.ctc_head.")


def list_snapshots(pretrain_dir: str | Path) -> list[Path]:
    """Snapshots in training order: checkpoint-N by N, then the final model once the run is complete."""
    root = Path(pretrain_dir)
    snaps = [p for p in numbered_checkpoints(root) if (p / "model.safetensors").is_file()]
    if pretraining_complete(root) and (root / "model.safetensors").is_file():
        snaps.append(root)
    return snaps


def pretraining_complete(pretrain_dir: str | Path) -> bool:
    return (Path(pretrain_dir) / COMPLETE_MARKER).is_file()


def load_encoder_weights(snapshot: str | Path) -> dict[str, torch.Tensor]:
    """Encoder and CTC-head tensors of a snapshot, keyed as in EntropyASRForConditionalGeneration."""
    out = {}
    with safe_open(str(Path(snapshot) / "model.safetensors"), framework="pt") as f:
        for key in f.keys():
            if key.startswith(SWAPPED_PREFIXES):
                out[key] = f.get_tensor(key)
    if not any(k.startswith("model.encoder.") for k in out):
        raise ValueError(f"{snapshot} holds no encoder weights")
    return out


def apply_encoder_weights(model, weights: dict[str, torch.Tensor]) -> None:
    """Copy snapshot tensors into the model in place (optimizer state of other parts is untouched)."""
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    with torch.no_grad():
        for key, value in weights.items():
            target = params.get(key, buffers.get(key))
            if target is None:
                raise KeyError(f"snapshot tensor {key} has no counterpart in the model")
            target.copy_(value.to(target.dtype))


@torch.no_grad()
def encoder_states(
    model, features: torch.Tensor, mask: torch.Tensor, weights=None, batch_size: int = 16
) -> torch.Tensor:
    """Valid encoder frames (N, d) for the evaluation set, with the model's encoder or with `weights`."""
    inner = model.model
    encoder = inner.encoder
    if weights is not None:
        encoder = copy.deepcopy(encoder)
        state = {k[len("model.encoder.") :]: v for k, v in weights.items() if k.startswith("model.encoder.")}
        encoder.load_state_dict(state)
    original, was_training = inner.encoder, encoder.training
    inner.encoder = encoder
    encoder.eval()
    try:
        chunks = []
        device = next(encoder.parameters()).device
        for s in range(0, features.shape[0], batch_size):
            h, lengths = inner.encode(
                features[s : s + batch_size].to(device), mask[s : s + batch_size].to(device)
            )
            chunks.extend(h[i, : int(n)].float().cpu() for i, n in enumerate(lengths))
        return torch.cat(chunks)
    finally:
        inner.encoder = original
        encoder.train(was_training)


def cka(x: torch.Tensor, y: torch.Tensor) -> float:
    return float(linear_cka(x.double().numpy(), y.double().numpy()))


def save_cka_plot(
    curve: list[dict[str, Any]], swaps: list[dict[str, Any]], threshold: float, path: Path, title: str
) -> None:
    import matplotlib  # lazy: loaded only when a plot is written, with its backend chosen before pyplot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: see above

    fig, ax = plt.subplots(figsize=(7, 3.5))
    if curve:
        ax.plot([c["step"] for c in curve], [c["cka"] for c in curve], "o-", label="CKA(snapshot, reference)")
    ax.axhline(threshold, color="grey", linestyle="--", label=f"threshold {threshold}")
    for i, s in enumerate(swaps):
        ax.axvline(s["step"], color="tab:red", alpha=0.6, label="hot-swap" if i == 0 else None)
        ax.annotate(Path(s["snapshot"]).name, (s["step"], threshold), rotation=90, fontsize=7, va="top")
    ax.set_xlabel("step")
    ax.set_ylabel("linear CKA")
    ax.set_title(title)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


class HotSwapCallback(TrainerCallback):
    """Every `interval_steps`: take the next snapshot (replay: the next one in order; watch: the newest one
    present), compute CKA against the reference encoder; if CKA < threshold, load it into the model and make
    it the reference. The final snapshot of a completed pretraining run is always swapped in (the final swap).

    State (current snapshot, reference, replay position, CKA curve, swap history) is saved in every checkpoint
    through the trainer's stage_info.json and restored with `restore`."""

    def __init__(self, model, features: torch.Tensor, mask: torch.Tensor, config, reference: str | None):
        self.model, self.features, self.mask, self.config = model, features, mask, config
        self.reference = reference
        self.current = reference
        self.consumed: list[str] = [reference] if reference else []
        self.curve: list[dict[str, Any]] = []
        self.swaps: list[dict[str, Any]] = []
        self._reference_states: torch.Tensor | None = None

    # -- state ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "current": self.current,
            "consumed": self.consumed,
            "curve": self.curve,
            "swaps": self.swaps,
            "threshold": self.config.threshold,
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.reference, self.current = state["reference"], state["current"]
        self.consumed, self.curve, self.swaps = (
            list(state["consumed"]),
            list(state["curve"]),
            list(state["swaps"]),
        )
        self._reference_states = None

    def reference_states(self) -> torch.Tensor:
        if self._reference_states is None:
            weights = load_encoder_weights(self.reference) if self.reference else None
            self._reference_states = encoder_states(self.model, self.features, self.mask, weights)
        return self._reference_states

    # -- decision ------------------------------------------------------------------------------------------
    def next_candidate(self) -> Path | None:
        snaps = [s for s in list_snapshots(self.config.pretrain_dir) if str(s) not in self.consumed]
        if self.reference is not None:
            # only snapshots after the reference in training order
            order = [str(s) for s in list_snapshots(self.config.pretrain_dir)]
            if self.reference in order:
                snaps = [s for s in snaps if order.index(str(s)) > order.index(self.reference)]
        if not snaps:
            return None
        return snaps[0] if self.config.mode == "replay" else snaps[-1]

    def check(self, step: int) -> dict[str, Any] | None:
        candidate = self.next_candidate()
        if candidate is None:
            return None
        weights = load_encoder_weights(candidate)
        value = cka(self.reference_states(), encoder_states(self.model, self.features, self.mask, weights))
        final = pretraining_complete(self.config.pretrain_dir) and candidate == Path(self.config.pretrain_dir)
        swap = value < self.config.threshold or final
        self.consumed.append(str(candidate))
        point = {"step": step, "snapshot": str(candidate), "cka": value, "swapped": swap, "final": final}
        self.curve.append(point)
        logger.info(
            "hot-swap check at step %d: %s CKA=%.4f -> %s",
            step,
            candidate.name,
            value,
            "swap" if swap else "keep",
        )
        if swap:
            apply_encoder_weights(self.model, weights)
            self.reference, self.current = str(candidate), str(candidate)
            self._reference_states = None
            self.swaps.append(point)
        return point

    # -- trainer events ------------------------------------------------------------------------------------
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.config.interval_steps == 0:
            self.check(state.global_step)
        return control

    def on_train_end(self, args, state, control, **kwargs):
        # the final swap: a finished pretraining run's last snapshot replaces the encoder in use
        if pretraining_complete(self.config.pretrain_dir) and self.current != str(
            Path(self.config.pretrain_dir)
        ):
            while self.next_candidate() is not None and self.current != str(Path(self.config.pretrain_dir)):
                self.check(state.global_step)
        if args.should_save:
            self.write_report(Path(args.output_dir))
        return control

    def write_report(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "hot_swap.json").write_text(json.dumps(self.state_dict(), indent=2))
        save_cka_plot(
            self.curve,
            self.swaps,
            self.config.threshold,
            out / "hot_swap_cka.png",
            "IA-SFT: encoder drift and hot-swaps",
        )


def select_alignment_snapshot(
    model, features, mask, pretrain_dir: str | Path, threshold: float, start_fraction: float = 0.5
) -> dict[str, Any]:
    """The paper's rule for where alignment starts: monitoring begins mid-pretraining (the snapshot at
    `start_fraction` is the first reference); the first later snapshot whose CKA to it drops below the
    threshold is chosen; if none does, the last one. Returns {"snapshot", "curve"}."""
    snaps = list_snapshots(pretrain_dir)
    if not snaps:
        raise FileNotFoundError(f"no snapshots in {pretrain_dir}")
    start = min(len(snaps) - 1, int(len(snaps) * start_fraction))
    ref_states = encoder_states(model, features, mask, load_encoder_weights(snaps[start]))
    curve, chosen = [], snaps[-1]
    for snap in snaps[start + 1 :]:
        value = cka(ref_states, encoder_states(model, features, mask, load_encoder_weights(snap)))
        curve.append({"snapshot": str(snap), "cka": value})
        if value < threshold:
            chosen = snap
            break
    return {"snapshot": str(chosen), "reference": str(snaps[start]), "curve": curve}


def probe_features(processor, dataset, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed evaluation set CKA is measured on: features and mask of the first `n` usable clips of
    `dataset` (a SpeechDataset)."""
    waves = []
    for i in range(len(dataset)):
        row = dataset[i]
        if row is not None:
            waves.append(row["audio"])
        if len(waves) >= n:
            break
    return clip_features(processor, waves)
