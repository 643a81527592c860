"""The streaming encoder: chunk-limited encoding on the offline encoder's weights: a chunk that covers the clip is the
offline encoder; cached chunk-by-chunk encoding equals encoding the same chunks at once; no frame sees audio
beyond its chunk (but for the front end's 30 ms look-ahead); the config switches it; bad settings are refused."""

import pytest
import torch

from modeling.encoder_entropy_asr import (
    EncoderStream,
    chunk_attention_mask,
    encode_chunked,
    subsample,
)
from tests.conftest import synth_clip


@pytest.fixture(scope="module")
def encoder_and_features(tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    encoder = model.model.encoder
    # a trained encoder's batch norms are not the identity: give them statistics so that a wrong window shows
    saved = {k: v.clone() for k, v in encoder.state_dict().items() if "running" in k}
    generator = torch.Generator().manual_seed(0)
    for module in encoder.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            module.running_mean.copy_(0.1 * torch.randn(module.running_mean.shape, generator=generator))
            module.running_var.copy_(0.5 + 1.5 * torch.rand(module.running_var.shape, generator=generator))
    inputs = processor(audio=[synth_clip(3.2, seed=1), synth_clip(2.1, seed=2)])
    yield encoder, inputs["input_features"], inputs["input_features_mask"]
    encoder.load_state_dict(saved, strict=False)


def test_a_chunk_that_covers_the_clip_is_the_offline_encoder(encoder_and_features):
    encoder, features, mask = encoder_and_features
    with torch.no_grad():
        offline = encoder(features, attention_mask=mask).last_hidden_state
        chunked = encode_chunked(encoder, features, mask, chunk_frames=offline.shape[1], left_chunks=-1)
        small = encode_chunked(encoder, features, mask, chunk_frames=8, left_chunks=-1)
    valid = encoder._get_output_attention_mask(mask, target_length=offline.shape[1]).bool()
    assert torch.allclose(chunked[valid], offline[valid], atol=1e-5)
    assert (small[valid] - offline[valid]).abs().max() > 0.1  # chunks of 8 frames do change the states


@pytest.mark.parametrize(("chunk", "left", "push"), [(8, -1, 5), (8, 2, 13), (4, 0, 3), (6, 1, 1)])
def test_cached_chunk_by_chunk_encoding_equals_encoding_the_chunks_at_once(
    encoder_and_features, chunk, left, push
):
    encoder, features, _ = encoder_and_features
    with torch.no_grad():
        at_once = encode_chunked(encoder, features[:1], None, chunk_frames=chunk, left_chunks=left)
        frames, _ = subsample(encoder, features[:1], None)
    stream = EncoderStream(encoder, chunk, left)
    pieces = [stream.push(frames[:, i : i + push]) for i in range(0, frames.shape[1], push)]
    streamed = torch.cat([*pieces, stream.flush()], dim=1)
    assert streamed.shape == at_once.shape
    assert torch.allclose(streamed, at_once, atol=1e-5)
    assert stream.offset == frames.shape[1]
    # with a bounded left context the cache stays bounded: what the next chunk may see, no more
    if left >= 0:
        assert all(k is None or k.shape[1] <= left * chunk for k in stream.keys)


def test_no_frame_sees_audio_beyond_its_chunk(encoder_and_features):
    """Changing the features after a chunk's end (beyond the front end's 3-frame look-ahead) leaves every frame
    up to that chunk's end as it was; in full context it changes them."""
    encoder, features, _ = encoder_and_features
    chunk, end = 8, 16  # encoder frames 0..15 are the first two chunks; they cover feature frames up to 63
    changed = features[:1].clone()
    changed[:, 4 * end + 3 :] += torch.randn_like(changed[:, 4 * end + 3 :])
    with torch.no_grad():
        before = encode_chunked(encoder, features[:1], None, chunk_frames=chunk, left_chunks=-1)
        after = encode_chunked(encoder, changed, None, chunk_frames=chunk, left_chunks=-1)
        offline_before = encoder(features[:1]).last_hidden_state
        offline_after = encoder(changed).last_hidden_state
    assert torch.allclose(before[:, :end], after[:, :end], atol=1e-6)
    assert (before[:, end:] - after[:, end:]).abs().max() > 1e-2
    assert (offline_before[:, :end] - offline_after[:, :end]).abs().max() > 1e-2


def test_the_attention_mask_keeps_the_chunk_and_its_left_chunks():
    mask = chunk_attention_mask(6, 2, 1)
    expected = torch.tensor(
        [
            [1, 1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [1, 1, 1, 1, 0, 0],
            [1, 1, 1, 1, 0, 0],
            [0, 0, 1, 1, 1, 1],
            [0, 0, 1, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(mask, expected)
    assert torch.equal(
        chunk_attention_mask(6, 2, -1),
        torch.tril(torch.ones(3, 3)).repeat_interleave(2, 0).repeat_interleave(2, 1).bool(),
    )


def test_the_config_switches_chunk_mode_and_a_call_overrides_it(tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    inputs = processor(audio=[synth_clip(2.5, seed=3)])
    config = model.config
    with torch.no_grad():
        offline = model(**inputs).ctc_logits
        by_call = model(**inputs, encoder_chunk_frames=4, encoder_left_chunks=1).ctc_logits
        try:
            config.encoder_chunk_frames, config.encoder_left_chunks = 4, 1
            by_config = model(**inputs).ctc_logits
            full_by_call = model(**inputs, encoder_chunk_frames=0).ctc_logits
        finally:
            config.encoder_chunk_frames, config.encoder_left_chunks = None, -1
    assert torch.equal(by_call, by_config) and torch.equal(full_by_call, offline)
    assert (by_call - offline).abs().max() > 1e-3


def test_bad_chunk_settings_are_refused(tiny_model_and_processor):
    from huggingface_hub.errors import (
        StrictDataclassClassValidationError,
        StrictDataclassFieldValidationError,
    )
    from transformers import WhisperConfig

    from modeling.configuration_entropy_asr import EntropyASRConfig

    model, _ = tiny_model_and_processor
    base = model.config.to_dict()
    for bad, message in (
        ({"encoder_chunk_frames": 0}, "encoder_chunk_frames must be >= 1"),
        ({"encoder_left_chunks": -2}, "encoder_left_chunks must be -1"),
    ):
        with pytest.raises(StrictDataclassClassValidationError, match=message):
            EntropyASRConfig(**{**base, **bad})
    with pytest.raises(StrictDataclassFieldValidationError, match="encoder_chunk_frames"):
        EntropyASRConfig(**{**base, "encoder_chunk_frames": 2.5})
    whisper = {**base, "encoder_config": WhisperConfig(d_model=64).to_dict(), "encoder_chunk_frames": 4}
    with pytest.raises(StrictDataclassClassValidationError, match="Parakeet"):
        EntropyASRConfig(**whisper)
    with pytest.raises(ValueError, match="chunk_frames must be a positive"):
        EncoderStream(model.model.encoder, 0, -1)


def test_the_log_mel_front_end_is_parakeets_before_its_per_clip_normalisation(tiny_model_and_processor):
    _, processor = tiny_model_and_processor
    waves = [torch.tensor(synth_clip(2.0, seed=1)), torch.tensor(synth_clip(1.3, seed=2))]
    features, mask = processor.audio_features(waves)
    raw, valid = processor.log_mel(waves)
    assert torch.equal(valid, mask.bool())
    frames = valid.sum(1)[:, None, None]
    mean = (raw * valid[..., None]).sum(1, keepdim=True) / frames
    std = ((((raw - mean) * valid[..., None]) ** 2).sum(1, keepdim=True) / (frames - 1)).sqrt()
    assert torch.allclose((raw - mean) / (std + 1e-5) * valid[..., None], features, atol=1e-6)


def test_fixed_feature_statistics_make_a_frame_depend_only_on_the_audio_under_it(
    tiny_model_and_processor, tmp_path
):
    """With fixed statistics the features of a clip's first 1.2 s are those of the whole clip's first frames (the
    frames whose 25 ms windows end inside them); normalised per clip, every frame changes with what follows."""
    from modeling.processing_entropy_asr import EntropyASRProcessor

    _, processor = tiny_model_and_processor
    clip = torch.tensor(synth_clip(3.0, seed=4))
    head = clip[: int(1.2 * 16000)]
    done = (head.numel() - 256) // 160 + 1  # frames whose window lies inside the head
    per_clip = [processor.audio_features([w])[0][0] for w in (clip, head)]
    assert (per_clip[0][:done] - per_clip[1][:done]).abs().max() > 1e-2
    stats = processor.estimate_feature_stats([clip, torch.tensor(synth_clip(2.0, seed=5))])
    assert len(stats["mean"]) == len(stats["std"]) == 80
    try:
        processor.set_feature_stats(stats)
        fixed = [processor.audio_features([w])[0][0] for w in (clip, head)]
        processor.save_pretrained(tmp_path)
    finally:
        processor.set_feature_stats(None)
    assert torch.allclose(fixed[0][:done], fixed[1][:done], atol=1e-5)
    assert abs(fixed[0].mean().item()) < 0.3 and 0.7 < fixed[0].std().item() < 1.3
    reloaded = EntropyASRProcessor.from_pretrained(tmp_path)
    assert reloaded.feature_stats == stats
    assert torch.equal(reloaded.audio_features([clip])[0][0], fixed[0])


def test_bad_feature_statistics_are_refused(tiny_model_and_processor):
    _, processor = tiny_model_and_processor
    good = {"mean": [0.0] * 80, "std": [1.0] * 80}
    for bad, message in (
        ({"mean": [0.0] * 79, "std": [1.0] * 80}, r"feature_stats\['mean'\] must be a list of 80"),
        ({"mean": [0.0] * 80}, r"feature_stats\['std'\] must be a list of 80"),
        ({**good, "std": [0.0] * 80}, "must be positive"),
    ):
        with pytest.raises(ValueError, match=message):
            processor.set_feature_stats(bad)
    assert processor.feature_stats is None


def test_a_growing_recording_is_encoded_as_the_model_encodes_it_with_each_frame_computed_once(
    streaming_model,
):
    """At every point of a 4 s recording (pushes of 0.2 s) the streaming encoder's states equal the model's own
    chunk-limited encoding of the audio so far; each encoder frame goes through the cached stream once, and the
    feature frames it keeps stay bounded."""
    from modeling.encoder_entropy_asr import StreamingEncoder

    model, processor = streaming_model
    clip = torch.tensor(synth_clip(4.0, seed=3))
    encoder = StreamingEncoder(model, processor)
    worst, kept = 0.0, []
    for end in [*range(700, clip.numel(), 3200), clip.numel()]:
        states, lengths = encoder.states(clip[:end])
        features, mask = processor.audio_features([clip[:end]])
        with torch.no_grad():
            expected, expected_lengths = model.model.encode(features, mask)
        assert int(lengths) == int(expected_lengths) == states.shape[1]
        worst = max(worst, (states - expected[:, : int(lengths)]).abs().max().item())
        kept.append(encoder.features.shape[0])
    assert worst < 1e-5
    assert encoder.stream.offset + (
        encoder.stream.pending.shape[1] if encoder.stream.pending is not None else 0
    ) == (encoder.final_frames)
    assert max(kept) <= 4 * 3  # features only from the frame before the first not final


def test_a_streaming_encoder_needs_chunk_mode_and_fixed_statistics(tiny_model_and_processor, streaming_model):
    from modeling.encoder_entropy_asr import StreamingEncoder

    offline_model, offline_processor = tiny_model_and_processor
    model, processor = streaming_model
    with pytest.raises(ValueError, match="encoder_chunk_frames"):
        StreamingEncoder(offline_model, processor)
    with pytest.raises(ValueError, match="fixed feature statistics"):
        StreamingEncoder(model, offline_processor)
