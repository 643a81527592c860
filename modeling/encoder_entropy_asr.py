"""Chunk-limited encoding with a Parakeet/FastConformer encoder, on the weights of the offline encoder.

In chunk mode the encoder frames (after 4x subsampling) are cut into chunks of `chunk_frames`: self-attention
lets a frame see its own chunk and the `left_chunks` chunks before it (-1: every earlier chunk), never a later
one, and the convolution module's depthwise kernel sees the frames before the chunk's end and zeros after it
(as WeNet's U2 and NeMo's cache-aware FastConformer limit the right context). `encode_chunked` computes that on
a whole utterance at once (what training and the offline check run); `EncoderStream` computes the same frames
chunk by chunk, keeping per layer the attention inputs of the last `left_chunks` chunks and the convolution's
left context, so each new chunk costs the same however long the stream. With a chunk that covers the clip,
`encode_chunked` is the offline encoder. The subsampling convolutions in front see 3 feature frames (30 ms)
beyond a frame's own 40 ms, the front end's look-ahead.

Used through the config's `encoder_chunk_frames` / `encoder_left_chunks` (None: full context, the offline
encoder), which `EntropyASRModel.encode` and the model's forward also take per call; a natively streaming model's
sessions encode through `StreamingEncoder`."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .configuration_entropy_asr import num_encoder_frames


def check_streamable(encoder: nn.Module) -> None:
    """Chunk mode needs a Parakeet/FastConformer encoder (relative-position attention + convolution blocks)."""
    config = getattr(encoder, "config", None)
    if getattr(config, "model_type", None) != "parakeet_encoder":
        raise ValueError(
            f"chunk-limited encoding needs a Parakeet/FastConformer encoder, got "
            f"{getattr(config, 'model_type', type(encoder).__name__)!r} (Whisper's encoder attends over its whole "
            "30-second window)"
        )


def check_chunking(chunk_frames: int, left_chunks: int) -> None:
    if isinstance(chunk_frames, bool) or not isinstance(chunk_frames, int) or chunk_frames < 1:
        raise ValueError(f"chunk_frames must be a positive number of encoder frames, got {chunk_frames!r}")
    if isinstance(left_chunks, bool) or not isinstance(left_chunks, int) or left_chunks < -1:
        raise ValueError(f"left_chunks must be -1 (every earlier chunk) or >= 0, got {left_chunks!r}")


def chunk_attention_mask(num_frames: int, chunk_frames: int, left_chunks: int, device=None) -> torch.Tensor:
    """(T, T) bool: query frame i may attend key frame j (same chunk, or one of the `left_chunks` before it)."""
    chunk = torch.arange(num_frames, device=device) // chunk_frames
    behind = chunk[:, None] - chunk[None, :]  # how many chunks the key lies behind the query
    allowed = behind >= 0
    if left_chunks >= 0:
        allowed &= behind <= left_chunks
    return allowed


def chunked_depthwise_conv(conv: nn.Conv1d, hidden: torch.Tensor, chunk_frames: int) -> torch.Tensor:
    """The depthwise convolution `conv` (centred kernel, 'same' padding) over (B, C, T) where each output frame
    sees the frames before it and those of its own chunk, and zeros after its chunk's end."""
    pad = conv.padding[0]
    batch, channels, frames = hidden.shape
    chunks = math.ceil(frames / chunk_frames)
    padded = F.pad(hidden, (pad, chunks * chunk_frames - frames))  # (B, C, pad + n*c)
    windows = padded.unfold(-1, pad + chunk_frames, chunk_frames)  # (B, C, n, pad + c): chunk j and its left
    windows = F.pad(windows, (0, pad))  # nothing after the chunk's end
    windows = windows.permute(0, 2, 1, 3).reshape(batch * chunks, channels, -1)
    out = F.conv1d(windows, conv.weight, conv.bias, groups=conv.groups)  # (B*n, C, c)
    out = out.reshape(batch, chunks, channels, chunk_frames).permute(0, 2, 1, 3)
    return out.reshape(batch, channels, chunks * chunk_frames)[..., :frames]


