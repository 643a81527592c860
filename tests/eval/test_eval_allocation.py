"""NSE, linear CKA (streaming and one-shot), PAI and CSAI on data whose answer is known."""

import math

import numpy as np
import pytest
import torch

from eval.entropy_allocation.allocation import (
    AllocationConfig,
    CKAAccumulator,
    CovarianceAccumulator,
    csai,
    entropy,
    entropy_allocation_scores,
    linear_cka,
    linear_cka_gram,
    nse,
    pai,
    resolve_config,
    utterance_split,
)
from tests.eval.conftest import make_corpus


def _with_covariance(eigenvalues: np.ndarray, n: int, seed: int = 0, offset: float = 0.0) -> np.ndarray:
    """n frames whose centred covariance (1/N normalisation) is exactly diag(eigenvalues) in a random basis."""
    rng = np.random.default_rng(seed)
    d = len(eigenvalues)
    a = rng.standard_normal((n, d))
    a -= a.mean(0)
    q, _ = np.linalg.qr(a)  # (n, d) orthonormal, centred columns
    basis, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sqrt(eigenvalues * n) @ basis.T + offset


def _spectral_nse(eigenvalues: np.ndarray, n: int) -> float:
    p = eigenvalues[eigenvalues > 0] / eigenvalues.sum()
    return float(-(p * np.log(p)).sum() / math.log(min(n, len(eigenvalues))))


def _onehot(labels: np.ndarray, k: int) -> np.ndarray:
    return np.eye(k, dtype=np.float32)[labels]


# ---------------------------------------------------------------------------------------------- NSE


def test_nse_isotropic_gaussian_tends_to_one():
    rng = np.random.default_rng(0)
    values = [nse(rng.standard_normal((n, 64), dtype=np.float32)) for n in (100, 1_000, 100_000)]
    assert values[0] < values[1] < values[2]
    assert values[2] == pytest.approx(1.0, abs=0.01)
    assert values[0] < 0.95  # 100 samples in 64 dims: a visibly uneven sample spectrum


@pytest.mark.parametrize("as_torch", [False, True])
def test_nse_rank_one_is_zero(as_torch):
    rng = np.random.default_rng(1)
    z = (rng.standard_normal((5_000, 1)) @ rng.standard_normal((1, 64)) + 3.0).astype(np.float32)
    assert nse(torch.from_numpy(z) if as_torch else z) == 0.0


@pytest.mark.parametrize(
    "eigenvalues",
    [
        np.ones(16),  # isotropic: NSE = 1
        np.r_[np.ones(4), np.zeros(12)],  # 4 equal directions: log 4 / log 16 = 0.5
        np.logspace(0, -4, 32),
        np.r_[10.0, np.full(7, 0.1)],
    ],
    ids=["isotropic", "four_of_16", "logspace", "one_dominant"],
)
@pytest.mark.parametrize("compute_dtype, tol", [("float64", 1e-10), ("float32", 1e-6)])
def test_nse_matches_planted_spectrum(eigenvalues, compute_dtype, tol):
    z = _with_covariance(
        eigenvalues, n=2_000, offset=50.0
    )  # large mean: exercises the shift-then-centre path
    got = nse(z, compute_dtype=compute_dtype)
    assert got == pytest.approx(_spectral_nse(eigenvalues, 2_000), abs=tol)


def test_nse_four_equal_directions_is_half():
    z = _with_covariance(np.r_[np.ones(4), np.zeros(12)], n=500)
    assert nse(z, compute_dtype="float64") == pytest.approx(0.5, abs=1e-10)


def test_nse_normalises_by_min_n_d():
    # N = 8 < d = 32: at most 7 nonzero eigenvalues, normalised by log(8)
    z = np.random.default_rng(2).standard_normal((8, 32))
    acc = CovarianceAccumulator("float64").update(z)
    assert (acc.eigenvalues() > 0).sum() == 7
    assert acc.nse() == pytest.approx(acc.spectral_entropy(math.e) / math.log(8), abs=1e-12)


def test_spectral_entropy_log_base_and_effective_rank():
    acc = CovarianceAccumulator("float64").update(_with_covariance(np.ones(8), n=100))
    assert acc.spectral_entropy(2) == pytest.approx(3.0, abs=1e-10)
    assert acc.effective_rank() == pytest.approx(8.0, abs=1e-8)


