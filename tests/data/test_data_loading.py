"""load_speech_dataset sources and the torch-side datasets (skipping and counting bad rows)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import soundfile as sf
from datasets import Audio, Dataset, DatasetDict

from training.data.loading import (
    LengthGroupedBatchOrder,
    SkipCounter,
    SpeechDataset,
    SpeechIterableDataset,
    collate_skip_none,
    load_speech_dataset,
)


def _write_clip(path, seconds=0.5, sr=22050, freq=300.0):
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, 0.3 * np.sin(2 * np.pi * freq * t), sr)


@pytest.fixture
def manifest_dir(tmp_path):
    """Three good clips, one corrupt file, one missing file, one empty transcript."""
    rows = []
    for i in range(3):
        _write_clip(tmp_path / f"ok{i}.wav", sr=[8000, 22050, 44100][i])
        rows.append({"audio": f"ok{i}.wav", "text": f"call number {i}", "language": "en"})
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x00\x00junk" * 10)
    rows.append({"audio": "corrupt.wav", "text": "broken", "language": "en"})
    rows.append({"audio": "missing.flac", "text": "gone", "language": "zh"})
    _write_clip(tmp_path / "silent_ref.wav")
    rows.append({"audio": str(tmp_path / "silent_ref.wav"), "text": "  ", "language": "en"})
    (tmp_path / "manifest.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return tmp_path


def test_manifest_corrupt_and_empty_rows_are_skipped_and_counted(manifest_dir, caplog):
    ds = load_speech_dataset(manifest_dir / "manifest.jsonl")
    assert isinstance(ds, Dataset) and len(ds) == 6
    assert isinstance(ds.features["audio"], Audio) and not ds.features["audio"].decode
    torch_ds = SpeechDataset(ds)
    with caplog.at_level(logging.WARNING, logger="training.data.loading"):
        items = list(torch_ds)
    assert [item["text"] for item in items] == ["call number 0", "call number 1", "call number 2"]
    for item in items:
        assert item["audio"].dtype == np.float32 and abs(len(item["audio"]) - 8000) <= 1
        assert item["language"] == "en"
    assert torch_ds.counter.as_dict() == {"decode_error": 2, "empty_text": 1}
    assert torch_ds.counter.seen == 6 and torch_ds.counter.total == 3
    assert "corrupt.wav" in caplog.text and "missing.flac" in caplog.text and "silent_ref.wav" in caplog.text
    summary = torch_ds.counter.summary()
    assert "skipped 3 of 6" in summary and "corrupt.wav" in summary


def test_allow_empty_keeps_empty_transcripts(manifest_dir):
    torch_ds = SpeechDataset(load_speech_dataset(manifest_dir / "manifest.jsonl"), allow_empty=True)
    texts = [item["text"] for item in torch_ds]
    assert texts[-1] == "  " and len(texts) == 4
    assert torch_ds[3] is None  # map-style access returns None for a skipped row


def test_collate_skip_none_drops_skipped_rows():
    collate = collate_skip_none(lambda batch: [b["x"] for b in batch])
    assert collate([{"x": 1}, None, {"x": 3}]) == [1, 3]


def test_csv_manifest_with_custom_columns_and_split_column(tmp_path):
    _write_clip(tmp_path / "a.wav")
    _write_clip(tmp_path / "b.wav")
    (tmp_path / "m.csv").write_text(
        "path,sentence,lang,split\na.wav,打开空调,zh,train\nb.wav,open it,en,test\n"
    )
    ds = load_speech_dataset(
        tmp_path / "m.csv", split="test", audio_column="path", text_column="sentence", language_column="lang"
    )
    assert len(ds) == 1 and ds[0]["text"] == "open it" and ds[0]["language"] == "en"
    assert {"audio", "text", "language"} <= set(ds.column_names)
    item = SpeechDataset(ds)[0]
    assert item["path"].endswith("b.wav") and item["audio"].dtype == np.float32


def test_audiofolder_directories(tmp_path):
    root = tmp_path / "flat"
    root.mkdir()
    _write_clip(root / "x.flac")
    (root / "metadata.jsonl").write_text(json.dumps({"file_name": "x.flac", "text": "hello"}) + "\n")
    ds = load_speech_dataset(root)
    assert ds[0]["text"] == "hello" and ds[0]["audio"]["path"].endswith("x.flac")
    item = next(iter(SpeechDataset(ds, default_language="en")))
    assert item["language"] == "en"

    nested = tmp_path / "nested"
    for split in ("train", "test"):
        (nested / split).mkdir(parents=True)
        _write_clip(nested / split / "y.wav")
        (nested / split / "metadata.csv").write_text(f"file_name,text\ny.wav,{split} text\n")
    dd = load_speech_dataset(nested)
    assert isinstance(dd, DatasetDict) and set(dd) == {"train", "test"}
    assert load_speech_dataset(nested, split="test")[0]["text"] == "test text"


def test_save_to_disk_roundtrip_with_bytes(tmp_path):
    import io

    buf = io.BytesIO()
    sf.write(buf, np.zeros(1600), 16000, format="FLAC")
    ds = Dataset.from_dict({"speech": [{"bytes": buf.getvalue(), "path": "z.flac"}], "transcript": ["hi"]})
    ds = ds.cast_column("speech", Audio(sampling_rate=16000, decode=False))
    DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "saved"))
    loaded = load_speech_dataset(
        tmp_path / "saved", split="train", audio_column="speech", text_column="transcript"
    )
    item = SpeechDataset(loaded)[0]
    assert item["text"] == "hi" and len(item["audio"]) == 1600 and item["language"] is None
    with pytest.raises(KeyError, match="validation"):
        load_speech_dataset(
            tmp_path / "saved", split="validation", audio_column="speech", text_column="transcript"
        )


def test_missing_sources_and_columns(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_speech_dataset(tmp_path / "nope.jsonl")
    (tmp_path / "m.jsonl").write_text(json.dumps({"audio": "a.wav", "words": "x"}) + "\n")
    with pytest.raises(ValueError, match="text column"):
        load_speech_dataset(tmp_path / "m.jsonl")


def test_iterable_dataset_shuffles_deterministically_and_skips(manifest_dir):
    ds = load_speech_dataset(manifest_dir / "manifest.jsonl")
    it = SpeechIterableDataset(ds, shuffle=True, seed=3)
    first = [x["index"] for x in it]
    assert sorted(first) == [0, 1, 2] and [x["index"] for x in it] == first
    it.set_epoch(1)
    orders = {tuple(x["index"] for x in it)}
    for epoch in range(2, 8):
        it.set_epoch(epoch)
        orders.add(tuple(x["index"] for x in it))
    assert len(orders) > 1
    assert it.counter.counts["decode_error"] == 2 * 9  # two bad files, nine passes


def test_skip_counter_summary_without_skips():
    counter = SkipCounter()
    counter.seen = 4
    assert counter.summary() == "skipped 0 of 4 rows" and counter.total == 0


def test_decoding_audio_feature_is_read_with_soundfile(tmp_path):
    _write_clip(tmp_path / "c.wav", sr=8000)
    ds = Dataset.from_dict({"audio": [str(tmp_path / "c.wav")], "text": ["x"]}).cast_column("audio", Audio())
    item = SpeechDataset(ds)[0]  # no torchcodec needed: the column is re-cast to decode=False
    assert item is not None and len(item["audio"]) == 8000


def test_length_grouped_order_is_a_seeded_permutation_of_similar_length_batches():
    rng = np.random.default_rng(0)
    lengths = rng.uniform(1.0, 6.0, size=403)
    order = LengthGroupedBatchOrder(lengths, batch_size=8, window=10, seed=5)
    first = list(order)
    assert sorted(first) == list(range(403))
    assert list(order) == first  # same (seed, epoch): same order, e.g. after a resume
    order.set_epoch(1)
    assert list(order) != first and sorted(order) == list(range(403))

    def padded(indices):  # what the batches cost: the longest clip of each batch, summed
        return sum(lengths[indices[i : i + 8]].max() for i in range(0, len(indices), 8))

    grouped, shuffled = padded(np.array(first)), padded(rng.permutation(403))
    assert grouped < 0.8 * shuffled, (grouped, shuffled)
    assert grouped < 1.1 * lengths.sum()
    # batches are not visited longest to shortest within a window (transformers' sampler does that)
    maxima = [lengths[first[i : i + 8]].max() for i in range(0, 80, 8)]
    assert maxima != sorted(maxima, reverse=True)


def test_length_grouped_order_keeps_the_short_batch_last():
    lengths = np.arange(21, dtype=float)
    for epoch in range(5):
        order = LengthGroupedBatchOrder(lengths, batch_size=4, window=2, seed=0)
        order.set_epoch(epoch)
        indices = list(order)
        batches = [indices[i : i + 4] for i in range(0, 20, 4)]
        # each full batch is a slice of a window sorted longest first, so every slice the loader cuts is in
        # descending order; a short batch placed mid-pass would shift the slices across batch boundaries
        assert sorted(indices) == list(range(21))
        assert all(b == sorted(b, reverse=True) for b in batches), indices
    with pytest.raises(ValueError, match="batch_size"):
        LengthGroupedBatchOrder(lengths, batch_size=0)
    assert list(LengthGroupedBatchOrder([], batch_size=4)) == [] and list(
        LengthGroupedBatchOrder([2.0], 4)
    ) == [0]


def test_speech_dataset_durations_without_decoding(tmp_path):
    ds = Dataset.from_dict({"audio": [None, None], "text": ["a", "b"], "duration": [1.5, 0.25]})
    assert SpeechDataset(ds).durations() == [1.5, 0.25]
    for i, seconds in enumerate((0.5, 2.0)):
        _write_clip(tmp_path / f"d{i}.wav", seconds=seconds, sr=16000)
    rows = [{"audio": str(tmp_path / f"d{i}.wav"), "text": "x"} for i in range(2)]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    sizes = SpeechDataset(load_speech_dataset(tmp_path / "m.jsonl")).durations()
    assert 3.5 < sizes[1] / sizes[0] < 4.5  # file sizes: proportional to duration for one codec
    embedded = [{"bytes": (tmp_path / f"d{i}.wav").read_bytes(), "path": f"d{i}.wav"} for i in range(2)]
    ds = Dataset.from_dict({"audio": embedded, "text": ["x", "y"]}).cast_column("audio", Audio(decode=False))
    assert SpeechDataset(ds.select([1, 0])).durations() == sizes[::-1]  # bytes in the rows, row order kept


def test_language_weights_repeat_rows_of_a_language():
    from training.data.loading import weight_languages

    ds = Dataset.from_dict({"language": ["en"] * 400 + ["zh"] * 400, "text": [str(i) for i in range(800)]})
    assert weight_languages(ds, None) is ds
    doubled = weight_languages(ds, {"zh": 2.0})
    assert doubled["language"].count("zh") == 800 and doubled["language"].count("en") == 400
    assert doubled["text"][:2] == ["0", "1"] and doubled["text"][400:404] == ["400", "400", "401", "401"]
    a, b = weight_languages(ds, {"zh": 1.5}, seed=3), weight_languages(ds, {"zh": 1.5}, seed=3)
    assert a["text"] == b["text"]  # seeded
    assert 560 <= a["language"].count("zh") <= 640  # 400 + Binomial(400, 0.5)
    assert weight_languages(ds, {"zh": 1.5}, seed=4)["text"] != a["text"]
    assert weight_languages(ds, {"en": 0})["language"] == ["zh"] * 400
    # no row of a language weighted 0: nothing to drop, and the same draws for the others
    assert weight_languages(ds, {"zh": 1.5, "mixed": 0}, seed=3)["text"] == a["text"]
    with pytest.raises(ValueError, match="does not have.*'fr'"):
        weight_languages(ds, {"fr": 2.0})
    with pytest.raises(ValueError, match=">= 0"):
        weight_languages(ds, {"zh": -1})
    with pytest.raises(ValueError, match="no rows"):
        weight_languages(ds, {"zh": 0, "en": 0})
