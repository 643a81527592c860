"""The epoch, told to the augmentation transform."""

from __future__ import annotations

from transformers import TrainerCallback


class EpochCallback(TrainerCallback):
    """Tells the augmentation transform the epoch so its randomness is a function of (seed, epoch, index)."""

    def __init__(self, transform):
        self.transform = transform

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.transform.epoch = int(state.epoch or 0)
