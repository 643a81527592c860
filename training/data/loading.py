"""Reading speech datasets: any Hugging Face `datasets` source with an audio and a text column.

`load_speech_dataset` accepts
- a `save_to_disk` folder (Dataset or DatasetDict, e.g. the built-in corpus at OUT/dataset),
- an audiofolder-style directory (audio files plus metadata.jsonl/metadata.csv with a `file_name`
  column, either at the root or in per-split sub-folders such as train/ and test/),
- a JSONL or CSV manifest with one row per utterance (audio path relative to the manifest or absolute),
- a Hub dataset id (needs network access; the session's HF_HUB_OFFLINE settings apply).

Audio columns are cast to `Audio(decode=False)` so rows carry `{"bytes", "path"}` and decoding is done
by `training.data.audio.load_audio` (soundfile) rather than by torchcodec. Columns are renamed to the
canonical `audio`, `text` and (when present) `language`.

`SpeechDataset` / `SpeechIterableDataset` turn such a dataset into torch datasets yielding
`{"audio": float32 16 kHz mono, "text", "language", "index", ...other columns}`. A row whose audio
cannot be decoded, or whose transcript is empty (unless `allow_empty=True`, for hallucination probes),
is skipped with a warning naming the file and counted in a `SkipCounter`; iteration never raises for
bad rows.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow.compute as pc
import torch
from datasets import Audio, Dataset, DatasetDict

from .audio import TARGET_SR, AudioDecodeError, load_audio

logger = logging.getLogger(__name__)

_METADATA_FILES = ("metadata.jsonl", "metadata.csv")
_AUDIO_EXTENSIONS = {".wav", ".flac", ".mp3", ".ogg", ".opus", ".aiff", ".aif", ".au", ".w64", ".caf"}


# ----------------------------------------------------------------------------------------------
# Sources -> datasets.Dataset / DatasetDict
# ----------------------------------------------------------------------------------------------


def _read_manifest(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            return [dict(row) for row in csv.DictReader(handle)]
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{number}: invalid JSON line ({err})") from err
    return rows


def _manifest_to_dataset(path: Path, audio_column: str) -> Dataset:
    """A manifest's rows as a Dataset with absolute audio paths."""
    rows = _read_manifest(path)
    if not rows:
        raise ValueError(f"manifest {path} has no rows")
    if audio_column not in rows[0] and "file_name" in rows[0]:  # audiofolder metadata naming
        for row in rows:
            row[audio_column] = row.pop("file_name")
    if audio_column not in rows[0]:
        raise ValueError(f"manifest {path} has no {audio_column!r} column (columns: {sorted(rows[0])})")
    base = path.parent
    columns = sorted({key for row in rows for key in row})
    table: dict[str, list[Any]] = {c: [row.get(c) for row in rows] for c in columns}
    table[audio_column] = [
        None if p in (None, "") else str(p if os.path.isabs(p) else base / str(p))
        for p in table[audio_column]
    ]
    return Dataset.from_dict(table)


def _audiofolder(root: Path, audio_column: str) -> Dataset | DatasetDict:
    """Minimal audiofolder reader (metadata file + audio files) that needs no torchcodec."""
    for name in _METADATA_FILES:
        if (root / name).is_file():
            return _manifest_to_dataset(root / name, audio_column)
    splits = {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        for name in _METADATA_FILES:
            if (sub / name).is_file():
                splits[sub.name] = _manifest_to_dataset(sub / name, audio_column)
                break
    if splits:
        return DatasetDict(splits)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in _AUDIO_EXTENSIONS)
    if not files:
        raise ValueError(f"{root} has neither a metadata file nor audio files")
    logger.warning("%s has no metadata file: loading %d audio files without transcripts", root, len(files))
    return Dataset.from_dict({audio_column: [str(p) for p in files], "text": [""] * len(files)})


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def _prepare(ds: Dataset, audio_column: str, text_column: str, language_column: str) -> Dataset:
    """Rename to canonical columns and make the audio column undecoded `{"bytes", "path"}`."""
    if audio_column not in ds.column_names:
        raise ValueError(f"no audio column {audio_column!r}; columns are {ds.column_names}")
    if text_column not in ds.column_names:
        raise ValueError(f"no text column {text_column!r}; columns are {ds.column_names}")
    renames = {audio_column: "audio", text_column: "text"}
    if language_column in ds.column_names:
        renames[language_column] = "language"
    renames = {old: new for old, new in renames.items() if old != new}
    clashes = [new for new in renames.values() if new in ds.column_names and new not in renames]
    if clashes:
        ds = ds.remove_columns(clashes)
    if renames:
        ds = ds.rename_columns(renames)
    feature = ds.features["audio"]
    if isinstance(feature, Audio):
        if feature.decode:
            ds = ds.cast_column("audio", Audio(sampling_rate=feature.sampling_rate, decode=False))
    elif isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        ds = ds.cast_column("audio", Audio(decode=False))
    return ds


