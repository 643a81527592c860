"""Each stage on the tiny corpus and model: the loss goes down, frozen parts stay bitwise unchanged and trained
parts change; the IA-SFT hot-swap follows the CKA threshold; config errors name the key. Under `accelerate
launch` with 2 CPU processes, pretraining, IA-SFT, LoRA and joint SFT and GRPO (DDP) and LoRA and joint SFT
(DeepSpeed ZeRO-2) end with one model on both ranks."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import ZERO2_CPU, launch_two_processes, rank_checksums, write_recipe
from training.config import ConfigError, load_stage_config, stage_config_to_dict
from training.data.loading import load_speech_dataset
from training.stages.lifecycle import run_stage

PART_PREFIXES = {
    "encoder": "model.encoder.",
    "ctc_head": "model.ctc_head.",
    "adaptor": "model.adaptor.",
    "llm": ("model.language_model.", "lm_head."),
}


def _weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(Path(folder) / "model.safetensors"))


def _changed_parts(before, after) -> dict[str, bool]:
    out = {}
    for part, prefix in PART_PREFIXES.items():
        keys = [k for k in before if k.startswith(prefix)]
        assert keys, part
        out[part] = any(not torch.equal(before[k], after[k]) for k in keys)
    return out


def _losses(out_dir, key="loss") -> list[float]:
    history = json.loads((Path(out_dir) / "stage_complete.json").read_text())["log_history"]
    return [h[key] for h in history if key in h]


def _config(stage, model, out, corpus, **extra):
    data = {
        "stage": stage,
        "model": str(model),
        "output_dir": str(out),
        "data": {"path": str(corpus / "dataset"), "text_corpus": str(corpus / "text_corpus.txt")},
        "training": {
            "max_steps": 24,
            "per_device_train_batch_size": 4,
            "learning_rate": 2e-3,
            "logging_steps": 1,
            "save_steps": 8,
            "warmup_steps": 0,
            "lr_scheduler_type": "constant",
            "report_to": [],
        },
        "augment": False,
        "seed": 0,
    }
    for k, v in extra.items():
        data[k] = {**data[k], **v} if isinstance(v, dict) and isinstance(data.get(k), dict) else v
    return load_stage_config(data)


def _drop(losses, n=4):
    return sum(losses[:n]) / n, sum(losses[-n:]) / n


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, tiny_model_dir, tiny_corpus):
    out = tmp_path_factory.mktemp("stages") / "pretrain"
    run_stage(
        _config(
            "pretrain",
            tiny_model_dir,
            out,
            tiny_corpus,
            augment={"noise_prob": 0.5},
            ctc={"consistency_weight": 0.2},
            training={"learning_rate": 3e-3},
        )
    )
    return out


def test_pretrain_cr_ctc(pretrained, tiny_model_dir):
    first, last = _drop(_losses(pretrained))
    assert last < 0.8 * first, (first, last)
    assert all(v >= 0 for v in _losses(pretrained, "consistency_kl"))
    changed = _changed_parts(_weights(tiny_model_dir), _weights(pretrained))
    assert changed == {"encoder": True, "ctc_head": True, "adaptor": False, "llm": False}
    # every checkpoint and the final folder load through the Auto classes (remote code present)
    for folder in (pretrained / "checkpoint-8", pretrained):
        assert (folder / "modeling_entropy_asr.py").is_file() and (folder / "stage_info.json").is_file()
    assert json.loads((pretrained / "stage_info.json").read_text())["encoder_source"] == str(pretrained)
    # every snapshot stays (alignment and the hot-swap choose among them); only the two newest keep the
    # optimizer state that resuming needs
    snapshots = sorted(pretrained.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert [p.name for p in snapshots] == ["checkpoint-8", "checkpoint-16", "checkpoint-24"]
    assert all(
        (p / "model.safetensors").is_file() and (p / "trainer_state.json").is_file() for p in snapshots
    )
    assert [(p / "optimizer.pt").is_file() for p in snapshots] == [False, True, True]


def test_align_trains_only_the_adaptor(pretrained, tiny_corpus, tmp_path):
    out = tmp_path / "align"
    run_stage(
        _config(
            "align",
            pretrained,
            out,
            tiny_corpus,
            data={"max_train_samples": 16},
            training={"learning_rate": 1e-2},
        )
    )
    first, last = _drop(_losses(out))
    assert last < first, (first, last)
    changed = _changed_parts(_weights(pretrained), _weights(out))
    assert changed == {"encoder": False, "ctc_head": False, "adaptor": True, "llm": False}


def test_text_lm_trains_only_the_llm(tiny_model_dir, tiny_corpus, tmp_path):
    out = tmp_path / "text_lm"
    run_stage(
        _config("text_lm", tiny_model_dir, out, tiny_corpus, training={"per_device_train_batch_size": 16})
    )
    first, last = _drop(_losses(out))
    assert last < 0.8 * first, (first, last)
    changed = _changed_parts(_weights(tiny_model_dir), _weights(out))
    assert changed == {"encoder": False, "ctc_head": False, "adaptor": False, "llm": True}
    # saved at 8, 16 and 24: past pretraining, only the two newest checkpoints are kept (save_total_limit)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-16", "checkpoint-24"]
    assert (out / "checkpoint-16" / "optimizer.pt").is_file()


@pytest.mark.parametrize("stage", ["joint_sft", "context_sft"])
def test_joint_and_context_sft_train_everything(pretrained, tiny_corpus, tmp_path, stage):
    out = tmp_path / stage
    extra = {"context": {"inject_prob": 1.0, "distractor_prob": 1.0}} if stage == "context_sft" else {}
    run_stage(
        _config(
            stage, pretrained, out, tiny_corpus, training={"max_steps": 16, "learning_rate": 1e-3}, **extra
        )
    )
    first, last = _drop(_losses(out))
    assert last < first, (first, last)
    changed = _changed_parts(_weights(pretrained), _weights(out))
    assert changed == {"encoder": True, "ctc_head": False, "adaptor": True, "llm": True}
    # the saved model carries a no-speech gate calibrated on the dev split; stage 1's output has none
    gate = json.loads((out / "stage_info.json").read_text())["no_speech"]
    n_dev = len(load_speech_dataset(tiny_corpus / "dataset", split="dev"))
    assert gate["split"] == "dev" and gate["clips"] == min(200, n_dev)
    assert gate["no_speech_threshold"] == pytest.approx(min(1.0, max(0.01, 1.25 * gate["max_probability"])))
    saved = json.loads((out / "config.json").read_text())
    assert saved["no_speech_threshold"] == gate["no_speech_threshold"]
    assert json.loads((pretrained / "config.json").read_text()).get("no_speech_threshold") is None
    # and the speech-confidence gate, 0.9 x the lowest confidence on the same clips (none when the barely
    # trained CTC head hears no phoneme at all in a dev clip, as the test fixture's may)
    assert gate["confidence_margin"] == 0.1 and gate["min_confidence"] >= 0.0
    if gate["min_confidence"] == 0.0:
        assert gate["min_speech_confidence"] is None
    else:
        assert gate["min_speech_confidence"] == pytest.approx(0.9 * gate["min_confidence"])
    assert saved["min_speech_confidence"] == gate["min_speech_confidence"]


def _swapping_every_snapshot(pretrained, out, corpus, interval: int, eval_samples: int, **extra):
    """IA-SFT from the first pretraining snapshot with a threshold above 1: every check crosses it, so every
    snapshot after the reference is swapped in."""
    hot_swap = {"pretrain_dir": str(pretrained), "threshold": 1.01, "interval_steps": interval}
    hot_swap["eval_samples"] = eval_samples
    return _config("ia_sft", pretrained / "checkpoint-8", out, corpus, hot_swap=hot_swap, **extra)


def test_ia_sft_hot_swaps_and_records_history(pretrained, tiny_corpus, tmp_path):
    out = tmp_path / "ia_sft"
    config = _swapping_every_snapshot(pretrained, out, tiny_corpus, 4, 8, training={"max_steps": 12})
    run_stage(config)
    report = json.loads((out / "hot_swap.json").read_text())
    assert report["reference"] == str(pretrained)  # ends on the final snapshot
    assert [Path(s["snapshot"]).name for s in report["swaps"]] == [
        "checkpoint-16",
        "checkpoint-24",
        pretrained.name,
    ]
    assert (out / "hot_swap_cka.png").stat().st_size > 1000
    final, source = _weights(out), _weights(pretrained)
    for k in final:
        if k.startswith(("model.encoder.", "model.ctc_head.")):
            assert torch.equal(final[k], source[k]), k
    changed = _changed_parts(_weights(pretrained / "checkpoint-8"), final)
    assert changed["adaptor"] and changed["llm"]
    info = json.loads((out / "checkpoint-8" / "stage_info.json").read_text())
    # checks at steps 4 and 8 ran before the step-8 save
    assert [Path(s["snapshot"]).name for s in info["hot_swap"]["swaps"]] == ["checkpoint-16", "checkpoint-24"]


def test_hot_swap_only_when_cka_below_threshold(pretrained, tiny_corpus):
    from training.callbacks.hot_swap import (
        HotSwapCallback,
        encoder_states,
        load_encoder_weights,
        probe_features,
    )
    from training.stages.base import load_model_and_processor
    from training.stages.folders import stage_dataset

    config = _config(
        "ia_sft",
        pretrained / "checkpoint-8",
        pretrained.parent / "unused",
        tiny_corpus,
        hot_swap={"pretrain_dir": str(pretrained), "eval_samples": 8},
    )
    model, processor = load_model_and_processor(pretrained / "checkpoint-8")
    feats, mask = probe_features(processor, stage_dataset(config, "dev", None, 8), 8)
    ref = str(pretrained / "checkpoint-8")
    # CKA is 1 for identical encoders
    from training.callbacks.hot_swap import cka

    same = encoder_states(model, feats, mask, load_encoder_weights(ref))
    assert cka(same, same) == pytest.approx(1.0, abs=1e-6)
    probe = HotSwapCallback(model, feats, mask, config.hot_swap, ref)
    value = probe.check(step=1)["cka"]
    assert value < 1.0
    for threshold, expect_swap in ((value - 1e-4, False), (value + 1e-4, True)):
        config.hot_swap.threshold = threshold
        model, _ = load_model_and_processor(pretrained / "checkpoint-8")
        cb = HotSwapCallback(model, feats, mask, config.hot_swap, ref)
        point = cb.check(step=1)
        assert point["cka"] == pytest.approx(value, abs=1e-9)
        assert point["swapped"] is expect_swap
        enc = model.model.encoder.state_dict()
        new = load_encoder_weights(pretrained / "checkpoint-16")
        assert (
            all(
                torch.equal(enc[k[len("model.encoder.") :]], v)
                for k, v in new.items()
                if k.startswith("model.encoder.")
            )
            is expect_swap
        )


def test_cka_falls_as_pretraining_moves_the_encoder(pretrained, tiny_corpus):
    from training.callbacks.hot_swap import cka, encoder_states, load_encoder_weights, probe_features
    from training.stages.base import load_model_and_processor
    from training.stages.folders import stage_dataset

    config = _config("pretrain", pretrained, pretrained.parent / "unused", tiny_corpus)
    model, processor = load_model_and_processor(pretrained / "checkpoint-8")
    feats, mask = probe_features(processor, stage_dataset(config, "dev", None, 8), 8)
    ref = encoder_states(model, feats, mask)
    values = [
        cka(ref, encoder_states(model, feats, mask, load_encoder_weights(pretrained / f"checkpoint-{s}")))
        for s in (8, 16, 24)
    ]
    assert values[0] == pytest.approx(1.0, abs=1e-6)
    assert values[2] < values[1] < 0.9999, values


def test_config_errors_name_the_key(tiny_model_dir, tiny_corpus, tmp_path):
    base = {
        "stage": "align",
        "model": str(tiny_model_dir),
        "output_dir": str(tmp_path / "x"),
        "data": {"path": str(tiny_corpus / "dataset")},
    }
    with pytest.raises(ConfigError, match=r"^trainng: unknown key"):
        load_stage_config({**base, "trainng": {}})
    with pytest.raises(ConfigError, match=r"^training.learning_rat: not a TrainingArguments field"):
        load_stage_config({**base, "training": {"learning_rat": 1}})
    with pytest.raises(ConfigError, match=r"^data.path: .*missing.* does not exist"):
        load_stage_config({**base, "data": {"path": str(tmp_path / "missing")}})
    with pytest.raises(ConfigError, match=r"^data.pth: unknown key"):
        load_stage_config({**base, "data": {"pth": "x"}})
    with pytest.raises(ConfigError, match=r"^stage: unknown stage 'finetune'"):
        load_stage_config({**base, "stage": "finetune"})
    with pytest.raises(ConfigError, match=r"^model: .* is not a model folder"):
        run_stage(load_stage_config({**base, "model": str(tmp_path)}))
    with pytest.raises(ConfigError, match=r"^chunking.dynamic: only the pretrain stage trains the encoder"):
        load_stage_config({**base, "chunking": {"dynamic": True}})
    pretrain = {**base, "stage": "pretrain"}
    with pytest.raises(ConfigError, match=r"^chunking.max_chunk_frames: must be >= 1"):
        load_stage_config({**pretrain, "chunking": {"dynamic": True, "max_chunk_frames": 0}})
    with pytest.raises(ConfigError, match=r"^chunking.full_context_prob: must be in \[0, 1\]"):
        load_stage_config({**pretrain, "chunking": {"dynamic": True, "full_context_prob": 1.5}})
    with pytest.raises(ConfigError, match=r"^chunking.feature_stats_clips: only the pretrain stage"):
        load_stage_config({**base, "chunking": {"feature_stats_clips": 8}})
    with pytest.raises(ConfigError, match=r"^chunking.feature_stats_clips: must be >= 0"):
        load_stage_config({**pretrain, "chunking": {"feature_stats_clips": -1}})
    assert not (tmp_path / "x").exists()  # failed before any training output


def test_dynamic_chunks_draw_full_context_and_chunks_in_range():
    from training.config import ChunkingConfig
    from training.stages.pretrain import draw_chunking

    generator = torch.Generator().manual_seed(0)
    config = ChunkingConfig(dynamic=True, full_context_prob=0.3, max_chunk_frames=6, max_left_chunks=2)
    draws = [draw_chunking(config, generator) for _ in range(2000)]
    full = [d for d in draws if d["encoder_chunk_frames"] == 0]
    assert 0.26 < len(full) / len(draws) < 0.34 and all(d["encoder_left_chunks"] == -1 for d in full)
    chunked = [d for d in draws if d["encoder_chunk_frames"]]
    assert {d["encoder_chunk_frames"] for d in chunked} == set(range(1, 7))
    assert {d["encoder_left_chunks"] for d in chunked} == {0, 1, 2}
    unbounded = ChunkingConfig(dynamic=True, full_context_prob=0.0, max_left_chunks=-1)
    assert {draw_chunking(unbounded, generator)["encoder_left_chunks"] for _ in range(50)} == {-1}


def test_training_batches_go_through_the_models_front_end(tiny_model_and_processor):
    """The collators' features are `processor.audio_features` (the front end inference uses): with fixed feature
    statistics in the processor, training sees the features the streaming model will see."""
    import copy

    from tests.conftest import synth_clip
    from training.data.collators import CTCCollator

    _, processor = tiny_model_and_processor
    processor = copy.copy(processor)
    waves = [synth_clip(1.5, seed=1), synth_clip(2.2, seed=2)]
    rows = [{"views": [w], "index": i, "phonemes": processor.ctc_vocab[1]} for i, w in enumerate(waves)]
    per_clip = CTCCollator(processor)(rows)["input_features"]
    processor.set_feature_stats(processor.estimate_feature_stats([torch.tensor(w) for w in waves]))
    fixed = CTCCollator(processor)(rows)["input_features"]
    assert torch.equal(fixed, processor.audio_features([torch.tensor(w) for w in waves])[0])
    assert (fixed - per_clip).abs().max() > 1e-2


def test_pretraining_with_dynamic_chunks_trains_in_both_contexts(
    tiny_model_dir, tiny_corpus, tmp_path, monkeypatch
):
    """`chunking.dynamic`: some steps encode chunk-limited (chunks of 1..max frames), the others in full context;
    the CTC loss falls as without it. `chunking.feature_stats_clips`: a streamable front end (fixed statistics)."""
    import modeling.modeling_entropy_asr as M

    chunks: list[int] = []
    real = M.encode_chunked
    monkeypatch.setattr(M, "encode_chunked", lambda *a, **k: chunks.append(a[3]) or real(*a, **k))
    out = tmp_path / "chunked"
    chunking = {"dynamic": True, "max_chunk_frames": 6, "max_left_chunks": 1, "feature_stats_clips": 16}
    run_stage(
        _config("pretrain", tiny_model_dir, out, tiny_corpus, chunking=chunking, training={"max_steps": 16})
    )
    steps = 16
    assert 0 < len(chunks) < steps and set(chunks) <= set(range(1, 7))
    first, last = _drop(_losses(out, "ctc_loss"))
    assert last < first
    # the front end it trained with (fixed statistics of 16 training clips) is saved with the model and snapshots
    from modeling.processing_entropy_asr import EntropyASRProcessor

    for folder in (out, out / "checkpoint-16"):
        stats = EntropyASRProcessor.from_pretrained(folder).feature_stats
        assert stats is not None and len(stats["mean"]) == 80 and min(stats["std"]) > 0
    assert EntropyASRProcessor.from_pretrained(tiny_model_dir).feature_stats is None


def test_watch_mode_follows_a_pretraining_run_still_going(pretrained, tiny_corpus, tmp_path):
    """Asynchronous mode: the newest snapshot present is compared; the final swap waits for the run's end."""
    import shutil

    from training.callbacks.hot_swap import COMPLETE_MARKER, HotSwapCallback, probe_features
    from training.stages.base import load_model_and_processor
    from training.stages.folders import stage_dataset

    live = tmp_path / "live_pretrain"
    live.mkdir()
    for step in (8, 16):
        shutil.copytree(pretrained / f"checkpoint-{step}", live / f"checkpoint-{step}")
    config = _config(
        "ia_sft",
        live / "checkpoint-8",
        tmp_path / "unused",
        tiny_corpus,
        hot_swap={"pretrain_dir": str(live), "mode": "watch", "threshold": 1.01, "eval_samples": 4},
    )
    model, processor = load_model_and_processor(live / "checkpoint-8")
    feats, mask = probe_features(processor, stage_dataset(config, "dev", None, 4), 4)
    cb = HotSwapCallback(model, feats, mask, config.hot_swap, str(live / "checkpoint-8"))
    assert Path(cb.check(step=10)["snapshot"]).name == "checkpoint-16"
    assert cb.check(step=20) is None  # nothing newer yet
    shutil.copytree(pretrained / "checkpoint-24", live / "checkpoint-24")
    assert Path(cb.check(step=30)["snapshot"]).name == "checkpoint-24"
    for name in ("model.safetensors", "config.json"):
        shutil.copy2(pretrained / name, live / name)
    assert cb.check(step=40) is None  # the run's own folder is not a snapshot until the run has finished
    (live / COMPLETE_MARKER).write_text("{}")
    point = cb.check(step=50)
    assert point["final"] and point["swapped"] and cb.current == str(live)
    assert [Path(s["snapshot"]).name for s in cb.swaps] == ["checkpoint-16", "checkpoint-24", live.name]


