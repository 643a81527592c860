"""Entropy-allocation metrics for speech-encoder frames: NSE, linear CKA, PAI and CSAI.

These are the project's definitions of the encoder-side metrics in method.md section 4 (the paper does not
publish its formulas). Every choice (log base, probe, held-out split, unseen-label policy) is a parameter.

- NSE (normalised spectral entropy): centre Z, eigenvalues l_i of the covariance Z^T Z / N,
  p_i = l_i / sum(l), NSE = -sum p_i log p_i / log(min(N, d)) in [0, 1]. The log base cancels.
- Linear CKA: ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) on centred X, Y (same frames).
- PAI (phonetic accessible information, a V-information with a linear probe):
  H(P) - CE(P | Z), CE = held-out cross-entropy of a multinomial logistic-regression probe.
- CSAI (conditional semantic accessible information):
  CE(S | onehot(pron)) - CE(S | [onehot(pron), Z]), both linear probes, held-out, pron = the pronunciation
  (phoneme string) of the frame's unit: what Z tells about the unit beyond how it sounds. The frame-phoneme
  CSAI (`csai_frame_bits`) conditions on the frame's own phoneme P instead, so phonetic context counts too.
- 95% intervals: NSE and CKA by a bootstrap over blocks of utterances (`grouped_bootstrap`); PAI and CSAI by
  the same bootstrap over the held-out utterances' per-frame losses, the probes trained once
  (`_heldout_bootstrap`: cheap, and narrower than retraining per resample; the metric card has the figures).

Streaming: `CovarianceAccumulator` and `CKAAccumulator` keep O(d^2) float64 state, so NSE and CKA run over
any number of frames. Chunk products run in float32 with torch (on the chunk's device; numpy chunks are
wrapped without a copy) on data shifted by the first chunk's mean, and are summed in float64; centring is
applied analytically at the end. All CPU work goes through torch, so `torch.set_num_threads` (or the
probes' `num_threads`) is the one thread setting (numpy's BLAS is not used on the hot paths).

Probes (PAI, CSAI): multinomial logistic regression on z-scored inputs, trained with Adam on utterances
outside the held-out set, early-stopped on a validation subset of the training utterances; the [C, Z]
probe starts from the fitted C-only probe, so Z that adds nothing scores CSAI = 0 rather than a negative
overfitting artefact, and says so (`csai_stopped_at_start`); a negative held-out gain is reported as it is,
never clipped. See `AllocationConfig` and `ProbeConfig` for every choice.

This file is the single source of the math. It lives inside the `evaluate` module folder so that
`evaluate.load` copies it beside `entropy_allocation.py` (relative import); the project imports it from here
too. It must import only numpy and torch (and the standard library).
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

# Rows per float32 product block: bounds float32 summation error and the temporary memory of one update.
_BLOCK_ROWS = 32768
# Covariance eigenvalues below this fraction of the largest are round-off and count as exact zeros
# (float32 chunk products resolve eigenvalues down to ~1e-7 of the largest, float64 to ~1e-13).
_EIG_RTOL = {"float32": 1e-7, "float64": 1e-12}


# --------------------------------------------------------------------------------------------------------
# Streaming second moments, NSE and CKA
# --------------------------------------------------------------------------------------------------------


def _as_matrix(x: Any, name: str) -> torch.Tensor:
    """A 2-D tensor: torch tensors as they are (products run on their device), arrays shared when possible."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        a = np.asarray(x)
        if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
            raise TypeError(f"{name} must be numeric, got dtype {a.dtype}")
        with warnings.catch_warnings():  # read-only arrays (e.g. Arrow-backed) are only ever read here
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            t = torch.as_tensor(a)
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D (frames, dim), got shape {tuple(t.shape)}")
    return t


def _shifted_blocks(x: torch.Tensor, shift: np.ndarray, dtype: str):
    """Yield (x - shift) in blocks of at most _BLOCK_ROWS rows, as `dtype` (float32 or float64)."""
    tdtype = torch.float32 if dtype == "float32" else torch.float64
    s = torch.as_tensor(shift, dtype=tdtype, device=x.device)
    for start in range(0, x.shape[0], _BLOCK_ROWS):
        yield x[start : start + _BLOCK_ROWS].to(tdtype) - s


def _colsum64(a: torch.Tensor) -> np.ndarray:
    return a.sum(0, dtype=torch.float64).cpu().numpy()


