"""The shared base of the 2-D segmentation models and their registry.

A :class:`SegModel` maps ``(B, 4, H, W)`` float32 slices (channels in ``MODALITIES`` order,
z-scored inside the brain) to logits ``(B, 4, H, W)`` over the BraTS 2023 labels
(0 background, 1 NCR, 2 SNFH, 3 ET). Each architecture lives in its own module, holds its
config dataclass and its class, names its hook points in ONE place (:meth:`SegModel.hook_module`)
and registers itself here under a unique name.

Interventions re-run only the part of the network after the hook point:
``p = model.run_prefix(x, hook)`` caches everything the rest of the network needs and
``model.run_suffix(p, h)`` finishes the forward pass from an (edited) activation ``h``.
``run_suffix(p, p.h)`` equals ``forward(x)`` bit for bit in eval mode.

Precision: a model runs in float32 unless :meth:`SegModel.set_precision` names ``bf16`` (CPU or
CUDA) or ``fp16`` (CUDA only); then ``forward``, ``run_prefix`` and ``run_suffix`` run under
``torch.autocast`` with that dtype, and return what autocast gives (logits and ``Prefix.h`` in
the low dtype; callers take ``.float()``). ``run_suffix`` casts an edited activation back to
``prefix.h``'s dtype, so ``run_suffix(p, p.h.float())`` still equals ``forward(x)`` bit for bit
and an empty edit made in float32 reproduces the prediction. SAE codes stay float32/float64:
the SAE casts its input (``SAE.pre_acts``). Training ignores the setting (it has its own
autocast on CUDA).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import torch
from torch import nn

from medseglens_core.errors import InvalidInput, NotFound

NUM_CHANNELS = 4
NUM_CLASSES = 4
# Network precisions: the autocast dtype of each (None: plain float32).
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: str | torch.device | None = None) -> str:
    """``precision`` if it is one of :data:`PRECISIONS` (and, with ``device``, runs there: fp16
    needs CUDA), else :class:`InvalidInput`."""
    if precision not in PRECISIONS:
        raise InvalidInput(f"unknown precision {precision!r}; choose one of {sorted(PRECISIONS)}")
    if device is not None and precision == "fp16" and torch.device(device).type != "cuda":
        raise InvalidInput(f"precision fp16 needs a CUDA device (the device is {device}); use bf16 on CPU")
    return precision


def _under_autocast(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``forward`` / ``run_prefix`` run under the model's autocast."""

    @functools.wraps(fn)
    def wrapper(self: SegModel, *args: Any, **kwargs: Any) -> Any:
        if self.precision == "fp32":
            return fn(self, *args, **kwargs)
        with self.autocast():
            return fn(self, *args, **kwargs)

    return wrapper