def test_lora_joint_sft_trains_adapters_and_saves_merged(pretrained, tiny_corpus, tmp_path):
    out = tmp_path / "lora"
    run_stage(
        _config(
            "joint_sft",
            pretrained,
            out,
            tiny_corpus,
            lora={"r": 4, "alpha": 8},
            training={"max_steps": 4, "save_steps": 2},
            trainable={"encoder": False},
        )
    )
    before, after = _weights(pretrained), _weights(out)
    assert not any("lora_" in k for k in after)
    assert before.keys() == after.keys()
    q, mlp = (
        "model.language_model.layers.0.self_attn.q_proj.weight",
        "model.language_model.layers.0.mlp.down_proj.weight",
    )
    assert not torch.equal(before[q], after[q])  # merged adapter update
    assert torch.equal(before[mlp], after[mlp]) and torch.equal(
        before["lm_head.weight"], after["lm_head.weight"]
    )
    assert (out / "checkpoint-2" / "config.json").is_file()


def test_lora_adapters_are_drawn_from_the_stage_seed(tiny_model_dir, tiny_corpus, tmp_path):
    """The adapters do not depend on what the process drew before the stage (a recipe runs stages one after the
    other in one process): the same seed gives the same adapters whatever the global generator's state, another
    seed other ones, and the global generator is left where it was."""
    from transformers import AutoModel

    from training.stages.base import apply_lora

    def adapters(seed: int, draws: int) -> dict[str, torch.Tensor]:
        model = AutoModel.from_pretrained(tiny_model_dir, trust_remote_code=True)
        torch.manual_seed(123)
        torch.rand(draws)  # what the process did before
        before = torch.random.get_rng_state()
        lora = {"r": 4, "alpha": 8}
        config = _config("joint_sft", tiny_model_dir, tmp_path / "out", tiny_corpus, lora=lora, seed=seed)
        apply_lora(model, config)
        assert torch.equal(torch.random.get_rng_state(), before)
        return {k: v.clone() for k, v in model.state_dict().items() if "lora_A" in k}

    first, second, other = adapters(0, 1), adapters(0, 1000), adapters(1, 1)
    assert first and first.keys() == second.keys() == other.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not any(torch.equal(first[k], other[k]) for k in first)


