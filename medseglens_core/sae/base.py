"""The SAE config, the shared SAE base class and the architecture registry.

Layout follows SAELens: ``W_enc (d_in, d_sae)``, ``W_dec (d_sae, d_in)`` with unit-norm ROWS
(each row is one latent's dictionary direction), ``b_enc (d_sae,)``, ``b_dec (d_in,)`` and a
``threshold (d_sae,)`` buffer (used by BatchTopK at inference, JumpReLU-style).

Inputs are scaled by one fixed scalar ``cfg.activation_scale`` (estimated once from data so
that the mean squared norm of scaled tokens equals ``d_in``) before encoding; :meth:`SAE.decode`
returns reconstructions in the ORIGINAL, unscaled units. All weights live in the scaled space.

A variant module supplies only what differs (its training-time selection, its inference
activation, whether it uses the aux-k or L1 term); the shared training step lives in
:mod:`medseglens_core.sae.step`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import torch
from torch import nn

from medseglens_core.sae.errors import DuplicateSAEArchitecture, InvalidSAEConfig, UnknownSAEArchitecture

__all__ = ["SAE", "SAEConfig", "SparseCodes", "build_sae", "register_sae", "registered_architectures"]

_DECAYS = ("cosine", "linear", "none")
_B_DEC_INITS = ("geometric_median", "mean", "zeros")


@dataclass
class SAEConfig:
    """Everything needed to rebuild and retrain an SAE.

    Attributes:
        arch: registered architecture name: ``batchtopk`` (default), ``topk`` or ``relu``.
        d_in: token width (channels of the hooked activation).
        d_sae: number of latents (dictionary size), typically ``expansion * d_in``.
        k: active latents per token (TopK) or on average per token (BatchTopK). Unused by ReLU.
        l1_coeff: ReLU only: weight of the L1 penalty ``sum_j z_j * ||W_dec[j]||`` (mean over tokens).
        aux_k: TopK/BatchTopK: latents the aux-k loss may use among the dead ones, per token.
        aux_coeff: weight of the aux-k loss (reconstructing the residual with dead latents).
        liveness_window: a latent is dead when it has not fired in the last ``liveness_window`` training tokens.
        lr: peak Adam learning rate (in the scaled space).
        warmup: linear LR warm-up, in steps.
        decay: LR schedule after warm-up: ``cosine``, ``linear`` (both to ``min_lr_frac * lr``) or ``none``.
        min_lr_frac: final LR as a fraction of ``lr``.
        batch_size: training tokens per step.
        seed: seeds weight init, shard order and shuffling.
        threshold_momentum: BatchTopK: EMA momentum of the inference threshold, the running mean of
            the smallest positive activation selected per training batch.
        b_dec_init: ``geometric_median`` (Weiszfeld on a sample, default), ``mean`` or ``zeros``.
        activation_scale: fixed input scale factor; ``None`` until estimated from data.
    """

    arch: str = "batchtopk"
    d_in: int = 256
    d_sae: int = 2048
    k: int = 32
    l1_coeff: float = 1e-3
    aux_k: int = 256
    aux_coeff: float = 1.0 / 32.0
    liveness_window: int = 200_000
    lr: float = 1e-3
    warmup: int = 50
    decay: str = "cosine"
    min_lr_frac: float = 0.1
    batch_size: int = 4096
    seed: int = 0
    threshold_momentum: float = 0.99
    b_dec_init: str = "geometric_median"
    activation_scale: float | None = None

    def validate(self) -> SAEConfig:
        """Raise :class:`InvalidSAEConfig` on an out-of-range field; return ``self``."""
        positive = {"d_in": self.d_in, "d_sae": self.d_sae, "k": self.k, "batch_size": self.batch_size}
        for name, value in positive.items():
            if int(value) < 1:
                raise InvalidSAEConfig(f"SAE config field {name} must be >= 1, got {value}")
        if self.k > self.d_sae:
            raise InvalidSAEConfig(f"k={self.k} exceeds d_sae={self.d_sae}; lower k or raise the expansion")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise InvalidSAEConfig(f"lr must be a positive finite number, got {self.lr}")
        if min(self.l1_coeff, self.aux_coeff, self.aux_k, self.warmup, self.liveness_window) < 0:
            raise InvalidSAEConfig("l1_coeff, aux_coeff, aux_k, warmup and liveness_window must be >= 0")
        if self.decay not in _DECAYS:
            raise InvalidSAEConfig(f"decay must be one of {_DECAYS}, got {self.decay!r}")
        if self.b_dec_init not in _B_DEC_INITS:
            raise InvalidSAEConfig(f"b_dec_init must be one of {_B_DEC_INITS}, got {self.b_dec_init!r}")
        if not 0.0 <= self.threshold_momentum < 1.0 or not 0.0 <= self.min_lr_frac <= 1.0:
            raise InvalidSAEConfig("threshold_momentum must be in [0, 1) and min_lr_frac in [0, 1]")
        if self.activation_scale is not None and not (self.activation_scale > 0):
            raise InvalidSAEConfig(f"activation_scale must be > 0, got {self.activation_scale}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SAEConfig:
        """Build from a dict (e.g. ``cfg.json``); unknown keys raise :class:`InvalidSAEConfig`."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidSAEConfig(f"unknown SAE config keys {unknown}; known keys: {sorted(known)}")
        return cls(**data).validate()


