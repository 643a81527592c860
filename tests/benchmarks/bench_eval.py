"""Evaluation-library benchmarks (run by `make bench`): streaming NSE + CKA over 1M frames x 512 dims, and the
PAI + CSAI probes on 200k frames. Prints seconds and memory; asserts the values and generous bounds.

All the work runs through torch with the session's thread setting (tests/conftest.py pins 1 thread).
Wall time on a shared CPU mostly measures the neighbours, so the process CPU time is printed too: with
one thread it is what the run takes on an idle core."""

import threading
import time

import numpy as np
import psutil
import pytest
import torch

from eval.entropy_allocation.allocation import CKAAccumulator, entropy_allocation_scores

pytestmark = pytest.mark.slow

STREAM_FRAMES, STREAM_DIM, CHUNK = 1_000_000, 512, 16_384
PROBE_FRAMES, PROBE_DIM, N_PHONEMES, N_WORDS = 200_000, 512, 64, 1_000


class PeakRSS:
    """Peak resident-set growth over a block, sampled every 5 ms in a background thread."""

    def __init__(self):
        self.process = psutil.Process()
        self.baseline = self.peak = 0
        self._stop = threading.Event()

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            self._stop.wait(0.005)

    def __enter__(self):
        self.baseline = self.peak = self.process.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.baseline) / 2**20


def test_streaming_nse_and_cka_1m_frames():
    """X ~ N(0, I), Y = X + N(0, I): NSE(X) -> 1 and CKA(X, Y) = 1/2 exactly in expectation.

    Chunks are torch tensors, as the runner gets encoder outputs, so the products run in torch (on the
    tensors' device); numpy chunks would use numpy's BLAS (syrk for X^T X) instead."""
    gen = torch.Generator().manual_seed(0)
    acc = CKAAccumulator()
    accumulate_s = accumulate_cpu = 0.0
    start = time.perf_counter()
    with PeakRSS() as mem:
        for first in range(0, STREAM_FRAMES, CHUNK):
            n = min(CHUNK, STREAM_FRAMES - first)
            x = torch.randn(n, STREAM_DIM, generator=gen)
            y = x + torch.randn(n, STREAM_DIM, generator=gen)
            t0, c0 = time.perf_counter(), time.process_time()
            acc.update(x, y)
            accumulate_s += time.perf_counter() - t0
            accumulate_cpu += time.process_time() - c0
        t0 = time.perf_counter()
        nse_x, nse_y, cka = acc.x.nse(), acc.y.nse(), acc.cka()
        finalize_s = time.perf_counter() - t0
    total_s = time.perf_counter() - start
    print(
        f"\nNSE + CKA, {STREAM_FRAMES:,} frames x {STREAM_DIM} dims in chunks of {CHUNK:,} "
        f"(torch threads {torch.get_num_threads()}, cpus {psutil.cpu_count()}, load {psutil.getloadavg()[0]:.1f}):"
        f"\n  accumulate {accumulate_s:.1f} s wall, {accumulate_cpu:.1f} s CPU (target < 20 s), "
        f"eigen/CKA finalise {finalize_s:.2f} s, "
        f"total with data synthesis {total_s:.1f} s"
        f"\n  peak RSS growth {mem.growth_mb:.0f} MB (target < 1024 MB); "
        f"NSE(X) {nse_x:.5f}, NSE(Y) {nse_y:.5f}, CKA {cka:.5f}"
    )
    assert acc.n == STREAM_FRAMES
    assert nse_x > 0.999 and nse_y > 0.999
    assert cka == pytest.approx(0.5, abs=0.005)
    assert mem.growth_mb < 1024
    assert accumulate_cpu < 3 * 20  # generous: CPU time still suffers from a shared cache and memory bus


def _probe_corpus(seed: int = 0):
    """Words (Zipf-distributed) of 3-6 phonemes, 1-4 frames per phoneme; frames = phoneme embedding +
    a weaker word embedding + noise, so PAI is high but below H(P) and CSAI is clearly positive."""
    rng = np.random.default_rng(seed)
    lexicon = [rng.integers(0, N_PHONEMES, rng.integers(3, 7)) for _ in range(N_WORDS)]
    zipf = 1.0 / np.arange(1, N_WORDS + 1)
    words = rng.choice(N_WORDS, size=PROBE_FRAMES, p=zipf / zipf.sum())
    word_phonemes = [lexicon[w] for w in words]  # more than enough words: ~4.5 phonemes x 2.5 frames each
    phonemes = np.concatenate(word_phonemes)
    units = np.repeat(words, [len(p) for p in word_phonemes])
    frames_per_phoneme = rng.integers(1, 5, len(phonemes))
    phonemes = np.repeat(phonemes, frames_per_phoneme)[:PROBE_FRAMES]
    units = np.repeat(units, frames_per_phoneme)[:PROBE_FRAMES]
    utterances = np.arange(PROBE_FRAMES) // 250  # 800 utterances of 10 s at 25 Hz
    scale = 4.0 / np.sqrt(PROBE_DIM)
    phone_emb = rng.standard_normal((N_PHONEMES, PROBE_DIM), dtype=np.float32) * scale
    word_emb = rng.standard_normal((N_WORDS, PROBE_DIM), dtype=np.float32) * scale
    frames = phone_emb[phonemes] + 0.5 * word_emb[units]
    frames += 1.5 * rng.standard_normal(frames.shape, dtype=np.float32)
    return frames, phonemes, units, utterances


def test_pai_and_csai_probes_200k_frames():
    frames, phonemes, units, utterances = _probe_corpus()
    start, cpu = time.perf_counter(), time.process_time()
    with PeakRSS() as mem:
        out = entropy_allocation_scores(frames, phonemes, units, utterances)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    entropies = {k: round(out[k], 3) for k in ("h_p", "ce_p_given_z", "h_s", "ce_s_given_p", "ce_s_given_pz")}
    print(
        f"\nNSE + PAI + CSAI probes, {PROBE_FRAMES:,} frames x {PROBE_DIM} dims, {out['n_phoneme_classes']} phonemes, "
        f"{out['n_unit_classes']} words, default options (torch threads {torch.get_num_threads()}, "
        f"load {psutil.getloadavg()[0]:.1f}):"
        f"\n  {seconds:.1f} s wall, {cpu:.1f} s CPU (target < 60 s), peak RSS growth {mem.growth_mb:.0f} MB"
        f"\n  NSE {out['nse']:.3f}, PAI {out['pai_bits']:.3f} bits ({out['pai_normalised']:.3f} of H(P)), "
        f"frame-phoneme CSAI {out['csai_frame_bits']:.3f} bits; {entropies}"
    )
    assert 0.3 < out["pai_normalised"] < 1.0
    assert out["csai_frame_bits"] > 0.1
    assert cpu < 3 * 60


def test_forced_alignment_t1000_l200():
    """The CTC forced alignment (eval/alignment.py) of 1 000 frames and 200 targets: best of 5 after a warm-up."""
    from eval.alignment import ctc_forced_align
    from tests.eval.test_eval_alignment import _peaky_log_probs, _planted

    targets, path = _planted(n_tokens=200, n_frames=1000, vocab=60, seed=3)
    log_probs = _peaky_log_probs(targets, path, vocab=60, seed=4).numpy()
    ctc_forced_align(log_probs, targets)  # warm-up
    times = []
    for _ in range(5):
        start = time.perf_counter()
        got = ctc_forced_align(log_probs, targets)
        times.append(time.perf_counter() - start)
    print(f"\n[bench_eval] forced alignment, 1000 frames x 200 targets: best {1000 * min(times):.1f} ms of 5")
    assert got == path.tolist()