def test_numbers_in_exponent_form_are_numbers(tiny_model_dir, tiny_corpus, tmp_path):
    """`1e-3` is a float in stage YAML and in key=value overrides (PyYAML alone reads it as a string)."""
    from training.config import parse_overrides, parse_yaml

    assert parse_overrides(["training.learning_rate=1e-3", "a=5E4", "b=2.0e-4", "c=x1e3", "d=10"]) == {
        "training": {"learning_rate": 1e-3},
        "a": 5e4,
        "b": 2e-4,
        "c": "x1e3",
        "d": 10,
    }
    assert parse_yaml("lr: 3e-4\nname: 1e\n") == {"lr": 3e-4, "name": "1e"}
    path = tmp_path / "stage.yaml"
    path.write_text(
        f"stage: align\nmodel: {tiny_model_dir}\noutput_dir: {tmp_path / 'o'}\n"
        f"data: {{path: {tiny_corpus / 'dataset'}}}\ntraining: {{learning_rate: 1e-3}}\n"
    )
    config = load_stage_config(path, ["training.weight_decay=1e-2"])
    assert config.training["learning_rate"] == 1e-3 and config.training["weight_decay"] == 1e-2


def test_text_collator_uses_the_chat_templates_assistant_prefix():
    from tests.conftest import TOKENIZER_TEXTS
    from training.build import train_tokenizer
    from training.data.collators import TextCollator, assistant_turn_prefix

    tok = train_tokenizer(TOKENIZER_TEXTS, vocab_size=400)
    assert assistant_turn_prefix(tok) == "<|im_start|>assistant\n"
    batch = TextCollator(tok, "<|im_end|>")(["call john", "打电话给张伟"])
    first = batch["input_ids"][0][batch["attention_mask"][0].bool()]
    assert tok.decode(first) == "<|im_start|>assistant\ncall john<|im_end|>"
    kept = batch["labels"][1][batch["labels"][1] != -100]
    assert tok.decode(kept) == "打电话给张伟<|im_end|>"
    tok.chat_template = None
    assert assistant_turn_prefix(tok) == ""
    plain = TextCollator(tok, "<|im_end|>")(["call john"])
    assert tok.decode(plain["input_ids"][0]) == "call john<|im_end|>"


