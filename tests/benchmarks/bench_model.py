"""Model benchmarks (run by `make bench`): RTF of greedy transcription of 3 s clips with the tiny model at batch
1 and 16 (at the duration bound and at the typical transcript length), peak memory, the lean greedy loop against
`GenerationMixin.generate`, and `generate` (KV cache, audio encoded once) against a loop that re-encodes every step."""

import resource
import statistics
import time

import pytest
import torch

from tests.conftest import synth_clip

pytestmark = pytest.mark.slow
NEW_TOKENS = 30  # the duration bound of a 3 s clip (10 tokens/s): the worst case a clip can cost


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _time(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _typical_new_tokens(processor) -> int:
    """Median token count (+1 for the end of turn) of the built-in test transcripts with this tokenizer."""
    from training.data.corpus import plan_corpus

    texts = [u.text for u in plan_corpus("small", seed=0).utterances if u.split == "test"]
    counts = [len(processor.tokenizer(t, add_special_tokens=False)["input_ids"]) + 1 for t in texts]
    return int(statistics.median(counts))


@torch.inference_mode()
def test_rtf_batch_1_and_16(tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    typical = _typical_new_tokens(processor)
    for batch in (1, 16):
        clips = [synth_clip(3.0, seed=i) for i in range(batch)]
        for label, new_tokens in (("worst case: the duration bound", NEW_TOKENS), ("typical", typical)):

            def run(clips=clips, n=new_tokens):
                inputs = processor(audio=clips)
                model.generate(**inputs, max_new_tokens=n, min_new_tokens=n)

            times = _time(run, repeats=5 if batch == 1 else 3)
            med = statistics.median(times)
            rtf = med / (3.0 * batch)
            print(
                f"\n[bench_model] batch={batch:2d}, {new_tokens} new tokens/clip ({label}): "
                f"{med * 1000:.1f} ms per call, RTF={rtf:.4f}"
            )
            if batch == 1:
                print(f"[bench_model] RTF target <= 0.02 at batch 1: {'met' if rtf <= 0.02 else 'MISSED'}")
    print(f"[bench_model] peak RSS of the process: {_peak_rss_mb():.0f} MB")


@torch.inference_mode()
def test_lean_greedy_loop_against_generation_mixin(tiny_model_and_processor):
    from transformers import GenerationMixin

    model, processor = tiny_model_and_processor
    inputs = processor(audio=[synth_clip(3.0)])
    kw = {"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS}
    t_lean = statistics.median(_time(lambda: model.generate(**inputs, **kw), 5))
    t_mixin = statistics.median(_time(lambda: GenerationMixin.generate(model, **inputs, **kw), 5))
    print(
        f"\n[bench_model] {NEW_TOKENS} tokens from a 3 s clip: lean greedy loop {t_lean * 1000:.1f} ms vs "
        f"GenerationMixin.generate {t_mixin * 1000:.1f} ms ({t_mixin / t_lean:.1f}x)"
    )


@torch.inference_mode()
def test_generate_vs_reencoding_loop(tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    inputs = processor(audio=[synth_clip(3.0)])
    eos = model.generation_config.eos_token_id

    def naive():
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        for _ in range(NEW_TOKENS):
            logits = model(
                input_ids=ids,
                attention_mask=mask,
                input_features=inputs["input_features"],
                input_features_mask=inputs["input_features_mask"],
                use_cache=False,
            ).logits[:, -1]
            logits[:, eos] = float("-inf")  # same length as the cached run
            logits[:, model.config.audio_token_id] = float("-inf")
            nxt = logits.argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], 1)
            mask = torch.cat([mask, torch.ones_like(nxt)], 1)
        return ids

    def cached():
        return model.generate(**inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)

    assert naive().shape == cached().shape
    t_naive = statistics.median(_time(naive, 3))
    t_cached = statistics.median(_time(cached, 3))
    print(
        f"\n[bench_model] {NEW_TOKENS} tokens from a 3 s clip: generate (KV cache, audio encoded once) "
        f"{t_cached * 1000:.1f} ms vs re-encoding loop {t_naive * 1000:.1f} ms: {t_naive / t_cached:.1f}x faster"
    )
    assert t_cached < t_naive
