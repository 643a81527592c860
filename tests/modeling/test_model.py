"""Model behaviour: padding safety, labels, per-part freezing, generation bound, other encoders/LLMs."""

import pytest
import torch

from tests.conftest import synth_clip


def _greedy(model, processor, clips, **kw):
    inputs = processor(audio=clips, **kw)
    with torch.no_grad():
        out = model.generate(**inputs)
    return processor.batch_decode(out[:, inputs["input_ids"].shape[1] :]), inputs


def test_batch_equals_single_calls(tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    clips = [synth_clip(s, seed=i) for i, s in enumerate((0.35, 1.3, 2.0, 3.7))]
    contexts = [None, "john smith", None, "张伟, 章伟"]
    batch_texts, batch_inputs = _greedy(model, processor, clips, context=contexts)
    singles = [_greedy(model, processor, [c], context=[ctx])[0][0] for c, ctx in zip(clips, contexts)]
    assert batch_texts == singles
    # logits of the last prompt position agree too
    with torch.no_grad():
        batch_logits = model(**batch_inputs).logits[:, -1]
        for i, (c, ctx) in enumerate(zip(clips, contexts)):
            single = processor(audio=[c], context=[ctx])
            torch.testing.assert_close(model(**single).logits[0, -1], batch_logits[i], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "seconds, extra",
    [
        ((0.35, 1.3, 2.0, 3.7), {}),  # per-clip duration bounds, rows finishing at different steps
        ((2.0,), {}),
        ((1.0, 2.5), {"max_new_tokens": 7, "min_new_tokens": 7}),
        ((1.0, 2.5), {"max_new_tokens": 5}),
    ],
)
def test_lean_greedy_loop_matches_generation_mixin(tiny_model_and_processor, seconds, extra):
    from transformers import GenerationMixin
    from transformers.generation import LogitsProcessorList

    model, processor = tiny_model_and_processor
    inputs = processor(audio=[synth_clip(s, seed=i) for i, s in enumerate(seconds)])
    assert model._is_plain_greedy((), {**inputs, **extra})
    assert model._is_plain_greedy((), {**inputs, "logits_processor": LogitsProcessorList()})
    assert model._is_plain_greedy((), {**inputs, **extra, "do_sample": False, "num_beams": 1})
    assert not model._is_plain_greedy((), {**inputs, "do_sample": True})
    assert not model._is_plain_greedy((), {**inputs, "num_beams": 2})
    with torch.no_grad():
        lean = model.generate(**inputs, **extra)
        # return_dict_in_generate takes GenerationMixin.generate with the same bounds
        reference = model.generate(**inputs, **extra, return_dict_in_generate=True).sequences
        plain = GenerationMixin.generate(model, **inputs, **extra) if extra else None
    assert lean.tolist() == reference.tolist()
    if plain is not None:
        assert lean.tolist() == plain.tolist()


class _FavourNextId:
    """A custom logits processor that depends on each row's sequence so far (prompt included): it adds `score`
    to one token's logit, or with `assign` sets it to `score`, which would undo an end of turn forced before it
    (so running it after the per-row length bound instead of before would change the tokens)."""

    def __init__(self, vocab: int, score: float, assign: bool = False):
        self.vocab, self.score, self.assign, self.lengths = vocab, score, assign, []

    def __call__(self, input_ids, scores):
        self.lengths.append(input_ids.shape[1])
        rows = torch.arange(scores.shape[0])
        favoured = (input_ids[:, -1] * 7 + input_ids.shape[1]) % self.vocab
        if self.assign:
            scores[rows, favoured] = self.score
        else:
            scores[rows, favoured] += self.score
        return scores


@pytest.mark.parametrize("case", ["bonus, gate", "assigned, per-row bounds", "min_new_tokens, plain list"])
def test_lean_greedy_loop_applies_custom_logits_processors_like_generation_mixin(
    monkeypatch, tiny_model_and_processor, case
):
    """Custom processors (contextual biasing) stay in the lean loop: same sequences seen, same place after the
    no-speech gate and before the per-row bounds, same tokens as GenerationMixin.generate."""
    from transformers.generation import LogitsProcessorList, SuppressTokensLogitsProcessor

    model, processor = tiny_model_and_processor
    inputs = processor(audio=[synth_clip(s, seed=i) for i, s in enumerate((0.6, 1.8, 3.1))])
    eos = model.generation_config.eos_token_id
    eos = eos if isinstance(eos, list) else [eos]
    if case == "bonus, gate":  # the gate ends the likeliest clip at once; the processor must not revive it
        p = model.no_speech_probability(**inputs)
        monkeypatch.setattr(model.config, "no_speech_threshold", float(p.max()) * 0.999)
    vocab = model.config.text_config.vocab_size
    extra = {"max_new_tokens": 9, "min_new_tokens": 5} if case.startswith("min_new") else {}

    def processors(proc):
        return [proc] if case.endswith("plain list") else LogitsProcessorList([proc])

    def new_processor():
        return (
            _FavourNextId(vocab, 1e4, assign=True)
            if case.startswith("assigned")
            else _FavourNextId(vocab, 30.0)
        )

    builtin = SuppressTokensLogitsProcessor([5], device="cpu")
    assert not model._is_plain_greedy((), {**inputs, "logits_processor": [builtin]})
    assert not model._is_plain_greedy((), {**inputs, "logits_processor": [new_processor(), builtin]})
    assert model._is_plain_greedy((), {**inputs, **extra, "logits_processor": processors(new_processor())})
    with torch.no_grad():
        plain = model.generate(**inputs, **extra)
        lean_proc, mixin_proc, gen_proc = new_processor(), new_processor(), new_processor()
        lean = model.generate(**inputs, **extra, logits_processor=processors(lean_proc))
        mixin = model.generate(
            **inputs, **extra, logits_processor=processors(mixin_proc), return_dict_in_generate=True
        ).sequences
        # a generator of processors is read once, not used up by the lean-loop check
        from_generator = model.generate(**inputs, **extra, logits_processor=(p for p in [gen_proc]))
    n = inputs["input_ids"].shape[1]
    assert lean.tolist() == mixin.tolist() == from_generator.tolist()
    assert lean_proc.lengths == mixin_proc.lengths == list(range(n, n + len(lean_proc.lengths)))
    assert lean[:, n:].tolist() != plain[:, n:].tolist()  # the processor did steer decoding
    new = lean[:, n:].tolist()
    if case == "bonus, gate":
        assert new[int(p.argmax())][0] in eos
    elif case.startswith("assigned"):  # rows end where their duration bounds force the end of turn
        bounds = model._duration_bounds(inputs["input_features"], inputs["input_features_mask"]).tolist()
        # bound b: b tokens, then the end of turn; the longest row stops at max_new_tokens = its bound
        ends = [next((i + 1 for i, t in enumerate(row) if t in eos), len(row)) for row in new]
        assert len(set(bounds)) == 3 and ends == [b + 1 if b < max(bounds) else b for b in bounds]
    else:
        assert all(not set(row[:5]) & set(eos) for row in new)  # min_new_tokens held with the processor


@pytest.mark.parametrize("text_type", ["qwen3", "llama", "qwen2"])
def test_lean_decoding_step_matches_the_text_model(monkeypatch, text_type):
    """The lean step (`_LeanDecoder`: the model's own modules around one SDPA, buffers filled from the prefill
    cache) gives GenerationMixin's tokens for every supported LLM family, on a padded batch, and is used."""
    from transformers import GenerationMixin

    from modeling import generation_entropy_asr as M
    from tests.conftest import REPO, TOKENIZER_TEXTS
    from training.build import build_model_and_processor, load_yaml

    cfg = load_yaml(REPO / "configs/model/tiny.yaml")
    cfg["text"] = {
        "model_type": text_type,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 96,
        **({"head_dim": 32} if text_type == "qwen3" else {}),
    }
    torch.manual_seed(1)
    model, processor = build_model_and_processor(cfg, TOKENIZER_TEXTS)
    model.eval()
    lm = model.model.language_model
    assert M._LeanDecoder.supports(lm)
    x = torch.randn(2, 3, 64)
    assert torch.equal(M._LeanDecoder._norm(lm.norm, x), lm.norm(x))  # one rms_norm call, the same bits
    calls = []
    forward = M._LeanDecoder.forward
    monkeypatch.setattr(
        M._LeanDecoder,
        "forward",
        lambda self, hidden, pos: calls.append(hidden.shape[1]) or forward(self, hidden, pos),
    )
    extra = {"max_new_tokens": 9, "min_new_tokens": 9}
    padded = processor(audio=[synth_clip(0.8, seed=3), synth_clip(2.6, seed=4)], context=[None, "john smith"])
    assert not bool(padded["attention_mask"].all())  # left padding: transformers' prefill, masked lean steps
    single = processor(audio=[synth_clip(1.7, seed=5)])  # one row: cached prompt head + lean prefill
    head = int((single["input_ids"][0] == model.config.audio_token_id).nonzero()[0])
    suffix = single["input_ids"].shape[1] - head  # audio placeholders and the text after them
    for inputs, lean_calls in ((padded, [1] * 8), (single, [suffix] + [1] * 8)):
        calls.clear()
        with torch.no_grad():
            lean = model.generate(**inputs, **extra)
            reference = GenerationMixin.generate(model, **inputs, **extra)
        assert lean.tolist() == reference.tolist()
        assert calls == lean_calls
    model.train()
    assert not M._LeanDecoder.supports(model.model.language_model)


def test_prompt_head_cache_is_reused_and_follows_weight_changes(tiny_model_and_processor):
    """The KV of the prompt text before the audio is computed once per set of weights: an in-place weight
    update (what an optimizer step does) invalidates it, and tokens always equal GenerationMixin's."""
    import copy

    from transformers import GenerationMixin

    model, processor = tiny_model_and_processor
    model = copy.deepcopy(model)
    inputs = processor(audio=[synth_clip(1.5, seed=7), synth_clip(1.5, seed=8)])
    first_audio = int((inputs["input_ids"][0] == model.config.audio_token_id).nonzero()[0])
    extra = {"max_new_tokens": 6, "min_new_tokens": 6}

    def both():
        with torch.no_grad():
            return model.generate(**inputs, **extra).tolist(), GenerationMixin.generate(
                model, **inputs, **extra
            ).tolist()

    fast, reference = both()
    assert fast == reference
    key, kv = model._prompt_head_kv
    assert len(key[0]) == first_audio and kv[0][0].shape[2] == first_audio
    fast_again, _ = both()
    assert fast_again == fast and model._prompt_head_kv[1][0][0] is kv[0][0]  # reused, not recomputed
    with torch.no_grad():
        model.model.language_model.layers[0].self_attn.k_proj.weight.mul_(3.0)
    fast, reference = both()
    assert fast == reference and model._prompt_head_kv[1][0][0] is not kv[0][0]


def test_greedy_transcription_and_the_pipeline_take_the_greedy_loop(monkeypatch, tiny_model_and_processor):
    """`ctc_weight=0` through `transcribe` and through the pipeline is the greedy loop, once per batch, with
    `generate`'s transcripts."""
    from modeling.pipeline_entropy_asr import EntropyASRPipeline
    from tests.conftest import spy_lean_loop

    model, processor = tiny_model_and_processor
    calls = spy_lean_loop(monkeypatch)
    clips = [synth_clip(1.2, seed=1), synth_clip(2.2, seed=2)]
    texts = [r["text"] for r in model.transcribe(clips, processor, ctc_weight=0)]
    assert calls == [1]
    expected, _ = _greedy(model, processor, clips)
    assert texts == expected
    pipe = EntropyASRPipeline.__new__(EntropyASRPipeline)  # only _forward is exercised: no task set-up needed
    pipe.model, pipe.processor = model, processor
    calls.clear()
    results = pipe._forward({"waves": [processor.prepare_audio(c) for c in clips]}, ctc_weight=0)["results"]
    assert calls == [1] and [r["text"] for r in results] == expected


def test_labels_only_on_transcript_and_end_of_turn(tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    tok = processor.tokenizer
    transcripts = ["call john smith", "打电话给张伟"]
    inputs = processor(audio=[synth_clip(1.0), synth_clip(2.5, 1)], transcript=transcripts)
    eot = tok.convert_tokens_to_ids(processor.end_of_turn_token)
    for i, text in enumerate(transcripts):
        labels = inputs["labels"][i]
        target = tok(text, add_special_tokens=False)["input_ids"] + [eot]
        kept = labels[labels != -100].tolist()
        assert kept == target
        # the labelled tokens are the last ones of the row, nothing after them
        assert inputs["input_ids"][i, -len(target) :].tolist() == target
        assert (labels[: -len(target)] == -100).all()
    audio_positions = inputs["input_ids"] == model.config.audio_token_id
    assert (inputs["labels"][audio_positions] == -100).all()
    loss = model(**inputs).loss
    assert torch.isfinite(loss) and loss.item() > 0


def test_freeze_switches_and_parameter_counts(tiny_model_and_processor):
    model, _ = tiny_model_and_processor
    total = model.num_parameters_by_part()
    assert set(total) == {"encoder", "ctc_head", "adaptor", "llm"}
    assert sum(total.values()) == sum(p.numel() for p in model.parameters())
    assert 5e6 <= sum(total.values()) <= 10e6  # the tiny CPU model
    try:
        model.set_trainable(encoder=False, ctc_head=False, adaptor=True, llm=False)
        trainable = model.num_parameters_by_part(only_trainable=True)
        assert trainable == {"encoder": 0, "ctc_head": 0, "adaptor": total["adaptor"], "llm": 0}
        model.set_trainable(llm=True)
        trainable = model.num_parameters_by_part(only_trainable=True)
        assert trainable["llm"] == total["llm"] and trainable["encoder"] == 0
        with pytest.raises(ValueError, match="Unknown parts"):
            model.set_trainable(decoder=True)
    finally:
        model.set_trainable(encoder=True, ctc_head=True, adaptor=True, llm=True)


def test_default_max_new_tokens_follows_duration(tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    for seconds in (0.5, 2.0, 6.0):
        inputs = processor(audio=synth_clip(seconds))
        bound = int(
            model.default_max_new_tokens(inputs["input_features_mask"], inputs["input_features"].shape[1])[0]
        )
        expected = max(
            model.config.min_token_bound, int(-(-seconds * model.config.max_tokens_per_second // 1))
        )
        assert abs(bound - expected) <= 1
        with torch.no_grad():
            out = model.generate(**inputs)
        assert out.shape[1] - inputs["input_ids"].shape[1] <= bound


def test_generation_config_allows_an_empty_transcript(tiny_model_dir):
    import json

    gen = json.loads((tiny_model_dir / "generation_config.json").read_text())
    assert gen.get("min_new_tokens") in (None, 0) and gen.get("min_length") in (None, 0)
    assert gen.get("max_new_tokens") is None  # the duration bound applies
    assert gen["suppress_tokens"] and gen["do_sample"] is False


def test_audio_encoded_only_on_first_step(tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    calls = []
    handle = model.model.encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        inputs = processor(audio=synth_clip(1.5))
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6)
    finally:
        handle.remove()
    assert out.shape[1] - inputs["input_ids"].shape[1] == 6
    assert len(calls) == 1


def test_ctc_loss_and_audio_only_forward(tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    inputs = processor(audio=[synth_clip(1.0), synth_clip(2.0, 1)])
    ctc_labels = torch.tensor([[3, 4, 5, -100], [6, 7, 8, 9]])
    out = model(
        input_features=inputs["input_features"],
        input_features_mask=inputs["input_features_mask"],
        ctc_labels=ctc_labels,
    )
    assert out.logits is None and out.ctc_logits.shape[-1] == model.config.ctc_vocab_size
    assert out.encoder_lengths.tolist() == [25, 50]
    assert torch.isfinite(out.ctc_loss) and out.loss.item() == pytest.approx(out.ctc_loss.item())


def test_placeholder_count_mismatch_is_a_clear_error(tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    inputs = processor(audio=synth_clip(2.0))
    short = processor(audio=synth_clip(1.0))
    with pytest.raises(ValueError, match="do not match the audio positions"):
        model(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            input_features=short["input_features"],
            input_features_mask=short["input_features_mask"],
        )
    with pytest.raises(ValueError, match="no input_features"):
        model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])


def test_whisper_encoder_and_llama_llm(tmp_path):
    """Other encoder and LLM families through the same code (config dispatch, not checkpoint names)."""
    from tests.conftest import TOKENIZER_TEXTS
    from training.build import build_model_and_processor

    cfg = {
        "encoder": {
            "model_type": "whisper",
            "d_model": 64,
            "encoder_layers": 2,
            "encoder_attention_heads": 2,
            "encoder_ffn_dim": 128,
            "decoder_layers": 1,
            "decoder_attention_heads": 2,
            "decoder_ffn_dim": 64,
            "num_mel_bins": 80,
            "max_source_positions": 250,
        },
        "text": {
            "model_type": "llama",
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "intermediate_size": 128,
        },
        "tokenizer": {"vocab_size": 500},
        "adaptor": {"stack_factor": 4, "hidden_size": 64},
        "ctc": {"hidden_size": 32},
        "audio": {"max_seconds": 5.0},
    }
    torch.manual_seed(0)
    model, processor = build_model_and_processor(cfg, TOKENIZER_TEXTS)
    model.eval()
    clips = [synth_clip(1.0), synth_clip(2.3, 1)]
    inputs = processor(audio=clips)
    assert inputs["input_features"].shape[1:] == (80, 500)  # Whisper pads to its fixed window
    counts = [(inputs["input_ids"][i] == model.config.audio_token_id).sum().item() for i in range(2)]
    # 50 Hz Whisper frames: ceil(n / 160) mel frames -> (L - 1) // 2 + 1 -> ceil(/ 4): 1.0 s -> 13, 2.3 s -> 29
    assert counts == [processor.num_audio_tokens(c.size) for c in clips] == [13, 29]
    texts, _ = _greedy(model, processor, clips)
    singles = [_greedy(model, processor, [c])[0][0] for c in clips]
    assert texts == singles
    with pytest.raises(ValueError, match="limit is 5 s"):
        processor(audio=synth_clip(5.5))


@pytest.mark.parametrize("path", ["lean greedy", "GenerationMixin"])
def test_no_speech_gate_ends_only_the_clips_at_or_above_the_threshold(
    monkeypatch, tiny_model_and_processor, path
):
    model, processor = tiny_model_and_processor
    clips = [synth_clip(s, seed=i) for i, s in enumerate((1.0, 1.6, 2.4))]
    inputs = processor(audio=clips)
    p = model.no_speech_probability(**inputs)
    # the same probability as the first step's softmax over the logits (nothing suppressed in this config)
    with torch.no_grad():
        first = model(**inputs).logits[:, -1].float().softmax(-1)[:, processor.tokenizer.eos_token_id]
    torch.testing.assert_close(p, first)
    order = p.argsort(descending=True)
    assert float(p[order[0]]) > float(p[order[1]]), "clips need distinct probabilities"
    extra = {} if path == "lean greedy" else {"return_dict_in_generate": True}

    def run():
        with torch.no_grad():
            out = model.generate(**inputs, **extra)
        out = out if path == "lean greedy" else out.sequences
        return processor.batch_decode(out[:, inputs["input_ids"].shape[1] :])

    ungated = run()
    assert all(t.strip() for t in ungated), "the random model writes something for every clip"
    threshold = float(p[order[0]] + p[order[1]]) / 2  # only the most likely clip is at or above it
    monkeypatch.setattr(model.config, "no_speech_threshold", threshold)
    gated = run()
    assert gated[int(order[0])] == ""
    assert [t for i, t in enumerate(gated) if i != int(order[0])] == [
        t for i, t in enumerate(ungated) if i != int(order[0])
    ]
    monkeypatch.setattr(model.config, "no_speech_threshold", float(p.max()) * 1.01)
    assert run() == ungated


def test_speech_confidence_counts_only_valid_frames_where_a_label_beats_blank():
    from modeling.generation_entropy_asr import speech_confidence

    blank = 0
    probs = torch.tensor(
        [
            [[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6], [0.1, 0.8, 0.1]],  # 3 valid: 0.6, 0.6
            [[0.9, 0.05, 0.05], [0.5, 0.3, 0.2], [0.1, 0.1, 0.8], [0.1, 0.1, 0.8]],  # 2 valid: all blank
            [[0.3, 0.5, 0.2], [0.2, 0.3, 0.5], [0.1, 0.1, 0.8], [0.2, 0.7, 0.1]],  # 4 valid
        ]
    )
    logits = probs.log() + 3.0  # softmax is shift-invariant
    got = speech_confidence(logits, torch.tensor([3, 2, 4]), blank)
    torch.testing.assert_close(got, torch.tensor([0.6, 0.0, (0.5 + 0.5 + 0.8 + 0.7) / 4]))


@pytest.mark.parametrize("path", ["lean greedy", "lean prefill", "GenerationMixin", "beam search"])
def test_speech_confidence_gate_ends_only_the_clips_below_the_minimum(
    monkeypatch, tiny_model_and_processor, path
):
    from modeling.generation_entropy_asr import speech_confidence

    model, processor = tiny_model_and_processor
    # clips of one length are not padded: their prefill runs in the lean decoder, not the text model's forward
    seconds = (1.6, 1.6, 1.6) if path == "lean prefill" else (1.0, 1.6, 2.4)
    clips = [synth_clip(s, seed=i) for i, s in enumerate(seconds)]
    inputs = processor(audio=clips)
    c = model.speech_confidence(**inputs)
    # one clip at a time (no padding) gives the same confidence: padded frames do not count
    single = torch.cat([model.speech_confidence(**processor(audio=[clip])) for clip in clips])
    torch.testing.assert_close(c, single, rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        out = model(
            input_features=inputs["input_features"], input_features_mask=inputs["input_features_mask"]
        )
    blank = model.config.ctc_blank_id
    torch.testing.assert_close(c, speech_confidence(out.ctc_logits, out.encoder_lengths, blank))
    order = c.argsort()
    assert float(c[order[1]]) > float(c[order[0]]) > 0.0, "clips need distinct confidences"
    extra = {
        "lean greedy": {},
        "lean prefill": {},
        "GenerationMixin": {"return_dict_in_generate": True},
        "beam search": {"num_beams": 2},
    }[path]

    def run():
        with torch.no_grad():
            out = model.generate(**inputs, **extra)
        out = out.sequences if path == "GenerationMixin" else out
        return processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)

    ungated = run()
    assert all(t.strip() for t in ungated), "the random model writes something for every clip"
    low = int(order[0])
    monkeypatch.setattr(model.config, "min_speech_confidence", float(c[order[0]] + c[order[1]]) / 2)
    gated = run()
    assert gated[low] == ""
    assert [t for i, t in enumerate(gated) if i != low] == [t for i, t in enumerate(ungated) if i != low]
    monkeypatch.setattr(model.config, "min_speech_confidence", float(c.min()) * 0.99)
    assert run() == ungated


def test_gate_settings_out_of_range_are_refused():
    from huggingface_hub.errors import StrictDataclassClassValidationError

    from modeling.configuration_entropy_asr import EntropyASRConfig

    for key in ("min_speech_confidence", "no_speech_threshold"):
        for bad in (0.0, 1.5, -0.1):
            with pytest.raises(StrictDataclassClassValidationError, match=f"{key} must be in"):
                EntropyASRConfig(**{key: bad})
        assert getattr(EntropyASRConfig(**{key: 1}), key) == 1
