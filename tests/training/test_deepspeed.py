"""DeepSpeed ZeRO-2 on the CPU (DeepSpeed's CPU accelerator, gloo between two processes): the shipped tiny recipe
runs every stage under `accelerate launch` with configs/accelerate/deepspeed-zero2-cpu.yaml, the way a user
launches it on GPUs; every rank ends each stage with the same weights, the checkpoints hold DeepSpeed's sharded
optimizer state (slimmed from older pretraining snapshots), the IA-SFT hot-swap lands the snapshot's encoder on
every rank, the exported folder loads in a fresh process and transcribes as the weights DeepSpeed's own
`zero_to_fp32` rebuilds from the shards; and a stage killed with SIGKILL resumes from its sharded checkpoint to
the weights of an uninterrupted run, bit for bit. (FSDP cannot be tested here: accelerate enables it only for
GPU-like devices; test_resume.py checks that such a launch stops instead of training.)"""

import copy
import json
import re
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import soundfile as sf
import torch
import yaml
from safetensors.torch import load_file

from tests.conftest import (
    ISOLATED,
    REPO,
    ZERO2_CPU,
    launch_two_processes,
    rank_checksums,
    run_python,
    synth_clip,
    write_recipe,
)
from training.config import parse_yaml

STAGES = ["pretrain", "align", "ia_sft", "joint_sft", "context_sft", "grpo"]
STEP_SCALE = 0.015  # every stage of the recipe at 1.5% of its steps: 20, 2, 12, 2, 1 and 1
# 4 clips per rank in every stage but GRPO (the recipe: 16 in stage 1, 8 after it; the tiny demo trains every stage
# at 4): stage 1 at 16 was 4x the clips these checks need and most of the fixture's time. GRPO keeps its 2 prompts x
# 4 completions per rank (one group fewer could leave every advantage 0 and the weights unchanged).
BATCH = 4


@pytest.fixture(scope="module")
def zero2_recipe(tmp_path_factory, tiny_model_dir, tiny_corpus) -> Path:
    """`accelerate launch --config_file configs/accelerate/deepspeed-zero2-cpu.yaml -m training.commands.cli
    recipe entropy-aware-tiny.yaml ... --step-scale 0.015`: configs/recipes/entropy-aware-tiny.yaml with BATCH clips
    per rank in every stage but GRPO, the no-speech gates calibrated on 8 dev clips (the tiny dev split has 40)."""
    root = tmp_path_factory.mktemp("zero2")
    work = root / "run"
    # a stage's batch size is out of reach of the recipe's `key=value` overrides (`defaults` sit under each stage's
    # config, where pretrain.yaml's 16 wins): a copy of the shipped recipe that changes only the batch sizes
    shipped = REPO / "configs" / "recipes" / "entropy-aware-tiny.yaml"
    recipe = parse_yaml(shipped.read_text(encoding="utf-8"))
    for entry in recipe["stages"]:
        if entry["name"] != "grpo":
            training = entry.setdefault("overrides", {}).setdefault("training", {})
            training["per_device_train_batch_size"] = BATCH
    path = root / "entropy-aware-tiny.yaml"
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True, sort_keys=False), encoding="utf-8")
    cli = ["recipe", str(path), f"workdir={work}", f"model={tiny_model_dir}"]
    cli += [f"defaults.data.path={tiny_corpus / 'dataset'}", "defaults.no_speech.samples=8"]
    cli += ["defaults.training.report_to=[]"]  # no TensorBoard writer per stage
    proc = launch_two_processes([*cli, "--step-scale", str(STEP_SCALE)], ZERO2_CPU)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return work


def _steps(out: Path) -> int:
    return json.loads((out / "stage_complete.json").read_text())["global_step"]


def test_every_stage_trains_under_zero2_with_one_model_on_both_ranks(zero2_recipe, tiny_model_dir):
    previous = load_file(str(tiny_model_dir / "model.safetensors"))
    for stage in STAGES:
        out = zero2_recipe / stage
        assert len(set(rank_checksums(out))) == 1, stage
        assert _steps(out) >= 1, stage
        weights = load_file(str(out / "model.safetensors"))
        assert weights.keys() == previous.keys(), stage
        assert any(not torch.equal(weights[k], previous[k]) for k in weights), (
            f"{stage} left the weights as they were"
        )
        previous = weights
    assert [_steps(zero2_recipe / s) for s in STAGES] == [20, 2, 12, 2, 1, 1]


def test_checkpoints_hold_deepspeeds_shards_and_the_slimmer_drops_the_older_ones(zero2_recipe):
    """Pretraining keeps every snapshot's model but DeepSpeed's optimizer shards only in the two newest."""
    checkpoints = sorted(
        (zero2_recipe / "pretrain").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])
    )
    assert len(checkpoints) > 3 and all((c / "model.safetensors").is_file() for c in checkpoints)
    sharded = [c.name for c in checkpoints if list(c.glob("global_step*"))]
    assert sharded == [c.name for c in checkpoints[-2:]]
    newest = checkpoints[-1]
    shards = sorted(p.name for p in (newest / f"global_step{newest.name.split('-')[1]}").iterdir())
    assert [s for s in shards if "optim_states" in s] == [
        "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "zero_pp_rank_1_mp_rank_00_optim_states.pt",
    ]