def _conv_module(
    module: nn.Module, hidden, valid, chunk_frames: int | None, left: torch.Tensor | None = None
):
    """Parakeet's convolution module on (B, T, C); `left`: the GLU outputs before these frames (streaming), whose
    last `padding` frames the kernel sees. Returns the output and the GLU outputs (for the next chunk's left)."""
    glu = F.glu(module.pointwise_conv1(hidden.transpose(1, 2)), dim=1)  # (B, C, T)
    if valid is not None:
        glu = glu.masked_fill(~valid[:, None, :], 0.0)
    if left is not None:  # one chunk of a stream: its left context, nothing after it
        pad = module.depthwise_conv.padding[0]
        window = F.pad(torch.cat([left[..., left.shape[-1] - pad :], glu], dim=-1), (0, pad))
        conv = module.depthwise_conv
        out = F.conv1d(window, conv.weight, conv.bias, groups=conv.groups)
    elif chunk_frames is None:
        out = module.depthwise_conv(glu)
    else:
        out = chunked_depthwise_conv(module.depthwise_conv, glu, chunk_frames)
    out = module.pointwise_conv2(module.activation(module.norm(out)))
    return out.transpose(1, 2), glu


def _block(block: nn.Module, hidden, mask, positions, valid, chunk_frames, **kwargs):
    """ParakeetEncoderBlock.forward with the chunk-limited convolution (the attention takes the chunk mask)."""
    hidden = hidden + 0.5 * block.feed_forward1(block.norm_feed_forward1(hidden))
    attn, _ = block.self_attn(
        hidden_states=block.norm_self_att(hidden),
        attention_mask=mask,
        position_embeddings=positions,
        **kwargs,
    )
    hidden = hidden + attn
    hidden = hidden + _conv_module(block.conv, block.norm_conv(hidden), valid, chunk_frames)[0]
    hidden = hidden + 0.5 * block.feed_forward2(block.norm_feed_forward2(hidden))
    return block.norm_out(hidden)


def subsample(encoder: nn.Module, input_features: torch.Tensor, attention_mask: torch.Tensor | None):
    """The encoder's front end: subsampled, scaled frames (B, T_enc, d) and their validity (B, T_enc) or None."""
    hidden = encoder.subsampling(input_features, attention_mask) * encoder.input_scale
    valid = None
    if attention_mask is not None:
        valid = encoder._get_output_attention_mask(attention_mask, target_length=hidden.shape[1]).bool()
    return hidden, valid


def encode_chunked(
    encoder: nn.Module,
    input_features: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    chunk_frames: int = 16,
    left_chunks: int = -1,
) -> torch.Tensor:
    """The encoder's last hidden state (B, T_enc, d) in chunk mode, computed for the whole utterance at once
    (differentiable: what dynamic-chunk training runs)."""
    check_streamable(encoder)
    check_chunking(chunk_frames, left_chunks)
    hidden, valid = subsample(encoder, input_features, attention_mask)
    positions = encoder.encode_positions(hidden)
    hidden = F.dropout(hidden, p=encoder.dropout, training=encoder.training)
    positions = F.dropout(positions, p=encoder.dropout_positions, training=encoder.training)
    frames = hidden.shape[1]
    mask = chunk_attention_mask(frames, chunk_frames, left_chunks, hidden.device)[None]
    if valid is not None:
        mask = mask & valid[:, None, :] & valid[:, :, None]
    mask = mask[:, None]  # (B or 1, 1, T, T)
    for block in encoder.layers:
        if encoder.training and encoder.layerdrop > 0.0 and torch.rand([]) < encoder.layerdrop:
            continue
        if block.gradient_checkpointing and block.training:
            hidden = checkpoint(
                _block, block, hidden, mask, positions, valid, chunk_frames, use_reentrant=False
            )
        else:
            hidden = _block(block, hidden, mask, positions, valid, chunk_frames)
    return hidden


