"""Objects a worker keeps loaded between jobs: imported libraries, models and SAEs.

RQ's default worker forks a fresh child per job, so every job would re-import torch and reload
its weights (seconds each). Our worker runs jobs in its own process (see
:mod:`service.jobs.worker`), so what is imported or loaded here once stays warm.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("medseglens.jobs")

# Imported once at worker start so the first job does not pay for them.
WARM_MODULES = (
    "torch",
    "medseglens_core.models",
    "medseglens_core.sae",
    "medseglens_core.analysis",
    "medseglens_core.interventions",
)


class ResidentResources:
    """A small thread-safe LRU of loaded objects keyed by ``(kind, path, device)``.

    ``max_items`` (default 4) bounds how many models/SAEs stay resident; the least recently
    used is dropped first.
    """

    def __init__(self, max_items: int = 4) -> None:
        self.max_items = max_items
        self._items: OrderedDict[tuple[str, str, str], Any] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0  # how many loads actually happened (cache misses)

    def get(self, kind: str, path: Path, device: str, loader: Callable[[Path, str], Any]) -> Any:
        """The object at ``path`` on ``device``, loaded with ``loader(path, device)`` on first use."""
        key = (kind, str(Path(path).resolve()), device)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        obj = loader(Path(path), device)
        with self._lock:
            self._items[key] = obj
            self.loads += 1
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)
        return obj

    def model(self, model_dir: Path, device: str) -> tuple[Any, dict[str, Any]]:
        """``(SegModel, card)`` from ``model_dir`` (``medseglens_core.models.load_model``), kept resident."""

        def load(path: Path, dev: str) -> tuple[Any, dict[str, Any]]:
            from medseglens_core.models import load_model

            model, card = load_model(path, device=dev)
            model.eval()
            return model, card

        return self.get("model", model_dir, device, load)

    def sae(self, sae_dir: Path, device: str) -> tuple[Any, dict[str, Any]]:
        """``(SAE, card)`` from ``sae_dir`` (``medseglens_core.sae.load_sae``), kept resident."""

        def load(path: Path, dev: str) -> tuple[Any, dict[str, Any]]:
            from medseglens_core.sae import load_sae

            sae, card = load_sae(path)
            return sae.to(dev).eval(), card

        return self.get("sae", sae_dir, device, load)

    def clear(self) -> None:
        """Drop everything (tests, or a worker asked to free GPU memory)."""
        with self._lock:
            self._items.clear()


def warm_imports(modules: tuple[str, ...] = WARM_MODULES) -> dict[str, float]:
    """Import ``modules`` now; returns seconds per module (a missing optional module is skipped)."""
    seconds: dict[str, float] = {}
    for name in modules:
        start = time.perf_counter()
        try:
            importlib.import_module(name)
        except ImportError as exc:
            log.warning("warm-up: cannot import %s: %s", name, exc)
            continue
        seconds[name] = round(time.perf_counter() - start, 3)
    return seconds
