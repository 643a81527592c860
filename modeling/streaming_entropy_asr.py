"""Streaming recognition: partial transcripts while audio arrives.

    session = model.stream(processor, chunk_seconds=0.64, **decoding_options)
    for samples in microphone:
        print(session.push(samples, sampling_rate))   # the partial transcript so far
    print(session.finish())                          # the final transcript

How it works (this version): every `chunk_seconds` of new audio, the audio of the current segment is decoded again
with the model's own decoder and options (`transcribe`: the joint CTC / LLM search of the model's defaults, with word
timestamps from the CTC head's forced alignment). A word is *settled* once two decodes in a row agree on it and on
every word before it, and the CTC head places its end at least `settle_seconds` before the end of the audio heard
(a blank has followed it: later audio can no longer be part of it). Settled words never change: the next
decodes begin their transcript with them (their tokens go through the LLM with the prompt, in one forward, and the
search starts after them, its CTC state extended by them), so the search over a segment only covers the tail
that later audio may still revise. The partial transcript is the settled words followed by that tail.
Once speech goes on after a pause (`pause_pieces`, as `model.transcribe` cuts a recording: the model was trained
on single utterances), the segment is cut there: the pieces before the last are decoded once more and become
final, and decoding goes on over the last piece; so is a segment that grows past the processor's
`max_audio_seconds` without a pause. A chunk costs about one decode of the utterance being spoken, however long
the stream. `finish()` decodes the last segment once more as a whole, so the final transcript of a recording
without a pause is exactly what `model.transcribe` (and the pipeline) gives for it, and that of one with pauses
is the same wherever the stream and the whole recording find the same pauses.

A model that streams natively (`encoder_chunk_frames` in its config, fixed feature statistics in its processor:
a pretraining stage with `chunking: {dynamic: true, feature_stats_clips: N}`) encodes each piece of audio once:
the session's `StreamingEncoder` keeps the encoder states of finished chunks and computes only the new audio's
frames and a short provisional tail per decode, giving the states the model's own (chunk-limited) encoding gives
for the segment, so the partials and the final transcript are decoded from the same encoder as offline. Other
models re-encode the segment at every decode. Such a session also keeps the LLM's keys and values of the prompt
up to the end of the final audio (`PromptCache`): each decode runs only the provisional audio, the rest of the
prompt and the settled text through the LLM (one forward), then searches the tail. The text's own keys and values
are not kept from one decode to the next: the audio sits in the prompt before the text, so new audio moves it.
"""

from __future__ import annotations

import operator
import time

import torch

from .encoder_entropy_asr import StreamingEncoder
from .generation_entropy_asr import (
    DecodingOptions,
    PromptCache,
    _joined_result,
    join_transcripts,
    pause_pieces,
    unit_spans,
)
from .processing_entropy_asr import AudioInputError


def _through(text: str, units: list[str], n: int) -> str:
    """`text` up to the end of its `n`-th unit (`units`: its words, Hanzi and digit strings in order, as
    `word_chunks` finds them: `unit_spans`)."""
    ends = [span[1] for span in unit_spans(text, units[:n]) if span is not None]
    return text[: ends[-1]] if ends else ""


