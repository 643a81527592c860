"""Trainer callbacks and the stage-end hooks they go with: the CKA-guided encoder hot-swap of IA-SFT and the
alignment snapshot choice (`hot_swap`), pretraining snapshots and the completion marker (`snapshots`), the
augmentation epoch (`epoch`) and the no-speech gate calibration every transcribing stage ends with
(`no_speech`). Nothing here imports the stages: the stages attach these."""
