"""How much narrower the cheap PAI / CSAI intervals are than a bootstrap that retrains the probes, and how often
they hold what they do cover (run by `make bench`; the figures are in the metric card,
eval/entropy_allocation/README.md).

The cheap intervals (`allocation._heldout_bootstrap`) keep the probes as trained once and resample the held-out
utterances' per-frame losses, so they leave out the probes' own sampling variance (which training utterances they
saw). The reference here redoes everything per resample: the fit, validation and held-out utterances are each
drawn with replacement (the held-out ones in the same blocks as the cheap scheme) and all probes are retrained.
Planted data: tests/eval/conftest.py's corpus with two homophones per pronunciation, frames = one-hot phoneme,
one-hot word, Gaussian noise (sd 0.5 per dim)."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from eval.entropy_allocation import allocation
from tests.eval.conftest import make_corpus

pytestmark = pytest.mark.slow

RETRAINED_RESAMPLES = 40
OPTIONS = {"min_steps": 150}
SCORES = ("pai_bits", "csai_bits", "csai_frame_bits")


def _planted():
    c = make_corpus(homophones=2)
    z = np.concatenate([np.eye(c.n_phonemes)[c.phonemes], np.eye(c.n_words)[c.units]], 1).astype(np.float32)
    z += 0.5 * np.random.default_rng(16).standard_normal(z.shape).astype(np.float32)
    return c, z


def _retrained(c, z, config, seed):
    """All probes retrained on one resample of the fit, validation and held-out utterances (split kept)."""
    prep = allocation._prepare(z, c.utterance_ids, config)
    rng = np.random.default_rng(seed)
    rows, held, val = [], [], []
    for part, mask in (("fit", prep.fit), ("validation", prep.validation), ("heldout", prep.heldout)):
        if part == "heldout":  # the cheap scheme's blocks
            blocks = prep.heldout_block
            draws = rng.integers(0, blocks.max() + 1, blocks.max() + 1)
            groups = [np.flatnonzero(blocks == b) for b in draws]
        else:
            utts = np.unique(c.utterance_ids[mask])
            groups = [np.flatnonzero(c.utterance_ids == u) for u in rng.choice(utts, len(utts))]
        for g in groups:
            rows.append(g)
            held.append(np.full(len(g), part == "heldout"))
            val.append(np.full(len(g), part == "validation"))
    idx, held, val = np.concatenate(rows), np.concatenate(held), np.concatenate(val)
    zt = torch.from_numpy(z[idx])
    mean, std = allocation._masked_mean_std(zt, ~held)
    zt = (zt - mean.float()) / torch.where(std > 0, std, torch.ones_like(std)).float()
    resampled = allocation._Prepared(zt, held, val, np.full(len(idx), -1))
    config = allocation.replace(config, bootstrap_resamples=0)
    out = allocation._pai(resampled, c.phonemes[idx], config)
    out.update(allocation._csai(resampled, c.phonemes[idx], c.units[idx], config, c.pronunciations[idx]))
    return out


def test_cheap_intervals_against_retrained_probes():
    c, z = _planted()
    config = allocation.resolve_config(**OPTIONS)
    cheap = allocation.entropy_allocation_scores(
        z, c.phonemes, c.units, c.utterance_ids, pronunciations=c.pronunciations, config=config
    )
    runs = [_retrained(c, z, config, seed) for seed in range(RETRAINED_RESAMPLES)]
    for score in SCORES:
        values = [r[score] for r in runs]
        low, high = allocation._percentile_interval(values)
        cheap_low, cheap_high = cheap[score.removesuffix("_bits") + "_ci95"]
        ratio = (cheap_high - cheap_low) / (high - low)
        print(
            f"{score}: estimate {cheap[score]:.3f}, cheap [{cheap_low:.3f}, {cheap_high:.3f}] "
            f"(width {cheap_high - cheap_low:.3f}), retrained [{low:.3f}, {high:.3f}] (width {high - low:.3f}, "
            f"mean {np.mean(values):.3f}): cheap / retrained width {ratio:.2f}"
        )
        assert 0.3 < ratio < 1.5, score  # same order: the held-out sampling dominates on this set
        assert cheap_low <= cheap[score] <= cheap_high


COVERAGE_REPEATS, SAMPLE_UTTERANCES, POPULATION_UTTERANCES = 40, 120, 1000


def _gain(prep, c, config, pronunciation: bool):
    """The CSAI (beyond the pronunciation, or the frame-phoneme one) of `prep`'s held-out frames."""
    codes, keep, n_units = allocation._encode_units(c.units, prep.heldout, config)
    condition = (
        allocation._pronunciation_inputs(c.pronunciations, prep, config)
        if pronunciation
        else allocation._phoneme_inputs(c.phonemes, prep, config)
    )
    gain = allocation._semantic_gain(prep, torch.from_numpy(codes), keep, n_units, condition, config)
    return gain, int((prep.heldout & keep).sum())


def test_cheap_csai_intervals_cover_the_trained_probes_population_value():
    """What the cheap interval claims to cover: the held-out gain of the probes as trained, on the population of
    utterances. Per repeat: a sample of 120 utterances (the probes' fit, validation and held-out ones) and 1,000
    more from the same lexicon and encoder; the same probes (trained on the sample's training utterances only, so
    identical in both runs) scored on the sample's held-out utterances and on those plus the 1,000."""
    config = allocation.resolve_config(**OPTIONS)
    covered = {True: 0, False: 0}
    for repeat in range(COVERAGE_REPEATS):
        c = make_corpus(n_utts=SAMPLE_UTTERANCES + POPULATION_UTTERANCES, seed=100 + repeat, homophones=2)
        z = np.concatenate([np.eye(c.n_phonemes)[c.phonemes], np.eye(c.n_words)[c.units]], 1).astype(
            np.float32
        )
        z += 0.5 * np.random.default_rng(repeat).standard_normal(z.shape).astype(np.float32)
        utt = np.array([int(u[3:]) for u in c.utterance_ids])
        sample = utt < SAMPLE_UTTERANCES
        prep = allocation._prepare(z[sample], c.utterance_ids[sample], config)
        held = np.zeros(len(z), dtype=bool)
        held[sample] = prep.heldout
        validation = np.zeros(len(z), dtype=bool)
        validation[sample] = prep.validation
        wide = held | ~sample  # the sample's held-out utterances and the population
        mean, std = allocation._masked_mean_std(torch.from_numpy(z), ~wide)
        zt = (torch.from_numpy(z) - mean.float()) / torch.where(std > 0, std, torch.ones_like(std)).float()
        both = allocation._Prepared(zt, wide, validation, np.where(wide, 0, -1))
        part = replace(
            c, **{k: getattr(c, k)[sample] for k in ("phonemes", "units", "utterance_ids", "pronunciations")}
        )
        for pronunciation in (True, False):
            gain, n = _gain(prep, part, config, pronunciation)
            total, n_total = _gain(both, c, allocation.replace(config, bootstrap_resamples=0), pronunciation)
            population = (total["gain"] * n_total - gain["gain"] * n) / (n_total - n)
            low, high = gain["ci95"]
            covered[pronunciation] += low <= population <= high
    print(
        f"cheap 95% intervals holding the trained probes' population value, of {COVERAGE_REPEATS}: CSAI "
        f"{covered[True]}, frame-phoneme CSAI {covered[False]}"
    )
    assert min(covered.values()) >= 30, covered  # measured: 38 and 35 of 40
