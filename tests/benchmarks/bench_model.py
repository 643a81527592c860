"""Model benchmarks (run by `make bench`): RTF of greedy transcription of 3 s clips with the tiny model at batch
1 and 16 (at the typical transcript length and at the duration bound), where a batch-1 call spends its time
(processor, encoder, prefill, per-token step), peak memory, the lean greedy loop against
`GenerationMixin.generate`, and `generate` (KV cache, audio encoded once) against a loop that re-encodes every step.

The tiny model is built as `make demo` builds it: its BPE tokenizer is trained on the built-in text corpus
(`plan_corpus("full").text_corpus`), so prompt and transcript lengths in tokens are the demo model's."""

import functools
import resource
import statistics
import time

import pytest
import torch

from tests.conftest import REPO, synth_clip

pytestmark = pytest.mark.slow
NEW_TOKENS = 30  # the duration bound of a 3 s clip (10 tokens/s): the worst case a clip can cost
RTF_TARGET = 0.02


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


def _median_ms(fn, repeats: int) -> float:
    return statistics.median(_time(fn, repeats)) * 1000


@pytest.fixture(scope="module")
def demo_model():
    """(model, processor, typical new tokens): the tiny model with the demo's tokenizer; the typical count is
    the median token count (+1 for the end of turn) of the built-in test transcripts."""
    from training.build import build_model_and_processor, load_yaml
    from training.data.corpus import plan_corpus

    plan = plan_corpus("full", seed=0)
    torch.manual_seed(0)
    model, processor = build_model_and_processor(
        load_yaml(REPO / "configs/model/tiny.yaml"), plan.text_corpus
    )
    texts = [u.text for u in plan.utterances if u.split == "test"]
    counts = [len(processor.tokenizer(t, add_special_tokens=False)["input_ids"]) + 1 for t in texts]
    return model.eval(), processor, int(statistics.median(counts))


@torch.inference_mode()
def test_rtf_batch_1_and_16(demo_model):
    model, processor, typical = demo_model
    for batch in (1, 16):
        clips = [synth_clip(3.0, seed=i) for i in range(batch)]
        for label, new_tokens in (
            ("typical transcript", typical),
            ("worst case: the duration bound", NEW_TOKENS),
        ):

            def run(clips=clips, n=new_tokens):
                inputs = processor(audio=clips)
                model.generate(**inputs, max_new_tokens=n, min_new_tokens=n)

            med = _median_ms(run, repeats=10 if batch == 1 else 3)
            rtf = med / 1000 / (3.0 * batch)
            verdict = (
                f", target <= {RTF_TARGET}: {'met' if rtf <= RTF_TARGET else 'MISSED'}" if batch == 1 else ""
            )
            print(
                f"\n[bench_model] batch={batch:2d}, {new_tokens} new tokens/clip ({label}): "
                f"{med:.1f} ms per call, RTF={rtf:.4f}{verdict}"
            )
    print(f"[bench_model] peak RSS of the process: {_peak_rss_mb():.0f} MB")


@torch.inference_mode()
def test_batch_1_time_breakdown(demo_model):
    """Where a 3 s clip's time goes: the processor, the encoder, the prefill (encoder included), one token."""
    from modeling.generation_entropy_asr import _LeanDecoder

    model, processor, typical = demo_model
    clip = synth_clip(3.0)
    inputs = processor(audio=[clip])
    prompt = inputs["input_ids"].shape[1]
    t_proc = _median_ms(lambda: processor(audio=[clip]), 20)
    t_enc = _median_ms(
        lambda: model.model.get_audio_features(inputs["input_features"], inputs["input_features_mask"]), 20
    )
    t_prefill = _median_ms(lambda: model.model(**inputs, use_cache=True), 20)
    one = _median_ms(lambda: model.generate(**inputs, max_new_tokens=1, min_new_tokens=1), 20)
    many = _median_ms(
        lambda: model.generate(**inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS), 10
    )
    per_token = (many - one) / (NEW_TOKENS - 1)
    print(
        f"\n[bench_model] batch 1, 3 s clip, prompt {prompt} tokens (typical transcript {typical} tokens): "
        f"processor {t_proc:.1f} ms, encoder {t_enc:.1f} ms, prefill incl. encoder {t_prefill:.1f} ms, "
        f"per decoded token {per_token:.2f} ms "
        f"({'lean step' if _LeanDecoder.supports(model.model.language_model) else 'transformers step'})"
    )
    assert per_token > 0


@torch.inference_mode()
def test_lean_greedy_loop_against_generation_mixin(demo_model):
    from transformers import GenerationMixin

    model, processor, _ = demo_model
    inputs = processor(audio=[synth_clip(3.0)])
    kw = {"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS}
    t_lean = statistics.median(_time(lambda: model.generate(**inputs, **kw), 5))
    t_mixin = statistics.median(_time(lambda: GenerationMixin.generate(model, **inputs, **kw), 5))
    print(
        f"\n[bench_model] {NEW_TOKENS} tokens from a 3 s clip: lean greedy loop {t_lean * 1000:.1f} ms vs "
        f"GenerationMixin.generate {t_mixin * 1000:.1f} ms ({t_mixin / t_lean:.1f}x)"
    )


@torch.inference_mode()
def test_hotword_biased_decoding(demo_model):
    """Contextual biasing (`HotwordBias`, two hotwords per clip) costs per step in the lean loop, against the
    unbiased lean loop and against GenerationMixin.generate with the same processor."""
    from transformers import GenerationMixin
    from transformers.generation import LogitsProcessorList

    from modeling.generation_entropy_asr import HotwordBias

    model, processor, _ = demo_model
    kw = {"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS}
    for batch in (1, 16):
        inputs = processor(audio=[synth_clip(3.0, seed=i) for i in range(batch)])
        hotwords = [["jennifer green", "滨江超市"]] * batch
        bias = HotwordBias(processor.tokenizer, hotwords, 5.0, inputs["input_ids"].shape[1])
        biased = {**inputs, **kw, "logits_processor": LogitsProcessorList([bias])}
        repeats = 5 if batch == 1 else 3
        plain, lean, mixin = (
            statistics.median(_time(fn, repeats))
            for fn in (
                functools.partial(model.generate, **inputs, **kw),
                functools.partial(model.generate, **biased),
                functools.partial(GenerationMixin.generate, model, **biased),
            )
        )
        print(
            f"\n[bench_model] hotword bias, batch {batch:2d}, {NEW_TOKENS} tokens per 3 s clip: lean loop "
            f"{lean * 1000:.1f} ms (unbiased {plain * 1000:.1f} ms; RTF {lean / (3.0 * batch):.4f}) vs "
            f"GenerationMixin.generate {mixin * 1000:.1f} ms ({mixin / lean:.1f}x)"
        )


@torch.inference_mode()
def test_generate_vs_reencoding_loop(demo_model):
    model, processor, _ = demo_model
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