class StreamingSession:
    """One stream of audio (see the module docstring). `push(samples, sampling_rate)` -> the partial transcript;
    `finish()` -> the final transcript (`result`: the whole result dict, as `transcribe` gives it). Every push of
    a session must be at the same sampling rate (the first push's); samples may be int16/int32 PCM or float, mono or
    multi-channel, any number of them (one sample included). `decodes` records, per decode while streaming, the audio
    heard (s) and the compute it took (s)."""

    def __init__(
        self,
        model,
        processor,
        chunk_seconds: float = 0.64,
        settle_seconds: float | None = None,
        options: DecodingOptions | dict | None = None,
        **changes,
    ):
        for name, value in (("chunk_seconds", chunk_seconds), ("settle_seconds", settle_seconds)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0
            ):
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        self.model, self.processor = model, processor
        self.options = model.decoding_options(options, **changes)  # every bad option refused here
        self._streaming = self.options.replace(return_timestamps="word")  # the partials need word ends
        self.chunk_seconds = float(chunk_seconds)
        self.settle_seconds = float(settle_seconds) if settle_seconds is not None else self.chunk_seconds / 2
        self.rate: int | None = None  # the session's sampling rate: the first push's
        self._pieces: list[torch.Tensor] = []  # the current segment's samples at `rate`
        self._unheard = 0  # samples pushed since the last decode
        self._start = 0.0  # where the current segment begins in the stream (s)
        self._done: list[tuple[float, dict]] = []  # (start, result) of the segments already final
        self._settled: list[str] = []  # settled words of the current segment
        self._settled_text = ""  # the text they were written as
        self._previous: list[str] = []  # the last decode's words
        self.seconds = 0.0  # audio received
        self.partial = ""
        self.result: dict | None = None
        self.decodes: list[tuple[float, float]] = []
        self._encoder = self._new_encoder()
        self._prompt = PromptCache()  # the LLM's keys and values of the prompt up to the final audio

    def _new_encoder(self) -> StreamingEncoder | None:
        """The cached chunk-by-chunk encoder of the current segment, for a model that streams natively."""
        if self.model.config.encoder_chunk_frames and self.processor.feature_stats is not None:
            return StreamingEncoder(self.model, self.processor)
        return None

    # ---- audio in ---------------------------------------------------------------------------------------------
    def push(self, samples, sampling_rate: int | None = None) -> str:
        """Add audio; decode again once `chunk_seconds` of it have arrived since the last decode. Returns the
        partial transcript."""
        if self.result is not None:
            raise RuntimeError("this stream is finished; start a new one with model.stream(processor, ...)")
        rate = self.processor.sampling_rate if sampling_rate is None else sampling_rate
        try:
            rate = operator.index(rate)  # an int of any kind (numpy's included), not a float or a bool
        except TypeError:
            rate = None
        if rate is None or isinstance(sampling_rate, bool) or rate <= 0:
            raise AudioInputError(f"Invalid sampling rate {sampling_rate!r}.")
        if self.rate is None:
            self.rate = rate
        elif rate != self.rate:
            raise AudioInputError(
                f"This stream's audio is at {self.rate} Hz; push every chunk at that rate (got {rate} Hz), or start "
                "a new stream."
            )
        wave = self.processor.samples(samples)
        if wave.numel() == 0:
            return self.partial
        self._pieces.append(wave)
        self._unheard += wave.numel()
        self.seconds += wave.numel() / rate
        if self._unheard >= self.chunk_seconds * rate:
            self._unheard = 0
            started = time.perf_counter()
            self._decode()
            self.decodes.append((self.seconds, time.perf_counter() - started))
        return self.partial

    def finish(self) -> str:
        """The final transcript: the current segment decoded once more as a whole, after the finished ones."""
        if self.result is not None:
            raise RuntimeError("finish() was already called on this stream")
        last = self._transcribe(self._segment(), self.options)
        parts = [*self._done, (self._start, last)] if last is not None else list(self._done)
        if not parts:
            self.result = {"text": ""}
        elif len(parts) == 1 and parts[0][0] == 0.0:
            self.result = parts[0][1]  # the whole recording as one clip: what `transcribe` gives for it
        else:
            self.result = _joined_result([r for _, r in parts], [s for s, _ in parts])
        self.partial = self.result["text"]
        return self.partial

    # ---- decoding -------------------------------------------------------------------------------------------
    def _segment(self) -> torch.Tensor:
        if len(self._pieces) > 1:
            self._pieces = [torch.cat(self._pieces)]
        return self._pieces[0] if self._pieces else torch.zeros(0)

    def _prepared(self, wave: torch.Tensor) -> torch.Tensor | None:
        """The segment at the model's rate, or None while it is shorter than one audio frame."""
        if (
            not wave.numel()
            or wave.numel() * self.processor.sampling_rate
            < (self.processor.min_audio_samples() + 1) * self.rate
        ):
            return None
        return self.processor.prepare_audio({"array": wave, "sampling_rate": self.rate}, long_form=True)

    def _transcribe(self, wave: torch.Tensor, options: DecodingOptions) -> dict | None:
        prepared = self._prepared(wave)
        if prepared is None:
            return None
        return self.model.transcribe([prepared], self.processor, options)[0]

    def _decode(self) -> None:
        prepared = self._prepared(self._segment())
        if prepared is None:
            return
        model_rate = self.processor.sampling_rate
        if self._cut(prepared):
            prepared = self._prepared(self._segment())
            if prepared is None:
                self.partial = join_transcripts(r["text"] for _, r in self._done)
                return
        encoded = prompt = None
        if self._encoder is not None:  # the segment's encoder states, each frame computed once
            encoded = self._encoder.states(prepared)
            prompt = self._prompt
            prompt.final_audio = self._encoder.final_states // self.model.config.stack_factor
        prefixes = [self._settled_text] if self._settled_text else None  # searched no more
        options = self._streaming
        result = self.model._transcribe_waves([prepared], self.processor, options, encoded, prefixes, prompt)[
            0
        ]
        words = result.get("chunks") or []
        heard = prepared.numel() / model_rate
        agreed = 0  # leading words this decode and the last agree on, each ending well before the audio does
        for i, word in enumerate(words):
            end = word["timestamp"][1]
            if i >= len(self._previous) or self._previous[i] != word["text"]:
                break
            if end is None or end > heard - self.settle_seconds:
                break
            agreed = i + 1
        units = [w["text"] for w in words]
        if agreed > len(self._settled) and units[: len(self._settled)] == self._settled:
            self._settled, self._settled_text = units[:agreed], _through(result["text"], units, agreed)
        self._previous = units
        if units[: len(self._settled)] == self._settled:
            current = result["text"]  # it begins with the settled words: as the decoder wrote it
        else:  # it has revised a settled word: the settled words stand, then its words after them
            current = join_transcripts([self._settled_text, *units[len(self._settled) :]])
        self.partial = join_transcripts([*(r["text"] for _, r in self._done), current])

    def _cut(self, prepared: torch.Tensor) -> bool:
        """A segment with a pause in it (speech went on after it; `pause_pieces`) or past the processor's limit: its
        pieces before the last become final (decoded once more), the last one is the new segment. Whether it cut."""
        model_rate = self.processor.sampling_rate
        pieces = pause_pieces(prepared, model_rate, self.processor.max_audio_seconds)
        keep = pieces[-1][0]
        if keep <= 0:
            return False
        # decoded as `transcribe` decodes the whole recording: each piece as cut, without the rest of its pause
        done = self.model._transcribe_pieces(prepared, pieces[:-1], self.processor, self.options)
        self._done.append((self._start, done))
        self._start += keep / model_rate
        at = round(keep * self.rate / model_rate)  # the same place in the pushed samples
        self._pieces = [self._segment()[at:]]
        self._settled, self._settled_text, self._previous = [], "", []
        self._encoder = self._new_encoder()  # the new segment is encoded from its own start
        self._prompt = PromptCache()
        return True
