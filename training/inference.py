"""Batched greedy transcription with a saved EntropyASR model (used by the CLI, evaluation and the Space)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

logger = logging.getLogger(__name__)


class Transcriber:
    """Loads a model folder (or Hub id) through the Auto classes with its remote code and transcribes."""

    def __init__(self, model, processor):
        self.model = model.eval()
        self.processor = processor

    @classmethod
    def from_pretrained(cls, path: str, device: str = "cpu") -> Transcriber:
        from transformers import AutoModel, AutoProcessor

        model = AutoModel.from_pretrained(path, trust_remote_code=True).to(device)
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
        return cls(model, processor)

    @torch.inference_mode()
    def transcribe(
        self,
        audios: Sequence,
        context: Sequence | str | None = None,
        sampling_rate: int | None = None,
        with_phonemes: bool = True,
        **generate_kwargs,
    ) -> list[dict]:
        """One batch of clips -> [{"text", "phonemes"}]. Raises AudioInputError on bad input."""
        inputs = self.processor(audio=list(audios), context=context, sampling_rate=sampling_rate)
        inputs = inputs.to(self.model.device)
        n = inputs["input_ids"].shape[1]
        tokens = self.model.generate(**inputs, do_sample=False, **generate_kwargs)[:, n:]
        texts = self.processor.batch_decode(tokens)
        results = [{"text": t} for t in texts]
        if with_phonemes and self.processor.ctc_vocab:
            hyps = self.model.ctc_greedy_decode(inputs["input_features"], inputs["input_features_mask"])
            for r, h in zip(results, hyps):
                r["phonemes"] = " ".join(self.processor.decode_ctc(h))
        return results

    @torch.inference_mode()
    def token_entropies(self, audio, text: str, context=None) -> dict:
        """Decoder-side entropy allocation for one clip and its transcript `text`: the LLM's next-token
        entropy (bits) at every transcript token, once with the audio in the prompt and once without it (the
        text prior). Their difference is what the audio path removed, token by token."""
        processor, model = self.processor, self.model
        with_audio = processor(audio=[audio], context=[context], transcript=[text]).to(model.device)
        prompt_only = processor.build_prompt(context).replace(" <speech>", "").replace("<speech>", "")
        tok = processor.tokenizer
        target = with_audio["labels"][0][with_audio["labels"][0] != -100].tolist()
        text_ids = torch.tensor(
            [tok(prompt_only, add_special_tokens=False)["input_ids"] + target], device=model.device
        )

        def entropies(logits: torch.Tensor, n_target: int) -> torch.Tensor:
            # logits at position t predict token t+1: the n_target predictions end one before the last
            logp = logits[0, -n_target - 1 : -1].float().log_softmax(-1)
            return -(logp.exp() * logp).sum(-1) / torch.log(torch.tensor(2.0))

        h_audio = entropies(model(**with_audio).logits, len(target))
        h_text = entropies(
            model(input_ids=text_ids, attention_mask=torch.ones_like(text_ids)).logits, len(target)
        )
        tokens = [tok.decode([t]) for t in target]
        return {
            "tokens": tokens,
            "entropy_with_audio": h_audio.tolist(),
            "entropy_without_audio": h_text.tolist(),
            "mean_with_audio": float(h_audio.mean()),
            "mean_without_audio": float(h_text.mean()),
        }

    def transcribe_files(self, files: Sequence[str], context=None, batch_size: int = 8) -> list[dict]:
        """Files -> results in order; a file that cannot be used gets {"error": message} instead."""
        results: list[dict | None] = [None] * len(files)
        waves = {}
        for i, f in enumerate(files):
            try:
                waves[i] = self.processor.prepare_audio(f)
            except ValueError as err:
                results[i] = {"error": str(err)}
        order = sorted(waves, key=lambda i: waves[i].numel())  # similar lengths together: less padding
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            ctx = None if context is None else [context] * len(idx)
            out = self.transcribe([waves[i] for i in idx], context=ctx)
            for i, r in zip(idx, out):
                results[i] = r
        return results
