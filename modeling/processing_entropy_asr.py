"""EntropyASRProcessor: audio checks + features, the transcription prompt, `<speech>` expansion, labels.

`<speech>` in the prompt text becomes exactly `num_audio_tokens(len(clip))` audio placeholder tokens; the
model's adaptor produces that many vectors (same function, see configuration_entropy_asr).
"""

import os

import torch
from transformers import BatchFeature, ProcessorMixin
from transformers.audio_utils import load_audio
from transformers.utils import cached_file, logging

from .configuration_entropy_asr import num_audio_tokens
from .phonemizer_entropy_asr import PHONEMIZER_FILE, Phonemizer

logger = logging.get_logger(__name__)

SPEECH_PLACEHOLDER = "<speech>"
DEFAULT_SYSTEM_PROMPT = "You are a Multilingual Speech Recognition Model."
DEFAULT_USER_PROMPT = "Transcribe the speech into text <speech>."
DEFAULT_CONTEXT_PROMPT = " Contextual hints: {context}."


class AudioInputError(ValueError):
    """Raised for audio the model cannot take (empty, too short/long, NaN, wrong layout)."""


def fft_resample(wave: torch.Tensor, orig_sr: int, target_sr: int) -> torch.Tensor:
    """Band-limited resampling by spectrum truncation/zero-padding (exact for the kept band)."""
    if orig_sr == target_sr:
        return wave
    n_out = max(1, round(wave.shape[-1] * target_sr / orig_sr))
    spec = torch.fft.rfft(wave.double())
    n_bins = n_out // 2 + 1
    spec = (
        spec[..., :n_bins]
        if spec.shape[-1] >= n_bins
        else torch.nn.functional.pad(spec, (0, n_bins - spec.shape[-1]))
    )
    return (torch.fft.irfft(spec, n=n_out) * (n_out / wave.shape[-1])).float()