def test_group_by_length_batches_clips_of_similar_duration(pretrained, tiny_corpus, tmp_path):
    """`train_sampling_strategy: group_by_length` pads less than random batches, with every row once per pass."""
    from training.data.loading import LengthGroupedBatchOrder
    from training.stages.lifecycle import build_trainer

    def padded_frames(strategy):
        config = _config(
            "align",
            pretrained,
            tmp_path / strategy,
            tiny_corpus,
            training={"train_sampling_strategy": strategy},
        )
        trainer = build_trainer(config)
        loader = trainer.get_train_dataloader()
        batches = list(loader)
        rows = sum(b["input_features"].shape[0] for b in batches)
        return (
            trainer,
            rows,
            sum(b["input_features"].shape[0] * b["input_features"].shape[1] for b in batches),
        )

    grouped, rows, frames = padded_frames("group_by_length")
    assert isinstance(grouped._get_train_sampler(), LengthGroupedBatchOrder)
    assert rows == len(grouped.train_dataset)
    _, random_rows, random_frames = padded_frames("random")
    assert random_rows == rows and frames < 0.9 * random_frames, (frames, random_frames)


def test_sft_stage_mixes_babble_from_training_clips(pretrained, tiny_corpus, tmp_path, monkeypatch):
    """Babble (additive noise and non-speech clips) needs other talkers: the stage decodes a seeded draw of
    its training clips for it, so babble is drawn like the other noise kinds; without talkers it never is."""
    import training.data.augment as augment_module
    from training.stages.lifecycle import build_trainer

    def transform(**augment):
        config = _config(
            "joint_sft",
            pretrained,
            tmp_path / "babble",
            tiny_corpus,
            augment={
                "speed_perturb": False,
                "noise_prob": 0.0,
                "noise_kinds": ["babble"],
                "nonspeech_prob": 1.0,
                **augment,
            },
        )
        return build_trainer(config).train_dataset.transform

    mixed = []
    real_babble = augment_module.babble
    monkeypatch.setattr(
        augment_module,
        "babble",
        lambda others, n, rng: mixed.append(len(others)) or real_babble(others, n, rng),
    )

    def babble_draws(t, n=60):
        mixed.clear()
        row = {"audio": train[0], "text": "call john", "phonemes": "", "entities": [], "index": 0}
        rows = [t({**row, "index": i}) for i in range(n)]
        assert all(r["text"] == "" and r["nonspeech"] for r in rows)
        return len(mixed)

    train = _speech_rows(tiny_corpus)
    t = transform(babble_talkers=5)
    assert len(t.babble_pool) == 5
    for talker in t.babble_pool:  # decoded training clips, not augmented ones
        assert any(np.array_equal(talker, clip) for clip in train)
    again = transform(babble_talkers=5).babble_pool  # the same seeded draw
    assert all(np.array_equal(a, b) for a, b in zip(again, t.babble_pool))
    # kinds: silence, white, babble -> about a third of the non-speech clips are babble of the 5 talkers
    draws = babble_draws(t)
    assert 10 <= draws <= 30 and set(mixed) == {5}, draws
    assert transform(babble_talkers=0).babble_pool == [] and babble_draws(transform(babble_talkers=0)) == 0
    assert transform(babble_talkers=5, noise_kinds=["vehicle"]).babble_pool == []
    with pytest.raises(ValueError, match="babble_talkers"):
        transform(babble_talkers=-1)