def load_speech_dataset(
    source: str | os.PathLike,
    split: str | None = None,
    audio_column: str = "audio",
    text_column: str = "text",
    language_column: str = "language",
    **load_kwargs: Any,
) -> Dataset | DatasetDict:
    """Open a speech dataset from a save_to_disk folder, audiofolder directory, JSONL/CSV manifest, or
    Hub id; returns the requested `split` as a Dataset, or every split as a DatasetDict when `split` is
    None. `load_kwargs` go to `datasets.load_dataset` for Hub ids (e.g. `name`, `revision`)."""
    path = Path(source).expanduser()
    from_hub = False
    if path.is_dir():
        loaded = (
            datasets.load_from_disk(str(path))
            if _is_saved_dataset(path)
            else _audiofolder(path, audio_column)
        )
    elif path.is_file():
        if path.suffix not in (".jsonl", ".json", ".csv"):
            raise ValueError(f"unsupported manifest {path}: expected .jsonl, .json or .csv")
        loaded = _manifest_to_dataset(path, audio_column)
    elif os.fspath(source).startswith((".", "/", "~")) or path.suffix in (".jsonl", ".json", ".csv"):
        raise FileNotFoundError(f"dataset source {source} does not exist")
    else:
        from_hub = True
        loaded = datasets.load_dataset(os.fspath(source), split=split, **load_kwargs)
    if isinstance(loaded, DatasetDict):
        if split is None:
            return DatasetDict(
                {
                    name: _prepare(ds, audio_column, text_column, language_column)
                    for name, ds in loaded.items()
                }
            )
        if split not in loaded:
            raise KeyError(f"split {split!r} not in {source} (splits: {list(loaded)})")
        loaded = loaded[split]
    elif split is not None and not from_hub:
        if "split" in loaded.column_names:  # one table with a split column (e.g. a manifest)
            loaded = loaded.filter(lambda s: s == split, input_columns="split")
        elif split != "train":
            raise KeyError(f"{source} has a single split; cannot select {split!r}")
    return _prepare(loaded, audio_column, text_column, language_column)


# ----------------------------------------------------------------------------------------------
# Torch side
# ----------------------------------------------------------------------------------------------


def weight_languages(ds: Dataset, weights: dict[str, float] | None, seed: int = 0) -> Dataset:
    """`ds` with each row of language L repeated `weights[L]` times on average (floor(w) copies, one more
    with probability w - floor(w), drawn with `seed`; unlisted languages keep weight 1, weight 0 drops them, and
    a weight of 0 for a language the dataset lacks drops nothing): the multilingual-training way to give a slower
    language more of a fixed step budget."""
    if not weights:
        return ds
    for lang, w in weights.items():
        if not isinstance(w, (int, float)) or w < 0:
            raise ValueError(f"language weight of {lang!r} must be a number >= 0, got {w!r}")
    langs = ds["language"]
    unknown = {lang for lang, w in weights.items() if w != 0} - set(langs)
    if unknown:
        raise ValueError(f"language weights name languages the dataset does not have: {sorted(unknown)}")
    rng = np.random.default_rng([seed, 11])
    extra = rng.random(len(langs))
    indices = []
    for i, lang in enumerate(langs):
        w = float(weights.get(lang, 1.0))
        indices.extend([i] * (int(w) + (extra[i] < w - int(w))))
    if not indices:
        raise ValueError("language weights leave no rows")
    return ds.select(indices)


