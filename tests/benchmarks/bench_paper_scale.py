"""Paper-scale figures on a CUDA GPU (run by `make bench` where one is present; on a machine without one the
test is skipped with that reason): the 2.3B configuration of configs/model/paper-2.3b.yaml (FastConformer ~0.6B
+ Qwen3-1.7B shapes) with random weights, 10 s clips.

- training: optimizer steps (median of 5 after 2 warm-up steps) of the project's Trainer subclasses
  (`PretrainTrainer` = stage 1 CTC, `IASFTTrainer` = encoder frozen, `JointSFTTrainer` = everything trains)
  under `TrainingArguments(bf16=True)` (float32 master weights, bf16 autocast, fused AdamW), joint SFT also
  with gradient checkpointing: step time, audio hours per hour, approximate model TFLOP/s, peak GPU memory;
- inference: the bf16 model's greedy transcription (40 tokens per clip) at batch 1 and 32: RTF, first-token and
  per-token times, and the lean greedy loop against `GenerationMixin.generate`.

Standalone: `python tests/benchmarks/bench_paper_scale.py [--config configs/model/tiny.yaml --device cpu]`
prints the same figures (the tiny config on CPU is a quick check of the script itself); with `--json FILE` they
are also written there."""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a script
    sys.path.insert(0, str(REPO))
CLIP_SECONDS = 10.0
TRANSCRIPT_TOKENS = 40
# chat-template tokens before / after the audio, as in the demo model's prompt
PROMPT_HEAD, PROMPT_TAIL = 66, 9


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _peak_gib(device: str) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")