def _product64(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """a^T b computed in a's dtype on a's device, returned as float64 numpy."""
    return (a.T @ b).double().cpu().numpy()


class CovarianceAccumulator:
    """Streaming centred second moment of frames, for NSE and the spectral entropy.

    Keeps the frame count, the sum and the sum of outer products of frames shifted by the first chunk's
    mean (float64, O(d^2) memory). `compute_dtype="float32"` runs each chunk's product in float32 (fast;
    NSE and CKA agree with float64 to ~1e-8); "float64" is exact to round-off. Eigenvalues below
    `eig_rtol` times the largest count as 0 (default by compute dtype: 1e-7 float32, 1e-12 float64).
    """

    def __init__(self, compute_dtype: str = "float32", eig_rtol: float | None = None):
        if compute_dtype not in ("float32", "float64"):
            raise ValueError(f"compute_dtype must be 'float32' or 'float64', got {compute_dtype!r}")
        self.compute_dtype = compute_dtype
        self.eig_rtol = _EIG_RTOL[compute_dtype] if eig_rtol is None else eig_rtol
        self.n = 0
        self.shift: np.ndarray | None = None  # (d,) float64
        self._sum: np.ndarray | None = None  # (d,) float64, sum of shifted frames
        self._outer: np.ndarray | None = None  # (d, d) float64, sum of shifted outer products

    @property
    def dim(self) -> int | None:
        return None if self.shift is None else self.shift.shape[0]

    def _init(self, chunk: torch.Tensor) -> None:
        d = chunk.shape[1]
        self.shift = chunk.double().mean(0).cpu().numpy()
        self._sum = np.zeros(d)
        self._outer = np.zeros((d, d))

    def _check(self, chunk: torch.Tensor) -> bool:
        """Initialise on the first non-empty chunk; return False for an empty chunk."""
        if chunk.shape[0] == 0:
            return False
        if self.shift is None:
            self._init(chunk)
        elif chunk.shape[1] != self.dim:
            raise ValueError(f"chunk dim {chunk.shape[1]} != accumulated dim {self.dim}")
        return True

    def _add_shifted_block(self, xs: torch.Tensor) -> None:
        self.n += xs.shape[0]
        self._sum += _colsum64(xs)
        self._outer += _product64(xs, xs)

    def update(self, chunk: Any) -> CovarianceAccumulator:
        """Add a chunk of frames of shape (n, d) (numpy array, torch tensor on any device, or nested list)."""
        x = _as_matrix(chunk, "chunk")
        if self._check(x):
            for xs in _shifted_blocks(x, self.shift, self.compute_dtype):
                self._add_shifted_block(xs)
        return self

    def scatter(self) -> np.ndarray:
        """Centred scatter matrix sum_t (z_t - mean)(z_t - mean)^T, float64 (d, d)."""
        if self.n == 0:
            raise ValueError("no frames accumulated")
        m = self._sum / self.n
        return self._outer - self.n * np.outer(m, m)

    @property
    def mean(self) -> np.ndarray:
        if self.n == 0:
            raise ValueError("no frames accumulated")
        return self.shift + self._sum / self.n

    def covariance(self) -> np.ndarray:
        """Centred covariance Z^T Z / N (population normalisation, as in the NSE definition)."""
        return self.scatter() / self.n

    def eigenvalues(self) -> np.ndarray:
        """Covariance eigenvalues, descending, tiny negative round-off clipped to 0."""
        cov = self.covariance()
        cov = 0.5 * (cov + cov.T)
        ev = torch.linalg.eigvalsh(torch.from_numpy(cov)).numpy()[::-1]  # torch: one thread setting for all
        top = max(float(ev[0]), 0.0)
        return np.where(ev > self.eig_rtol * top, ev, 0.0)

    def spectral_entropy(self, log_base: float = 2.0) -> float:
        """Entropy of the normalised eigenvalue distribution, in units of log base `log_base`."""
        if self.n < 2:
            raise ValueError(f"spectral entropy needs at least 2 frames, got {self.n}")
        ev = self.eigenvalues()
        total = ev.sum()
        if total <= 0:
            logger.warning("all %d frames are identical: zero variance, spectral entropy undefined", self.n)
            return float("nan")
        p = ev[ev > 0] / total
        return max(0.0, float(-(p * np.log(p)).sum() / math.log(log_base)))

    def nse(self) -> float:
        """Normalised spectral entropy: spectral entropy / log(min(N, d)), in [0, 1] (base-independent)."""
        if self.dim < 2:
            raise ValueError("NSE needs at least 2 dimensions (log(min(N, d)) = 0 for d = 1)")
        h = self.spectral_entropy(log_base=math.e)
        return float(h / math.log(min(self.n, self.dim)))

    def effective_rank(self) -> float:
        """exp(spectral entropy in nats): the number of equally strong directions with the same entropy."""
        return float(math.exp(self.spectral_entropy(log_base=math.e)))


class CKAAccumulator:
    """Streaming linear CKA between two representations of the same frames (paired chunks).

    Keeps X^T X, Y^T Y and Y^T X of shifted frames (float64, O(d_x^2 + d_y^2 + d_x d_y) memory) and
    centres analytically at the end: CKA = ||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F ||Y_c^T Y_c||_F).
    The per-side accumulators `x` and `y` also give each side's NSE for free.
    """

    def __init__(self, compute_dtype: str = "float32"):
        self.x = CovarianceAccumulator(compute_dtype)
        self.y = CovarianceAccumulator(compute_dtype)
        self._cross: np.ndarray | None = None  # (d_y, d_x) float64

    @property
    def n(self) -> int:
        return self.x.n

    def update(self, x_chunk: Any, y_chunk: Any) -> CKAAccumulator:
        """Add paired chunks (n, d_x) and (n, d_y): row t of both is the same frame."""
        x = _as_matrix(x_chunk, "x_chunk")
        y = _as_matrix(y_chunk, "y_chunk")
        if x.shape[0] != y.shape[0]:
            raise ValueError(
                f"paired chunks must have the same number of frames, got {x.shape[0]} and {y.shape[0]}"
            )
        if x.device != y.device:
            y = y.to(x.device)
        if not self.x._check(x):
            return self
        self.y._check(y)
        if self._cross is None:
            self._cross = np.zeros((y.shape[1], x.shape[1]))
        dtype = self.x.compute_dtype
        for xs, ys in zip(_shifted_blocks(x, self.x.shift, dtype), _shifted_blocks(y, self.y.shift, dtype)):
            self.x._add_shifted_block(xs)
            self.y._add_shifted_block(ys)
            self._cross += _product64(ys, xs)
        return self

    def cross_scatter(self) -> np.ndarray:
        """Centred cross scatter Y_c^T X_c, float64 (d_y, d_x)."""
        if self.n == 0:
            raise ValueError("no frames accumulated")
        mx = self.x._sum / self.n
        my = self.y._sum / self.n
        return self._cross - self.n * np.outer(my, mx)

    def cka(self) -> float:
        """Linear CKA in [0, 1]; NaN (with a warning) when one side has zero variance."""
        sxx = self.x.scatter()
        syy = self.y.scatter()
        syx = self.cross_scatter()
        denom = np.linalg.norm(sxx) * np.linalg.norm(syy)
        if denom <= 0:
            logger.warning("a representation has zero variance over %d frames: CKA undefined", self.n)
            return float("nan")
        return float(np.linalg.norm(syx) ** 2 / denom)


def _to_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def nse(z: Any, chunk_size: int = 65536, compute_dtype: str = "float32") -> float:
    """Normalised spectral entropy of frames z (N, d), streamed in chunks of `chunk_size` rows."""
    z = _as_matrix(z, "z")
    acc = CovarianceAccumulator(compute_dtype)
    for start in range(0, z.shape[0], chunk_size):
        acc.update(z[start : start + chunk_size])
    return acc.nse()


def spectral_entropy(z: Any, log_base: float = 2.0, compute_dtype: str = "float32") -> float:
    """Un-normalised spectral entropy of frames z (N, d) in units of log base `log_base`."""
    return CovarianceAccumulator(compute_dtype).update(z).spectral_entropy(log_base)


def linear_cka(x: Any, y: Any, chunk_size: int = 65536, compute_dtype: str = "float32") -> float:
    """Linear CKA between x (N, d_x) and y (N, d_y), feature-space form, O(N d^2) time, O(d^2) memory."""
    x = _as_matrix(x, "x")
    y = _as_matrix(y, "y")
    acc = CKAAccumulator(compute_dtype)
    for start in range(0, x.shape[0], chunk_size):
        acc.update(x[start : start + chunk_size], y[start : start + chunk_size])
    return acc.cka()


def linear_cka_gram(x: Any, y: Any) -> float:
    """Reference linear CKA in the Gram-matrix (HSIC) form, O(N^2) memory: for tests and small N only.

    CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)), K = X X^T, L = Y Y^T, HSIC(K, L) = tr(K H L H),
    H = I - 11^T / N (the 1/(N-1)^2 factors cancel).
    """
    x = np.asarray(_to_numpy(_as_matrix(x, "x")), dtype=np.float64)
    y = np.asarray(_to_numpy(_as_matrix(y, "y")), dtype=np.float64)
    n = x.shape[0]
    h = np.eye(n) - np.full((n, n), 1.0 / n)
    kc = h @ (x @ x.T) @ h
    lc = h @ (y @ y.T) @ h
    return float((kc * lc).sum() / math.sqrt((kc * kc).sum() * (lc * lc).sum()))


# --------------------------------------------------------------------------------------------------------
# Linear probes and the held-out split
# --------------------------------------------------------------------------------------------------------


@dataclass
class ProbeConfig:
    """Multinomial logistic-regression probe training.

    optimizer: "adam" (minibatches, cosine-decayed learning rate) or "lbfgs" (full batch, strong Wolfe,
        `lbfgs_max_iter` iterations, no early stopping).
    Adam runs max(epochs * ceil(N / batch_size), min_steps) steps, so small sets still converge. With a
    validation split (`AllocationConfig.validation_fraction`), the validation CE is checked at step 0 and
    every `eval_every` steps (None: total / 10) and the best checkpoint is kept (early stopping: an
    uninformative Z stops at the marginal predictor instead of fitting noise).
    l2: penalty 0.5 * l2 * ||W||^2 on the weights (not the bias) added to the mean cross-entropy; a sequence
        of values fits one probe per value and keeps the one with the lowest validation CE (the first value
        without a validation split). The default (1e-3, 1e-2): on the encoder states of 60 test utterances
        (3 400 training frames, 144 dims, 132 phonemes) the 1e-3 probe overfitted from its first steps and
        early stopping fell back to the marginal predictor (PAI -1.0 bits; 1e-2: 1.6); where Z separates the
        classes well, 1e-3 fits better.
    The bias starts at the log train-class frequencies and the weights at zero, so an untrained probe is
    the train-marginal predictor and the fit is deterministic for a fixed `seed` (minibatch order).
    num_threads: torch CPU threads while fitting/evaluating (restored afterwards); None keeps the current
    setting. 1 is fastest for small probes on a busy machine.
    """

    optimizer: str = "adam"
    epochs: int = 2
    min_steps: int = 300
    batch_size: int = 1024
    learning_rate: float = 0.05
    l2: float | tuple[float, ...] = (1e-3, 1e-2)
    eval_every: int | None = None
    lbfgs_max_iter: int = 200
    eval_batch_size: int = 65536
    seed: int = 0
    device: str = "cpu"
    num_threads: int | None = None


@dataclass
class AllocationConfig:
    """All choices behind PAI / CSAI / NSE; see the module docstring and the metric card.

    log_base: base of the reported entropies (2 = bits per frame).
    heldout_fraction / split_seed: fraction of *utterances* (not frames) held out for the probe CEs.
    validation_fraction: fraction of the remaining (training) utterances used for the probes' early
        stopping (Adam only; 0 disables). The probes fit on the other training utterances.
    entropy_split: frames used for the empirical H(P) (and H(S)): "heldout" (default; the same frames as
        the probe CE, so PAI compares two quantities on one sample), "train" (all training utterances,
        validation included) or "all".
    standardize: z-score Z features with training-utterance mean/std (constant features get std 1); the
        one-hot(P) input of CSAI is z-scored the same way (with training frequencies), so one L2 penalty
        means the same for both input blocks.
    unseen_units: held-out units never seen in training (or seen fewer than `min_unit_count` times):
        "drop" excludes those held-out frames (and rare train units' frames) from the CSAI probes;
        "unk" maps them to one shared <unk> class in both splits.
    max_unit_classes: keep only the most frequent training units (ties by id) as classes, the others
        follow the `unseen_units` policy (bounds the CSAI probe cost on large vocabularies; None = all).
    Held-out phonemes unseen in training are always dropped from PAI (the probe has no output for them);
    as a CSAI *input* an unseen phoneme gets an all-zero one-hot.
    """

    log_base: float = 2.0
    heldout_fraction: float = 0.2
    validation_fraction: float = 0.1
    split_seed: int = 0
    entropy_split: str = "heldout"
    standardize: bool = True
    unseen_units: str = "drop"
    min_unit_count: int = 1
    max_unit_classes: int | None = None
    chunk_size: int = 65536
    compute_dtype: str = "float32"
    # 95% intervals of NSE, CKA (all utterances), PAI and CSAI (held-out utterances): resamples of a bootstrap over
    # `bootstrap_groups` blocks of utterances (0: none)
    bootstrap_resamples: int = 200
    bootstrap_groups: int = 20
    probe: ProbeConfig = field(default_factory=ProbeConfig)


def resolve_config(config: AllocationConfig | None = None, **options: Any) -> AllocationConfig:
    """Copy `config` (or the defaults) with flat overrides; probe fields (epochs, l2, ...) go to `probe`."""
    config = config or AllocationConfig()
    top = {f.name for f in fields(AllocationConfig)}
    probe_names = {f.name for f in fields(ProbeConfig)}
    top_opts = {k: v for k, v in options.items() if k in top}
    probe_opts = {k: v for k, v in options.items() if k in probe_names and k not in top}
    unknown = set(options) - set(top_opts) - set(probe_opts)
    if unknown:
        raise TypeError(f"unknown entropy-allocation options: {sorted(unknown)}")
    if isinstance(top_opts.get("probe"), dict):
        top_opts["probe"] = ProbeConfig(**top_opts["probe"])
    config = replace(config, **top_opts)
    if probe_opts:
        config = replace(config, probe=replace(config.probe, **probe_opts))
    if config.entropy_split not in ("heldout", "train", "all"):
        raise ValueError(f"entropy_split must be 'heldout', 'train' or 'all', got {config.entropy_split!r}")
    if config.unseen_units not in ("drop", "unk"):
        raise ValueError(f"unseen_units must be 'drop' or 'unk', got {config.unseen_units!r}")
    if config.probe.optimizer not in ("adam", "lbfgs"):
        raise ValueError(f"optimizer must be 'adam' or 'lbfgs', got {config.probe.optimizer!r}")
    if not 0.0 < config.heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {config.heldout_fraction}")
    if config.bootstrap_resamples < 0 or config.bootstrap_groups < 2:
        raise ValueError(
            f"bootstrap_resamples must be >= 0 and bootstrap_groups >= 2, got {config.bootstrap_resamples} "
            f"and {config.bootstrap_groups}"
        )
    if not 0.0 <= config.validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {config.validation_fraction}")
    return config


def utterance_split(
    utterance_ids: Sequence[Any] | np.ndarray, heldout_fraction: float = 0.2, seed: int = 0
) -> np.ndarray:
    """Boolean per-frame mask of held-out frames: a seeded random `heldout_fraction` of the distinct utterances.

    Depends only on the set of ids and the seed (not on frame order). At least one utterance is held out
    and at least one kept for training.
    """
    ids = np.asarray(utterance_ids)
    uniq, inverse = np.unique(ids, return_inverse=True)
    if len(uniq) < 2:
        raise ValueError(f"need at least 2 distinct utterances for a held-out split, got {len(uniq)}")
    n_held = min(max(1, round(heldout_fraction * len(uniq))), len(uniq) - 1)
    held = np.zeros(len(uniq), dtype=bool)
    held[np.random.default_rng(seed).permutation(len(uniq))[:n_held]] = True
    return held[inverse.reshape(-1)]


def entropy(labels: np.ndarray, log_base: float = 2.0) -> float:
    """Entropy of the empirical distribution of integer labels, in units of log base `log_base`."""
    if len(labels) == 0:
        return float("nan")
    return _entropy_of_counts(np.unique(labels, return_counts=True)[1], log_base)


def _entropy_of_counts(counts: np.ndarray, log_base: float = 2.0) -> float:
    """Entropy of the distribution proportional to non-negative `counts`, in units of log base `log_base`."""
    counts = np.asarray(counts, dtype=np.float64)
    counts = counts[counts > 0]
    p = counts / counts.sum()
    return max(0.0, float(-(p * np.log(p)).sum() / math.log(log_base)))


class LinearProbe(torch.nn.Module):
    """Multinomial logistic regression on [onehot(category), dense features].

    The one-hot block is an embedding lookup scaled per category (identical to a linear layer on the
    one-hot vector times `category_scale`, without materialising it; with scale 1/sd_k this is the z-scored
    one-hot, the centring offset being a constant the bias absorbs). Either input may be absent.
    """

    def __init__(
        self,
        num_classes: int,
        dense_dim: int = 0,
        num_categories: int = 0,
        category_scale: torch.Tensor | None = None,
    ):
        super().__init__()
        self.dense = torch.nn.Parameter(torch.zeros(num_classes, dense_dim)) if dense_dim else None
        self.onehot = torch.nn.Parameter(torch.zeros(num_categories, num_classes)) if num_categories else None
        self.bias = torch.nn.Parameter(torch.zeros(num_classes))
        scale = torch.ones(num_categories) if category_scale is None else category_scale.float()
        self.register_buffer("category_scale", scale.reshape(num_categories, 1))
        # the training step early stopping kept (0: the starting point); None without early stopping
        self.kept_step: int | None = None

    def forward(self, dense: torch.Tensor | None, categories: torch.Tensor | None) -> torch.Tensor:
        logits = self.bias.expand(len(dense) if dense is not None else len(categories), -1)  # (B, C)
        if self.dense is not None:
            logits = logits + dense @ self.dense.T
        if self.onehot is not None:
            logits = logits + self.onehot[categories] * self.category_scale[categories]
        return logits

    def penalty(self) -> torch.Tensor:
        return sum((w.square().sum() for w in (self.dense, self.onehot) if w is not None), torch.zeros(()))


@dataclass
class ProbeData:
    """Frames for a probe: int64 labels (N,), optional dense features (N, d) and categories (N,)."""

    labels: torch.Tensor
    dense: torch.Tensor | None = None
    categories: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def rows(self, idx: torch.Tensor | slice) -> ProbeData:
        return ProbeData(*(None if t is None else t[idx] for t in (self.labels, self.dense, self.categories)))

    def to(self, device: torch.device) -> ProbeData:
        return ProbeData(
            *(None if t is None else t.to(device) for t in (self.labels, self.dense, self.categories))
        )


@contextlib.contextmanager
def _torch_threads(n: int | None):
    """Temporarily set torch's intra-op CPU threads (None: leave as is)."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_probe(
    train: ProbeData,
    num_classes: int,
    num_categories: int = 0,
    category_scale: torch.Tensor | None = None,
    validation: ProbeData | None = None,
    config: ProbeConfig | None = None,
    init: LinearProbe | None = None,
) -> LinearProbe:
    """Fit a `LinearProbe` predicting `train.labels` from its dense features and/or categories.

    category_scale: optional (num_categories,) value of each category's one-hot entry (default 1).
    validation: frames for early stopping (Adam); the checkpoint with the lowest validation CE is returned.
    init: start from this probe's bias and one-hot weights (dense weights start at 0) instead of the
        train marginal, e.g. the nested probe without Z, so early stopping can fall back to it.
    """
    config = config or ProbeConfig()
    if train.dense is None and train.categories is None:
        raise ValueError("a probe needs dense features, categories, or both")
    penalties = tuple(config.l2) if isinstance(config.l2, (tuple, list)) else (float(config.l2),)
    if not penalties:
        raise ValueError("l2: give a penalty or a non-empty sequence of penalties")
    use_val = validation is not None and len(validation) > 0 and config.optimizer != "lbfgs"
    best: tuple[float, LinearProbe] | None = None
    with _torch_threads(config.num_threads):
        for l2 in penalties if use_val else penalties[:1]:
            probe = _fit_probe(
                train, num_classes, num_categories, category_scale, validation, replace(config, l2=l2), init
            )
            if len(penalties) == 1 or not use_val:
                return probe
            ce = probe_cross_entropy(probe, validation, config.eval_batch_size)
            logger.debug("probe: l2 %g, validation CE %.4f nats", l2, ce)
            if best is None or ce < best[0]:
                best = (ce, probe)
    return best[1]


def _fit_probe(
    train: ProbeData,
    num_classes: int,
    num_categories: int,
    category_scale: torch.Tensor | None,
    validation: ProbeData | None,
    config: ProbeConfig,
    init: LinearProbe | None = None,
) -> LinearProbe:
    device = torch.device(config.device)
    train = train.to(device)
    dense_dim = 0 if train.dense is None else train.dense.shape[1]
    probe = LinearProbe(num_classes, dense_dim, num_categories, category_scale).to(device)
    with torch.no_grad():
        if init is not None:  # start at the given (nested) probe
            probe.bias.copy_(init.bias)
            if probe.onehot is not None and init.onehot is not None:
                probe.onehot.copy_(init.onehot)
        else:  # start at the smoothed train-marginal predictor
            counts = torch.bincount(train.labels, minlength=num_classes).double() + 0.5
            probe.bias.copy_((counts / counts.sum()).log().float())
    n = len(train)
    if n == 0:
        return probe

    def objective(batch: ProbeData) -> torch.Tensor:
        logits = probe(batch.dense, batch.categories)
        return F.cross_entropy(logits, batch.labels) + 0.5 * config.l2 * probe.penalty()

    if config.optimizer == "lbfgs":
        opt = torch.optim.LBFGS(
            probe.parameters(), lr=1.0, max_iter=config.lbfgs_max_iter, line_search_fn="strong_wolfe"
        )

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = objective(train)
            loss.backward()
            return loss

        opt.step(closure)
        return probe

    gen = torch.Generator().manual_seed(config.seed)
    total_steps = max(config.epochs * math.ceil(n / config.batch_size), config.min_steps, 1)
    eval_every = config.eval_every or max(1, total_steps // 10)
    use_val = validation is not None and len(validation) > 0

    best = (math.inf, 0, None)  # (validation CE, step, state)

    def checkpoint(step: int) -> None:
        nonlocal best
        ce = probe_cross_entropy(probe, validation, config.eval_batch_size)
        if ce < best[0]:
            best = (ce, step, {k: v.detach().clone() for k, v in probe.state_dict().items()})

    opt = torch.optim.Adam(probe.parameters(), lr=config.learning_rate)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
    step = 0
    if use_val:
        checkpoint(0)
    while step < total_steps:  # passes over a fresh permutation until the step budget is spent
        perm = torch.randperm(n, generator=gen).to(device)
        for start in range(0, n, config.batch_size):
            if step == total_steps:
                break
            opt.zero_grad(set_to_none=True)
            objective(train.rows(perm[start : start + config.batch_size])).backward()
            opt.step()
            sched.step()
            step += 1
            if use_val and (step % eval_every == 0 or step == total_steps):
                checkpoint(step)
    if use_val:
        probe.load_state_dict(best[2])
        probe.kept_step = best[1]
        logger.debug("probe: best validation CE %.4f nats at step %d of %d", best[0], best[1], total_steps)
    return probe


@torch.no_grad()
def probe_losses(probe: LinearProbe, data: ProbeData, batch_size: int = 65536) -> np.ndarray:
    """Cross-entropy (nats) of the probe's prediction on each of the given frames, float64 (N,)."""
    device = probe.bias.device
    out = np.empty(len(data))
    for start in range(0, len(data), batch_size):
        batch = data.rows(slice(start, start + batch_size)).to(device)
        logits = probe(batch.dense, batch.categories)
        out[start : start + len(batch)] = (
            F.cross_entropy(logits, batch.labels, reduction="none").double().cpu()
        )
    return out


def probe_cross_entropy(probe: LinearProbe, data: ProbeData, batch_size: int = 65536) -> float:
    """Mean cross-entropy (nats) of the probe's predictions on the given frames."""
    if len(data) == 0:
        return float("nan")
    return float(probe_losses(probe, data, batch_size).sum() / len(data))


def _marginal_cross_entropy(y_train: torch.Tensor, y_held: torch.Tensor, num_classes: int) -> float:
    """CE (nats) on held-out labels of the train marginal (add-0.5 smoothed): the V-information null probe."""
    if len(y_held) == 0:
        return float("nan")
    counts = torch.bincount(y_train, minlength=num_classes).double() + 0.5
    return float(-(counts / counts.sum()).log()[y_held].mean())


def _labels_1d(x: Any, name: str, n: int) -> np.ndarray:
    a = _to_numpy(x) if isinstance(x, torch.Tensor) else np.asarray(x)
    a = a.reshape(-1)
    if len(a) != n:
        raise ValueError(f"{name} has {len(a)} entries but there are {n} frames")
    if not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"{name} must be integer labels, got dtype {a.dtype}")
    return a.astype(np.int64)


