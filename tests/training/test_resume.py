"""Nothing lost: SIGKILL mid-stage and re-running the same command ends with the same weights as an
uninterrupted run; an FSDP launch that accelerate would quietly run as DDP stops instead; recipes validate
before running and skip finished stages. (Two-process DDP runs of every stage kind: test_stages.py.)"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.conftest import REPO, train_in_two_processes
from training.config import ConfigError

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _write_config(path: Path, model, out, corpus, **training) -> Path:
    cfg = {
        "stage": "pretrain",
        "model": str(model),
        "output_dir": str(out),
        "data": {"path": str(corpus / "dataset"), "max_train_samples": 48},
        "augment": {"noise_prob": 0.5},
        "ctc": {"consistency_weight": 0.2},
        "training": {
            "max_steps": 12,
            "per_device_train_batch_size": 4,
            "learning_rate": 2e-3,
            "save_steps": 4,
            "logging_steps": 2,
            "report_to": [],
            **training,
        },
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def _train(config: Path, stderr=subprocess.PIPE, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "training.commands.cli", "train", str(config)],
        cwd=REPO,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        text=True,
        **kw,
    )


def test_sigkill_then_rerun_matches_uninterrupted(tiny_model_dir, tiny_corpus, tmp_path):
    # length-grouped batches (what the demo recipes use): the resumed run must see the same batch order
    grouped = {"train_sampling_strategy": "group_by_length"}
    straight = _write_config(tmp_path / "a.yaml", tiny_model_dir, tmp_path / "a", tiny_corpus, **grouped)
    killed = _write_config(tmp_path / "b.yaml", tiny_model_dir, tmp_path / "b", tiny_corpus, **grouped)
    proc = _train(killed)
    # the uninterrupted run meanwhile, on the other core (one torch thread each, seeded: its weights do not depend
    # on what runs beside it); its log goes to a file, not to a pipe nobody reads while it runs, which could fill
    with open(tmp_path / "straight.log", "w") as log:
        reference = _train(straight, stderr=log)
    deadline = time.time() + 300
    marker = tmp_path / "b" / "checkpoint-8" / "trainer_state.json"
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.time() < deadline, "no checkpoint-8 within 300 s"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "b" / "stage_complete.json").exists()
    p = _train(killed)
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    assert reference.wait(timeout=600) == 0, (tmp_path / "straight.log").read_text()[-3000:]
    a, b = (
        load_file(str(tmp_path / "a" / "model.safetensors")),
        load_file(str(tmp_path / "b" / "model.safetensors")),
    )
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    steps = json.loads((tmp_path / "b" / "stage_complete.json").read_text())["global_step"]
    assert steps == 12
    # the resumed run really resumed (it did not start over): its log history starts after step 8
    history = json.loads((tmp_path / "b" / "stage_complete.json").read_text())["log_history"]
    assert history[0]["step"] <= 8 < history[-1]["step"]
    # folders written by a stage run in its own process load back through the Auto classes
    for folder in (tmp_path / "a", tmp_path / "b" / "checkpoint-8"):
        processor_config = json.loads((folder / "processor_config.json").read_text())
        assert processor_config["auto_map"]["AutoProcessor"] == "processing_entropy_asr.EntropyASRProcessor"
        assert "AutoModel" in json.loads((folder / "config.json").read_text())["auto_map"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="with GPUs accelerate does set up FSDP")
def test_an_fsdp_launch_that_accelerate_turns_into_ddp_fails_instead_of_training(
    tiny_model_dir, tiny_corpus, tmp_path
):
    """Without CUDA devices accelerate sets up plain data parallelism for an FSDP config, without a word: the stage
    stops before training and says so."""
    config = _write_config(
        tmp_path / "fsdp.yaml", tiny_model_dir, tmp_path / "fsdp", tiny_corpus, max_steps=1
    )
    proc = train_in_two_processes(config, ("--use_fsdp", "--fsdp_version", "2"))
    assert proc.returncode != 0
    assert "FSDP was requested" in proc.stderr and "set up MULTI_CPU" in proc.stderr
    assert not (tmp_path / "fsdp" / "model.safetensors").exists()


def test_recipe_validates_order_and_keys(tmp_path, tiny_model_dir, tiny_corpus):
    from training.recipe import load_recipe

    stage_cfg = lambda stage: {"stage": stage, "data": {"path": str(tiny_corpus / "dataset")}}  # noqa: E731
    for name in ("align", "pretrain"):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(stage_cfg(name)))
    recipe = {
        "workdir": str(tmp_path / "runs"),
        "model": str(tiny_model_dir),
        "stages": [
            {"name": "align", "config": str(tmp_path / "align.yaml")},
            {"name": "pretrain", "config": str(tmp_path / "pretrain.yaml")},
        ],
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    with pytest.raises(ConfigError, match=r"stages\[1\].stage: 'pretrain' cannot come after 'align'"):
        load_recipe(tmp_path / "r.yaml")
    recipe["stages"] = list(reversed(recipe["stages"]))
    recipe["stages"][1]["model"] = "pretrain@alignment"
    recipe["stages"][1]["overrides"] = {"training": {"max_step": 3}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    with pytest.raises(
        ConfigError, match=r"stages\[1\] \(align\): training.max_step: not a TrainingArguments field"
    ):
        load_recipe(tmp_path / "r.yaml")
    recipe["stages"][1]["overrides"] = {"training": {"max_steps": 3}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    _, configs = load_recipe(tmp_path / "r.yaml")
    assert [c.stage for c in configs] == ["pretrain", "align"]
    assert configs[1].model == f"{tmp_path / 'runs' / 'pretrain'}@alignment"
    assert configs[0].model == str(tiny_model_dir)


@pytest.mark.parametrize("name", ["entropy-aware-tiny", "conventional-tiny", "paper-2.3b"])
def test_shipped_recipes_validate(name, tiny_corpus, tiny_model_dir, tmp_path):
    from training.recipe import load_recipe

    overrides = {
        "workdir": str(tmp_path / "runs"),
        "model": str(tiny_model_dir),
        "defaults": {"data": {"path": str(tiny_corpus / "dataset")}},
    }
    _, configs = load_recipe(REPO / "configs" / "recipes" / f"{name}.yaml", overrides, step_scale=0.1)
    assert configs[0].stage == "pretrain" and configs[0].model == str(tiny_model_dir)
    for previous, config in zip(configs, configs[1:]):
        assert config.model.split("@")[0] == previous.output_dir or config.model.endswith("@alignment")
    assert all(c.training["max_steps"] >= 1 for c in configs)
    if name.endswith("-tiny"):  # stage 1's decay phase scales with its steps (250 of 1350 at full size)
        assert configs[0].training["lr_scheduler_kwargs"] == {"num_decay_steps": 25}
        assert configs[0].training["max_steps"] == 135
        assert configs[0].chunking.dynamic and configs[0].chunking.feature_stats_clips == 500


def test_recipes_have_equal_budgets():
    def steps(name):
        recipe = yaml.safe_load((REPO / "configs" / "recipes" / f"{name}.yaml").read_text())
        return sum(s["overrides"]["training"]["max_steps"] for s in recipe["stages"])

    assert steps("entropy-aware-tiny") == steps("conventional-tiny")


def test_recipes_pretrain_their_encoders_alike():
    """Stage 1 differs only in its targets (phonemes vs characters): the comparison's optimizer settings and
    augmentation are the same, so a learning-rate change to one recipe cannot silently skip the other."""

    def stage1(name):
        recipe = yaml.safe_load((REPO / "configs" / "recipes" / f"{name}.yaml").read_text())
        first = recipe["stages"][0]
        return first["config"], first["overrides"]

    aware_config, aware = stage1("entropy-aware-tiny")
    conventional_config, conventional = stage1("conventional-tiny")
    assert (aware_config, conventional_config) == (
        "configs/stages/pretrain.yaml",
        "configs/stages/pretrain_char.yaml",
    )
    assert aware["training"] == conventional["training"] and aware["augment"] == conventional["augment"]
    assert aware["data"] == conventional["data"] == {"language_weights": {"zh": 2.0, "mixed": 0.0}}
    # both encoders learn to stream (dynamic chunks, fixed feature statistics): the streaming comparison is fair
    assert aware["chunking"] == conventional["chunking"]
    assert aware["chunking"]["dynamic"] and aware["chunking"]["feature_stats_clips"] > 0


def test_conventional_joint_sft_trains_at_the_rate_and_schedule_of_ia_sft():
    def stage(name, stage_name):
        recipe = yaml.safe_load((REPO / "configs" / "recipes" / f"{name}.yaml").read_text())
        return next(s["overrides"]["training"] for s in recipe["stages"] if s["name"] == stage_name)

    ia_sft, joint = stage("entropy-aware-tiny", "ia_sft"), stage("conventional-tiny", "joint_sft")
    for key in ("learning_rate", "lr_scheduler_type", "per_device_train_batch_size"):
        assert joint[key] == ia_sft[key], key