def _reset_peak(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def build_model(config_path: Path, device: str):
    """Random-weight model of a model YAML, built directly on `device` (float32), with token ids set for a
    tokenizer-free benchmark (audio placeholder, EOS and pad at the top of the vocabulary)."""
    from modeling import EntropyASRForConditionalGeneration
    from training.build import build_config, init_encoder_for_scratch_training, load_yaml

    config, _, _ = build_config(load_yaml(config_path))
    vocab = config.text_config.vocab_size
    config.audio_token_id, config.pad_token_id, config.eos_token_id = vocab - 1, vocab - 2, vocab - 3
    torch.manual_seed(0)
    with torch.device(device):
        model = EntropyASRForConditionalGeneration(config)
    init_encoder_for_scratch_training(model.model.encoder)
    gen = model.generation_config
    gen.eos_token_id, gen.pad_token_id, gen.bos_token_id = vocab - 3, vocab - 2, None
    gen.do_sample, gen.suppress_tokens = False, [vocab - 1]
    return model


def _n_audio(model) -> int:
    from modeling.configuration_entropy_asr import num_audio_tokens

    return int(num_audio_tokens(int(CLIP_SECONDS * 16000), **model.config.audio_length_kwargs))


def _features(model, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    frames = int(CLIP_SECONDS * 16000) // model.config.hop_length
    mels = model.config.encoder_config.num_mel_bins
    return torch.randn(batch, frames, mels, generator=generator), torch.ones(batch, frames, dtype=torch.long)


def _prompt_ids(model, batch: int, generator: torch.Generator, transcript: int = 0) -> torch.Tensor:
    vocab = model.config.text_config.vocab_size
    head = torch.randint(0, vocab - 3, (1, PROMPT_HEAD), generator=generator).expand(batch, -1)
    audio = torch.full((batch, _n_audio(model)), model.config.audio_token_id)
    tail = torch.randint(0, vocab - 3, (batch, PROMPT_TAIL + transcript), generator=generator)
    return torch.cat([head, audio, tail], dim=1)


def _examples(model, stage: str, count: int) -> list[dict[str, torch.Tensor]]:
    """`count` training examples of one 10 s clip each, as the stage's collator would produce them."""
    g = torch.Generator().manual_seed(1)
    rows = []
    for _ in range(count):
        feats, mask = _features(model, 1, g)
        row = {"input_features": feats[0], "input_features_mask": mask[0]}
        if stage == "pretrain":
            row["ctc_labels"] = torch.randint(1, model.config.ctc_vocab_size, (60,), generator=g)
        else:
            ids = _prompt_ids(model, 1, g, transcript=TRANSCRIPT_TOKENS)[0]
            labels = torch.full_like(ids, -100)
            labels[-TRANSCRIPT_TOKENS:] = ids[-TRANSCRIPT_TOKENS:]
            row.update(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)
        rows.append(row)
    return rows


def _stack(rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}


def _approx_flops_per_example(model, stage: str, llm_tokens: int) -> float:
    """6 x parameters x positions (forward + backward) of the parts that run: the encoder at its frame rate
    (2 x when it is frozen: forward only), the CTC head (stage 1) or the LLM with its LM head over the prompt +
    transcript. An approximation (it ignores attention's sequence-length term and the subsampling convolutions'
    larger input)."""
    parts = model.num_parameters_by_part()
    enc_frames = _n_audio(model) * model.config.stack_factor
    encoder_trains = any(p.requires_grad for p in model.model.encoder.parameters())
    flops = (6 if encoder_trains else 2) * parts["encoder"] * enc_frames
    if stage == "pretrain":
        return flops + 6 * parts["ctc_head"] * enc_frames
    return flops + 6 * (parts["adaptor"] * _n_audio(model) + parts["llm"] * llm_tokens)


def time_training(model, stage: str, batch: int, steps: int, device: str, checkpointing: bool) -> dict:
    """Step time, throughput and peak memory of `steps` timed optimizer steps (after 2 warm-up steps) of the
    stage's Trainer subclass."""
    from transformers import TrainerCallback, TrainingArguments

    from training.stages.pretrain import PretrainTrainer
    from training.stages.sft import IASFTTrainer, JointSFTTrainer

    trainer_class = {"pretrain": PretrainTrainer, "ia_sft": IASFTTrainer, "joint_sft": JointSFTTrainer}[stage]
    warmup, times = 2, []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            _sync(device)
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            _sync(device)
            times.append(time.perf_counter() - self.t0)

    cuda = device.startswith("cuda")
    rows = _examples(model, stage, batch)
    _reset_peak(device)
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            max_steps=warmup + steps,
            per_device_train_batch_size=batch,
            learning_rate=1e-5,
            bf16=cuda,
            use_cpu=not cuda,
            optim="adamw_torch_fused" if cuda else "adamw_torch",
            activation_checkpointing=checkpointing,
            save_strategy="no",
            logging_strategy="no",
            report_to=[],
            disable_tqdm=True,
            remove_unused_columns=False,
            dataloader_num_workers=0,
        )
        model.train()
        trainer = trainer_class(
            model=model, args=args, train_dataset=rows, data_collator=_stack, callbacks=[StepTimer()]
        )
        trainer.train()
        peak = _peak_gib(device)
        del trainer
    model.activation_checkpointing_disable()
    step = statistics.median(times[warmup:])
    llm_tokens = rows[0]["input_ids"].numel() if "input_ids" in rows[0] else 0
    flops = _approx_flops_per_example(model, stage, llm_tokens) * batch
    return {
        "stage": stage,
        "batch": batch,
        "gradient_checkpointing": checkpointing,
        "trainable_parameters": sum(model.num_parameters_by_part(only_trainable=True).values()),
        "step_s": round(step, 4),
        "audio_hours_per_hour": round(batch * CLIP_SECONDS / step, 1),
        "approx_model_tflops": round(flops / step / 1e12, 1),
        "peak_gib": round(peak, 2),
    }


@torch.inference_mode()
def time_inference(model, batch: int, device: str, repeats: int = 5) -> dict:
    """Greedy transcription of `batch` 10 s clips, TRANSCRIPT_TOKENS tokens each (min = max new tokens), with
    the lean loop and with `GenerationMixin.generate` (an extra `use_cache=True` sends `generate` there)."""
    g = torch.Generator().manual_seed(2)
    feats, mask = _features(model, batch, g)
    ids = _prompt_ids(model, batch, g)
    inputs = {
        "input_ids": ids.to(device),
        "attention_mask": torch.ones_like(ids).to(device),
        "input_features": feats.to(device, model.dtype),
        "input_features_mask": mask.to(device),
        "max_new_tokens": TRANSCRIPT_TOKENS,
        "min_new_tokens": TRANSCRIPT_TOKENS,
    }
    result = {"batch": batch, "new_tokens": TRANSCRIPT_TOKENS}

    def median_seconds(**kwargs) -> float:
        """Median wall time of `generate` over `repeats` calls after one warm-up call."""
        times = []
        for i in range(repeats + 1):
            _sync(device)
            t0 = time.perf_counter()
            out = model.generate(**{**inputs, **kwargs})
            _sync(device)
            if i:
                times.append(time.perf_counter() - t0)
        assert out.shape == (batch, ids.shape[1] + kwargs.get("max_new_tokens", TRANSCRIPT_TOKENS))
        return statistics.median(times)

    _reset_peak(device)
    for name, extra in (("lean", {}), ("generation_mixin", {"use_cache": True})):
        seconds = median_seconds(**extra)
        result[name] = {
            "ms_per_call": round(seconds * 1000, 1),
            "rtf": round(seconds / (batch * CLIP_SECONDS), 5),
        }
    # encoder + prefill + one token: the rest of a lean call is decoding steps
    first = median_seconds(max_new_tokens=1, min_new_tokens=1) * 1000
    result["lean"]["ms_first_token"] = round(first, 1)
    result["lean"]["ms_per_next_token"] = round(
        (result["lean"]["ms_per_call"] - first) / (TRANSCRIPT_TOKENS - 1), 2
    )
    result["lean_speedup"] = round(
        result["generation_mixin"]["ms_per_call"] / result["lean"]["ms_per_call"], 2
    )
    result["peak_gib"] = round(_peak_gib(device), 2)
    return result


def default_train_batches(device: str) -> tuple[int, int]:
    """(small, large) training batches: (16, 64) on a card of 100 GiB or more (an H200), else (16, 32): IA-SFT at
    batch 64 needs about 85 GiB."""
    if device.startswith("cuda") and torch.cuda.get_device_properties(device).total_memory >= 100 * 2**30:
        return (16, 64)
    return (16, 32)


def run(config_path: Path, device: str, train_batches=None, infer_batches=(1, 32), steps: int = 5) -> dict:
    train_batches = train_batches or default_train_batches(device)
    t0 = time.perf_counter()
    model = build_model(config_path, device)
    parts = model.num_parameters_by_part()
    report = {
        "config": str(config_path.relative_to(REPO) if config_path.is_relative_to(REPO) else config_path),
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else device,
        "torch": torch.__version__,
        "clip_seconds": CLIP_SECONDS,
        "parameters": parts,
        "parameters_total": sum(parts.values()),
        "build_s": round(time.perf_counter() - t0, 1),
        "training": [],
    }
    import transformers

    report["transformers"] = transformers.__version__
    for stage, batch, ckpt in [
        ("pretrain", train_batches[-1], False),
        ("ia_sft", train_batches[-1], False),
        ("joint_sft", train_batches[0], False),
        (
            "joint_sft",
            train_batches[-1],
            True,
        ),  # without checkpointing, the large batch runs out of memory (64 on an H200)
    ]:
        report["training"].append(time_training(model, stage, batch, steps, device, ckpt))
        print(json.dumps(report["training"][-1]), flush=True)
    model.eval()
    model.to(torch.bfloat16 if device.startswith("cuda") else torch.float32)
    _reset_peak(device)
    report["inference_dtype"] = str(model.dtype)
    report["inference_weights_gib"] = round(
        sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30, 2
    )
    report["inference"] = [time_inference(model, b, device) for b in infer_batches]
    for row in report["inference"]:
        print(json.dumps(row), flush=True)
    return report


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="paper-scale figures need a CUDA GPU")
def test_paper_scale_on_gpu():
    report = run(REPO / "configs/model/paper-2.3b.yaml", "cuda")
    print(json.dumps(report, indent=2))
    assert abs(report["parameters_total"] - 2.3e9) <= 0.15e9
    for row in report["training"]:
        assert row["step_s"] > 0 and row["peak_gib"] > report["inference_weights_gib"]
    for row in report["inference"]:
        assert row["lean"]["rtf"] < 1.0  # faster than real time at any batch size on a GPU


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(REPO / "configs/model/paper-2.3b.yaml"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--train-batches",
        default=None,
        help="comma-separated training batch sizes (default: 16,64 on a card of 100 GiB or more, else 16,32)",
    )
    parser.add_argument("--infer-batches", default="1,32", help="comma-separated inference batch sizes")
    parser.add_argument("--steps", type=int, default=5, help="timed optimizer steps per configuration")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    batches = lambda s: tuple(int(x) for x in s.split(","))  # noqa: E731
    report = run(
        Path(args.config).resolve(),
        args.device,
        batches(args.train_batches) if args.train_batches else None,
        batches(args.infer_batches),
        args.steps,
    )
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
