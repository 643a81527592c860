"""Stage 6: GRPO with TRL on audio prompts (method.md section 3).

`trl.GRPOTrainer` carries images but not audio; it would train text-only without any error (the policy,
old and reference log-probs are computed from `input_ids` alone, so the audio path gets no gradient).
`AudioGRPOTrainer` adds the audio with four overrides (see shared/notes/trl-grpo-audio.md):

- `_generate_and_score_completions`: pads the rows' log-Mel features to (B*G, T, F) plus `input_features_mask`
  (B*G, T), stashes them on the trainer for the rollout, and adds them to the returned batch, so TRL's
  `_prepare_inputs` shuffles and splits them together with their completions. It is also where a rollout
  starts, so it sets the annealed temperature for that rollout.
- `_tokenize_prompts`: adds the stashed features to the multimodal fields, which TRL passes to
  `model.generate(**...)` (the model merges the audio at prefill).
- `_compute_loss`: stashes the micro-batch's features for the policy forward.
- `_get_per_token_logps_and_entropies`: replaced: chunked forward with the matching slice of the stashed
  features through the fused LM head (used for the policy, the old and the reference log-probs).

Prompts: `build_grpo_dataset` writes each prompt as chat text with `<speech>` already expanded to
`processor.num_audio_tokens(len(clip))` audio tokens (the one count function the model also uses), so TRL's
stock tokenisation (`tokenizer(text=prompts)`) yields exactly the processor's `input_ids` and the prompt
column shows what the model saw. Expanding in `_tokenize_prompts` instead would need the sample count there,
which only the rows have. The features are computed once per clip at dataset build time (stored as float32
arrays, (T, F) per row) and zero-padded per batch, which equals the processor's batched features (to float
rounding, ~1e-6).

Temperature: TRL reads `args.temperature` once, into the generation config and into the fused LM head that
divides the logits for the policy, old and reference log-probs. At the start of every training rollout the
trainer sets T = `annealed_temperature(progress)` (linear from `temperature_start` to `temperature_end`,
1.0 -> 0.7; progress = micro-step of this rollout / micro-step of the last rollout, so the first rollout uses
the start value and the last one the end value; a run with a single rollout uses the start value), writes it to `self.generation_config` and re-patches the fused
head of the policy and the reference with it, so sampling and scoring use the same T. T is logged as
`temperature`.

Reference model (beta > 0): TRL reloads it from `model.config._name_or_path`; the policy is therefore loaded
from the model folder by path (TRL's own loader, with the project's classes registered locally for
`AutoConfig`/`AutoModelForCausalLM`, so `trust_remote_code` can stay False).

Rewards: `training.stages.rewards.r_acc`, `r_hallu`, `r_context`, logged by TRL as `rewards/r_acc/mean` etc.

The CTC head is frozen here: it is not in the GRPO loss (it would get no gradient anyway, and under DDP an
unused trainable parameter is an error). Encoder, adaptor and LLM train.

Determinism of the policy: GRPO compares log-probs of the same tokens from several forwards (sampling, old,
reference, policy) over different batches. The Parakeet encoder has BatchNorm (batch statistics in train mode,
so a row's log-probs would depend on the other rows and on padding) and functional dropout that TRL's
`disable_dropout` does not reach. The trainer therefore makes BatchNorm use its running statistics and, with
`disable_dropout=True` (recommended), zeroes those dropout rates; the policy's train-mode forward then equals
its eval-mode forward, and the KL to the reference is exactly 0 before the first update.

Generation settings: `make_grpo_trainer` suppresses the audio placeholder token and pins `min_new_tokens=0`
unless `args.generation_kwargs` says otherwise (transformers fills unset fields of TRL's generation config from
the model's; pinning it keeps empty transcripts, the right answer on silence, possible in the rollouts).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM
from trl import GRPOConfig, GRPOTrainer
from trl.trainer.utils import add_fused_lm_head

from modeling import EntropyASRConfig, EntropyASRForConditionalGeneration, EntropyASRProcessor
from modeling.processing_entropy_asr import SPEECH_PLACEHOLDER
from training.config import ConfigError, StageConfig
from training.data.context import ContextInjector, distractor_pool
from training.stages.base import StageTrainer
from training.stages.folders import TRAINING_DEFAULTS, resolve_model_path, stage_dataset
from training.stages.rewards import DEFAULT_REWARD_WEIGHTS, r_acc, r_context, r_hallu

logger = logging.getLogger(__name__)

AUDIO_KEYS = ("input_features", "input_features_mask")


# ---- helpers -------------------------------------------------------------------------------------------------


def annealed_temperature(progress: float, start: float = 1.0, end: float = 0.7) -> float:
    """Linear schedule: `start` at progress 0, `end` at progress >= 1."""
    progress = min(max(float(progress), 0.0), 1.0)
    return start + (end - start) * progress


def register_with_auto_classes() -> None:
    """Register the project's config and model with `AutoConfig`/`AutoModel`/`AutoModelForCausalLM`, so TRL's
    `create_model_from_path` (policy and reference) loads a model folder without remote code."""
    AutoConfig.register(EntropyASRConfig.model_type, EntropyASRConfig, exist_ok=True)
    AutoModel.register(EntropyASRConfig, EntropyASRForConditionalGeneration, exist_ok=True)
    AutoModelForCausalLM.register(EntropyASRConfig, EntropyASRForConditionalGeneration, exist_ok=True)


_FUNCTIONAL_DROPOUT_ATTRS = (
    "dropout",
    "activation_dropout",
    "attention_dropout",
    "dropout_positions",
    "hidden_dropout",
    "layerdrop",
)


def disable_functional_dropout(model: torch.nn.Module) -> int:
    """Zero the float dropout rates that modules read at forward time (Parakeet's `dropout`,
    `activation_dropout`, `attention_dropout`, `dropout_positions`, `layerdrop`, ...). TRL's `disable_dropout`
    only zeroes `nn.Dropout` modules, which the Parakeet encoder does not use. The config is left alone, so
    saved folders keep their dropout settings. Returns how many rates were changed."""
    changed = 0
    for module in model.modules():
        for attr in _FUNCTIONAL_DROPOUT_ATTRS:
            value = getattr(module, attr, None)
            if isinstance(value, float) and not isinstance(value, bool) and value != 0.0:
                setattr(module, attr, 0.0)
                changed += 1
        if isinstance(module, torch.nn.Dropout) and module.p != 0.0:
            module.p = 0.0
            changed += 1
    return changed


def _batchnorm_eval_hook(module, args):
    module.training = False


def freeze_batchnorm(model: torch.nn.Module) -> int:
    """Make every BatchNorm layer use (and keep) its running statistics even in train mode, so a sequence's
    log-probs do not depend on the other rows of its batch (generation, old, reference and policy forwards see
    different batches) nor on padding. Returns the number of BatchNorm layers."""
    count = 0
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and not getattr(
            module, "_grpo_frozen", False
        ):
            module.register_forward_pre_hook(_batchnorm_eval_hook)
            module._grpo_frozen = True
            count += 1
    return count


def pad_audio(
    rows: Sequence[dict[str, Any]], device: torch.device | str | None = None
) -> dict[str, torch.Tensor]:
    """Stack the rows' features, zero-padded along time: {"input_features": (N, T, F), "input_features_mask":
    (N, T)}. Rows hold (T_i, F) arrays (Parakeet layout) or equal-shaped arrays (e.g. Whisper's (F, 3000))."""
    feats = [torch.as_tensor(np.asarray(r["input_features"], dtype=np.float32)) for r in rows]
    masks = [torch.as_tensor(np.asarray(r["input_features_mask"])).long() for r in rows]
    if all(f.shape == feats[0].shape for f in feats) and all(m.shape == masks[0].shape for m in masks):
        features, mask = torch.stack(feats), torch.stack(masks)
    else:
        width = max(f.shape[0] for f in feats)
        features = feats[0].new_zeros((len(feats), width, *feats[0].shape[1:]))
        mask = torch.zeros((len(feats), width), dtype=torch.long)
        for i, (f, m) in enumerate(zip(feats, masks)):
            features[i, : f.shape[0]] = f
            mask[i, : m.shape[0]] = m
    return {"input_features": features.to(device), "input_features_mask": mask.to(device)}


def build_grpo_dataset(rows: Iterable[dict[str, Any]], processor):
    """TRL rows from {"audio": float32 16 kHz array, "text": reference, "keywords": list[str] (may be empty),
    optional "context": the hints shown in the prompt (default: the keywords; give keywords + distractors here),
    optional "sampling_rate"}.

    Returns a `datasets.Dataset` with columns prompt (chat text, `<speech>` expanded to the clip's audio token
    count), input_features ((T, F) float32), input_features_mask ((T,)), reference, keywords; the two audio
    columns are formatted as numpy arrays."""
    data: dict[str, list] = {k: [] for k in ("prompt", *AUDIO_KEYS, "reference", "keywords")}
    for i, row in enumerate(rows):
        if "audio" not in row or "text" not in row:
            raise KeyError(f"GRPO row {i} needs 'audio' and 'text' (has {sorted(row)})")
        keywords = [str(k) for k in (row.get("keywords") or [])]
        context = row.get("context", keywords)
        if isinstance(context, str):
            context = [context]
        context = [str(c) for c in (context or [])]
        wave = processor.prepare_audio(row["audio"], row.get("sampling_rate"))
        inputs = processor(audio=[wave], context=[context])
        prompt = processor.build_prompt(context).replace(
            SPEECH_PLACEHOLDER, processor.audio_token * processor.num_audio_tokens(wave.numel())
        )
        if i == 0:  # TRL tokenises the text with the tokenizer alone; it must give the processor's ids
            ids = processor.tokenizer(text=[prompt])["input_ids"][0]
            if list(ids) != inputs["input_ids"][0].tolist():
                raise ValueError(
                    "The tokenizer does not reproduce the processor's prompt ids (special tokens?)"
                )
        data["prompt"].append(prompt)
        data["input_features"].append(inputs["input_features"][0].numpy().astype(np.float32))
        data["input_features_mask"].append(inputs["input_features_mask"][0].numpy().astype(np.int8))
        data["reference"].append(str(row["text"]))
        data["keywords"].append(keywords)
    if not data["prompt"]:
        raise ValueError("build_grpo_dataset: no rows")
    feat_shape = data["input_features"][0].shape
    fixed = all(f.shape == feat_shape for f in data["input_features"])
    features = datasets.Features(
        {
            "prompt": datasets.Value("string"),
            "input_features": datasets.Array2D(
                shape=feat_shape if fixed else (None, feat_shape[1]), dtype="float32"
            ),
            "input_features_mask": datasets.List(datasets.Value("int8")),
            "reference": datasets.Value("string"),
            "keywords": datasets.List(datasets.Value("string")),
        }
    )
    dataset = datasets.Dataset.from_dict(data, features=features)
    return dataset.with_format("numpy", columns=list(AUDIO_KEYS), output_all_columns=True)


# ---- trainer -------------------------------------------------------------------------------------------------


class AudioGRPOTrainer(StageTrainer, GRPOTrainer):
    """`trl.GRPOTrainer` whose prompts carry log-Mel features through generation and log-prob computation,
    with the rollout temperature annealed from `temperature_start` to `temperature_end` (see the module
    docstring). Extra arguments: `temperature_start`, `temperature_end`, `processor` (saved with every
    checkpoint, so each checkpoint is a complete model folder), `batchnorm_running_stats` (default True: the
    encoder's BatchNorm layers use their running statistics in training too, see `freeze_batchnorm`).
    With `args.disable_dropout` the encoder's functional dropout rates are zeroed as well
    (`disable_functional_dropout`), for the policy and the reference."""

    _tag_names = ["trl", "grpo", "entropy-asr"]
    stage_name = "grpo"

    def __init__(
        self,
        *args,
        temperature_start: float = 1.0,
        temperature_end: float = 0.7,
        processor=None,
        batchnorm_running_stats: bool = True,
        **kwargs,
    ):
        grpo_args = kwargs.get("args") if "args" in kwargs else (args[2] if len(args) > 2 else None)
        if grpo_args is None:
            raise ValueError("AudioGRPOTrainer needs a GRPOConfig (args=...)")
        if grpo_args.remove_unused_columns:
            raise ValueError(
                "remove_unused_columns=True would drop the audio features and the reference; set it to False."
            )
        if grpo_args.use_vllm or grpo_args.use_transformers_continuous_batching:
            raise ValueError(
                "AudioGRPOTrainer generates with model.generate (audio merged at prefill): no vLLM."
            )
        if not grpo_args.disable_dropout:
            logger.warning(
                "disable_dropout=False: sampling, old, reference and policy log-probs see different dropout masks"
            )
        self.temperature_start, self.temperature_end = float(temperature_start), float(temperature_end)
        grpo_args.temperature = self.temperature_start
        self.processor = processor
        self._audio: dict[str, torch.Tensor] | None = None
        super().__init__(*args, **kwargs)
        policy = self.accelerator.unwrap_model(self.model)
        if getattr(policy.config, "no_speech_threshold", None) is not None:
            # rollouts show the LLM's own choice to end at once; the stage calibrates a new gate when it ends
            policy.config.no_speech_threshold = None
        if hasattr(policy, "set_trainable"):  # the CTC head is not in the GRPO loss
            policy.set_trainable(ctc_head=False)
            logger.info(
                "grpo: trainable parameters per part %s", policy.num_parameters_by_part(only_trainable=True)
            )
        models = [policy] + (
            [self.accelerator.unwrap_model(self.ref_model)] if self.ref_model is not None else []
        )
        for m in models:
            if self.args.disable_dropout:
                disable_functional_dropout(m)
            if batchnorm_running_stats:
                freeze_batchnorm(m)

    # ---- temperature -----------------------------------------------------------------------------------------
    def rollout_progress(self) -> float:
        """Fraction of training done at the rollout starting now: 0 for the first, 1 for the last rollout.
        Counted in micro-steps (rollouts happen every `steps_per_generation * num_iterations` of them); derived
        from `state.global_step`, so it is right after resuming from a checkpoint too."""
        ga = self.args.gradient_accumulation_steps
        generate_every = self.args.steps_per_generation * self.num_iterations
        total_micro = max(int(self.state.max_steps or 0), 1) * ga
        last_rollout = ((total_micro - 1) // generate_every) * generate_every
        micro = self.state.global_step * ga + self._step % ga
        return 0.0 if last_rollout <= 0 else micro / last_rollout  # a single rollout uses the start value

    def set_temperature(self, temperature: float) -> None:
        """Use `temperature` for sampling and for every log-prob (policy, old, reference) from now on."""
        temperature = float(temperature)
        self.temperature = temperature
        if getattr(self, "generation_config", None) is not None:
            self.generation_config.temperature = temperature
        if getattr(self, "generation_kwargs", None) is not None:
            self.generation_kwargs["temperature"] = temperature
        policy = self.accelerator.unwrap_model(self.model)
        if hasattr(policy, "get_base_model") and hasattr(policy, "peft_config"):
            policy = policy.get_base_model()
        models = [(policy, ("log_probs", "entropy"))]
        if self.ref_model is not None:
            models.append((self.accelerator.unwrap_model(self.ref_model), ("log_probs",)))
        for module, outputs in models:
            module.__dict__.pop("forward", None)  # back to the class forward, then patch with the new T
            add_fused_lm_head(
                module,
                temperature=temperature,
                cast_lm_head_to_fp32=self.args.cast_lm_head_to_fp32,
                outputs=outputs,
            )

    # ---- the four overrides ----------------------------------------------------------------------------------
    def _generate_and_score_completions(self, inputs):
        mode = "train" if self.model.training else "eval"
        if mode == "train":
            temperature = annealed_temperature(
                self.rollout_progress(), self.temperature_start, self.temperature_end
            )
            if temperature != self.temperature:
                self.set_temperature(temperature)
        self._metrics[mode]["temperature"].append(self.temperature)
        audio = pad_audio(inputs, self.accelerator.device)
        self._audio = audio
        try:
            output = super()._generate_and_score_completions(inputs)
        finally:
            self._audio = None
        return {**output, **audio}

    def _tokenize_prompts(self, prompts):
        prompt_ids, images, multimodal_fields = super()._tokenize_prompts(prompts)
        if self._audio is not None:
            if self._audio["input_features"].shape[0] != len(prompt_ids):
                raise ValueError(
                    f"{len(prompt_ids)} prompts but {self._audio['input_features'].shape[0]} audio rows"
                )
            multimodal_fields = {**multimodal_fields, **self._audio}
        return prompt_ids, images, multimodal_fields

    def _compute_loss(self, model, inputs):
        self._audio = {k: inputs[k] for k in AUDIO_KEYS}
        try:
            return super()._compute_loss(model, inputs)
        finally:
            self._audio = None

    def _get_per_token_logps_and_entropies(
        self,
        model,
        input_ids,
        attention_mask,
        logits_to_keep,
        batch_size=None,
        compute_entropy=False,
        compute_aux_loss=False,
        **image_kwargs,
    ):
        """Per-token log-probs (and entropies) of the last `logits_to_keep` tokens at the current temperature,
        with the stashed audio features of the same rows. Returns (logps, entropies | None, aux_loss | None)."""
        if any(v is not None for v in image_kwargs.values()):
            raise ValueError(f"AudioGRPOTrainer takes no image inputs (got {sorted(image_kwargs)})")
        audio = self._audio
        if audio is not None and audio["input_features"].shape[0] != input_ids.shape[0]:
            raise ValueError(
                f"audio rows {audio['input_features'].shape[0]} != sequences {input_ids.shape[0]}"
            )
        batch_size = batch_size or input_ids.size(0)
        all_logps, all_entropies, all_aux = [], [], []
        for start in range(0, input_ids.size(0), batch_size):
            end = min(start + batch_size, input_ids.size(0))
            ids, mask = input_ids[start:end], attention_mask[start:end]
            model_inputs = {"input_ids": ids, "attention_mask": mask}
            # without audio the model raises on the placeholders: never silently text-only
            if audio is not None:
                model_inputs.update({k: v[start:end] for k, v in audio.items()})
            if compute_aux_loss:
                model_inputs["output_router_logits"] = True
            labels = ids.masked_fill(mask == 0, -100)
            labels[:, :-logits_to_keep] = -100  # only the completion tokens are scored
            with self.accelerator.autocast():
                out = model(**model_inputs, labels=labels, fused_lm_head=True)
            all_logps.append(out.log_probs[:, -logits_to_keep:])
            if compute_entropy:
                all_entropies.append(out.entropy[:, -logits_to_keep:])
            if compute_aux_loss:
                all_aux.append(out.aux_loss)
        logps = torch.cat(all_logps, dim=0)
        entropies = torch.cat(all_entropies, dim=0) if compute_entropy else None
        aux_loss = torch.stack(all_aux).mean() if compute_aux_loss else None
        return logps, entropies, aux_loss

    # ---- saving ----------------------------------------------------------------------------------------------
    def _save(self, output_dir: str | None = None, state_dict=None):
        super()._save(output_dir, state_dict=state_dict)
        if self.args.should_save and self.processor is not None:
            self.processor.save_pretrained(output_dir or self.args.output_dir)

    def extra_save_info(self) -> dict[str, Any]:
        return {"temperature": self.temperature}

    # ---- the YAML-driven stage -------------------------------------------------------------------------------
    @classmethod
    def build(cls, config: StageConfig, resume_dir: Path | None = None) -> AudioGRPOTrainer:
        """The trainer of a `stage: grpo` config: `config.training` as GRPOConfig fields on top of the stage
        defaults and `GRPO_DEFAULTS` (beta 0.04: KL to the frozen reference; no dropout); rows from
        `grpo_rows`. The hot-swap-free, LoRA-free stage: it trains the full model."""
        if config.lora is not None:
            raise ConfigError("lora: not supported by the grpo stage (it trains the full model)")
        train_args = {**TRAINING_DEFAULTS, **GRPO_DEFAULTS, "seed": config.seed, "data_seed": config.seed}
        train_args.update(config.training)
        if not torch.cuda.is_available():
            train_args.setdefault("use_cpu", True)
            if "bf16" not in config.training:
                train_args["bf16"] = False
        args = GRPOConfig(output_dir=config.output_dir, **train_args)
        rows = grpo_rows(config, config.data.train_split, config.data.max_train_samples)
        eval_rows = None
        if args.eval_strategy != "no" and config.data.eval_split:
            eval_rows = grpo_rows(config, config.data.eval_split, config.data.max_eval_samples)
        g = config.grpo
        return make_grpo_trainer(
            str(resolve_model_path(config.model)),
            rows,
            args,
            temperature_start=g.temperature_start,
            temperature_end=g.temperature_end,
            reward_weights=g.reward_weights,
            eval_rows=eval_rows,
        )


def make_grpo_trainer(
    model_dir: str,
    train_rows,
    args: GRPOConfig,
    temperature_start: float = 1.0,
    temperature_end: float = 0.7,
    reward_weights: Sequence[float] = DEFAULT_REWARD_WEIGHTS,
    eval_rows=None,
    callbacks=None,
) -> AudioGRPOTrainer:
    """The stage-6 trainer for a model folder (normally stage 5's output, which also becomes the frozen
    reference when `args.beta > 0`).

    train_rows / eval_rows: raw rows for `build_grpo_dataset`, or a dataset it built. `args.reward_weights`
    must be unset or equal `reward_weights` (weights of r_acc, r_hallu, r_context). The audio placeholder
    token is added to `args.generation_kwargs["suppress_tokens"]` (a sampled placeholder would not match the
    audio features) and `min_new_tokens` defaults to 0 there. `args` is updated in place (temperature,
    reward_weights, generation_kwargs)."""

    register_with_auto_classes()
    model_dir = str(model_dir)
    if not Path(model_dir, "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} is not a model folder (no config.json)")
    processor = EntropyASRProcessor.from_pretrained(model_dir)
    weights = [float(w) for w in reward_weights]
    if len(weights) != 3:
        raise ValueError(f"reward_weights: 3 weights (r_acc, r_hallu, r_context), got {weights}")
    if args.reward_weights is not None and [float(w) for w in args.reward_weights] != weights:
        raise ValueError(
            f"reward_weights: GRPOConfig has {args.reward_weights}, make_grpo_trainer got {weights}"
        )
    args.reward_weights = weights
    generation_kwargs = dict(args.generation_kwargs or {})
    suppress = list(generation_kwargs.get("suppress_tokens") or [])
    if processor.audio_token_id not in suppress:
        suppress.append(processor.audio_token_id)
    generation_kwargs["suppress_tokens"] = suppress
    generation_kwargs.setdefault("min_new_tokens", 0)
    args.generation_kwargs = generation_kwargs

    def as_dataset(rows):
        if rows is None or isinstance(rows, datasets.Dataset):
            return rows
        return build_grpo_dataset(rows, processor)

    return AudioGRPOTrainer(
        model=model_dir,  # TRL loads it by path: `_name_or_path` is the folder the reference is reloaded from
        reward_funcs=[r_acc, r_hallu, r_context],
        args=args,
        train_dataset=as_dataset(train_rows),
        eval_dataset=as_dataset(eval_rows),
        processing_class=processor.tokenizer,
        callbacks=callbacks,
        temperature_start=temperature_start,
        temperature_end=temperature_end,
        processor=processor,
    )


# ---- the YAML-driven stage's data ---------------------------------------------------------------------------

GRPO_DEFAULTS: dict[str, Any] = {"beta": 0.04, "disable_dropout": True}


def grpo_rows(config, split: str, limit: int | None = None) -> list[dict[str, Any]]:
    """Rows for `build_grpo_dataset` from a corpus split: with probability `grpo.keyword_prob` a row's entities
    that occur in its transcript become its keywords (rewarded by R_context), shown in the prompt together
    with sound-alike distractors as in context SFT (`context.distractor_prob`, `context.max_distractors`,
    `context.hotwords_file`); otherwise the prompt has no context and R_context is None."""
    dataset = stage_dataset(config, split, None, limit)
    c = config.context
    pool = distractor_pool(c.hotwords_file, dataset.dataset)
    injector = ContextInjector(pool, config.grpo.keyword_prob, c.distractor_prob, c.max_distractors)
    rng = np.random.default_rng(config.seed)
    rows = []
    for example in dataset:  # iteration skips unusable clips
        context = injector(example, rng) or []
        entities = {e for e in (example.get("entities") or []) if e and e in example["text"]}
        keywords = [w for w in context if w in entities]
        rows.append(
            {"audio": example["audio"], "text": example["text"], "keywords": keywords, "context": context}
        )
    return rows


__all__ = [
    "AUDIO_KEYS",
    "AudioGRPOTrainer",
    "annealed_temperature",
    "build_grpo_dataset",
    "disable_functional_dropout",
    "freeze_batchnorm",
    "make_grpo_trainer",
    "pad_audio",
    "grpo_rows",
    "register_with_auto_classes",
]
