"""Augmentation: exact SNR, Beta-distributed silence padding, SpecAugment, speed, CR-CTC views."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from training.data import augment as A
from training.data.augment import AugmentConfig, Augmenter

SR = 16000


def _speechy(seconds: float = 2.0, amp: float = 0.1) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * 220 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def _snr_db(clean: np.ndarray, mixed: np.ndarray) -> float:
    return 10 * np.log10(A.signal_power(clean) / A.signal_power(mixed - clean))


@pytest.mark.parametrize("kind", A.NOISE_KINDS)
@pytest.mark.parametrize("snr", [-5.0, 0.0, 10.0, 25.0])
def test_add_noise_hits_target_snr(kind, snr):
    rng = np.random.default_rng(0)
    clean = _speechy(amp=0.05)
    noise = A.make_noise(kind, len(clean) // 2, rng, others=[_speechy(1.0), _speechy(0.5, 0.2)])
    mixed = A.add_noise(clean, noise, snr)  # noise shorter than the clip: looped
    assert mixed.dtype == np.float32 and mixed.shape == clean.shape
    assert abs(_snr_db(clean, mixed) - snr) < 0.5


def test_add_noise_rescales_instead_of_clipping_and_keeps_snr():
    clean = _speechy(amp=0.95)
    noise = A.white_noise(len(clean), np.random.default_rng(1))
    mixed = A.add_noise(clean, noise, 0.0)
    assert np.abs(mixed).max() <= 1.0 + 1e-6
    scale = float(np.dot(mixed, clean) / np.dot(clean, clean))  # both parts scaled by the same factor
    assert abs(_snr_db(scale * clean, mixed) - 0.0) < 0.5


def test_add_noise_silent_signal_and_silent_noise():
    noise = A.white_noise(SR, np.random.default_rng(2))
    out = A.add_noise(np.zeros(SR, np.float32), noise, 10.0, silent_noise_rms=0.02)
    assert abs(np.sqrt(A.signal_power(out)) - 0.02) < 1e-4
    clean = _speechy()
    np.testing.assert_array_equal(A.add_noise(clean, np.zeros(100), 5.0), clean)


def test_pad_silence_lengths_follow_beta_1_3():
    rng = np.random.default_rng(1234)
    ones = np.ones(100, np.float32)
    lead, trail = [], []
    for _ in range(1500):
        padded = A.pad_silence(ones, rng, sr=SR, max_s=1.0, a=1, b=3)
        nonzero = np.flatnonzero(padded)
        lead.append(nonzero[0] / SR)
        trail.append((len(padded) - 1 - nonzero[-1]) / SR)
    for sample in (lead, trail):
        assert stats.kstest(sample, stats.beta(1, 3).cdf).pvalue > 0.01
        assert stats.kstest(sample, stats.beta(3, 1).cdf).pvalue < 1e-6  # the test has power
    assert 0.2 < np.mean(lead) < 0.3  # E[Beta(1,3)] = 0.25 s


def test_pad_silence_max_seconds_scales():
    lead, trail = A.sample_pad_lengths(np.random.default_rng(0), sr=SR, max_s=0.0)
    assert (lead, trail) == (0, 0)


@pytest.mark.parametrize(("factor", "n"), [(0.9, 16000), (1.0, 16000), (1.1, 16000), (1.1, 1)])
def test_change_speed_length(factor, n):
    out = A.change_speed(np.ones(n, np.float32), factor)
    assert abs(len(out) - n / factor) <= 1


def test_speed_perturb_uses_given_factors():
    lengths = {len(A.speed_perturb(np.zeros(1100, np.float32), np.random.default_rng(s))) for s in range(30)}
    assert lengths == {1000, 1100, 1223}


def test_spec_augment_masks_and_determinism():
    feats = torch.randn(200, 80) + 5.0  # no natural zeros
    out = A.spec_augment(feats, np.random.default_rng(0))
    again = A.spec_augment(feats, np.random.default_rng(0))
    assert torch.equal(out, again) and out.shape == feats.shape
    assert not torch.equal(out, feats) and torch.equal(feats, feats)  # input left untouched
    zero_cols = (out == 0).all(dim=0).sum().item()
    zero_rows = (out == 0).all(dim=1).sum().item()
    assert 0 < zero_cols <= 2 * 27
    assert zero_rows <= 2 * int(0.05 * 200)
    kept = out != 0
    assert torch.equal(out[kept], feats[kept])
    none = A.spec_augment(feats, np.random.default_rng(0), num_freq_masks=0, num_time_masks=0)
    assert torch.equal(none, feats)


def test_noise_generators_properties():
    rng = np.random.default_rng(3)
    n = 2 * SR
    for kind in ("vehicle", "music", "white", "pink"):
        x = A.make_noise(kind, n, rng)
        assert x.dtype == np.float32 and len(x) == n
        assert abs(np.sqrt(A.signal_power(x)) - 1.0) < 1e-3
    freqs = np.fft.rfftfreq(n, 1 / SR)

    def low_share(x: np.ndarray, cutoff: float) -> float:
        power = np.abs(np.fft.rfft(x)) ** 2
        return float(power[freqs < cutoff].sum() / power.sum())

    assert low_share(A.vehicle_noise(n, rng), 500) > 0.95
    assert low_share(A.white_noise(n, rng), 500) < 0.1
    assert 0.3 < low_share(A.pink_noise(n, rng), 500) < 0.9
    assert np.array_equal(
        A.music_noise(n, np.random.default_rng(9)), A.music_noise(n, np.random.default_rng(9))
    )
    with pytest.raises(ValueError, match="babble"):
        A.babble([], n, rng)
    with pytest.raises(ValueError, match="unknown noise kind"):
        A.make_noise("jazz", n, rng)


def test_babble_mixes_several_talkers():
    rng = np.random.default_rng(4)
    talkers = [np.sin(2 * np.pi * f * np.arange(SR) / SR).astype(np.float32) for f in (200, 300, 450, 700)]
    mix = A.babble(talkers, SR, rng)
    power = np.abs(np.fft.rfft(mix)) ** 2
    peaks = {f for f in (200, 300, 450, 700) if power[f] > 0.01 * power.max()}
    assert len(peaks) >= 2


def test_augment_wave_switches():
    clean = _speechy()
    off = Augmenter(AugmentConfig(speed_perturb=False, noise_prob=0.0))
    np.testing.assert_array_equal(off.augment_wave(clean, np.random.default_rng(0)), clean)
    always = Augmenter(AugmentConfig(speed_perturb=False, noise_prob=1.0, noise_kinds=["white"]))
    out = always.augment_wave(clean, np.random.default_rng(0))
    assert len(out) > len(clean)  # padded (Beta(1,3) s each side is > 0 almost surely)
    with pytest.raises(ValueError, match="unknown noise kinds"):
        AugmentConfig(noise_kinds=["jazz"])


def test_noise_applied_at_configured_rate():
    aug = Augmenter(AugmentConfig(speed_perturb=False, noise_kinds=["white"]))
    clean = _speechy(0.1)
    rng = np.random.default_rng(5)
    noisy = sum(len(aug.augment_wave(clean, rng)) != len(clean) for _ in range(1000))
    assert 160 <= noisy <= 240  # Binomial(1000, 0.2): +-4.5 sd


def test_two_views_differ_but_are_deterministic():
    aug = Augmenter(AugmentConfig(noise_prob=1.0))
    clean, others = _speechy(), [_speechy(1.0, 0.3)]
    v1, v2 = aug.two_views(clean, np.random.default_rng(11), others=others)
    w1, w2 = aug.two_views(clean, np.random.default_rng(11), others=others)
    assert len(v1) == len(v2)  # CR-CTC needs equal frame counts
    assert not np.array_equal(v1, v2)
    np.testing.assert_array_equal(v1, w1)
    np.testing.assert_array_equal(v2, w2)
    x1, _ = aug.two_views(clean, np.random.default_rng(12), others=others)
    assert not (len(x1) == len(v1) and np.array_equal(x1, v1))


def test_two_views_features_get_independent_masks():
    aug = Augmenter(AugmentConfig(noise_prob=0.0, speed_perturb=False))

    def feature_fn(wave: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(wave[: 100 * 80].reshape(100, 80).copy()) + 1.0

    f1, f2 = aug.two_views(_speechy(), np.random.default_rng(0), feature_fn=feature_fn)
    assert f1.shape == f2.shape == (100, 80)
    assert not torch.equal(f1, f2)
    g1, g2 = aug.two_views(_speechy(), np.random.default_rng(0), feature_fn=feature_fn)
    assert torch.equal(f1, g1) and torch.equal(f2, g2)


def test_nonspeech_examples_replace_a_fraction_with_empty_transcripts():
    from training.data.collators import AugmentTransform

    speech = (0.1 * np.sin(np.arange(16000) / 7.0)).astype(np.float32)

    def rows(p, n=400):
        t = AugmentTransform(AugmentConfig(nonspeech_prob=p, noise_prob=0.0, speed_perturb=False), seed=3)
        return [
            t({"audio": speech, "text": "call john", "phonemes": "K AO1 L", "entities": ["john"], "index": i})
            for i in range(n)
        ]

    out = rows(0.25)
    empty = [r for r in out if r["text"] == ""]
    assert 0.18 < len(empty) / len(out) < 0.32
    for r in empty:
        assert r["phonemes"] == "" and r["entities"] == [] and r["nonspeech"]
        assert 0.5 <= len(r["views"][0]) / 16000 <= 4.0
        assert float(np.sqrt(np.mean(r["views"][0] ** 2))) < 0.2  # silence or noise, below speech level
    assert any(not np.any(r["views"][0]) for r in empty)  # silence is among the kinds
    for r in out:
        if r["text"]:
            np.testing.assert_array_equal(r["views"][0], speech)
    # disabled: nothing replaced and the random stream of the other augmentations is unchanged
    assert all(r["text"] == "call john" for r in rows(0.0, 50))
    with pytest.raises(ValueError, match="nonspeech_prob"):
        AugmentConfig(nonspeech_prob=1.5)


def test_nonspeech_sft_example_is_labelled_with_end_of_turn_only(tiny_model_and_processor):
    from training.data.collators import AugmentTransform, SFTCollator

    _, processor = tiny_model_and_processor
    config = AugmentConfig(nonspeech_prob=1.0)
    t = AugmentTransform(config, seed=0)
    row = t(
        {"audio": np.zeros(8000, np.float32), "text": "call john", "phonemes": "", "entities": [], "index": 0}
    )
    batch = SFTCollator(processor, augmenter=Augmenter(config))([row])
    kept = batch["labels"][0][batch["labels"][0] != -100].tolist()
    assert kept == [processor.tokenizer.convert_tokens_to_ids(processor.end_of_turn_token)]