@dataclass
class _Prepared:
    """Frames split by utterance (fit / validation / held-out) and standardised, shared by PAI and CSAI."""

    z: torch.Tensor  # (N, d) float32, standardised with training-utterance statistics
    heldout: np.ndarray  # (N,) bool
    validation: np.ndarray  # (N,) bool, a subset of the training utterances (early stopping)
    # (N,) int: the bootstrap block of each held-out frame (its utterance's, see `utterance_blocks`), -1 elsewhere
    heldout_block: np.ndarray

    @property
    def fit(self) -> np.ndarray:
        return ~self.heldout & ~self.validation

    @property
    def n_frames(self) -> int:
        return self.z.shape[0]

    @property
    def dim(self) -> int:
        return self.z.shape[1]


def _prepare(z: Any, utterance_ids: Any, config: AllocationConfig) -> _Prepared:
    zt = _as_matrix(z, "encoder_states").to("cpu", torch.float32)  # probes move minibatches to their device
    ids = np.asarray(_to_numpy(utterance_ids) if isinstance(utterance_ids, torch.Tensor) else utterance_ids)
    ids = ids.reshape(-1)
    if len(ids) != zt.shape[0]:
        raise ValueError(f"utterance_ids has {len(ids)} entries but there are {zt.shape[0]} frames")
    heldout = utterance_split(ids, config.heldout_fraction, config.split_seed)
    validation = np.zeros_like(heldout)
    train_ids = ids[~heldout]
    if config.validation_fraction > 0 and config.probe.optimizer == "adam" and len(np.unique(train_ids)) >= 2:
        validation[~heldout] = utterance_split(train_ids, config.validation_fraction, config.split_seed + 1)
    if config.standardize:
        mean, std = _masked_mean_std(zt, ~heldout)
        std = torch.where(std > 1e-8 * std.max().clamp_min(1e-30), std, torch.ones_like(std))
        out = torch.empty_like(zt)  # never in place: zt may share memory with the caller's array
        for start in range(0, len(zt), _BLOCK_ROWS):
            sl = slice(start, start + _BLOCK_ROWS)
            torch.sub(zt[sl], mean.float(), out=out[sl]).div_(std.float())
        zt = out
    block = np.full(len(ids), -1)
    block[heldout] = utterance_blocks(ids[heldout], config.bootstrap_groups)
    return _Prepared(zt, heldout, validation, block)