def test_nse_degenerate_inputs():
    with pytest.raises(ValueError, match="at least 2 frames"):
        nse(np.ones((1, 4)))
    with pytest.raises(ValueError, match="2-D"):
        nse(np.ones(4))
    assert math.isnan(nse(np.ones((10, 4))))  # zero variance
    with pytest.raises(ValueError, match="2 dimensions"):
        nse(np.arange(10.0).reshape(10, 1))


def test_standardisation_statistics_use_training_rows_only():
    from eval.entropy_allocation.allocation import _masked_mean_std

    rng = np.random.default_rng(15)
    z = (rng.standard_normal((70_000, 5)) * [1, 2, 3, 4, 5] + 1e3).astype(np.float32)
    mask = rng.random(70_000) < 0.7
    mean, std = _masked_mean_std(torch.from_numpy(z), mask)
    np.testing.assert_allclose(mean.numpy(), z[mask].astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(std.numpy(), z[mask].astype(np.float64).std(0), rtol=1e-9)


def test_covariance_accumulator_matches_numpy():
    rng = np.random.default_rng(3)
    z = rng.standard_normal((1_000, 12)) * np.arange(1, 13) + 7.0
    acc = CovarianceAccumulator("float64")
    for chunk in np.array_split(z, 9):
        acc.update(chunk)
    np.testing.assert_allclose(acc.covariance(), np.cov(z.T, bias=True), atol=1e-12)
    np.testing.assert_allclose(acc.mean, z.mean(0), atol=1e-12)


# ---------------------------------------------------------------------------------------------- CKA


def _pair(n=400, dx=24, dy=16, seed=4):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dx))
    y = x[:, :dy] @ rng.standard_normal((dy, dy)) + 0.5 * rng.standard_normal((n, dy))
    return x, y


def test_cka_invariant_to_rotation_scaling_translation():
    x, _ = _pair()
    q, _ = np.linalg.qr(np.random.default_rng(5).standard_normal((24, 24)))
    assert linear_cka(x, x @ q) == pytest.approx(1.0, abs=1e-6)
    assert linear_cka(x, 3.7 * x) == pytest.approx(1.0, abs=1e-6)
    assert linear_cka(x, 0.2 * x @ q + 100.0) == pytest.approx(1.0, abs=1e-6)


def test_cka_matches_gram_formula():
    x, y = _pair(n=60, dx=10, dy=7)
    ref = linear_cka_gram(x, y)
    assert 0.2 < ref < 0.99
    assert linear_cka(x, y, compute_dtype="float64") == pytest.approx(ref, abs=1e-10)
    assert linear_cka(x, y) == pytest.approx(ref, abs=1e-6)
    assert linear_cka(y, x) == pytest.approx(ref, abs=1e-6)


def test_cka_of_independent_data_is_small():
    rng = np.random.default_rng(6)
    assert linear_cka(rng.standard_normal((20_000, 16)), rng.standard_normal((20_000, 16))) < 0.01


@pytest.mark.parametrize("chunk_sizes", [[1] * 7 + [393], [33] * 12 + [4], [400], [0, 150, 0, 250]])
def test_streaming_matches_one_shot(chunk_sizes):
    x, y = _pair()
    one_shot = linear_cka(x, y, chunk_size=len(x))
    bounds = np.cumsum([0, *chunk_sizes])
    acc = CKAAccumulator()
    for a, b in zip(bounds[:-1], bounds[1:]):
        acc.update(x[a:b], y[a:b])
    assert acc.n == 400
    assert acc.cka() == pytest.approx(one_shot, abs=1e-6)
    assert acc.x.nse() == pytest.approx(nse(x, chunk_size=len(x)), abs=1e-6)
    assert acc.y.nse() == pytest.approx(nse(y, chunk_size=len(y)), abs=1e-6)


