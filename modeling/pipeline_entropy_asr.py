"""`pipeline("automatic-speech-recognition", model=dir, trust_remote_code=True)` for EntropyASR: the one way to
transcribe. It decodes with the model's own `transcribe` and its saved decoding options (`DecodingOptions`):
`pipe("clip.wav")` gives the joint CTC / LLM search of the model's defaults; every option can be given per call
(`pipe(clip, ctc_weight=0, hotwords=["Zhang Wei"], return_timestamps="word")`), and an unknown one is an error.
"""

import torch
from torch.utils.data import DataLoader
from transformers import Pipeline
from transformers.pipelines.pt_utils import PipelineDataset, PipelineIterator

from .generation_entropy_asr import DecodingOptionError, DecodingOptions
from .processing_entropy_asr import EntropyASRProcessor  # noqa: F401  (shipped with the pipeline)


def _stack(items: list[dict]) -> dict:
    """A batch of preprocessed clips (`batch_size` > 1): their waves side by side, not padded (the model pads)."""
    return {"waves": [w for item in items for w in item["waves"]]}


class EntropyASRPipeline(Pipeline):
    """Audio (a path, an array at the model's rate, or {"array"/"raw", "sampling_rate"}) -> {"text": transcript}
    (+ "chunks" with word timestamps for `return_timestamps="word"`, "hotwords" the clip's retrieved hotwords when
    hotwords were given, "phonemes" the CTC head's greedy hypothesis for `return_phonemes=True`).

    Call-time keyword arguments are the decoding options (`DecodingOptions`: `ctc_weight` (0: greedy LLM
    decoding), `beam_size`, `ctc_candidates`, `unit_bonus`, `hotwords`, `hotwords_file`, `hotword_bonus`,
    `prompt_hotwords`, `hotword_retrieval`, `max_hotwords`, `max_hotword_edits`, `phonemes_per_edit`, `hotword_margin`,
    `ignore_tones`, `use_gates`, `no_speech_threshold`, `min_speech_confidence`, `max_new_tokens`,
    `return_timestamps`, `return_phonemes`); `generate_kwargs={...}` is taken for the same names. A list of clips
    with `batch_size=N` decodes N clips together."""

    _load_processor = True
    _load_tokenizer = False
    _load_feature_extractor = False
    _load_image_processor = False
    # the model's `transcribe` decodes (its options are all call-time parameters here, `max_new_tokens` included:
    # a pipeline that calls generate would move that one into generate's keyword arguments)
    _pipeline_calls_generate = False

    def _sanitize_parameters(self, generate_kwargs: dict | None = None, **kwargs):
        options = {**(generate_kwargs or {}), **kwargs}
        if not options:
            return {}, {}, {}
        unknown = sorted(set(options) - set(DecodingOptions.names()))
        if unknown:
            raise DecodingOptionError(
                f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} for the EntropyASR "
                f"pipeline; its options are: {', '.join(DecodingOptions.names())}"
            )
        self.model.decoding_options(**options)  # every bad value refused now, before any audio is read
        # one forward parameter per option: those given at construction and at the call merge option by option
        return {}, options, {}

    def preprocess(self, inputs):
        if isinstance(inputs, bytes):
            raise ValueError("Give the audio as a file path, an array or a dict, not raw bytes.")
        return {"waves": [self.processor.prepare_audio(inputs, long_form=True)]}

    def get_iterator(
        self, inputs, num_workers, batch_size, preprocess_params, forward_params, postprocess_params
    ):
        """As `Pipeline.get_iterator`, with clips batched as a list of waves (the model pads them itself)."""

        if batch_size <= 1:
            return super().get_iterator(
                inputs, num_workers, batch_size, preprocess_params, forward_params, postprocess_params
            )
        if hasattr(inputs, "__len__"):
            dataset = PipelineDataset(inputs, self.preprocess, preprocess_params)
        else:  # a generator: read as it comes, in this process
            dataset, num_workers = PipelineIterator(inputs, self.preprocess, preprocess_params), 0
        loader = DataLoader(dataset, num_workers=num_workers, batch_size=batch_size, collate_fn=_stack)
        decoded = PipelineIterator(loader, self.forward, forward_params, loader_batch_size=batch_size)
        return PipelineIterator(decoded, self.postprocess, postprocess_params)

    def _ensure_tensor_on_device(self, inputs, device):
        return inputs  # waves stay where they are; `transcribe` moves the features it makes

    def _forward(self, model_inputs, **options):
        with torch.inference_mode():
            return {"results": self.model.transcribe(model_inputs["waves"], self.processor, **options)}

    def postprocess(self, model_outputs):
        results = model_outputs["results"]
        return results[0] if isinstance(results, list) else results