def _masked_mean_std(z: torch.Tensor, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 mean and (population) std of the rows of z where mask is True, in blocks (no full copy)."""
    total = torch.zeros(z.shape[1], dtype=torch.float64)
    sq = torch.zeros(z.shape[1], dtype=torch.float64)
    n = int(mask.sum())
    shift = z[int(np.argmax(mask))].double()  # any selected row: keeps the sum of squares well conditioned
    for start in range(0, len(z), _BLOCK_ROWS):
        rows = (
            z[start : start + _BLOCK_ROWS][torch.from_numpy(mask[start : start + _BLOCK_ROWS])].double()
            - shift
        )
        total += rows.sum(0)
        sq += rows.square().sum(0)
    mean = total / n
    return shift + mean, (sq / n - mean.square()).clamp_min(0).sqrt()


def _entropy_frames(labels: np.ndarray, heldout: np.ndarray, keep: np.ndarray, which: str) -> np.ndarray:
    sel = {"heldout": heldout, "train": ~heldout, "all": np.ones_like(heldout)}[which]
    return labels[sel & keep]


def _select(data: ProbeData, mask: np.ndarray) -> ProbeData:
    return data.rows(torch.from_numpy(np.flatnonzero(mask)))


def _stopped_at_start(probe: LinearProbe) -> bool | None:
    """True when early stopping kept the probe's starting point (None: no early stopping)."""
    return None if probe.kept_step is None else probe.kept_step == 0


def _heldout_bootstrap(prep: _Prepared, sel: np.ndarray, config: AllocationConfig, statistic) -> list | None:
    """The cheap interval of a held-out score: the probes stay as trained, the held-out frames selected by `sel`
    are resampled in their utterances' blocks (`_Prepared.heldout_block`, seeded by `split_seed`).

    statistic(w, block): the score of one resample, from the per-block weights w (how often each block is
    drawn) and the selected frames' blocks; None or NaN skips the resample. Returns the 95% percentile
    interval, or None with fewer than 2 blocks (or no resample counted)."""
    groups = int(prep.heldout_block.max()) + 1
    block = prep.heldout_block[sel]
    return _percentile_interval(
        [v for w in _block_resamples(config, groups) if (v := statistic(w, block)) is not None]
    )


def _weighted_mean(values: np.ndarray, block: np.ndarray, w: np.ndarray) -> float | None:
    n = float(w @ np.bincount(block, minlength=len(w)))
    return float(w @ np.bincount(block, weights=values, minlength=len(w))) / n if n > 0 else None


def _pai(prep: _Prepared, phonemes: np.ndarray, config: AllocationConfig) -> dict[str, Any]:
    ln_base = math.log(config.log_base)
    held = prep.heldout
    classes = np.unique(phonemes[~held])
    seen = np.isin(phonemes, classes)
    dropped = int((held & ~seen).sum())
    if dropped:
        logger.info("PAI: dropped %d held-out frames whose phoneme is unseen in training", dropped)
    y = torch.from_numpy(np.searchsorted(classes, np.where(seen, phonemes, classes[0])))
    data = ProbeData(y, dense=prep.z)
    sel = held & seen
    test = _select(data, sel)

    h_p = entropy(_entropy_frames(phonemes, held, seen, config.entropy_split), config.log_base)
    probe = train_probe(
        _select(data, prep.fit), len(classes), validation=_select(data, prep.validation), config=config.probe
    )
    losses = probe_losses(probe, test, config.probe.eval_batch_size) / ln_base
    ce = float(losses.mean()) if len(losses) else float("nan")
    ce_prior = _marginal_cross_entropy(y[torch.from_numpy(prep.fit)], test.labels, len(classes)) / ln_base
    pai_bits = h_p - ce
    out = {
        "pai_bits": pai_bits,
        "pai_normalised": pai_bits / h_p if h_p > 0 else float("nan"),
        "h_p": h_p,
        "ce_p_given_z": ce,
        "ce_p_prior": ce_prior,
        "pai_stopped_at_start": _stopped_at_start(probe),
        "n_phoneme_classes": len(classes),
        "n_pai_heldout_dropped": dropped,
    }
    if config.bootstrap_resamples:
        # H(P) is re-estimated in each resample when it is measured on the held-out frames (entropy_split)
        y_held = test.labels.numpy()
        k = len(classes)

        def pai_of(w: np.ndarray, block: np.ndarray, normalised: bool) -> float | None:
            ce_w = _weighted_mean(losses, block, w)
            if ce_w is None:
                return None
            h = h_p
            if config.entropy_split == "heldout":
                counts = w @ np.bincount(block * k + y_held, minlength=len(w) * k).reshape(len(w), k)
                h = _entropy_of_counts(counts, config.log_base)
            if normalised:
                return (h - ce_w) / h if h > 0 else None
            return h - ce_w

        out["pai_ci95"] = _heldout_bootstrap(prep, sel, config, lambda w, b: pai_of(w, b, False))
        out["pai_normalised_ci95"] = _heldout_bootstrap(prep, sel, config, lambda w, b: pai_of(w, b, True))
    return out


def _encode_units(
    units: np.ndarray, heldout: np.ndarray, config: AllocationConfig
) -> tuple[np.ndarray, np.ndarray, int]:
    """Map units to 0..K-1 by the unseen/rare policy; return (codes, keep mask, K)."""
    uniq, counts = np.unique(units[~heldout], return_counts=True)
    known = uniq[counts >= config.min_unit_count]
    if config.max_unit_classes is not None and len(known) > config.max_unit_classes:
        known_counts = counts[counts >= config.min_unit_count]
        top = np.lexsort((known, -known_counts))[: config.max_unit_classes]  # by count desc, then id
        known = np.sort(known[top])
    is_known = np.isin(units, known)
    codes = np.searchsorted(known, np.where(is_known, units, known[0] if len(known) else 0))
    if config.unseen_units == "unk":
        codes = np.where(is_known, codes, len(known))  # <unk> = the last class
        return codes, np.ones(len(units), dtype=bool), len(known) + 1
    return codes, is_known, len(known)


def _onehot_scale(
    codes: np.ndarray, n_categories: int, train: np.ndarray, config: AllocationConfig
) -> np.ndarray:
    """Per-category value of a z-scored one-hot input (see `AllocationConfig.standardize`).

    Column k of a z-scored one-hot is (1[c=k] - f_k) / sd_k with training frequency f_k; the offset is a
    constant the probe's bias absorbs, so only the scale 1/sd_k remains (1 for a category never or always
    seen in training, and for every category without standardisation)."""
    freq = np.bincount(codes[train], minlength=n_categories)[:n_categories] / max(1, int(train.sum()))
    sd = np.sqrt(freq * (1.0 - freq))
    return 1.0 / np.where(sd > 0, sd, 1.0) if config.standardize else np.ones(n_categories)


def _phoneme_inputs(phonemes: np.ndarray, prep: _Prepared, config: AllocationConfig):
    """Category codes of onehot(P) as a probe input, their number and scales.

    Training phonemes get 0..K-1; a held-out phoneme unseen in training gets K with scale 0 (zero one-hot).
    """
    train = ~prep.heldout
    classes = np.unique(phonemes[train])
    seen = np.isin(phonemes, classes)
    codes = np.where(seen, np.searchsorted(classes, np.where(seen, phonemes, classes[0])), len(classes))
    scale = _onehot_scale(codes, len(classes), train, config)
    return torch.from_numpy(codes), len(classes) + 1, torch.from_numpy(np.r_[scale, 0.0])


def _pronunciation_inputs(pronunciations: np.ndarray, prep: _Prepared, config: AllocationConfig):
    """Category codes of onehot(unit pronunciation) as a probe input, their number and scales.

    Pronunciations are pooled as `_encode_units` pools units: those seen in training at least `min_unit_count`
    times (the `max_unit_classes` most frequent) are classes; all others, held-out ones unseen in training
    included, share one last class."""
    codes, _, n = _encode_units(pronunciations, prep.heldout, replace(config, unseen_units="unk"))
    return torch.from_numpy(codes), n, torch.from_numpy(_onehot_scale(codes, n, ~prep.heldout, config))


def _semantic_gain(
    prep: _Prepared,
    units: torch.Tensor,
    keep: np.ndarray,
    n_units: int,
    condition: tuple[torch.Tensor, int, torch.Tensor],
    config: AllocationConfig,
) -> dict[str, Any]:
    """CE(S | C) - CE(S | [C, Z]) on the held-out frames kept, for the categorical condition C given as
    (codes, number of categories, scales); with its per-frame cheap interval and the early-stopping flag.

    The [C, Z] probe starts from the fitted C-only probe (Z weights 0), so with early stopping it can only
    improve on it by the validation CE: Z that adds nothing gives a gain of exactly 0 (flagged
    `stopped_at_start`) instead of a negative overfitting artefact."""
    ln_base = math.log(config.log_base)
    cats, n_cat, cat_scale = condition
    sel = prep.heldout & keep
    losses, probe = [], None
    for dense in (None, prep.z):
        data = ProbeData(units, dense=dense, categories=cats)
        probe = train_probe(
            _select(data, prep.fit & keep),
            n_units,
            num_categories=n_cat,
            category_scale=cat_scale,
            validation=_select(data, prep.validation & keep),
            config=config.probe,
            init=probe,
        )
        losses.append(probe_losses(probe, _select(data, sel), config.probe.eval_batch_size) / ln_base)
    mean = [float(x.mean()) if len(x) else float("nan") for x in losses]
    out = {
        "gain": mean[0] - mean[1],
        "ce": mean[0],
        "ce_z": mean[1],
        "stopped_at_start": _stopped_at_start(probe),
    }
    if config.bootstrap_resamples:
        diff = losses[0] - losses[1]  # paired: the same frames under both probes
        out["ci95"] = _heldout_bootstrap(prep, sel, config, lambda w, b: _weighted_mean(diff, b, w))
    return out


def _csai(
    prep: _Prepared,
    phonemes: np.ndarray,
    units: np.ndarray,
    config: AllocationConfig,
    pronunciations: np.ndarray | None = None,
) -> dict[str, Any]:
    held = prep.heldout
    codes, keep, n_units = _encode_units(units, held, config)
    dropped = int((held & ~keep).sum())
    if dropped:
        logger.info("CSAI: dropped %d held-out frames whose unit is unseen/rare in training", dropped)
    if n_units == 0:
        raise ValueError("no unit class is seen in the training split")
    s = torch.from_numpy(codes)

    def named(gain: dict[str, Any], score: str, ce: str, ce_z: str) -> dict[str, Any]:
        out = {score: gain["gain"], ce: gain["ce"], ce_z: gain["ce_z"]}
        out[score.removesuffix("_bits") + "_stopped_at_start"] = gain["stopped_at_start"]
        if "ci95" in gain:
            out[score.removesuffix("_bits") + "_ci95"] = gain["ci95"]
        return out

    out: dict[str, Any] = {}
    if pronunciations is not None:
        condition = _pronunciation_inputs(pronunciations, prep, config)
        gain = _semantic_gain(prep, s, keep, n_units, condition, config)
        out.update(named(gain, "csai_bits", "ce_s_given_pron", "ce_s_given_pron_z"))
        out["n_pronunciation_classes"] = condition[1]
    else:
        out["csai_bits"] = None  # needs the units' pronunciations
    gain = _semantic_gain(prep, s, keep, n_units, _phoneme_inputs(phonemes, prep, config), config)
    out.update(named(gain, "csai_frame_bits", "ce_s_given_p", "ce_s_given_pz"))
    out.update(
        {
            "h_s": entropy(_entropy_frames(codes, held, keep, config.entropy_split), config.log_base),
            "n_unit_classes": n_units,
            "n_csai_heldout_dropped": dropped,
        }
    )
    return out


def _split_counts(prep: _Prepared) -> dict[str, int]:
    return {
        "n_frames": prep.n_frames,
        "dim": prep.dim,
        "n_train_frames": int((~prep.heldout).sum()),
        "n_validation_frames": int(prep.validation.sum()),
        "n_heldout_frames": int(prep.heldout.sum()),
    }


def pai(
    encoder_states: Any,
    phonemes: Any,
    utterance_ids: Any,
    config: AllocationConfig | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Phonetic accessible information PAI = H(P) - CE(P | Z) with a linear probe, held out by utterance.

    Returns pai_bits (per frame, in `log_base` units), pai_normalised = PAI / H(P), h_p, ce_p_given_z,
    ce_p_prior (train marginal's CE on held-out frames: the V-information null model) and split counts.
    Options: any `AllocationConfig` or `ProbeConfig` field, e.g. log_base=2, heldout_fraction=0.2, epochs=4.
    """
    config = resolve_config(config, **options)
    prep = _prepare(encoder_states, utterance_ids, config)
    p = _labels_1d(phonemes, "phonemes", prep.n_frames)
    with _torch_threads(config.probe.num_threads):
        scores = _pai(prep, p, config)
    return {**scores, **_split_counts(prep), "log_base": config.log_base}


def csai(
    encoder_states: Any,
    phonemes: Any,
    units: Any,
    utterance_ids: Any,
    config: AllocationConfig | None = None,
    *,
    pronunciations: Any | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Conditional semantic accessible information, in two definitions (all probes linear, trained and
    held out on the same frames, split by utterance):

    - csai_bits = CE(S | onehot pron) - CE(S | [onehot pron, Z]), pron = the pronunciation of the frame's unit
      (`pronunciations`: one id per frame, the same for every frame of a unit with the same phoneme string):
      what Z tells about the unit beyond how it sounds (which of two homophones was said). None without
      `pronunciations`.
    - csai_frame_bits = CE(S | onehot P) - CE(S | [onehot P, Z]), conditioned on the frame's own phoneme
      only: an encoder that knows the neighbouring phonemes scores here too.

    Returns those, their CEs (ce_s_given_pron, ce_s_given_pron_z, ce_s_given_p, ce_s_given_pz), h_s, the
    intervals csai_ci95 and csai_frame_ci95, the flags csai_stopped_at_start / csai_frame_stopped_at_start
    and counts. Options as for `pai` (plus unseen_units, min_unit_count, max_unit_classes).
    """
    config = resolve_config(config, **options)
    prep = _prepare(encoder_states, utterance_ids, config)
    p = _labels_1d(phonemes, "phonemes", prep.n_frames)
    s = _labels_1d(units, "units", prep.n_frames)
    pron = None if pronunciations is None else _labels_1d(pronunciations, "pronunciations", prep.n_frames)
    with _torch_threads(config.probe.num_threads):
        scores = _csai(prep, p, s, config, pron)
    return {**scores, **_split_counts(prep), "log_base": config.log_base}


def _percentile_interval(values: list[float], level: float = 0.95) -> list[float] | None:
    values = sorted(v for v in values if math.isfinite(v))
    if len(values) < 2:
        return None
    tail = (1.0 - level) / 2.0
    last = len(values) - 1
    return [values[int(math.floor(tail * last))], values[int(math.ceil((1.0 - tail) * last))]]


def utterance_blocks(utterance_ids: np.ndarray, groups: int) -> np.ndarray:
    """Per-frame bootstrap block: the utterances dealt round robin, in order of first appearance, into
    min(groups, number of utterances) blocks (so with fewer utterances than blocks each utterance is one)."""
    _, first, inverse = np.unique(utterance_ids, return_index=True, return_inverse=True)
    if len(first) == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(np.argsort(first))  # utterance rank by first appearance
    return order[inverse.reshape(-1)] % min(groups, len(first))


def _block_resamples(config: AllocationConfig, groups: int):
    """Seeded bootstrap draws: for each of `config.bootstrap_resamples` resamples, how many times each of
    `groups` blocks is drawn (as many draws as blocks, with replacement). Nothing with fewer than 2 blocks."""
    if groups < 2:
        return
    rng = np.random.default_rng(config.split_seed)
    for _ in range(config.bootstrap_resamples):
        yield np.bincount(rng.integers(0, groups, groups), minlength=groups)


def grouped_bootstrap(
    z: torch.Tensor, utterance_ids: Any, reference: torch.Tensor | None, config: AllocationConfig
) -> dict[str, list[float] | None]:
    """`nse_ci95` (and, with a reference, `cka_ci95`): 95% percentile intervals from a bootstrap over utterances
    dealt round robin, in order of first appearance, into `config.bootstrap_groups` blocks. Each block keeps its
    frames' count, sum and sum of outer products (and of cross products with the reference), so a resample (as
    many blocks as there are, drawn with replacement, seeded by `split_seed`) costs one eigendecomposition, not
    a pass over the frames, and memory stays at blocks x d^2. Resampling blocks rather than single utterances
    keeps the frames of an utterance together, as the data were drawn; with fewer utterances than blocks, each
    utterance is a block. None when there are fewer than two blocks."""
    ids = np.asarray(_to_numpy(utterance_ids) if isinstance(utterance_ids, torch.Tensor) else utterance_ids)
    ids = ids.reshape(-1)
    if len(ids) != z.shape[0]:
        raise ValueError(f"utterance_ids has {len(ids)} entries but there are {z.shape[0]} frames")
    block = utterance_blocks(ids, config.bootstrap_groups)
    groups = int(block.max()) + 1
    out: dict[str, list[float] | None] = {"nse_ci95": None}
    if reference is not None:
        out["cka_ci95"] = None
    if groups < 2:
        return out
    parts = []
    for g in range(groups):
        rows = torch.from_numpy(np.flatnonzero(block == g))
        acc = CKAAccumulator(config.compute_dtype) if reference is not None else None
        cov = acc.x if acc is not None else CovarianceAccumulator(config.compute_dtype)
        for start in range(0, len(rows), config.chunk_size):
            sl = rows[start : start + config.chunk_size]
            if acc is not None:
                acc.update(
                    z.index_select(0, sl.to(z.device)), reference.index_select(0, sl.to(reference.device))
                )
            else:
                cov.update(z.index_select(0, sl.to(z.device)))
        parts.append((cov, acc))
    # one shift for all blocks: re-centre each block's sums on the first block's shift
    shift_x = parts[0][0].shift
    shift_y = parts[0][1].y.shift if reference is not None else None

    def moments(acc: CovarianceAccumulator, shift: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
        d = acc.shift - shift
        s = acc._sum + acc.n * d
        o = acc._outer + np.outer(acc._sum, d) + np.outer(d, acc._sum) + acc.n * np.outer(d, d)
        return acc.n, s, o

    xs = [moments(cov, shift_x) for cov, _ in parts]
    ys = [moments(acc.y, shift_y) for _, acc in parts] if reference is not None else None
    cross = []
    if reference is not None:
        for _, acc in parts:
            dx, dy = acc.x.shift - shift_x, acc.y.shift - shift_y
            # sum (y - sy0)(x - sx0)^T from the block's own shifts: cross + sum_y dx^T + dy sum_x^T + n dy dx^T
            c = acc._cross + np.outer(acc.y._sum, dx) + np.outer(dy, acc.x._sum) + acc.n * np.outer(dy, dx)
            cross.append(c)
    nses, ckas = [], []
    for w in _block_resamples(config, groups):
        x = _combined(xs, w, shift_x, config.compute_dtype)
        if x.n < 2:
            continue
        nses.append(x.nse())
        if reference is not None:
            both = CKAAccumulator(config.compute_dtype)
            both.x, both.y = x, _combined(ys, w, shift_y, config.compute_dtype)
            both._cross = sum(wi * c for wi, c in zip(w, cross) if wi)
            ckas.append(both.cka())
    out["nse_ci95"] = _percentile_interval(nses)
    if reference is not None:
        out["cka_ci95"] = _percentile_interval(ckas)
    return out


def _combined(
    moments: list, weights: np.ndarray, shift: np.ndarray, compute_dtype: str
) -> CovarianceAccumulator:
    """A CovarianceAccumulator holding the blocks' moments, block b counted `weights[b]` times."""
    acc = CovarianceAccumulator(compute_dtype)
    acc.shift = shift
    acc.n = int(sum(w * m[0] for w, m in zip(weights, moments)))
    acc._sum = sum(w * m[1] for w, m in zip(weights, moments) if w)
    acc._outer = sum(w * m[2] for w, m in zip(weights, moments) if w)
    return acc


def entropy_allocation_scores(
    encoder_states: Any,
    phonemes: Any,
    units: Any,
    utterance_ids: Any,
    reference_states: Any | None = None,
    config: AllocationConfig | None = None,
    *,
    pronunciations: Any | None = None,
    **options: Any,
) -> dict[str, Any]:
    """All encoder-side entropy-allocation metrics over pooled frames.

    encoder_states: (N, d) frames; phonemes, units: (N,) int labels per frame; utterance_ids: (N,) str or
    int per frame (the held-out split is by utterance); reference_states: optional (N, d') frames of a
    reference encoder on the same frames, adds `cka` (and `nse_reference`); pronunciations: optional (N,) int
    id of the pronunciation of each frame's unit, needed for the headline `csai_bits` (see `csai`).
    Options: any `AllocationConfig` / `ProbeConfig` field. Returns nse, spectral_entropy, pai_bits,
    pai_normalised, csai_bits, csai_frame_bits, h_p, ce_p_given_z, ce_p_prior, ce_s_given_pron,
    ce_s_given_pron_z, ce_s_given_p, ce_s_given_pz, h_s, the 95% intervals (`*_ci95`), the early-stopping
    flags (`*_stopped_at_start`), n_frames, dim, split counts, log_base and, with reference_states, cka and
    nse_reference. Entropies are in `log_base` units per frame.
    """
    config = resolve_config(config, **options)
    z = _as_matrix(encoder_states, "encoder_states")
    out: dict[str, Any] = {}
    if reference_states is not None:
        ref = _as_matrix(reference_states, "reference_states")
        if ref.shape[0] != z.shape[0]:
            raise ValueError(f"reference_states has {ref.shape[0]} frames, encoder_states {z.shape[0]}")
        acc = CKAAccumulator(config.compute_dtype)
        for start in range(0, z.shape[0], config.chunk_size):
            acc.update(z[start : start + config.chunk_size], ref[start : start + config.chunk_size])
        cov = acc.x
        out["cka"] = acc.cka()
        out["nse_reference"] = acc.y.nse()
    else:
        cov = CovarianceAccumulator(config.compute_dtype)
        for start in range(0, z.shape[0], config.chunk_size):
            cov.update(z[start : start + config.chunk_size])
    out["nse"] = cov.nse()
    out["spectral_entropy"] = cov.spectral_entropy(config.log_base)
    if config.bootstrap_resamples:
        ref = _as_matrix(reference_states, "reference_states") if reference_states is not None else None
        out.update(grouped_bootstrap(z, utterance_ids, ref, config))

    prep = _prepare(z, utterance_ids, config)
    p = _labels_1d(phonemes, "phonemes", prep.n_frames)
    s = _labels_1d(units, "units", prep.n_frames)
    pron = None if pronunciations is None else _labels_1d(pronunciations, "pronunciations", prep.n_frames)
    with _torch_threads(config.probe.num_threads):
        out.update(_pai(prep, p, config))
        out.update(_csai(prep, p, s, config, pron))
    out.update(_split_counts(prep))
    out["log_base"] = config.log_base
    return out