def _suffix_under_autocast(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``run_suffix`` under the model's autocast, with ``h`` cast to ``prefix.h``'s dtype."""

    @functools.wraps(fn)
    def run_suffix(self: SegModel, prefix: Prefix, h: torch.Tensor) -> torch.Tensor:
        if self.precision == "fp32":
            return fn(self, prefix, h)
        with self.autocast():
            return fn(self, prefix, h.to(prefix.h.dtype))

    return run_suffix


@dataclass(frozen=True)
class Prefix:
    """The cached state of a forward pass stopped at a hook point.

    Attributes:
        hook: the hook point name.
        h: the activation at the hook, ``(B, C, h, w)``.
        cache: tensors the suffix needs besides ``h`` (encoder skips, earlier stage outputs),
            in an architecture-defined order; treat as opaque.
        out_size: ``(H, W)`` of the input, the spatial size of the logits.
    """

    hook: str
    h: torch.Tensor
    cache: tuple[torch.Tensor, ...]
    out_size: tuple[int, int]


@dataclass(frozen=True)
class BaseConfig:
    """Fields every architecture shares.

    Attributes:
        input_size: side of the square input slices the model is trained on, pixels.
        in_channels: input channels (4: t1n, t1c, t2w, t2f).
        num_classes: output classes (4: BraTS 2023 labels 0..3).
    """

    input_size: int = 96
    in_channels: int = NUM_CHANNELS
    num_classes: int = NUM_CLASSES


class SegModel(nn.Module):
    """Base class: a 2-D slice segmentation network with named hook points.

    Subclasses set ``arch``, ``config_cls`` and implement ``forward``, ``hook_module``,
    ``run_prefix`` and ``run_suffix``.
    """

    arch: ClassVar[str] = ""
    config_cls: ClassVar[type[BaseConfig]] = BaseConfig
    default_hook: ClassVar[str] = ""

    def __init__(self, cfg: BaseConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.precision = "fp32"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, wrap in (("forward", _under_autocast), ("run_prefix", _under_autocast)):
            if name in cls.__dict__:
                setattr(cls, name, wrap(cls.__dict__[name]))
        if "run_suffix" in cls.__dict__:
            cls.run_suffix = _suffix_under_autocast(cls.__dict__["run_suffix"])

    def set_precision(self, precision: str) -> SegModel:
        """Run the network in ``precision`` (``fp32``, ``bf16``, ``fp16``; module doc); returns self."""
        self.precision = check_precision(precision)
        return self

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """``torch.autocast`` for :attr:`precision` on the weights' device (nothing for fp32)."""
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            yield
            return
        device = next(self.parameters()).device
        check_precision(self.precision, device)
        with torch.autocast(device.type, dtype=dtype):
            yield

    @classmethod
    def from_config(cls, **config: Any) -> SegModel:
        """Build from keyword config; unknown keys raise :class:`InvalidInput`."""
        known = {f.name for f in fields(cls.config_cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise InvalidInput(f"unknown {cls.arch} config keys {unknown}; accepted keys are {sorted(known)}")
        return cls(cls.config_cls(**config))

    @property
    def config(self) -> dict[str, Any]:
        """The JSON-serialisable config that rebuilds this model with :func:`build_model`."""
        out = asdict(self.cfg)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @property
    def hook_points(self) -> tuple[str, ...]:
        """Names of the hook points, in forward order."""
        raise NotImplementedError

    def hook_module(self, hook: str) -> nn.Module:
        """The module whose output is the activation at ``hook`` (the one place naming them)."""
        raise NotImplementedError

    def check_hook(self, hook: str) -> None:
        """Raise :class:`NotFound` unless ``hook`` is one of :attr:`hook_points`."""
        if hook not in self.hook_points:
            raise NotFound(f"{self.arch} has no hook point {hook!r}; choose one of {list(self.hook_points)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B,4,H,W) -> (B,4,H,W)
        raise NotImplementedError

    def run_prefix(self, x: torch.Tensor, hook: str) -> Prefix:
        """Run ``x`` ``(B, 4, H, W)`` up to and including ``hook``; cache what the suffix needs."""
        raise NotImplementedError

    def run_suffix(self, prefix: Prefix, h: torch.Tensor) -> torch.Tensor:
        """Finish the forward pass from activation ``h`` (same shape as ``prefix.h``) -> logits."""
        raise NotImplementedError

    def _check_suffix_input(self, prefix: Prefix, h: torch.Tensor) -> None:
        if h.shape != prefix.h.shape:
            raise InvalidInput(
                f"activation for {prefix.hook} has shape {tuple(h.shape)}, expected {tuple(prefix.h.shape)}"
            )


_REGISTRY: dict[str, type[SegModel]] = {}


def register(name: str) -> Callable[[type[SegModel]], type[SegModel]]:
    """Class decorator adding an architecture to the registry; a duplicate name raises."""

    def deco(cls: type[SegModel]) -> type[SegModel]:
        if name in _REGISTRY:
            raise InvalidInput(f"segmentation architecture {name!r} is already registered")
        cls.arch = name
        _REGISTRY[name] = cls
        return cls

    return deco


def architectures() -> tuple[str, ...]:
    """Registered architecture names, sorted."""
    return tuple(sorted(_REGISTRY))


def build_model(arch: str, **config: Any) -> SegModel:
    """Build a freshly initialised model of architecture ``arch`` ("segformer" or "unet").

    ``config`` holds the architecture's config fields (e.g. ``input_size=96``, ``variant="b1"``).
    Weights are random (seeded by the caller's ``torch.manual_seed``); nothing is downloaded.
    """
    if arch not in _REGISTRY:
        raise NotFound(f"unknown architecture {arch!r}; choose one of {list(architectures())}")
    return _REGISTRY[arch].from_config(**config)