class EntropyASRProcessor(ProcessorMixin):
    """Feature extractor (the encoder's front end) + tokenizer + CTC (phoneme) vocabulary + prompt."""

    def __init__(
        self,
        feature_extractor,
        tokenizer,
        chat_template=None,
        audio_token: str = "<|audio|>",
        audio_length_kwargs: dict | None = None,
        ctc_vocab: list[str] | None = None,
        max_audio_seconds: float = 30.0,
        end_of_turn_token: str | None = None,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        user_prompt: str = DEFAULT_USER_PROMPT,
        context_prompt: str = DEFAULT_CONTEXT_PROMPT,
        feature_stats: dict | None = None,
    ):
        self.audio_token = audio_token
        self.audio_token_id = tokenizer.convert_tokens_to_ids(audio_token)
        if self.audio_token_id is None or self.audio_token_id == tokenizer.unk_token_id:
            raise ValueError(f"The tokenizer has no {audio_token!r} token; add it as a special token first.")
        self.audio_length_kwargs = dict(audio_length_kwargs or {})
        self.ctc_vocab = list(ctc_vocab or [])
        self.max_audio_seconds = float(max_audio_seconds)
        self.end_of_turn_token = end_of_turn_token or tokenizer.eos_token
        self.system_prompt = system_prompt
        self.user_prompt = user_prompt
        self.context_prompt = context_prompt
        if SPEECH_PLACEHOLDER not in user_prompt:
            raise ValueError(f"user_prompt must contain {SPEECH_PLACEHOLDER!r}")
        super().__init__(feature_extractor, tokenizer, chat_template=chat_template)
        self.feature_stats = None
        if feature_stats is not None:
            self.set_feature_stats(feature_stats)

    # ---- audio ------------------------------------------------------------------------------------------
    @property
    def sampling_rate(self) -> int:
        return self.feature_extractor.sampling_rate

    def num_audio_tokens(self, num_samples: int) -> int:
        return num_audio_tokens(num_samples, **self.audio_length_kwargs)

    def prepare_audio(self, audio, sampling_rate: int | None = None, long_form: bool = False) -> torch.Tensor:
        """One clip -> float32 mono 1-D tensor at the model's rate, or a clear `AudioInputError`.

        Accepts a path (decoded with soundfile, resampled), a dict {"array"|"raw", "sampling_rate"}, a numpy
        array or a tensor of int16/int32/float32/float64 samples, mono or (channels, n)/(n, channels). Audio
        longer than `max_audio_seconds` is refused unless `long_form` (the model's `transcribe` cuts it at
        pauses)."""
        if isinstance(audio, str):
            # a missing path, rather than a URL, a data: URI or base64 data (long) that load_audio also reads
            is_remote = audio.startswith(("http://", "https://", "data:"))
            if not is_remote and not os.path.isfile(audio) and len(audio) < 4096:
                raise AudioInputError(f"No such audio file: {audio!r}")
            try:
                wave = load_audio(audio, sampling_rate=self.sampling_rate, backend="soundfile")
            except Exception as err:  # noqa: BLE001 - any decoder failure becomes one readable error
                raise AudioInputError(f"Could not decode audio file {audio!r}: {err}") from err
            sampling_rate = self.sampling_rate
            audio = wave
        if isinstance(audio, dict):
            sampling_rate = audio.get("sampling_rate", sampling_rate)
            audio = audio.get("array", audio.get("raw"))
        wave = self.samples(audio)
        if wave.numel() == 0:
            raise AudioInputError("Audio is empty (0 samples).")
        if sampling_rate is not None and sampling_rate != self.sampling_rate:
            if sampling_rate <= 0:
                raise AudioInputError(f"Invalid sampling rate {sampling_rate}.")
            wave = fft_resample(wave, int(sampling_rate), self.sampling_rate)
        seconds = wave.numel() / self.sampling_rate
        if seconds > self.max_audio_seconds and not long_form:
            raise AudioInputError(
                f"Audio is {seconds:.2f} s long; the limit is {self.max_audio_seconds:g} s for one clip "
                "(the pipeline and `model.transcribe` take audio of any length, cut at pauses)."
            )
        min_samples = self.min_audio_samples()
        if wave.numel() < min_samples:
            raise AudioInputError(
                f"Audio is {seconds * 1000:.1f} ms long, shorter than one audio frame of the model "
                f"({min_samples * 1000 / self.sampling_rate:.0f} ms)."
            )
        return wave

    @staticmethod
    def samples(audio) -> torch.Tensor:
        """Samples (a numpy array or tensor of int16/int32/float32/float64 PCM, mono or (channels, n)/(n, channels))
        -> float32 mono 1-D tensor at their own rate, any length (none: empty), or a clear `AudioInputError`."""
        if audio is None:
            raise AudioInputError("No audio given.")
        wave = torch.as_tensor(audio)
        if wave.dtype == torch.int16:
            wave = wave.float() / 32768.0
        elif wave.dtype == torch.int32:
            wave = wave.float() / 2147483648.0
        elif wave.dtype in (torch.uint8, torch.int8, torch.int64, torch.bool):
            raise AudioInputError(f"Unsupported sample type {wave.dtype}; use float or int16/int32 PCM.")
        wave = wave.float()
        if wave.ndim == 2:  # downmix; the channel axis is the short one
            wave = wave.mean(dim=0 if wave.shape[0] <= wave.shape[1] else 1)
        elif wave.ndim != 1:
            raise AudioInputError(
                f"Audio must be 1-D (mono) or 2-D (multi-channel), got shape {tuple(wave.shape)}."
            )
        if not torch.isfinite(wave).all():
            raise AudioInputError("Audio contains NaN or infinite samples.")
        return wave

    def min_audio_samples(self) -> int:
        """Shortest clip that yields one audio position and finite features (per-utterance normalisation
        needs at least two mel frames)."""
        hop = self.audio_length_kwargs.get("hop_length", 160)
        n = 2 * hop
        while self.num_audio_tokens(n) < 1:
            n += 1
        return n

    # ---- text -------------------------------------------------------------------------------------------
    def build_prompt(self, context: str | list[str] | None = None) -> str:
        """The chat-formatted transcription prompt (with one unexpanded `<speech>`), ready for generation."""
        if isinstance(context, (list, tuple)):
            context = ", ".join(c for c in context if c)
        user = self.user_prompt + (self.context_prompt.format(context=context) if context else "")
        messages = [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": user}]
        template = self.chat_template or getattr(self.tokenizer, "chat_template", None)
        if template:
            return self.tokenizer.apply_chat_template(
                messages,
                chat_template=template,
                tokenize=False,
                add_generation_prompt=True,
                enable_thinking=False,
            )
        return f"{self.system_prompt}\n{user}\n"

    def _expand(self, text: str, n_tokens: int) -> str:
        found = text.count(SPEECH_PLACEHOLDER)
        if found != 1:
            raise ValueError(
                f"Each prompt must contain exactly one {SPEECH_PLACEHOLDER!r} placeholder; found {found} in {text!r}."
            )
        if self.audio_token in text:
            raise ValueError(
                f"Prompt text must not contain the raw audio token {self.audio_token!r}; use {SPEECH_PLACEHOLDER!r}."
            )
        return text.replace(SPEECH_PLACEHOLDER, self.audio_token * n_tokens)

    def __call__(
        self,
        audio=None,
        text: str | list[str] | None = None,
        context: str | list | None = None,
        transcript: str | list[str] | None = None,
        sampling_rate: int | None = None,
        return_tensors: str = "pt",
        **kwargs,
    ) -> BatchFeature:
        """Model inputs for one clip or a batch.

        Args:
            audio: a clip or a list of clips (see `prepare_audio`).
            text: prompt(s) with one `<speech>` each; default: `build_prompt(context)`.
            context: hotwords per clip (a string, a list of strings, or a list of those per clip).
            transcript: target text(s); adds them after the prompt with the end-of-turn token and returns
                `labels` (-100 everywhere except transcript tokens and the end-of-turn token).
        Returns: input_ids, attention_mask (left padded), input_features, input_features_mask, [labels].
        """
        if return_tensors != "pt":
            raise ValueError("EntropyASRProcessor returns PyTorch tensors only (return_tensors='pt').")
        if audio is None:
            raise ValueError("audio is required.")
        batched = isinstance(audio, (list, tuple)) and not (
            len(audio) > 0 and isinstance(audio[0], (int, float))
        )
        clips = list(audio) if batched else [audio]
        if not clips:
            raise ValueError("Empty batch: no audio given.")
        waves = [self.prepare_audio(c, sampling_rate) for c in clips]
        n = len(waves)

        def per_item(value, name):
            if value is None or isinstance(value, str):
                return [value] * n
            value = list(value)
            if name == "context" and value and all(isinstance(v, str) for v in value) and not batched:
                return [value]  # a list of hotwords for a single clip
            if len(value) != n:
                raise ValueError(f"Got {len(value)} {name} entries for {n} audio clips.")
            return value

        contexts = per_item(context, "context")
        texts = per_item(text, "text")
        targets = None if transcript is None else per_item(transcript, "transcript")
        counts = [self.num_audio_tokens(w.numel()) for w in waves]
        input_ids, attention_mask, labels = self._prompt_batch(counts, contexts, texts, targets)
        input_features, input_features_mask = self.audio_features(waves)
        data = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "input_features": input_features,
            "input_features_mask": input_features_mask,
        }
        if transcript is not None:
            data["labels"] = labels
        return BatchFeature(data=data, tensor_type=return_tensors)

    def audio_features(self, waves: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_features, input_features_mask) of clips already through `prepare_audio`, padded together.
        Each clip's log-mel features are normalised by its own mean and variance (Parakeet's front end), or, with
        `feature_stats`, by fixed statistics: then a frame's features depend only on the audio under its window,
        which a stream can compute before the clip ends."""
        if self.feature_stats is not None:
            feats, mask = self.log_mel(waves)
            return self.normalise(feats) * mask[..., None], mask.long()
        feats = self.feature_extractor(
            [w.numpy() for w in waves],
            sampling_rate=self.sampling_rate,
            return_attention_mask=True,
            return_tensors="pt",
            padding="longest"
            if self.feature_extractor.__class__.__name__ != "WhisperFeatureExtractor"
            else "max_length",
        )
        return feats["input_features"], feats["attention_mask"].long()

    def log_mel(self, waves: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Parakeet's log-mel features before its per-clip normalisation, (B, T, F), and their validity (B, T):
        the feature extractor's pre-emphasis and spectrogram on the clips padded together (frame k's window is
        centred on sample k x hop, zeros beyond the clip)."""
        fe = self.feature_extractor
        if not hasattr(fe, "_torch_extract_fbank_features") or not hasattr(fe, "preemphasis"):
            raise ValueError(
                f"fixed feature statistics need a Parakeet front end, not {type(fe).__name__} (Whisper's pads "
                "every clip to 30 s and normalises by the clip's maximum)"
            )
        lengths = torch.tensor([w.numel() for w in waves])
        wave = torch.nn.utils.rnn.pad_sequence([w.float() for w in waves], batch_first=True)
        inside = torch.arange(wave.shape[1])[None, :] < lengths[:, None]
        if fe.preemphasis is not None:
            wave = torch.cat([wave[:, :1], wave[:, 1:] - fe.preemphasis * wave[:, :-1]], dim=1)
            wave = wave.masked_fill(~inside, 0.0)
        feats = fe._torch_extract_fbank_features(wave, "cpu")
        return feats, torch.arange(feats.shape[1])[None, :] < self.feature_frames(lengths)[:, None]

    def feature_frames(self, num_samples: torch.Tensor) -> torch.Tensor:
        """Valid feature frames of clips of `num_samples` samples (Parakeet's count: windows centred on every
        hop within the clip)."""
        fe = self.feature_extractor
        return torch.div(num_samples + fe.n_fft // 2 * 2 - fe.n_fft, fe.hop_length, rounding_mode="floor")

    def normalise(self, feats: torch.Tensor) -> torch.Tensor:
        """`log_mel` features (..., F) normalised by the fixed `feature_stats`."""
        mean, std = (torch.tensor(self.feature_stats[k], dtype=feats.dtype) for k in ("mean", "std"))
        return (feats - mean) / std

    def estimate_feature_stats(self, waves: list[torch.Tensor]) -> dict:
        """Per mel bin mean and standard deviation of `log_mel` over every valid frame of `waves` (e.g. a few
        hundred training clips): the fixed statistics of `set_feature_stats`."""
        feats, mask = self.log_mel(waves)
        valid = feats[mask]  # (frames, F)
        return {"mean": valid.mean(0).tolist(), "std": valid.std(0).clamp_min(1e-5).tolist()}

    def set_feature_stats(self, stats: dict | None) -> None:
        """Normalise features by fixed per-bin statistics {"mean": [...], "std": [...]} (saved with the
        processor; a streamable front end) instead of each clip's own; None: back to per clip."""
        if stats is not None:
            bins = self.feature_extractor.feature_size
            for key in ("mean", "std"):
                values = stats.get(key) if isinstance(stats, dict) else None
                if not isinstance(values, (list, tuple)) or len(values) != bins:
                    raise ValueError(f"feature_stats[{key!r}] must be a list of {bins} numbers")
            if min(stats["std"]) <= 0:
                raise ValueError("feature_stats['std'] must be positive")
            self.log_mel([torch.zeros(self.feature_extractor.n_fft)])  # refuses a front end it cannot serve
            stats = {"mean": [float(v) for v in stats["mean"]], "std": [float(v) for v in stats["std"]]}
        self.feature_stats = stats

    def prompt_inputs(
        self, counts: list[int], contexts: list | None = None, prefixes: list[list[int]] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask), left padded, of the transcription prompts of clips with `counts` audio
        positions, each with its context hotwords (`contexts[i]`: None, a string or a list) and, after it, the
        token ids its transcript begins with (`prefixes[i]`: a streaming session's settled words)."""
        input_ids, attention_mask, _ = self._prompt_batch(
            counts, contexts or [None] * len(counts), [None] * len(counts), None, prefixes
        )
        return input_ids, attention_mask

    def _prompt_batch(self, counts, contexts, texts, targets, prefixes=None):
        """input_ids, attention_mask (left padded) and labels (None without `targets`) of one prompt per clip."""
        texts = [t if t is not None else self.build_prompt(c) for t, c in zip(texts, contexts)]
        prompts = [self._expand(t, c) for t, c in zip(texts, counts)]
        tok = self.tokenizer
        prompt_ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
        if prefixes is not None:
            prompt_ids = [ids + list(prefix) for ids, prefix in zip(prompt_ids, prefixes)]
        label_ids = [[-100] * len(p) for p in prompt_ids]
        if targets is not None:
            eot = tok.convert_tokens_to_ids(self.end_of_turn_token)
            for i, target in enumerate(targets):
                ids = tok(target or "", add_special_tokens=False)["input_ids"] + [eot]
                prompt_ids[i] = prompt_ids[i] + ids
                label_ids[i] = label_ids[i] + ids
        n, width = len(prompt_ids), max(len(p) for p in prompt_ids)
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        input_ids = torch.full((n, width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((n, width), dtype=torch.long)
        labels = torch.full((n, width), -100, dtype=torch.long)
        for i, (ids, lab) in enumerate(zip(prompt_ids, label_ids)):  # left padding
            input_ids[i, width - len(ids) :] = torch.tensor(ids)
            attention_mask[i, width - len(ids) :] = 1
            labels[i, width - len(ids) :] = torch.tensor(lab)
        return input_ids, attention_mask, (labels if targets is not None else None)

    # ---- decoding ---------------------------------------------------------------------------------------
    def batch_decode(self, token_ids, skip_special_tokens: bool = True, **kwargs) -> list[str]:
        return [
            t.strip()
            for t in self.tokenizer.batch_decode(token_ids, skip_special_tokens=skip_special_tokens, **kwargs)
        ]

    def decode(self, token_ids, skip_special_tokens: bool = True, **kwargs) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens, **kwargs).strip()

    def decode_ctc(self, ids: list[int]) -> list[str]:
        """CTC vocabulary ids -> symbols (phonemes or characters)."""
        if not self.ctc_vocab:
            raise ValueError("This processor has no CTC vocabulary.")
        return [self.ctc_vocab[i] for i in ids]

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "input_features", "input_features_mask"]

    # ---- phonemizer -------------------------------------------------------------------------------------
    # Text -> the CTC head's phonemes without the training G2P (see phonemizer_entropy_asr). Set as an
    # attribute, not an __init__ argument: ProcessorMixin writes those into processor_config.json, and the
    # lexicon has its own file, phonemizer.json.
    phonemizer: Phonemizer | None = None

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        """`ProcessorMixin.save_pretrained`, plus phonemizer.json when the processor has a phonemizer."""
        if push_to_hub and self.phonemizer is not None:  # transformers uploads before phonemizer.json exists
            raise ValueError(
                "save_pretrained(push_to_hub=True) would upload the folder without phonemizer.json: "
                "use processor.push_to_hub(repo_id), or save the folder and upload it."
            )
        files = super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)
        if self.phonemizer is not None:
            path = os.path.join(save_directory, PHONEMIZER_FILE)
            self.phonemizer.save(path)
            files.append(path)
        return files

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """`ProcessorMixin.from_pretrained`, plus the folder's or repo's phonemizer.json when it has one."""

        processor = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        hub = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")
        path = cached_file(
            pretrained_model_name_or_path,
            PHONEMIZER_FILE,
            _raise_exceptions_for_missing_entries=False,
            **{k: kwargs[k] for k in hub if k in kwargs},
        )
        if path is not None:
            processor.phonemizer = Phonemizer.load(path)
        return processor


__all__ = ["EntropyASRProcessor", "AudioInputError", "SPEECH_PLACEHOLDER"]