class SkipCounter:
    """Counts rows skipped by reason and remembers the first few names per reason."""

    def __init__(self, keep: int = 5) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}
        self.seen = 0
        self._keep = keep

    def add(self, reason: str, name: str) -> None:
        self.counts[reason] += 1
        names = self.examples.setdefault(reason, [])
        if len(names) < self._keep:
            names.append(name)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, int]:
        return dict(self.counts)

    def summary(self) -> str:
        if not self.total:
            return f"skipped 0 of {self.seen} rows"
        parts = ", ".join(
            f"{reason}: {count} (e.g. {', '.join(self.examples[reason])})"
            for reason, count in sorted(self.counts.items())
        )
        return f"skipped {self.total} of {self.seen} rows ({parts})"


def _audio_name(value: Any, index: int) -> str:
    if isinstance(value, dict) and value.get("path"):
        return str(value["path"])
    if isinstance(value, (str, os.PathLike)):
        return str(value)
    return f"row {index}"


class SpeechDataset(torch.utils.data.Dataset):
    """Map-style view of a speech Dataset with canonical columns (see `load_speech_dataset`).

    `__getitem__` returns `{"audio": float32 16 kHz mono, "text", "language", "index", "path", ...other
    columns}` (after `transform`, if given), or None for a skipped row: use `collate_skip_none` in a
    DataLoader, or iterate the object, which drops them. Skips are logged and counted in `counter`; with
    DataLoader workers each worker process counts its own skips.
    """

    def __init__(
        self,
        dataset: Dataset,
        allow_empty: bool = False,
        target_sr: int = TARGET_SR,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        default_language: str | None = None,
        counter: SkipCounter | None = None,
    ) -> None:
        if "audio" not in dataset.column_names or "text" not in dataset.column_names:
            raise ValueError(
                f"expected canonical 'audio' and 'text' columns (use load_speech_dataset); got {dataset.column_names}"
            )
        feature = dataset.features["audio"]
        if isinstance(feature, Audio) and feature.decode:  # decode with soundfile, never torchcodec
            dataset = dataset.cast_column("audio", Audio(sampling_rate=feature.sampling_rate, decode=False))
        self.dataset = dataset
        self.allow_empty = allow_empty
        self.target_sr = target_sr
        self.transform = transform
        self.default_language = default_language
        self.counter = counter or SkipCounter()

    def __len__(self) -> int:
        return len(self.dataset)

    def example(self, index: int) -> dict[str, Any] | None:
        """Decode row `index`; None (warned and counted) if it is unusable."""
        row = dict(self.dataset[int(index)])
        self.counter.seen += 1
        name = _audio_name(row.get("audio"), index)
        text = row.get("text")
        text = "" if text is None else str(text)
        if not text.strip() and not self.allow_empty:
            logger.warning("skipping %s: empty transcript", name)
            self.counter.add("empty_text", name)
            return None
        if row.get("audio") is None:
            logger.warning("skipping row %d: no audio", index)
            self.counter.add("missing_audio", f"row {index}")
            return None
        try:
            audio = load_audio(row["audio"], target_sr=self.target_sr)
        except AudioDecodeError as err:
            logger.warning("skipping %s: %s", name, err)
            self.counter.add("decode_error", name)
            return None
        if audio.size == 0:
            logger.warning("skipping %s: zero-length audio", name)
            self.counter.add("empty_audio", name)
            return None
        row.update(audio=audio, text=text, index=int(index), path=name)
        row["language"] = row.get("language") or self.default_language
        return self.transform(row) if self.transform is not None else row

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        return self.example(index)

    def durations(self) -> list[float]:
        """A length per row for length-grouped batching, without decoding: the `duration` column (seconds)
        when the dataset has one, else the size of the encoded audio (bytes in the row, or of the file),
        which orders clips of one codec by length."""
        if "duration" in self.dataset.column_names:
            return [float(d or 0.0) for d in self.dataset["duration"]]

        sizes: list[float] = []
        audio = self.dataset.select_columns(["audio"]).with_format("arrow")
        for batch in audio.iter(batch_size=1000):  # arrow batches: the bytes are measured, not copied out
            column = batch.column("audio").combine_chunks()
            nbytes = pc.fill_null(pc.binary_length(column.field("bytes")), -1).to_pylist()
            paths = column.field("path").to_pylist()
            for n, path in zip(nbytes, paths):
                if n < 0:  # audio by path only
                    n = os.path.getsize(path) if path and os.path.isfile(path) else 0
                sizes.append(float(n))
        return sizes

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for index in range(len(self)):
            item = self.example(index)
            if item is not None:
                yield item
        logger.info("%s", self.counter.summary())


