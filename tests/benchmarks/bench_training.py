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


def test_one_process_vs_ddp_vs_zero2(tiny_model_dir, tiny_corpus, tmp_path):
    """The same 20 pretraining steps of 8 clips each in one process (2 threads, then 1) and in two one-thread
    processes under DDP (gloo) and DeepSpeed ZeRO-2 (its CPU accelerator): the Trainer's train_runtime and the
    command's wall time (launch, imports and saving included), best of two runs each, and the final weights'
    distance from the one-process run (FSDP needs GPUs: accelerate enables it only for GPU-like devices)."""
    import json
    import os
    import subprocess
    import sys

    import yaml
    from safetensors.torch import load_file

    from tests.conftest import REPO, ZERO2_CPU, launch_two_processes
    from training.config import stage_config_to_dict

    def config(name: str, per_device: int):
        cfg = stage_config_to_dict(_config("pretrain", tiny_model_dir, tmp_path / name, tiny_corpus))
        cfg["training"] |= {"per_device_train_batch_size": per_device, "disable_tqdm": False}
        cfg["seed"] = 0
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    def one_process(name: str, threads: int):
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        env |= {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        cmd = [sys.executable, "-m", "training.commands.cli", "train", str(config(name, BATCH))]
        return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)

    setups = {
        "one process, 2 threads": lambda name: one_process(name, 2),
        "one process, 1 thread": lambda name: one_process(name, 1),
        "DDP, 2 x 1 thread": lambda name: launch_two_processes(["train", str(config(name, BATCH // 2))]),
        "ZeRO-2, 2 x 1 thread": lambda name: launch_two_processes(
            ["train", str(config(name, BATCH // 2))], ZERO2_CPU
        ),
    }
    rows, weights = [], {}
    for i, (label, launch) in enumerate(setups.items()):
        runtimes, walls = [], []
        for repeat in range(2):
            name = f"setup{i}-{repeat}"
            start = time.perf_counter()
            proc = launch(name)
            walls.append(time.perf_counter() - start)
            assert proc.returncode == 0, proc.stderr[-3000:]
            done = json.loads((tmp_path / name / "stage_complete.json").read_text())
            assert done["global_step"] == STEPS
            runtimes.append(done["train_runtime"])
            weights[label] = load_file(str(tmp_path / name / "model.safetensors"))
        rows.append((label, min(runtimes), min(walls)))
    print(f"\n[bench_training] {STEPS} pretraining steps of {BATCH} clips (tiny model, tiny corpus):")
    for label, runtime, wall in rows:
        # two processes split each step's clips their own way (a different batch order from one process), so
        # each is compared with its own kind: one process with 2 threads, DeepSpeed with DDP
        reference = "DDP, 2 x 1 thread" if "x" in label else "one process, 2 threads"
        apart = max((weights[label][k] - weights[reference][k]).abs().max().item() for k in weights[label])
        print(
            f"  {label:24s} train_runtime {runtime:5.1f} s, command {wall:5.1f} s, "
            f"max |w - w({reference})| {apart:.1e}"
        )
    zero2, ddp = weights["ZeRO-2, 2 x 1 thread"], weights["DDP, 2 x 1 thread"]
    # the same arithmetic, sharded: apart by float rounding grown over 20 steps, of the order that one process
    # with 1 thread instead of 2 gives (2.8e-3 here)
    assert max((zero2[k] - ddp[k]).abs().max().item() for k in ddp) < 1e-2