def test_the_ia_sft_hot_swap_lands_the_snapshots_encoder_on_every_rank(zero2_recipe):
    """The encoder is frozen in IA-SFT (outside DeepSpeed's optimizer partitions), so a swap into the wrapped model
    is not undone by the optimizer's fp32 copies: the saved encoder is the last swapped snapshot's, and both
    ranks' checksums agree."""
    report = json.loads((zero2_recipe / "ia_sft" / "hot_swap.json").read_text())
    assert report["swaps"], "no snapshot was swapped in"
    snapshot = load_file(str(Path(report["swaps"][-1]["snapshot"]) / "model.safetensors"))
    final = load_file(str(zero2_recipe / "ia_sft" / "model.safetensors"))
    encoder = [k for k in final if k.startswith(("model.encoder.", "model.ctc_head."))]
    assert encoder and all(torch.equal(final[k], snapshot[k]) for k in encoder)
    start = load_file(str(zero2_recipe / "align" / "model.safetensors"))
    assert any(not torch.equal(start[k], snapshot[k]) for k in encoder)  # the swap changed the encoder


def test_the_exported_folder_transcribes_as_the_weights_gathered_from_the_shards(zero2_recipe, tmp_path):
    """The recipe's final folder in a fresh process that can import nothing of the project: its pipeline's
    transcripts equal those of the model whose weights DeepSpeed's `zero_to_fp32` rebuilt from the last
    checkpoint's shards, and those weights equal the saved ones bit for bit."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from transformers import AutoModel, AutoProcessor

    from modeling.pipeline_entropy_asr import EntropyASRPipeline

    folder = zero2_recipe / "grpo"
    gathered = get_fp32_state_dict_from_zero_checkpoint(str(folder / f"checkpoint-{_steps(folder)}"))
    saved = load_file(str(folder / "model.safetensors"))
    assert gathered.keys() == saved.keys()
    assert all(torch.equal(gathered[k], saved[k]) for k in saved)

    model = AutoModel.from_pretrained(folder, trust_remote_code=True)
    model.load_state_dict(gathered)
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    pipe = EntropyASRPipeline(model=model.eval(), processor=processor, task="automatic-speech-recognition")
    clips = [str(tmp_path / f"clip{i}.wav") for i in range(2)]
    for i, path in enumerate(clips):
        sf.write(path, synth_clip(1.2 + i, seed=i), 16000)
    by_hand = [pipe(c)["text"] for c in clips]
    fresh = run_python(
        f"""{ISOLATED}
import json
from transformers import pipeline
pipe = pipeline("automatic-speech-recognition", model={str(folder)!r}, trust_remote_code=True)
print(json.dumps([pipe(c)["text"] for c in {clips!r}]))
"""
    )
    assert json.loads(fresh.strip().splitlines()[-1]) == by_hand


def test_a_stage_killed_under_zero2_resumes_from_its_shards_to_the_uninterrupted_weights(
    tiny_model_dir, tiny_corpus, tmp_path
):
    """SIGKILL to the whole launch (the launcher and both ranks) after checkpoint-4, then the same command again: it
    resumes from DeepSpeed's sharded checkpoint (optimizer partitions, scheduler, each rank's RNG) and ends with
    the weights of a run that was never interrupted (the same stage again, the command's second stage), bit for
    bit, on both ranks."""

    stage = {
        "stage": "pretrain",
        "model": str(tiny_model_dir),  # so `straight` starts from it too, not from the stage before it
        "data": {"path": str(tiny_corpus / "dataset"), "max_train_samples": 32},
        "augment": {"noise_prob": 0.5},
        "training": {"max_steps": 8, "per_device_train_batch_size": 2, "learning_rate": 2e-3},
        "seed": 0,
    }
    stage["training"] |= {
        "save_steps": 2,
        "logging_steps": 1,
        "train_sampling_strategy": "group_by_length",
    }
    # one command of two stages, each this stage dict into tmp_path/NAME: `killed` (SIGKILLed in the first launch,
    # resumed by the second), then `straight`, the same stage uninterrupted, trained by the second launch's
    # processes after `killed` (a launch's start-up is most of these runs' time)
    stages = {name: copy.deepcopy(stage) for name in ("killed", "straight")}
    command = write_recipe(tmp_path / "recipe.yaml", tmp_path, tiny_model_dir, stages)
    killed = launch_two_processes(command, ZERO2_CPU, stderr=subprocess.DEVNULL)
    marker = tmp_path / "killed" / "checkpoint-4" / "trainer_state.json"
    deadline = time.time() + 300
    while not (marker.exists() and (marker.parent / "rng_state_1.pth").exists()):
        assert killed.poll() is None, "the run ended before checkpoint-4"
        assert time.time() < deadline, "no checkpoint-4 within 300 s"
        time.sleep(0.1)
    launcher = psutil.Process(killed.pid)
    processes = [*launcher.children(recursive=True), launcher]  # the ranks run in sessions of their own
    assert len(processes) >= 3
    for process in processes:
        process.send_signal(signal.SIGKILL)
    killed.wait()
    psutil.wait_procs(processes, timeout=30)
    assert not (tmp_path / "killed" / "stage_complete.json").exists()
    assert not (tmp_path / "straight").exists()  # the first launch died in its first stage
    proc = launch_two_processes(command, ZERO2_CPU)
    assert proc.returncode == 0, proc.stderr[-4000:]
    resumed = re.findall(r"pretrain: resuming from (\S+)/checkpoint-(\d+)", proc.stderr)
    # each rank resumed `killed` (neither started over), and `straight` resumed nothing
    assert [folder for folder, _ in resumed] == [str(tmp_path / "killed")] * 2, resumed
    assert all(int(step) >= 4 for _, step in resumed), resumed
    a, b = (load_file(str(tmp_path / name / "model.safetensors")) for name in ("straight", "killed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert len(set(rank_checksums(tmp_path / "straight") + rank_checksums(tmp_path / "killed"))) == 1