def test_cka_torch_and_numpy_agree():
    x, y = _pair()
    assert linear_cka(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(linear_cka(x, y), abs=1e-6)


def test_cka_rejects_unpaired_chunks():
    with pytest.raises(ValueError, match="same number of frames"):
        CKAAccumulator().update(np.ones((3, 2)), np.ones((4, 2)))


# ------------------------------------------------------------------------------------- split, entropy


def test_utterance_split_is_by_utterance_and_seeded(corpus):
    held = utterance_split(corpus.utterance_ids, heldout_fraction=0.25, seed=0)
    held_utts = set(corpus.utterance_ids[held])
    assert held_utts.isdisjoint(corpus.utterance_ids[~held])
    assert len(held_utts) == 30  # 25% of 120 utterances
    perm = np.random.default_rng(9).permutation(len(held))  # frame order does not matter
    np.testing.assert_array_equal(utterance_split(corpus.utterance_ids[perm], 0.25, 0), held[perm])
    assert not np.array_equal(utterance_split(corpus.utterance_ids, 0.25, 1), held)


@pytest.mark.parametrize("n_utts, fraction, expected", [(2, 0.01, 1), (2, 0.99, 1), (10, 0.2, 2)])
def test_utterance_split_keeps_both_sides(n_utts, fraction, expected):
    held = utterance_split(np.arange(n_utts), fraction)
    assert held.sum() == expected


def test_utterance_split_needs_two_utterances():
    with pytest.raises(ValueError, match="at least 2 distinct"):
        utterance_split(["a", "a"])


def test_entropy_in_bits():
    assert entropy(np.array([0, 1, 2, 3])) == pytest.approx(2.0)
    assert entropy(np.array([5, 5, 5])) == 0.0
    assert entropy(np.array([0, 1]), log_base=math.e) == pytest.approx(math.log(2))


# ------------------------------------------------------------------------------------------ PAI, CSAI

FAST = {"min_steps": 150}


def test_pai_close_to_h_p_when_z_encodes_p(corpus):
    rng = np.random.default_rng(10)
    z = _onehot(corpus.phonemes, corpus.n_phonemes) + 0.05 * rng.standard_normal((len(corpus.phonemes), 20))
    out = pai(z, corpus.phonemes, corpus.utterance_ids, **FAST)
    held = utterance_split(corpus.utterance_ids)
    assert out["h_p"] == pytest.approx(entropy(corpus.phonemes[held]), abs=1e-12)
    assert out["h_p"] > 4.0  # 20 phonemes, close to uniform
    assert out["pai_normalised"] > 0.97
    assert out["pai_bits"] == pytest.approx(out["h_p"] - out["ce_p_given_z"])
    assert out["n_train_frames"] + out["n_heldout_frames"] == len(corpus.phonemes)
    assert 0 < out["n_validation_frames"] < out["n_train_frames"]


@pytest.mark.parametrize("validation_fraction", [0.1, 0.0])
def test_pai_close_to_zero_when_z_is_noise(corpus, validation_fraction):
    z = np.random.default_rng(11).standard_normal((len(corpus.phonemes), 16)).astype(np.float32)
    out = pai(z, corpus.phonemes, corpus.utterance_ids, validation_fraction=validation_fraction, **FAST)
    assert abs(out["pai_bits"]) < 0.1
    if validation_fraction:  # early stopping keeps the starting point: the train marginal
        assert out["ce_p_given_z"] == pytest.approx(out["ce_p_prior"], abs=1e-6)
        assert out["n_validation_frames"] > 0
    else:  # without it the probe fits some noise, but not much
        assert 0 < out["ce_p_given_z"] - out["ce_p_prior"] < 0.1
        assert out["n_validation_frames"] == 0


def test_pai_small_set_weak_signal_is_not_lost_to_overfitting():
    """60 utterances, 144 dims, 130 Zipf-distributed classes, weak class signal (like a tiny encoder's frames):
    with l2 1e-3 alone the probe overfits from its first steps and early stopping returns the marginal
    predictor (PAI = H(P) - CE(prior) < 0); the default chooses the penalty on the validation frames."""
    rng = np.random.default_rng(0)
    n_utt, per, d, k = 60, 70, 144, 130
    freq = 1.0 / np.arange(1, k + 1)
    labels = rng.choice(k, size=n_utt * per, p=freq / freq.sum())
    ids = np.repeat(np.arange(n_utt), per)
    z = 0.15 * rng.standard_normal((k, d))[labels] + rng.standard_normal((len(labels), d))
    weak = pai(z, labels, ids, l2=1e-3)
    assert weak["ce_p_given_z"] == pytest.approx(weak["ce_p_prior"], abs=1e-6) and weak["pai_bits"] < 0
    chosen = pai(z, labels, ids)
    assert chosen["pai_bits"] > 0.5 and chosen["ce_p_given_z"] < chosen["ce_p_prior"] - 0.5
    assert chosen["pai_bits"] == pytest.approx(pai(z, labels, ids, l2=1e-2)["pai_bits"])
    with pytest.raises(ValueError, match="l2"):
        pai(z, labels, ids, l2=())


def test_pai_lbfgs_probe(corpus):
    z = _onehot(corpus.phonemes, corpus.n_phonemes)
    out = pai(z, corpus.phonemes, corpus.utterance_ids, optimizer="lbfgs", lbfgs_max_iter=50)
    assert out["pai_normalised"] > 0.99


def test_pai_entropy_split_option(corpus):
    z = _onehot(corpus.phonemes, corpus.n_phonemes)
    held = utterance_split(corpus.utterance_ids)
    out = pai(z, corpus.phonemes, corpus.utterance_ids, entropy_split="train", min_steps=10)
    assert out["h_p"] == pytest.approx(entropy(corpus.phonemes[~held]), abs=1e-12)
    out = pai(z, corpus.phonemes, corpus.utterance_ids, entropy_split="all", min_steps=10, log_base=math.e)
    assert out["h_p"] == pytest.approx(entropy(corpus.phonemes, log_base=math.e), abs=1e-12)


def test_pai_drops_heldout_phonemes_unseen_in_training(corpus):
    held = utterance_split(corpus.utterance_ids)
    phonemes = corpus.phonemes.copy()
    phonemes[np.flatnonzero(held)[:5]] = 99  # a phoneme only in held-out frames
    out = pai(_onehot(corpus.phonemes, 20), phonemes, corpus.utterance_ids, min_steps=10)
    assert out["n_pai_heldout_dropped"] == 5
    assert out["n_phoneme_classes"] == 20
    assert np.isfinite(out["ce_p_given_z"])


def _z_p_s(corpus, with_s: bool, noise: float = 0.05) -> np.ndarray:
    rng = np.random.default_rng(12)
    parts = [_onehot(corpus.phonemes, corpus.n_phonemes)]
    if with_s:
        parts.append(_onehot(corpus.units, corpus.n_words))
    z = np.concatenate(parts, 1)
    return z + noise * rng.standard_normal(z.shape).astype(np.float32)


def test_frame_csai_close_to_zero_when_z_carries_only_p(corpus):
    out = csai(_z_p_s(corpus, with_s=False), corpus.phonemes, corpus.units, corpus.utterance_ids, **FAST)
    assert out["ce_s_given_p"] > 2.0  # words are ambiguous given the phoneme
    assert abs(out["csai_frame_bits"]) < 0.1
    assert out["csai_bits"] is None  # the headline CSAI needs the units' pronunciations


def test_csai_zero_when_z_is_noise(corpus):
    z = np.random.default_rng(14).standard_normal((len(corpus.phonemes), 64)).astype(np.float32)
    out = csai(z, corpus.phonemes, corpus.units, corpus.utterance_ids, **FAST)
    # the [P, Z] probe starts from the P-only probe and early stopping keeps it: exactly no gain, and said so
    assert out["csai_frame_bits"] == pytest.approx(0.0, abs=1e-6)
    assert out["csai_frame_stopped_at_start"] is True
    assert out["csai_frame_ci95"] == pytest.approx([0.0, 0.0], abs=1e-6)
    # without validation the 64 noise dims are overfitted: a negative held-out "gain", reported as it is
    out = csai(z, corpus.phonemes, corpus.units, corpus.utterance_ids, validation_fraction=0.0, **FAST)
    assert out["csai_frame_bits"] < -0.05 and out["csai_frame_stopped_at_start"] is None
    assert out["csai_frame_ci95"][0] <= out["csai_frame_bits"] <= out["csai_frame_ci95"][1] < 0


def test_csai_positive_when_z_also_encodes_s(corpus):
    out = csai(_z_p_s(corpus, with_s=True), corpus.phonemes, corpus.units, corpus.utterance_ids, **FAST)
    assert out["ce_s_given_pz"] < 0.2
    assert out["csai_frame_bits"] > 2.0 and out["csai_frame_stopped_at_start"] is False
    assert out["csai_frame_bits"] == pytest.approx(out["ce_s_given_p"] - out["ce_s_given_pz"])


def _neighbour_phonemes(corpus) -> tuple[np.ndarray, np.ndarray]:
    """The previous and next phoneme (segment of equal labels) of every frame in its utterance (n_phonemes: none)."""
    p, ids = corpus.phonemes, corpus.utterance_ids
    starts = np.r_[0, np.flatnonzero((np.diff(p) != 0) | (ids[1:] != ids[:-1])) + 1]
    ends = np.r_[starts[1:], len(p)]
    prev, nxt = np.full(len(p), corpus.n_phonemes), np.full(len(p), corpus.n_phonemes)
    for i, (a, b) in enumerate(zip(starts, ends)):
        if i > 0 and ids[starts[i - 1]] == ids[a]:
            prev[a:b] = p[starts[i - 1]]
        if i + 1 < len(starts) and ids[starts[i + 1]] == ids[a]:
            nxt[a:b] = p[starts[i + 1]]
    return prev, nxt


@pytest.fixture(scope="module")
def homophone_corpus():
    return make_corpus(homophones=2)  # every pronunciation is two words: CE(S | pronunciation) ~ 1 bit


def test_pronunciation_csai_counts_only_what_is_beyond_the_units_sound(homophone_corpus):
    """Encoders that carry phonemes in context (the neighbours' phonemes, or the unit's whole pronunciation)
    score about 0 on the headline CSAI and clearly above 0 on the frame-phoneme CSAI; one that also carries
    which homophone was said scores about the one bit that tells two homophones apart."""
    c = homophone_corpus
    rng = np.random.default_rng(15)
    prev, nxt = _neighbour_phonemes(c)
    n_pron = int(c.pronunciations.max()) + 1
    phones = _onehot(c.phonemes, c.n_phonemes)
    encoders = {
        "neighbours": [phones, _onehot(prev, c.n_phonemes + 1), _onehot(nxt, c.n_phonemes + 1)],
        "pronunciation": [phones, _onehot(c.pronunciations, n_pron)],
        "homophone": [phones, _onehot(c.pronunciations, n_pron), _onehot(c.units, c.n_words)],
    }
    out = {}
    for name, parts in encoders.items():
        z = np.concatenate(parts, 1)
        z += 0.05 * rng.standard_normal(z.shape).astype(np.float32)
        out[name] = csai(z, c.phonemes, c.units, c.utterance_ids, pronunciations=c.pronunciations, **FAST)
    for name in ("neighbours", "pronunciation"):
        assert abs(out[name]["csai_bits"]) < 0.05, name
        assert out[name]["csai_frame_bits"] > 1.0, name  # the old definition counts phonetic context
    homophone = out["homophone"]
    assert homophone["ce_s_given_pron"] == pytest.approx(1.0, abs=0.15)
    assert homophone["csai_bits"] > 0.8 and homophone["csai_ci95"][0] > 0.7
    assert homophone["csai_bits"] == pytest.approx(
        homophone["ce_s_given_pron"] - homophone["ce_s_given_pron_z"]
    )
    assert homophone["csai_stopped_at_start"] is False
    with pytest.raises(ValueError, match="pronunciations has"):
        csai(z, c.phonemes, c.units, c.utterance_ids, pronunciations=c.pronunciations[:-1])


def test_pai_and_csai_intervals_are_the_held_out_frames_resampled(homophone_corpus, monkeypatch):
    """The cheap intervals resample the held-out frames' per-frame losses in utterance blocks (probes fixed): the
    estimate lies inside, and with every block drawn once each resample reproduces the estimate (H(P)
    re-estimated from the resample included)."""
    from eval.entropy_allocation import allocation

    c = homophone_corpus
    z = np.concatenate([_onehot(c.phonemes, c.n_phonemes), _onehot(c.units, c.n_words)], 1)
    z += 0.5 * np.random.default_rng(16).standard_normal(z.shape).astype(np.float32)
    kw = {"pronunciations": c.pronunciations, "min_steps": 50, "l2": 1e-2}
    out = entropy_allocation_scores(z, c.phonemes, c.units, c.utterance_ids, **kw)
    for score in ("pai", "pai_normalised", "csai", "csai_frame"):
        value = out[score if score == "pai_normalised" else score + "_bits"]
        low, high = out[score + "_ci95"]
        assert low <= value <= high and high - low > 0, score

    monkeypatch.setattr(
        allocation, "_block_resamples", lambda config, groups: [np.ones(groups, dtype=int)] * 3
    )
    once = entropy_allocation_scores(z, c.phonemes, c.units, c.utterance_ids, **kw)
    for score in ("pai", "pai_normalised", "csai", "csai_frame"):
        value = out[score if score == "pai_normalised" else score + "_bits"]
        assert once[score + "_ci95"] == pytest.approx([value, value], abs=1e-9), score


@pytest.mark.parametrize("policy", ["drop", "unk"])
def test_csai_unseen_units_policy(corpus, policy):
    held = utterance_split(corpus.utterance_ids)
    units = corpus.units.copy()
    units[np.flatnonzero(held)[:7]] = 1000  # a word only in held-out frames
    out = csai(
        _z_p_s(corpus, False), corpus.phonemes, units, corpus.utterance_ids, unseen_units=policy, min_steps=20
    )
    if policy == "drop":
        assert out["n_csai_heldout_dropped"] == 7
        assert out["n_unit_classes"] == corpus.n_words
    else:
        assert out["n_csai_heldout_dropped"] == 0
        assert out["n_unit_classes"] == corpus.n_words + 1  # + <unk>
    assert np.isfinite(out["csai_frame_bits"])


def test_csai_max_unit_classes_keeps_most_frequent(corpus):
    out = csai(
        _z_p_s(corpus, False),
        corpus.phonemes,
        corpus.units,
        corpus.utterance_ids,
        max_unit_classes=10,
        min_steps=10,
    )
    held = utterance_split(corpus.utterance_ids)
    counts = np.bincount(corpus.units[~held], minlength=corpus.n_words)
    top10 = np.argsort(-counts, kind="stable")[:10]
    assert out["n_unit_classes"] == 10
    assert out["n_csai_heldout_dropped"] == int((held & ~np.isin(corpus.units, top10)).sum())


# ------------------------------------------------------------------------------------ all-in-one, config


def test_entropy_allocation_scores_all_metrics(corpus):
    z = _z_p_s(corpus, with_s=True)
    q, _ = np.linalg.qr(np.random.default_rng(13).standard_normal((z.shape[1], z.shape[1])))
    out = entropy_allocation_scores(
        z, corpus.phonemes, corpus.units, corpus.utterance_ids, reference_states=2.0 * z @ q, **FAST
    )
    assert out["cka"] == pytest.approx(1.0, abs=1e-6)
    assert out["nse_reference"] == pytest.approx(out["nse"], abs=1e-6)
    assert out["nse"] == pytest.approx(nse(z), abs=1e-9)
    assert out["pai_normalised"] > 0.95 and out["csai_frame_bits"] > 2.0 and out["csai_bits"] is None
    assert (out["n_frames"], out["dim"]) == z.shape
    for key in (
        "h_p",
        "ce_p_given_z",
        "ce_s_given_p",
        "ce_s_given_pz",
        "h_s",
        "pai_bits",
        "spectral_entropy",
    ):
        assert np.isfinite(out[key])
    no_ref = entropy_allocation_scores(z, corpus.phonemes, corpus.units, corpus.utterance_ids, min_steps=10)
    assert "cka" not in no_ref


def test_scores_are_deterministic(corpus):
    z = _z_p_s(corpus, with_s=False)
    a = pai(z, corpus.phonemes, corpus.utterance_ids, min_steps=50)
    b = pai(z, corpus.phonemes, corpus.utterance_ids, min_steps=50)
    assert a == b


def test_resolve_config_routes_probe_options():
    cfg = resolve_config(AllocationConfig(log_base=math.e), epochs=2, l2=0.5, heldout_fraction=0.3)
    assert (cfg.log_base, cfg.heldout_fraction, cfg.probe.epochs, cfg.probe.l2) == (math.e, 0.3, 2, 0.5)
    with pytest.raises(TypeError, match="unknown"):
        resolve_config(epoch=2)
    with pytest.raises(ValueError, match="unseen_units"):
        resolve_config(unseen_units="ignore")


def test_label_validation(corpus):
    z = np.zeros((len(corpus.phonemes), 4), dtype=np.float32)
    with pytest.raises(ValueError, match="entries but there are"):
        pai(z, corpus.phonemes[:-1], corpus.utterance_ids)
    with pytest.raises(TypeError, match="integer labels"):
        pai(z, corpus.phonemes.astype(float), corpus.utterance_ids)


def _planted(seed: int, utterances: int = 200, frames: int = 30):
    """Frames x ~ N(0, diag(LAMBDA)) and a reference y = x A + noise, `frames` per utterance."""
    lam = np.array([4.0, 2.0, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25])
    a = np.random.default_rng(99).normal(size=(8, 6))
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(utterances * frames, 8)) * np.sqrt(lam)
    y = x @ a + rng.normal(size=(utterances * frames, 6))
    p = lam / lam.sum()
    true_nse = float(-(p * np.log(p)).sum() / math.log(8))
    sxx, syx, syy = np.diag(lam), a.T @ np.diag(lam), a.T @ np.diag(lam) @ a + np.eye(6)
    true_cka = float(np.linalg.norm(syx) ** 2 / (np.linalg.norm(sxx) * np.linalg.norm(syy)))
    return x, y, np.repeat(np.arange(utterances), frames), true_nse, true_cka