@dataclass(frozen=True)
class SparseCodes:
    """Training-time codes of a batch in coordinate form, sorted by (row, col).

    Attributes:
        rows: ``(nnz,)`` int64 token index in the batch.
        cols: ``(nnz,)`` int64 latent index.
        vals: ``(nnz,)`` float activations (>= 0; zeros carry no gradient).
        n_rows: batch size B.
    """

    rows: torch.Tensor
    cols: torch.Tensor
    vals: torch.Tensor
    n_rows: int


class SAE(nn.Module):
    """Base sparse autoencoder. Subclasses set ``arch`` and implement the selection hooks."""

    arch: ClassVar[str] = ""
    uses_aux: ClassVar[bool] = True
    uses_l1: ClassVar[bool] = False

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__()
        self.cfg = cfg.validate()
        gen = torch.Generator().manual_seed(cfg.seed)
        w_dec = torch.randn(cfg.d_sae, cfg.d_in, generator=gen)
        w_dec /= w_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(w_dec)
        self.W_enc = nn.Parameter(w_dec.t().clone().contiguous())
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))
        self.register_buffer("threshold", torch.zeros(cfg.d_sae))
        self._select_hint: float | None = None
        self._threshold_updates = 0

    @property
    def scale(self) -> float:
        """The fixed input scale factor (1.0 until estimated)."""
        return 1.0 if self.cfg.activation_scale is None else float(self.cfg.activation_scale)

    # ----- inference -------------------------------------------------------------------------
    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder pre-activations of UNSCALED tokens ``x (N, d_in)`` -> ``(N, d_sae)`` float32.

        Computed in float64 and rounded to float32 so a token's value does not depend on which
        matmul kernel its batch size selects: encoding is batch-independent bit for bit.
        """
        if x.ndim != 2 or x.shape[1] != self.cfg.d_in:
            raise InvalidSAEConfig(f"expected tokens of shape (N, {self.cfg.d_in}), got {tuple(x.shape)}")
        xd = x.to(self.W_enc.device, torch.float64) * self.scale - self.b_dec.double()
        return torch.addmm(self.b_enc.double(), xd, self.W_enc.double()).float()

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        """Inference activation of pre-activations ``(N, d_sae)``; per-token (batch-independent)."""
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Codes ``z (N, d_sae)`` float32 of unscaled tokens ``x (N, d_in)``."""
        return self.activation(self.pre_acts(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``(N, d_in)`` in the original (unscaled) units of codes ``z (N, d_sae)``."""
        return (z.to(self.W_dec.dtype) @ self.W_dec + self.b_dec) / self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``decode(encode(x))`` for unscaled tokens ``x (N, d_in)``."""
        return self.decode(self.encode(x))

    # ----- training hooks (variants) ------------------------------------------------------------
    def chunk_candidates(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Candidate training codes of one chunk of tokens' pre-activations ``(r, d_sae)``.

        Returns flat row-major indices into the chunk (int64, increasing) and their values; a
        superset of the chunk's final codes (exactly them for per-token selections). Called by
        the fast step while the chunk is in cache (no autograd).
        """
        raise NotImplementedError

    def candidate_threshold(self) -> float | None:
        """The positive value this step's ``chunk_candidates`` keeps the entries above, where the
        candidates are exactly that (the fast step may then filter with a bf16 GEMM); ``None``
        for any other rule. Default ``None``."""
        return None

    def finish_selection(
        self, idx: torch.Tensor, vals: torch.Tensor, n_rows: int
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Final codes (flat indices into ``(n_rows, d_sae)``, values; order kept) from all the
        batch's candidates. ``None`` means the candidates were too few: the variant loosened its
        candidate rule and the chunks are to be scanned again. Default: candidates are final."""
        return idx, vals

    def select(self, pre: torch.Tensor) -> SparseCodes:
        """Training-time codes of a whole batch's pre-activations ``(B, d_sae)``, sorted by (row, col)."""
        from medseglens_core.sae.select import codes_from_flat

        while True:
            idx, vals = self.chunk_candidates(pre)
            done = self.finish_selection(idx, vals, pre.shape[0])
            if done is not None:
                return codes_from_flat(*done, pre.shape[0], pre.shape[1])

    def reference_codes(self, acts: torch.Tensor) -> torch.Tensor:
        """Training-time dense codes of ``relu(pre) (B, d_sae)``, straightforward (reference) path."""
        raise NotImplementedError

    def observe_codes(self, vals: torch.Tensor) -> None:
        """Called with the selected training activations of each step (BatchTopK: threshold EMA)."""

    # ----- constraints -----------------------------------------------------------------------------
    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Rescale every row of ``W_dec`` to unit L2 norm."""
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)

    @torch.no_grad()
    def remove_parallel_grad_(self) -> None:
        """Drop the component of ``W_dec.grad`` along each (unit) decoder row."""
        if self.W_dec.grad is not None:
            g = self.W_dec.grad
            g -= (g * self.W_dec).sum(dim=1, keepdim=True) * self.W_dec


_REGISTRY: dict[str, type[SAE]] = {}


def register_sae(cls: type[SAE]) -> type[SAE]:
    """Class decorator: register an SAE variant under ``cls.arch``; a duplicate name raises."""
    if not cls.arch:
        raise DuplicateSAEArchitecture(f"{cls.__name__} has no 'arch' name; set the class attribute")
    if cls.arch in _REGISTRY and _REGISTRY[cls.arch] is not cls:
        raise DuplicateSAEArchitecture(
            f"SAE architecture {cls.arch!r} is already registered by {_REGISTRY[cls.arch].__name__}"
        )
    _REGISTRY[cls.arch] = cls
    return cls


def registered_architectures() -> tuple[str, ...]:
    """Names of the registered SAE architectures, sorted."""
    _load_builtin_variants()
    return tuple(sorted(_REGISTRY))


def build_sae(cfg: SAEConfig) -> SAE:
    """Instantiate the SAE variant named by ``cfg.arch``."""
    _load_builtin_variants()
    if cfg.arch not in _REGISTRY:
        raise UnknownSAEArchitecture(
            f"unknown SAE architecture {cfg.arch!r}; choose one of {sorted(_REGISTRY)}"
        )
    return _REGISTRY[cfg.arch](cfg)


def _load_builtin_variants() -> None:
    # Importing the variant modules registers them (explicit list, no plugin discovery).
    from medseglens_core.sae import batchtopk, relu, topk  # noqa: F401