def _speech_rows(corpus):
    from training.data.loading import SpeechDataset

    return [row["audio"] for row in SpeechDataset(load_speech_dataset(corpus / "dataset", split="train"))]


def test_language_weights_reach_the_training_split(tiny_model_dir, tiny_corpus, tmp_path):
    from training.stages.lifecycle import build_trainer

    langs = load_speech_dataset(str(tiny_corpus / "dataset"), split="train")["language"]
    config = _config(
        "pretrain", tiny_model_dir, tmp_path / "w", tiny_corpus, data={"language_weights": {"zh": 2}}
    )
    trainer = build_trainer(config)
    assert len(trainer.train_dataset) == len(langs) + langs.count("zh") > len(langs)
    config = _config(
        "pretrain", tiny_model_dir, tmp_path / "w", tiny_corpus, data={"language_weights": {"xx": 2}}
    )
    with pytest.raises(ConfigError, match=r"data.language_weights: .*\['xx'\]"):
        build_trainer(config)


def test_the_character_head_is_drawn_from_the_stage_seed(tiny_model_dir, tiny_corpus, tmp_path):
    """The conventional recipe's character CTC head is made before the Trainer seeds the process: whatever the
    process drew before, the same seed gives the same head (it did not, and the recipe differed run to run)."""
    from training.stages.lifecycle import build_trainer

    heads = []
    for seed, disturb in ((0, 1), (0, 2), (1, 1)):
        torch.manual_seed(disturb)
        torch.rand(disturb)  # the global generator in another state each time
        config = _config(
            "pretrain",
            tiny_model_dir,
            tmp_path / f"w{len(heads)}",
            tiny_corpus,
            ctc={"units": "char"},
            seed=seed,
        )
        model = build_trainer(config).model
        assert model.config.ctc_vocab_size > 26  # the character vocabulary
        heads.append(model.model.ctc_head.layers[-1].weight.detach().clone())
    assert torch.equal(heads[0], heads[1]) and not torch.equal(heads[0], heads[2])


