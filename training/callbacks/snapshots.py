"""A stage folder's checkpoints: `checkpoint-N` in order, the completion marker, and the callback that keeps
pretraining's snapshots small.

Disk: a stage keeps its `KEEP_FULL_CHECKPOINTS` newest checkpoints (`save_total_limit`), except pretraining,
whose every `checkpoint-N` is a snapshot that alignment and the IA-SFT hot-swap choose from; there the older
snapshots keep their model but drop the optimizer state, which only resuming reads (`SnapshotSlimmer`)."""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

from transformers import TrainerCallback

logger = logging.getLogger(__name__)
COMPLETE_MARKER = "stage_complete.json"  # a stage folder holding it is finished: re-running skips it
KEEP_FULL_CHECKPOINTS = 2


def numbered_checkpoints(out: str | Path) -> list[Path]:
    """The `checkpoint-N` folders of a stage's output, by N."""
    found = [
        (int(m.group(1)), p)
        for p in Path(out).glob("checkpoint-*")
        if (m := re.fullmatch(r"checkpoint-(\d+)", p.name))
    ]
    return [p for _, p in sorted(found)]


def latest_checkpoint(out: Path) -> Path | None:
    """The newest complete checkpoint (its trainer_state.json is written last)."""
    found = [p for p in numbered_checkpoints(out) if (p / "trainer_state.json").is_file()]
    return found[-1] if found else None


def optimizer_state(checkpoint: Path) -> list[Path]:
    """What of a checkpoint only resuming reads, in each layout the Trainer writes: `optimizer.pt` (one process or
    DDP), `optimizer.bin` / `optimizer_N.bin` (FSDP, full state dict), `optimizer_N/` (FSDP, sharded),
    `global_stepN/` and `latest` (DeepSpeed: its optimizer and model shards; the model folder beside them is
    saved in full)."""
    found = list(checkpoint.glob("optimizer*"))
    found += [p for p in checkpoint.glob("global_step*") if p.is_dir()]
    if found and (checkpoint / "latest").is_file():
        found.append(checkpoint / "latest")
    return sorted(found)


class SnapshotSlimmer(TrainerCallback):
    """Pretraining keeps every `checkpoint-N` (the snapshots that alignment and the hot-swap choose from), but
    only the `keep` newest keep their optimizer state (`optimizer_state`, whatever the sharding): resuming reads the
    newest complete one, snapshots need only the model. Two, not one, so that a run killed while writing a
    checkpoint still resumes from the one before."""

    def __init__(self, keep: int = KEEP_FULL_CHECKPOINTS):
        self.keep = keep

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        full = [p for p in numbered_checkpoints(args.output_dir) if optimizer_state(p)]
        for p in full[: -self.keep]:
            for path in optimizer_state(p):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
            logger.debug("snapshot %s: optimizer state dropped", p.name)
