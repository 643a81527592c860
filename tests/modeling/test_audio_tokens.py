"""The audio-token count formula (shared by processor and model) against what the encoder really produces."""

import numpy as np
import pytest
import torch

from modeling import num_audio_tokens

HOP = 160
ADAPTOR_SAMPLES = (
    HOP * 4 * 4
)  # 4 mel frames per encoder frame (4x subsampling), 4 encoder frames per position


def boundary_lengths(max_samples: int = 32000) -> list[int]:
    """0..2 s: every sample offset -1/0/+1 around hop and adaptor-frame boundaries, plus small clips."""
    lengths = {0, 1, HOP - 1, HOP, HOP + 1, 2 * HOP - 1, 2 * HOP, 2 * HOP + 1, 3 * HOP, 4 * HOP}
    for b in range(ADAPTOR_SAMPLES // 4, max_samples + 1, ADAPTOR_SAMPLES // 4):
        lengths.update({b - HOP - 1, b - HOP, b - 1, b, b + 1, b + HOP})
    return sorted(n for n in lengths if 0 <= n <= max_samples)


LENGTHS = boundary_lengths()


@pytest.mark.parametrize(
    "n, expected",
    [(0, 0), (1, 0), (159, 0), (160, 1), (161, 1), (640, 1), (1600, 1), (3200, 2), (16000, 7), (48000, 19)],
)
def test_known_counts(n, expected):
    kw = {"hop_length": 160, "conv_layers": [[3, 2, 1], [3, 2, 1]], "stack_factor": 4}
    assert num_audio_tokens(n, **kw) == expected
    assert int(num_audio_tokens(torch.tensor([n]), **kw)[0]) == expected


def test_formula_matches_encoder_and_adaptor(tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    fe = processor.feature_extractor
    rng = np.random.default_rng(0)
    clips = [rng.standard_normal(max(n, 1)).astype(np.float32) * 0.1 for n in LENGTHS]
    feats = fe(clips, sampling_rate=16000, return_attention_mask=True, return_tensors="pt")
    mask = feats["attention_mask"].long()
    # zero-length clip: an all-zero mask row
    mask[[i for i, n in enumerate(LENGTHS) if n == 0]] = 0
    with torch.no_grad():
        enc = model.model.encoder(feats["input_features"].nan_to_num(), attention_mask=mask)
        embeds, counts, _, lengths = model.model.get_audio_features(
            feats["input_features"].nan_to_num(), mask
        )
    encoder_valid = enc.attention_mask.sum(-1)
    expected = [processor.num_audio_tokens(n) for n in LENGTHS]
    stacked_from_encoder = ((encoder_valid + 3) // 4).tolist()
    mismatches = [(n, e, s) for n, e, s in zip(LENGTHS, expected, stacked_from_encoder) if e != s]
    assert not mismatches, f"(samples, formula, encoder) mismatches: {mismatches[:10]}"
    assert counts.tolist() == expected
    assert lengths.tolist() == encoder_valid.tolist()
    assert embeds.shape[1] == (enc.last_hidden_state.shape[1] + 3) // 4
    assert len(LENGTHS) > 60