def test_the_snapshot_slimmer_drops_optimizer_state_in_every_sharding_layout(tmp_path):
    """DDP's optimizer.pt, FSDP's optimizer.bin (full state dict) and optimizer_0/ (sharded), DeepSpeed's
    global_stepN/ with `latest`: all but the two newest checkpoints lose them and keep their model."""
    from types import SimpleNamespace

    from training.callbacks.snapshots import SnapshotSlimmer, optimizer_state

    layouts = {
        1: ["optimizer.pt"],
        2: ["optimizer.bin"],
        3: ["optimizer_0/__0_0.distcp"],
        4: ["global_step4/zero_pp_rank_0_mp_rank_00_optim_states.pt", "latest"],
        5: ["optimizer_0/__0_0.distcp"],
        6: ["optimizer.pt"],
    }
    for step, files in layouts.items():
        for name in ["model.safetensors", "trainer_state.json", *files]:
            path = tmp_path / f"checkpoint-{step}" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("x")
    state = SimpleNamespace(is_world_process_zero=True)
    SnapshotSlimmer(keep=2).on_save(SimpleNamespace(output_dir=str(tmp_path)), state, None)
    kept = {step: bool(optimizer_state(tmp_path / f"checkpoint-{step}")) for step in layouts}
    assert kept == {1: False, 2: False, 3: False, 4: False, 5: True, 6: True}
    assert all((tmp_path / f"checkpoint-{step}" / "model.safetensors").is_file() for step in layouts)
    assert sorted(p.name for p in (tmp_path / "checkpoint-4").iterdir()) == [
        "model.safetensors",
        "trainer_state.json",
    ]