class LengthGroupedBatchOrder(torch.utils.data.Sampler):
    """Row order for training batches of similar length (less padding, so less compute per clip).

    Each pass: shuffle all rows, cut them into windows of `window` batches, sort each window by length and cut
    it into batches of `batch_size`, then shuffle the order of the full batches (so lengths are not visited longest
    to shortest). The order is a function of (seed, epoch): a resumed run sees the same order. Transformers'
    `LengthGroupedSampler` keeps each window's batches in descending length and draws from the global RNG.
    """

    def __init__(self, lengths: list[float], batch_size: int, window: int = 50, seed: int = 0) -> None:
        if batch_size < 1 or window < 1:
            raise ValueError(f"batch_size and window must be >= 1 (got {batch_size}, {window})")
        self.lengths = np.asarray(lengths, dtype=np.float64)
        self.batch_size = batch_size
        self.window = window
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.lengths))
        span = self.batch_size * self.window
        batches = []
        for start in range(0, len(order), span):
            chunk = order[start : start + span]
            chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
            batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        tail = [batches.pop()] if batches and len(batches[-1]) < self.batch_size else []  # short batch last
        for b in [batches[k] for k in rng.permutation(len(batches))] + tail:
            yield from (int(i) for i in b)


def collate_skip_none(collate: Callable[[list[Any]], Any]) -> Callable[[list[Any]], Any]:
    """Wrap a collate function so None items (skipped rows) are dropped from the batch first."""

    def wrapped(batch: list[Any]) -> Any:
        return collate([item for item in batch if item is not None])

    return wrapped


class SpeechIterableDataset(torch.utils.data.IterableDataset):
    """Iterable view that skips bad rows, optionally shuffles with `seed + epoch` (call `set_epoch`),
    and shards rows across DataLoader workers. Each worker keeps its own SkipCounter and logs its
    summary when its pass ends."""

    def __init__(
        self,
        dataset: Dataset,
        allow_empty: bool = False,
        target_sr: int = TARGET_SR,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        default_language: str | None = None,
        shuffle: bool = False,
        seed: int = 0,
    ) -> None:
        self.inner = SpeechDataset(dataset, allow_empty, target_sr, transform, default_language)
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    @property
    def counter(self) -> SkipCounter:
        return self.inner.counter

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.inner)

    def _indices(self) -> np.ndarray:
        order = np.arange(len(self.inner))
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(order)
        info = torch.utils.data.get_worker_info()
        if info is not None:
            per_worker = math.ceil(len(order) / info.num_workers)
            order = order[info.id * per_worker : (info.id + 1) * per_worker]
        return order

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for index in self._indices():
            item = self.inner.example(int(index))
            if item is not None:
                yield item
        logger.info("%s", self.counter.summary())


def load_stage_split(data, split: str):
    """A stage's dataset split with the canonical columns: `load_speech_dataset` with the names of `data` (a
    stage config's `data`: path, audio_column, text_column, language_column)."""
    return load_speech_dataset(
        data.path,
        split=split,
        audio_column=data.audio_column,
        text_column=data.text_column,
        language_column=data.language_column,
    )
