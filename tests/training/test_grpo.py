"""Stage 6 (GRPO with audio prompts): the audio path trains, KL to a reloaded reference, reward components
logged separately, annealed temperature, and log-probs that equal a direct forward with audio."""

import math
import shutil
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import synth_clip
from training.stages.grpo import (
    AUDIO_KEYS,
    annealed_temperature,
    build_grpo_dataset,
    make_grpo_trainer,
    pad_audio,
)
from training.stages.rewards import r_acc, r_context, r_hallu

ROWS = [
    {"audio": synth_clip(0.5, seed=1), "text": "call john smith on his mobile", "keywords": ["john smith"]},
    {"audio": synth_clip(0.7, seed=2), "text": "打开主驾驶车窗", "keywords": []},
]


def _grpo_args(out, **kw):
    from trl import GRPOConfig

    base = dict(
        output_dir=str(out),
        bf16=False,
        use_cpu=True,
        per_device_train_batch_size=1,  # completions per micro-batch
        num_generations=2,
        gradient_accumulation_steps=2,  # per optimizer step one rollout of 1 prompt x 2 completions, in 2 micro-batches
        max_completion_length=4,
        max_steps=2,
        beta=0.04,
        learning_rate=1e-3,
        logging_steps=1,
        report_to=[],
        disable_dropout=True,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    base.update(kw)
    return GRPOConfig(**base)


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _changed(before, model, prefix):
    return [n for n, p in model.named_parameters() if n.startswith(prefix) and not torch.equal(p, before[n])]


@pytest.fixture(scope="module")
def grpo_run(short_prompt_model, tmp_path_factory):
    model_dir, _ = short_prompt_model
    trainer = make_grpo_trainer(str(model_dir), ROWS, _grpo_args(tmp_path_factory.mktemp("grpo")))
    before = _snapshot(trainer.model)
    ref_before = _snapshot(trainer.ref_model)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    return SimpleNamespace(trainer=trainer, before=before, ref_before=ref_before, logs=logs)


# ---- training ------------------------------------------------------------------------------------------------
def test_audio_path_and_llm_are_trained(grpo_run):
    model, before = grpo_run.trainer.model, grpo_run.before
    assert grpo_run.trainer.state.global_step == 2
    for prefix in ("model.adaptor.", "model.encoder.", "model.language_model.", "lm_head."):
        assert _changed(before, model, prefix), f"{prefix} did not change"
    adaptor = [n for n in before if n.startswith("model.adaptor.")]
    assert set(_changed(before, model, "model.adaptor.")) == set(adaptor)  # every adaptor tensor moved
    assert not _changed(before, model, "model.ctc_head.")  # not in the GRPO loss: frozen


def test_reference_model_reloaded_frozen_and_kl_logged(grpo_run, short_prompt_model):
    trainer = grpo_run.trainer
    ref = trainer.ref_model
    assert ref is not None and ref is not trainer.model
    assert str(ref.config._name_or_path) == str(short_prompt_model[0])
    for name, p in ref.named_parameters():  # reloaded from the folder = the policy's starting weights
        assert torch.equal(p, grpo_run.before[name]), name
        assert torch.equal(p, grpo_run.ref_before[name]), name
    kls = [h["kl"] for h in grpo_run.logs]
    assert len(kls) == 2
    assert abs(kls[0]) < 1e-5  # deterministic policy (BatchNorm running stats, no dropout) == reference
    assert kls[1] > 0  # after one update the policy has moved away from the reference


def test_reward_components_logged_separately(grpo_run):
    assert grpo_run.trainer.reward_funcs == [r_acc, r_hallu, r_context]
    assert grpo_run.trainer.reward_func_names == ["r_acc", "r_hallu", "r_context"]
    assert grpo_run.trainer.reward_weights.tolist() == [1.0, 0.5, 0.5]
    for h in grpo_run.logs:
        for name in ("r_acc", "r_hallu", "r_context"):
            assert f"rewards/{name}/mean" in h
        assert 0.0 <= h["rewards/r_acc/mean"] <= 1.0
        assert -1.0 <= h["rewards/r_hallu/mean"] <= 0.0
        # one prompt has a keyword, the other none: None rows are left out (all None -> logged as None)
        assert h["rewards/r_context/mean"] in (-0.5, 0.5, 0.0, None)
    # the last rollout's per-completion components recombine into its logged total with the paper's weights
    logs = grpo_run.trainer._logs["rewards"]
    totals = []
    for acc, hallu, ctx in zip(logs["r_acc"], logs["r_hallu"], logs["r_context"]):
        assert 0.0 <= acc <= 1.0 and hallu in (0.0, -1.0)
        assert math.isnan(ctx) or ctx in (-0.5, 0.5)  # NaN: no keyword injected
        totals.append(acc + 0.5 * hallu + (0.0 if math.isnan(ctx) else 0.5 * ctx))
    assert len(totals) == 2
    assert grpo_run.logs[-1]["reward"] == pytest.approx(sum(totals) / len(totals), abs=1e-6)


# ---- temperature ---------------------------------------------------------------------------------------------
def test_temperature_schedule_function():
    assert annealed_temperature(0.0) == 1.0
    assert annealed_temperature(1.0) == pytest.approx(0.7)
    assert annealed_temperature(0.5) == pytest.approx(0.85)
    assert annealed_temperature(-1.0) == 1.0 and annealed_temperature(3.0) == pytest.approx(0.7)
    assert annealed_temperature(0.5, start=2.0, end=1.0) == pytest.approx(1.5)


def test_rollout_temperature_annealed_and_applied(grpo_run):
    trainer = grpo_run.trainer
    temps = [h["temperature"] for h in grpo_run.logs]
    assert temps[0] == pytest.approx(1.0) and temps[-1] == pytest.approx(0.7)
    assert trainer.temperature == pytest.approx(0.7)
    assert trainer.generation_config.temperature == pytest.approx(0.7)
    assert trainer.generation_config.suppress_tokens == [trainer.model.config.audio_token_id]
    assert trainer.generation_config.min_new_tokens == 0


# ---- log-probs with audio ------------------------------------------------------------------------------------
def _direct_logps(model, batch, ids, attn, n_completion, temperature):
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = model(
            input_ids=ids,
            attention_mask=attn,
            input_features=batch["input_features"],
            input_features_mask=batch["input_features_mask"],
        ).logits
    model.train(was_training)
    logp = torch.log_softmax(logits[:, -n_completion - 1 : -1].float() / temperature, dim=-1)
    token_logp = logp.gather(-1, ids[:, -n_completion:, None])[..., 0]
    entropy = -(logp.exp() * logp).sum(-1)
    return token_logp, entropy


@pytest.mark.parametrize("temperature", [0.7, 1.0])
def test_logps_equal_direct_forward_with_audio(grpo_run, short_prompt_model, temperature):
    trainer = grpo_run.trainer
    _, processor = short_prompt_model
    model = trainer.model
    batch = processor(audio=[r["audio"] for r in ROWS], context=[r["keywords"] for r in ROWS])
    gen = torch.Generator().manual_seed(0)
    n = 5
    completion = torch.randint(10, model.config.text_config.vocab_size, (2, n), generator=gen)
    completion_mask = torch.ones_like(completion)
    completion_mask[1, 3:] = 0  # right padding after an early end
    ids = torch.cat([batch["input_ids"], completion], dim=1)
    attn = torch.cat([batch["attention_mask"], completion_mask], dim=1)
    previous = trainer.temperature
    trainer.set_temperature(temperature)
    trainer._audio = {k: batch[k] for k in AUDIO_KEYS}
    try:
        model.train()  # as in training: BatchNorm uses running statistics, dropout is off
        with torch.no_grad():
            logps, entropies, _ = trainer._get_per_token_logps_and_entropies(
                model, ids, attn, n, batch_size=1, compute_entropy=True
            )
    finally:
        trainer._audio = None
        trainer.set_temperature(previous)
    expected, expected_entropy = _direct_logps(model, batch, ids, attn, n, temperature)
    valid = completion_mask.bool()
    torch.testing.assert_close(logps[valid], expected[valid], atol=1e-4, rtol=0)
    torch.testing.assert_close(entropies[valid], expected_entropy[valid], atol=1e-4, rtol=0)
    # the audio matters: the same tokens without the audio merged in are impossible to score
    with pytest.raises(ValueError, match="audio placeholder"):
        trainer._get_per_token_logps_and_entropies(model, ids, attn, n)


# ---- data ----------------------------------------------------------------------------------------------------
def test_dataset_rows_match_processor(short_prompt_model):
    _, processor = short_prompt_model
    rows = [
        *ROWS,
        {"audio": synth_clip(0.5, seed=3), "text": "导航", "keywords": ["导航"], "context": ["导航", "岛行"]},
    ]
    ds = build_grpo_dataset(rows, processor)
    assert set(ds.column_names) == {
        "prompt",
        "input_features",
        "input_features_mask",
        "reference",
        "keywords",
    }
    assert ds[1]["keywords"] == [] and ds[2]["keywords"] == ["导航"]
    assert "岛行" in ds[2]["prompt"]  # the prompt shows the context (keywords + distractors)
    for i, row in enumerate(rows):
        ctx = row.get("context", row["keywords"])
        single = processor(audio=[row["audio"]], context=[ctx])
        # TRL tokenises the prompt text with the tokenizer alone: same ids as the processor, audio included
        ids = processor.tokenizer(text=[ds[i]["prompt"]])["input_ids"][0]
        assert ids == single["input_ids"][0].tolist()
        assert ids.count(processor.audio_token_id) == processor.num_audio_tokens(len(row["audio"]))
        torch.testing.assert_close(torch.as_tensor(ds[i]["input_features"]), single["input_features"][0])
        assert ds[i]["reference"] == row["text"]
    # padded per batch = the processor's batched features
    padded = pad_audio([ds[0], ds[1]])
    batch = processor(audio=[r["audio"] for r in ROWS])
    torch.testing.assert_close(padded["input_features_mask"], batch["input_features_mask"])
    torch.testing.assert_close(padded["input_features"], batch["input_features"], atol=1e-4, rtol=0)


def test_make_grpo_trainer_config_errors(short_prompt_model, tmp_path):
    model_dir = short_prompt_model[0]
    with pytest.raises(ValueError, match="reward_weights"):
        make_grpo_trainer(str(model_dir), ROWS, _grpo_args(tmp_path, reward_weights=[1.0, 1.0, 1.0]))
    with pytest.raises(FileNotFoundError):
        make_grpo_trainer(str(tmp_path / "missing"), ROWS, _grpo_args(tmp_path))
    with pytest.raises(ValueError, match="remove_unused_columns"):
        make_grpo_trainer(str(model_dir), ROWS, _grpo_args(tmp_path, remove_unused_columns=True))


def test_saved_folder_is_a_loadable_model(grpo_run, tmp_path):
    from transformers import AutoModel

    trainer = grpo_run.trainer
    trainer.save_model(str(tmp_path))
    for name in ("config.json", "model.safetensors", "processor_config.json", "modeling_entropy_asr.py"):
        assert (tmp_path / name).is_file(), name
    loaded = AutoModel.from_pretrained(str(tmp_path), trust_remote_code=True)
    trained = trainer.model.state_dict()
    for name, tensor in loaded.state_dict().items():
        torch.testing.assert_close(tensor, trained[name], atol=0, rtol=0)


# ---- the YAML-driven stage -----------------------------------------------------------------------------------
def test_the_grpo_stage_runs_on_the_tiny_corpus(short_prompt_model, tiny_corpus, tmp_path):
    import json

    from safetensors.torch import load_file

    from training.config import load_stage_config
    from training.stages.lifecycle import run_stage

    model_dir, _ = short_prompt_model
    out = tmp_path / "grpo"
    config = load_stage_config(
        {
            "stage": "grpo",
            "model": str(model_dir),
            "output_dir": str(out),
            "data": {"path": str(tiny_corpus / "dataset"), "max_train_samples": 4},
            "training": {
                "max_steps": 2,
                "per_device_train_batch_size": 2,
                "num_generations": 2,
                "max_completion_length": 4,
                "learning_rate": 1e-3,
                "logging_steps": 1,
                "save_steps": 1,
                "report_to": [],
            },
            "grpo": {"keyword_prob": 1.0},
            "seed": 0,
        }
    )
    assert run_stage(config) == out
    done = json.loads((out / "stage_complete.json").read_text())
    assert done["stage"] == "grpo" and done["global_step"] == 2
    steps = [h for h in done["log_history"] if "loss" in h]
    assert [h["temperature"] for h in steps] == pytest.approx([1.0, 0.7])
    assert all("rewards/r_context/mean" in h and "kl" in h for h in steps)
    info = json.loads((out / "stage_info.json").read_text())
    assert info["stage"] == "grpo" and info["global_step"] == 2
    assert (out / "checkpoint-2" / "processor_config.json").is_file()
    before, after = load_file(str(model_dir / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("model.adaptor."))
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("model.ctc_head."))
    mtime = (out / "model.safetensors").stat().st_mtime
    assert run_stage(config) == out  # complete: skipped
    assert (out / "model.safetensors").stat().st_mtime == mtime

    # interrupted after step 1 (as if killed): re-running resumes from checkpoint-1 and ends bitwise equal
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    shutil.rmtree(resumed / "checkpoint-2")
    for name in ("stage_complete.json", "model.safetensors"):
        (resumed / name).unlink()
    config.output_dir = str(resumed)
    run_stage(config)
    again = load_file(str(resumed / "model.safetensors"))
    assert all(torch.equal(after[k], again[k]) for k in after)
    history = json.loads((resumed / "stage_complete.json").read_text())["log_history"]
    assert [h["temperature"] for h in history if "loss" in h] == pytest.approx([1.0, 0.7])  # step 1 restored