def _launch_stages(stages: dict, workdir: Path, launch: tuple[str, ...], env: dict | None = None) -> Path:
    """The stage configs (name -> config) one after the other in ONE two-process launch (`accelerate launch ... -m
    training.commands.cli recipe`): the launcher's and the ranks' start-up, most of a few-step run, is paid once;
    each stage is still built, trained, saved and calibrated by `run_stage`, as `train` runs it, into WORKDIR/NAME,
    and starts from its own config's model (a recipe entry that names one does not start from the stage before).
    A stage reseeds the process when its Trainer is built, and LoRA's adapters are drawn from the stage's seed
    before that, so each stage ends with the weights of a `train` run of its own."""
    entries = {}
    for name, config in stages.items():
        entries[name] = stage_config_to_dict(config)
        entries[name].pop("output_dir")  # the recipe's: WORKDIR/NAME
    first_model = next(iter(entries.values()))["model"]
    command = write_recipe(workdir.parent / f"{workdir.name}.yaml", workdir, first_model, entries)
    proc = launch_two_processes(command, launch, env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for name, data in entries.items():
        ran = json.loads((workdir / name / "stage_config.json").read_text())
        assert ran["model"] == data["model"], name
    return workdir


def _lora_and_joint(pretrained, corpus, work: Path) -> dict:
    """LoRA joint SFT (3 steps) and joint SFT (4 steps) from `pretrained`, 2 clips per rank."""
    return {
        "lora": _config(
            "joint_sft",
            pretrained,
            work / "lora",
            corpus,
            lora={"r": 4, "alpha": 8},
            training={"max_steps": 3, "per_device_train_batch_size": 2, "save_steps": 3},
            no_speech={"samples": 4},
        ),
        "joint": _config(
            "joint_sft",
            pretrained,
            work / "joint",
            corpus,
            training={"max_steps": 4, "per_device_train_batch_size": 2, "save_steps": 4},
            no_speech={"samples": 4},
        ),
    }


@pytest.fixture(scope="module")
def ddp_runs(pretrained, tiny_model_dir, short_prompt_model, tiny_corpus, tmp_path_factory) -> Path:
    """In one `accelerate launch --multi_gpu` of 2 CPU processes (gloo): CR-CTC pretraining (4 steps) from the
    tiny model; IA-SFT swapping every snapshot, LoRA joint SFT and joint SFT, each from `pretrained`; GRPO (2
    steps) from the tiny model with a short prompt."""
    work = tmp_path_factory.mktemp("ddp") / "runs"
    pretrain = _config(
        "pretrain",
        tiny_model_dir,
        work / "pretrain",
        tiny_corpus,
        augment={"noise_prob": 0.5},
        ctc={"consistency_weight": 0.2},
        training={"max_steps": 4, "per_device_train_batch_size": 2, "save_steps": 4},
    )
    training = {"max_steps": 6, "per_device_train_batch_size": 2, "save_steps": 6}
    ia_sft = _swapping_every_snapshot(
        pretrained, work / "ia_sft", tiny_corpus, 2, 4, training=training, no_speech={"samples": 4}
    )
    # each rank samples and scores its share of the rollouts: per step 2 prompts x 2 completions, 2 per rank
    rollouts = {"num_generations": 2, "max_completion_length": 6, "learning_rate": 1e-3}
    grpo = _config(
        "grpo",
        short_prompt_model[0],
        work / "grpo",
        tiny_corpus,
        data={"max_train_samples": 8},
        training={"max_steps": 2, "per_device_train_batch_size": 2, "save_steps": 2, **rollouts},
        no_speech={"samples": 4},
    )
    stages = {
        "pretrain": pretrain,
        "ia_sft": ia_sft,
        **_lora_and_joint(pretrained, tiny_corpus, work),
        "grpo": grpo,
    }
    return _launch_stages(stages, work, ("--multi_gpu",))


@pytest.fixture(scope="module")
def zero2_runs(pretrained, tiny_corpus, tmp_path_factory) -> Path:
    """LoRA joint SFT and joint SFT from `pretrained` in one DeepSpeed ZeRO-2 launch (its CPU accelerator, 2
    processes), with a folder of its own for the C++ extensions DeepSpeed would build (WORK/../torch_extensions)."""
    work = tmp_path_factory.mktemp("zero2") / "runs"
    extensions = {"TORCH_EXTENSIONS_DIR": str(work.parent / "torch_extensions")}
    return _launch_stages(_lora_and_joint(pretrained, tiny_corpus, work), work, ZERO2_CPU, extensions)


def test_pretraining_in_two_processes_ends_with_the_same_weights_on_both_ranks(ddp_runs, tiny_model_dir):
    """CR-CTC with its consistency loss and noise augmentation, each rank on its share of the batch: both ranks end
    with one encoder and CTC head, and the LLM side is untouched."""
    out = ddp_runs / "pretrain"
    assert len(set(rank_checksums(out))) == 1
    assert json.loads((out / "stage_complete.json").read_text())["global_step"] == 4
    changed = _changed_parts(_weights(tiny_model_dir), _weights(out))
    assert changed == {"encoder": True, "ctc_head": True, "adaptor": False, "llm": False}


def test_grpo_in_two_processes_ends_with_the_same_weights_on_both_ranks(ddp_runs, short_prompt_model):
    """Each rank samples and scores its share of the rollouts, TRL gathers the rewards into group advantages, and the
    data-parallel update leaves both ranks with one model."""
    out = ddp_runs / "grpo"
    assert len(set(rank_checksums(out))) == 1
    done = json.loads((out / "stage_complete.json").read_text())
    steps = [h for h in done["log_history"] if "loss" in h]
    assert done["global_step"] == 2 and len(steps) == 2
    assert all(np.isfinite(h["loss"]) and "rewards/r_acc/mean" in h for h in steps)
    assert steps[1]["kl"] > 0  # the policy moved away from the reference after the first update
    before, after = _weights(short_prompt_model[0]), _weights(out)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("model.adaptor."))


