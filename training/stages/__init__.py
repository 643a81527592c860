"""The training stages of the method (method.md section 3): one Trainer per stage (`pretrain`, `sft`, `grpo` with
its `rewards`) over `base.StageTrainer`, where a stage starts and what its folder records (`folders`), and the one
runner of any stage (`lifecycle.run_stage`)."""