def test_nse_and_cka_intervals_cover_the_population_values_about_95_percent_of_the_time():
    """40 seeded repeats of planted data with known NSE and CKA: at least 33 intervals hold each (measured: 36 and
    37)."""
    from eval.entropy_allocation.allocation import grouped_bootstrap, resolve_config

    covered = {"nse": 0, "cka": 0}
    for repeat in range(40):
        x, y, ids, true_nse, true_cka = _planted(repeat)
        out = grouped_bootstrap(
            torch.from_numpy(x).float(), ids, torch.from_numpy(y).float(), resolve_config(split_seed=repeat)
        )
        covered["nse"] += out["nse_ci95"][0] <= true_nse <= out["nse_ci95"][1]
        covered["cka"] += out["cka_ci95"][0] <= true_cka <= out["cka_ci95"][1]
    assert min(covered.values()) >= 33, covered


def test_a_resample_of_every_block_once_gives_the_full_data_scores(monkeypatch):
    """The blocks' moments, re-centred on one shift and summed, are the whole data's: with every block drawn once,
    each resample's NSE and CKA equal those of all frames."""
    from eval.entropy_allocation import allocation

    x, y, ids, _, _ = _planted(0, utterances=30)
    x[ids % 3 == 0] += 5.0  # blocks with different means: the re-centring matters

    class EveryBlockOnce:
        def integers(self, low, high, size):
            return np.arange(size)

    monkeypatch.setattr(allocation.np.random, "default_rng", lambda seed: EveryBlockOnce())
    config = allocation.resolve_config(compute_dtype="float64", bootstrap_resamples=5, bootstrap_groups=7)
    out = allocation.grouped_bootstrap(torch.from_numpy(x), ids, torch.from_numpy(y), config)
    full_nse, full_cka = (
        allocation.nse(x, compute_dtype="float64"),
        allocation.linear_cka(x, y, compute_dtype="float64"),
    )
    assert out["nse_ci95"] == pytest.approx([full_nse, full_nse], abs=1e-9)
    assert out["cka_ci95"] == pytest.approx([full_cka, full_cka], abs=1e-9)


def test_scores_carry_the_intervals_unless_turned_off():
    x, y, ids, _, _ = _planted(1, utterances=40)
    labels = np.zeros(len(x), dtype=int)
    labels[::2] = 1
    kw = {"epochs": 2, "reference_states": y}
    out = entropy_allocation_scores(x, labels, labels, ids, **kw)
    assert out["nse_ci95"][0] <= out["nse"] <= out["nse_ci95"][1]
    assert out["cka_ci95"][0] <= out["cka"] <= out["cka_ci95"][1]
    off = entropy_allocation_scores(x, labels, labels, ids, bootstrap_resamples=0, **kw)
    assert "nse_ci95" not in off and off["nse"] == out["nse"]
    with pytest.raises(ValueError, match="bootstrap_groups >= 2"):
        entropy_allocation_scores(x, labels, labels, ids, bootstrap_groups=1, **kw)