class EncoderStream:
    """Chunk-by-chunk encoding of one stream with caches: `push(frames)` takes subsampled, scaled encoder frames
    (1, n, d) (any n; they are encoded in whole chunks, the rest waits) and returns the encoder states of the chunks
    it completed; `flush()` encodes what is left as a last, shorter chunk. The states equal `encode_chunked`'s
    for the same frames."""

    def __init__(self, encoder: nn.Module, chunk_frames: int, left_chunks: int):
        check_streamable(encoder)
        check_chunking(chunk_frames, left_chunks)
        self.encoder, self.chunk_frames, self.left_chunks = encoder, chunk_frames, left_chunks
        self.offset = 0  # frames encoded so far
        self.pending: torch.Tensor | None = None
        layers = len(encoder.layers)
        # per layer: the attention inputs (1, L, d) of the chunks kept, the GLU outputs (1, C, padding) before
        # the next chunk
        self.keys: list[torch.Tensor | None] = [None] * layers
        self.conv_left: list[torch.Tensor | None] = [None] * layers

    @torch.no_grad()
    def push(self, frames: torch.Tensor) -> torch.Tensor:
        frames = frames if self.pending is None else torch.cat([self.pending, frames], dim=1)
        whole = frames.shape[1] // self.chunk_frames * self.chunk_frames
        self.pending = frames[:, whole:] if whole < frames.shape[1] else None
        out = [self._chunk(frames[:, s : s + self.chunk_frames]) for s in range(0, whole, self.chunk_frames)]
        return torch.cat(out, dim=1) if out else frames[:, :0]

    @torch.no_grad()
    def peek(self, frames: torch.Tensor) -> torch.Tensor:
        """The states of the pending frames and `frames` as if the stream ended after them, leaving the stream as
        it was (a partial result's provisional tail)."""
        saved = (self.offset, self.pending, list(self.keys), list(self.conv_left))
        try:
            return torch.cat([self.push(frames), self.flush()], dim=1)
        finally:
            self.offset, self.pending, self.keys, self.conv_left = saved

    @torch.no_grad()
    def flush(self) -> torch.Tensor:
        pending, self.pending = self.pending, None
        return self._chunk(pending) if pending is not None else torch.zeros(1, 0, self._width())

    def _width(self) -> int:
        return self.encoder.config.hidden_size

    def _chunk(self, hidden: torch.Tensor) -> torch.Tensor:
        length = hidden.shape[1]
        for i, block in enumerate(self.encoder.layers):
            hidden = hidden + 0.5 * block.feed_forward1(block.norm_feed_forward1(hidden))
            query_input = block.norm_self_att(hidden)
            keys = query_input if self.keys[i] is None else torch.cat([self.keys[i], query_input], dim=1)
            hidden = hidden + self._attend(block.self_attn, query_input, keys)
            if self.left_chunks >= 0:
                keys = keys[:, max(0, keys.shape[1] - self.left_chunks * self.chunk_frames) :]
            self.keys[i] = keys if self.left_chunks != 0 else None
            conv = block.conv
            left = self.conv_left[i]
            if left is None:
                left = hidden.new_zeros(1, conv.depthwise_conv.in_channels, conv.depthwise_conv.padding[0])
            out, glu = _conv_module(conv, block.norm_conv(hidden), None, None, left=left)
            self.conv_left[i] = torch.cat([left, glu], dim=-1)[..., -conv.depthwise_conv.padding[0] :]
            hidden = hidden + out
            hidden = hidden + 0.5 * block.feed_forward2(block.norm_feed_forward2(hidden))
            hidden = block.norm_out(hidden)
        self.offset += length
        return hidden

    def _attend(self, attn: nn.Module, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Relative-position attention of this chunk's queries over the kept keys and the chunk itself (every
        key is allowed: the cache holds exactly the chunks the mask lets the chunk see)."""
        heads, dim = attn.config.num_attention_heads, attn.head_dim
        q_len, k_len = queries.shape[1], keys.shape[1]
        q = attn.q_proj(queries).view(1, q_len, heads, dim).transpose(1, 2)
        k = attn.k_proj(keys).view(1, k_len, -1, dim).transpose(1, 2)
        v = attn.v_proj(keys).view(1, k_len, -1, dim).transpose(1, 2)
        k = k.repeat_interleave(attn.num_key_value_groups, dim=1)
        v = v.repeat_interleave(attn.num_key_value_groups, dim=1)
        # distances query - key run from -(q_len - 1) to k_len - 1; the encoding's row r holds distance span - 1 - r
        span = k_len
        table = self.encoder.encode_positions(queries.new_zeros(1, span, 1))  # (1, 2*span - 1, d)
        rel = attn.relative_k_proj(table).view(1, -1, heads, dim).permute(0, 2, 3, 1)  # (1, H, D, 2*span - 1)
        ac = (q + attn.bias_u.view(1, heads, 1, dim)) @ k.transpose(2, 3)
        bd_all = (q + attn.bias_v.view(1, heads, 1, dim)) @ rel  # (1, H, q_len, 2*span - 1)
        query_pos = torch.arange(q_len, device=q.device) + (k_len - q_len)  # positions within the key window
        distance = query_pos[:, None] - torch.arange(k_len, device=q.device)[None, :]
        bd = bd_all.gather(-1, (span - 1 - distance).expand(1, heads, q_len, k_len))
        weights = torch.softmax((ac + bd) * attn.scaling, dim=-1)
        out = (weights @ v).transpose(1, 2).reshape(1, q_len, heads * dim)
        return attn.o_proj(out)


class StreamingEncoder:
    """The encoder states of a growing recording, each frame computed once: `states(wave)` -> (hidden (1, T, d),
    lengths (1,)) for the recording so far, equal to the model's chunk-limited encoding of that recording as a
    clip (`EntropyASRModel.encode` with the config's `encoder_chunk_frames`). Needs fixed feature statistics in the
    processor (`set_feature_stats`: a frame's features then depend only on the audio under its window).

    Feature frames whose 32 ms window lies inside the audio heard are final and kept; so are encoder frames whose
    subsampling inputs (feature frames 4i-3..4i+3) are final, which go through an `EncoderStream` chunk by chunk.
    The frames after them are computed again on each call as if the recording ended there (zeros after its end, as
    for a clip) and encoded in a throwaway copy of the stream's caches. Each call costs the new audio's frames plus
    that short tail, however long the recording."""

    def __init__(self, model, processor):
        config = model.config
        if not config.encoder_chunk_frames:
            raise ValueError("a streaming encoder needs a model with encoder_chunk_frames set in its config")
        if processor.feature_stats is None:
            raise ValueError(
                "a streaming encoder needs fixed feature statistics (processor.set_feature_stats): per-clip "
                "normalisation changes every frame as the recording grows"
            )
        self.encoder = model.model.encoder
        self.stream = EncoderStream(self.encoder, config.encoder_chunk_frames, config.encoder_left_chunks)
        self.processor, self.conv_layers = processor, config.encoder_frame_rule["conv_layers"]
        fe = processor.feature_extractor
        self.hop, self.half = fe.hop_length, fe.n_fft // 2
        # the final feature frames kept: those from 4 x (final_frames - 1) on, what the next window needs
        self.features = torch.zeros(0, len(processor.feature_stats["mean"]))
        self.final_features = 0  # feature frames final so far
        self.final_frames = 0  # encoder frames final (pushed to `stream`) so far
        self.done: list[torch.Tensor] = []  # the states `stream` returned

    @property
    def final_states(self) -> int:
        """How many of the states the last `states` call gave are final (their chunk complete): later audio
        leaves them as they are."""
        return self.stream.offset

    @torch.no_grad()
    def states(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        samples = wave.numel()
        total = int(self.processor.feature_frames(torch.tensor(samples)))  # of the recording as a clip
        final = min(total, max(0, (samples - self.half) // self.hop + 1))  # windows inside the audio
        # feature frames from the first not yet final; two frames earlier the window's edge no longer matters
        begin = max(0, self.final_features - 2)
        raw, _ = self.processor.log_mel([wave[begin * self.hop :]])
        fresh = self.processor.normalise(raw[0])[self.final_features - begin : total - begin]
        kept = final - self.final_features
        self.features = torch.cat([self.features, fresh[:kept]])
        self.final_features = final
        # encoder frames: those whose subsampling inputs are all final are final
        frames = int(num_encoder_frames(total, self.conv_layers))
        exact = min(frames, max(0, (final - 4) // 4 + 1))
        # from a frame before the first needed (its left padding is harmless): feature frames 4 x start to total
        start = max(0, self.final_frames - 1)
        window = torch.cat([self.features, fresh[kept:]])
        parameter = next(self.encoder.parameters())
        window = window.to(device=parameter.device, dtype=parameter.dtype)
        hidden = self.encoder.subsampling(window[None], None) * self.encoder.input_scale
        hidden = hidden[:, self.final_frames - start :]  # frames final_frames .. frames - 1
        fixed = exact - self.final_frames
        self.done.append(self.stream.push(hidden[:, :fixed]))
        self.final_frames = exact
        tail = self.stream.peek(hidden[:, fixed:])
        # keep the feature frames the next call's first window needs, no more (memory stays flat)
        self.features = self.features[4 * max(0, self.final_frames - 1) - 4 * start :]
        states = torch.cat([*self.done, tail], dim=1)
        return states, torch.tensor([states.shape[1]])
