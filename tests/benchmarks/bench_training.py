"""Training throughput (run by `make bench`): each stage's Trainer against a bare PyTorch loop over the same
model, the same batches and the same optimizer (target: the Trainer reaches at least 0.9 of the bare loop),
and peak memory."""

import resource
import time

import pytest
import torch

from training.config import load_stage_config
from training.stages.lifecycle import build_trainer

pytestmark = pytest.mark.slow
STEPS = 20
BATCH = 8


def _config(stage, model, out, corpus):
    data = {
        "stage": stage,
        "model": str(model),
        "output_dir": str(out),
        "data": {"path": str(corpus / "dataset"), "text_corpus": str(corpus / "text_corpus.txt")},
        "training": {
            "max_steps": STEPS,
            "per_device_train_batch_size": BATCH,
            "learning_rate": 1e-3,
            "logging_steps": STEPS,
            "save_strategy": "no",
            "report_to": [],
            "disable_tqdm": True,
        },
        "augment": False,
    }
    return load_stage_config(data)


def _bare_loop(trainer) -> float:
    """The same model, dataloader (decoding and collation included) and optimizer, without the Trainer."""
    model = trainer.model
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    start = time.perf_counter()
    for step, batch in enumerate(trainer.get_train_dataloader()):
        if step == STEPS:
            break
        loss = trainer.compute_loss(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return STEPS * BATCH / (time.perf_counter() - start)


@pytest.mark.parametrize("stage", ["pretrain", "align", "joint_sft", "text_lm"])
def test_trainer_vs_bare_loop(stage, tiny_model_dir, tiny_corpus, tmp_path):
    bare = _bare_loop(build_trainer(_config(stage, tiny_model_dir, tmp_path / "t", tiny_corpus)))
    trainer = build_trainer(_config(stage, tiny_model_dir, tmp_path / "t2", tiny_corpus))
    start = time.perf_counter()
    trainer.train()
    with_trainer = STEPS * BATCH / (time.perf_counter() - start)
    ratio = with_trainer / bare
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"\n[bench_training] {stage}: Trainer {with_trainer:.1f} samples/s, bare loop {bare:.1f} samples/s, "
        f"ratio {ratio:.2f} (target >= 0.9: {'met' if ratio >= 0.9 else 'MISSED'}); peak RSS {peak:.0f} MB"
    )
