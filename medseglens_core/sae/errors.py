"""Typed errors of the SAE package.

The service maps :class:`~medseglens_core.errors.InvalidInput` to 422 and
:class:`~medseglens_core.errors.NotFound` to 404.
"""

from __future__ import annotations

from medseglens_core.errors import InvalidInput, MedSegLensError, NotFound

__all__ = [
    "CorruptSAE",
    "DuplicateSAEArchitecture",
    "InvalidSAEConfig",
    "NoActivations",
    "SAENotFound",
    "UnknownSAEArchitecture",
]


class InvalidSAEConfig(InvalidInput):
    """An SAE config field is out of range or inconsistent with another field."""


class UnknownSAEArchitecture(NotFound):
    """The requested SAE architecture is not registered."""


class DuplicateSAEArchitecture(MedSegLensError):
    """Two SAE classes tried to register under the same name (a programming error)."""


class SAENotFound(NotFound):
    """An SAE directory lacks ``cfg.json`` or ``sae_weights.safetensors``."""


class CorruptSAE(InvalidInput):
    """Stored SAE weights do not match their card's checksum or their config's shapes."""


class NoActivations(InvalidInput):
    """An activation shard set is empty or unreadable, so there is nothing to train on."""
