"""medseglens_core.sae: sparse autoencoders on segmentation-model activations.

Public API (see docs/ARCHITECTURE.md): :func:`build_sae` / :class:`SAEConfig` / :class:`SAE`,
:func:`collect_activations` -> :class:`ActivationShards`, :func:`train_sae`,
:func:`reconstruction_metrics`, :func:`splice_fidelity`, :func:`save_sae` / :func:`load_sae`,
and :func:`train_sae_for_model` (collect + train + evaluate + save).
"""

from medseglens_core.sae.base import SAE, SAEConfig, build_sae, register_sae, registered_architectures
from medseglens_core.sae.collect import collect_activations
from medseglens_core.sae.fidelity import splice_fidelity, spliced_forward
from medseglens_core.sae.io import load_sae, save_sae
from medseglens_core.sae.metrics import reconstruction_metrics
from medseglens_core.sae.pipeline import train_sae_for_model
from medseglens_core.sae.shards import ActivationShards, ShardWriter
from medseglens_core.sae.train import train_sae

__all__ = [
    "SAE",
    "ActivationShards",
    "SAEConfig",
    "ShardWriter",
    "build_sae",
    "collect_activations",
    "load_sae",
    "reconstruction_metrics",
    "register_sae",
    "registered_architectures",
    "save_sae",
    "splice_fidelity",
    "spliced_forward",
    "train_sae",
    "train_sae_for_model",
]