def test_ia_sft_hot_swaps_alike_on_both_ranks_of_a_two_process_run(ddp_runs, pretrained):
    """`accelerate launch` with 2 CPU processes (gloo): every rank swaps the same snapshots into its replica, so both
    end with the same weights, and the encoder is the final snapshot's."""
    out = ddp_runs / "ia_sft"
    assert len(set(rank_checksums(out))) == 1
    report = json.loads((out / "hot_swap.json").read_text())
    assert [Path(s["snapshot"]).name for s in report["swaps"]] == [
        "checkpoint-16",
        "checkpoint-24",
        pretrained.name,
    ]
    final, source = _weights(out), _weights(pretrained)
    assert all(
        torch.equal(final[k], source[k]) for k in final if k.startswith(("model.encoder.", "model.ctc_head."))
    )


@pytest.mark.parametrize("launch", ["ddp", "zero2"])
def test_lora_joint_sft_in_two_processes_ends_with_the_same_merged_weights_on_both_ranks(
    request, pretrained, launch
):
    """Under DDP and DeepSpeed ZeRO-2 (only the adapters in the optimizer's partitions): both ranks fold the same
    adapters into the same merged model."""
    out = request.getfixturevalue(f"{launch}_runs") / "lora"
    assert len(set(rank_checksums(out))) == 1
    after, before = _weights(out), _weights(pretrained)
    assert not any("lora_" in k for k in after) and after.keys() == before.keys()
    assert any(not torch.equal(after[k], before[k]) for k in after if k.startswith("model.language_model."))


def test_joint_sft_under_deepspeed_zero2_in_two_cpu_processes_matches_ddp(ddp_runs, zero2_runs, pretrained):
    """DeepSpeed runs on the CPU (its CPU accelerator, gloo between the processes): ZeRO-2 joint SFT in two processes
    ends with the same weights on both ranks, equal to those of the same run under DDP to float rounding (ZeRO-2
    shards the optimizer state and gradients, not the arithmetic), with DeepSpeed's sharded optimizer state in its
    checkpoint."""
    runs = {}
    for name, work in (("ddp", ddp_runs), ("zero2", zero2_runs)):
        assert len(set(rank_checksums(work / "joint"))) == 1, name
        runs[name] = _weights(work / "joint")
    assert sorted(p.name for p in (zero2_runs / "joint" / "checkpoint-4").glob("global_step*")) == [
        "global_step4"
    ]
    before = _weights(pretrained)
    moved = max((runs["ddp"][k] - before[k]).abs().max().item() for k in before)
    apart = max((runs["ddp"][k] - runs["zero2"][k]).abs().max().item() for k in before)
    assert moved > 1e-3 and apart < 1e-3 * moved, (moved, apart)
    # DeepSpeed built none of its C++ kernels (its shared-memory collective, which training does not use, costs
    # minutes to compile: `skip_unused_deepspeed_kernels`)
    assert not list((zero2_runs.parent / "torch_extensions").rglob("*.so"))


def test_the_distractor_pool_is_the_hotwords_file_or_the_splits_entity_names(tmp_path):
    """One pool for context SFT and GRPO: the file's lines when given, else every recorded name (rows without any
    included), none when the split records no names."""
    import datasets

    from training.data.context import distractor_pool

    names = datasets.Dataset.from_dict({"entities": [["张伟", "liam taylor"], None, ["稻香"]]})
    assert distractor_pool(None, names) == ["张伟", "liam taylor", "稻香"]
    assert distractor_pool(None, datasets.Dataset.from_dict({"text": ["x"]})) == []
    listed = tmp_path / "hotwords.txt"
    listed.write_text("章伟\nyellow submarine", encoding="utf-8")
    assert distractor_pool(str(listed), names) == ["章伟", "yellow submarine"]
