"""The resident model pool: every zoo model and SAE loaded once, bounded blocking work per device.

- Loads ``ZOO/models/<id>/`` with ``medseglens_core.models.load_model`` and ``ZOO/saes/<id>/`` with
  ``medseglens_core.sae.load_sae``, moves them to the configured device and keeps them for the life
  of the process. A missing or empty zoo is tolerated (``/readyz`` then says not ready); an entry that
  fails to load is recorded in ``unavailable`` (its error, and its card when readable) and skipped,
  so one broken entry never keeps the others from serving. Before its loader runs, an entry's
  weights file is checked cheaply (:func:`check_entry`: the safetensors header parses and the file's
  sha256 matches the card's ``weights_sha256``).
- :meth:`ModelPool.require_model` / :meth:`ModelPool.require_sae` are the lookups routes use: 404
  for an unknown id, 503 ``zoo-entry-unavailable`` naming the entry and its error for a broken one.
  :meth:`ModelPool.entry_usable` is the same verdict for job submission (whose worker reads the entry
  from disk), with entries that appeared after loading checked once per version of their files.
- ``await pool.run(fn, *args, device=...)`` runs blocking work (inference) in a worker thread, at most
  ``concurrency`` calls at a time per device, so the event loop stays free.
- ``pool.prefix_cache`` is a byte-bounded LRU of prefix activations keyed by ``(volume_id, model_id)``
  so that interventions re-run only the network after the hook point.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from safetensors import SafetensorError, safe_open

from medseglens_core.checksums import sha256_file
from medseglens_core.errors import MedSegLensError
from service.errors import ResourceNotFound, ZooEntryUnavailable
from service.observability import Metrics

log = logging.getLogger("medseglens.pool")
T = TypeVar("T")
Loader = Callable[[Path], tuple[Any, dict]]
_LOAD_ERRORS = (
    MedSegLensError,
    SafetensorError,
    OSError,
    ValueError,
    RuntimeError,
    KeyError,
    ImportError,
    TypeError,
)
# Weights file of each kind when the card names none: ``medseglens_core.models.card.WEIGHTS`` and
# ``medseglens_core.sae.io.WEIGHTS`` (not imported: both pull in torch; a test keeps them equal).
WEIGHTS_FILES = {"model": "weights.safetensors", "sae": "sae_weights.safetensors"}
LISTS = {"model": "GET /v1/models", "sae": "GET /v1/saes"}


@dataclass
class Resident:
    """A loaded model or SAE: the object, its card (with ``id``) and the device it lives on."""

    id: str
    obj: Any
    card: dict[str, Any]
    device: str
    path: Path


@dataclass(frozen=True)
class Unavailable:
    """A zoo entry present on disk that cannot serve: why (``error``) and its card (``{}`` if unreadable)."""

    id: str
    kind: str
    error: str
    card: dict[str, Any]


class CorruptZooEntry(ValueError):
    """A zoo entry's card or weights file is unreadable or does not match its recorded checksum."""


def read_card(path: Path) -> dict[str, Any]:
    """``path/card.json`` as a dict; :class:`CorruptZooEntry` when it is not a JSON object."""
    try:
        card = json.loads((path / "card.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptZooEntry(f"card.json of {path.name!r} is unreadable ({exc}); restore it") from exc
    if not isinstance(card, dict):
        raise CorruptZooEntry(f"card.json of {path.name!r} is not a JSON object; restore it")
    return card


def check_entry(kind: str, path: Path) -> dict[str, Any]:
    """The card of the zoo entry ``path`` after a cheap check of its weights file; raises when broken.

    When the weights file is there (``card["weights_file"]``, else the kind's default name) its
    safetensors header must parse and describe exactly the file's bytes (one header read, no tensor
    loaded), and its sha256 must equal ``card["weights_sha256"]`` when the card records one. A
    missing weights file is left to the loader, which says what is missing.
    """
    card = read_card(path)
    weights = path / str(card.get("weights_file") or WEIGHTS_FILES[kind])
    if not weights.is_file():
        return card
    try:
        with safe_open(str(weights), framework="numpy") as fh:
            fh.keys()
    except (SafetensorError, OSError) as exc:
        raise CorruptZooEntry(
            f"{weights.name} of {kind} {path.name!r} is not a readable safetensors file ({exc}); "
            "re-copy or re-train it"
        ) from exc
    expected = card.get("weights_sha256")
    if expected and sha256_file(weights) != expected:
        raise CorruptZooEntry(
            f"{weights.name} of {kind} {path.name!r} does not match the sha256 on its card; "
            "re-copy or re-train it"
        )
    return card


def resolve_device(spec: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; other specs are returned unchanged."""
    if spec != "auto":
        return spec
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _check_precision(precision: str, device: str | None = None) -> str:
    """:func:`medseglens_core.models.base.check_precision` (imported late: it imports torch)."""
    from medseglens_core.models.base import check_precision

    return check_precision(precision, device)


def nbytes_of(value: Any) -> int:
    """Bytes held by tensors/arrays inside ``value`` (nested in dicts, lists, tuples or dataclasses)."""
    if hasattr(value, "element_size") and hasattr(value, "nelement"):
        return int(value.element_size() * value.nelement())
    if hasattr(value, "nbytes") and isinstance(getattr(value, "nbytes", None), int):
        return int(value.nbytes)
    if isinstance(value, dict):
        return sum(nbytes_of(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(nbytes_of(v) for v in value)
    if hasattr(value, "__dataclass_fields__"):
        return sum(nbytes_of(getattr(value, f)) for f in value.__dataclass_fields__)
    return 0


@dataclass
class LRUByteCache:
    """A thread-safe LRU of prefix activations, bounded in bytes (``max_bytes``; 0 disables it).

    Keys are ``(volume_id, model_id)`` (any hashable works). An item larger than the budget is not kept.
    """

    max_bytes: int
    _items: OrderedDict[Hashable, tuple[Any, int]] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    bytes: int = 0
    hits: int = 0
    misses: int = 0

    def get(self, key: Hashable) -> Any | None:
        """The cached value (marked most recently used) or None."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item[0]

    def put(self, key: Hashable, value: Any, nbytes: int | None = None) -> bool:
        """Store ``value`` (size ``nbytes``, measured when None), evicting least recently used items.

        Returns False when the item alone is over the budget (nothing is stored then).
        """
        size = nbytes_of(value) if nbytes is None else int(nbytes)
        with self._lock:
            if key in self._items:
                self.bytes -= self._items.pop(key)[1]
            if size > self.max_bytes:
                return False
            while self._items and self.bytes + size > self.max_bytes:
                _, (_, old) = self._items.popitem(last=False)
                self.bytes -= old
            self._items[key] = (value, size)
            self.bytes += size
            return True

    def invalidate(self, predicate: Callable[[Hashable], bool]) -> int:
        """Drop every key for which ``predicate(key)`` is true (e.g. all of a deleted volume)."""
        with self._lock:
            doomed = [k for k in self._items if predicate(k)]
            for k in doomed:
                self.bytes -= self._items.pop(k)[1]
            return len(doomed)

    def __len__(self) -> int:
        return len(self._items)


def _default_model_loader(path: Path, device: str = "cpu") -> tuple[Any, dict]:
    from medseglens_core.models.card import load_model

    return load_model(path, device=device)


def _default_sae_loader(path: Path, device: str = "cpu") -> tuple[Any, dict]:
    from medseglens_core.sae.io import load_sae

    return load_sae(path, device=device)


class ModelPool:
    """Models and SAEs resident on one device, with a bounded executor per device."""

    def __init__(
        self,
        zoo: Path,
        *,
        device: str = "auto",
        precision: str = "fp32",
        concurrency: int = 1,
        prefix_cache_bytes: int = 2 * 2**30,
        metrics: Metrics | None = None,
        model_loader: Loader | None = None,
        sae_loader: Loader | None = None,
    ) -> None:
        self.zoo = Path(zoo)
        self.device_spec = device
        self.device: str | None = None
        self.precision = _check_precision(precision)
        self.concurrency = concurrency
        self.metrics = metrics
        self.models: dict[str, Resident] = {}
        self.saes: dict[str, Resident] = {}
        self.unavailable: dict[str, Unavailable] = {}  # by "<kind>:<id>"
        self.prefix_cache = LRUByteCache(prefix_cache_bytes)
        self._model_loader = model_loader
        self._sae_loader = sae_loader
        self._limiters: dict[str, anyio.CapacityLimiter] = {}
        # check_entry verdicts of entries on disk but not loaded: (kind, id) -> (files stamp, error)
        self._verdicts: dict[tuple[str, str], tuple[tuple, str | None]] = {}

    @staticmethod
    def _entries(root: Path) -> list[Path]:
        if not root.is_dir():
            return []
        return sorted(p for p in root.iterdir() if p.is_dir() and (p / "card.json").is_file())

    def load(self) -> None:
        """Load every model and SAE of the zoo (once; call again after ``close`` to reload)."""
        model_dirs = self._entries(self.zoo / "models")
        sae_dirs = self._entries(self.zoo / "saes")
        if model_dirs or sae_dirs:
            self.device = resolve_device(self.device_spec)
            _check_precision(self.precision, self.device)  # fp16 on a CPU fails here, at startup
        for kind, dirs, loader, target in (
            ("model", model_dirs, self._loader("model"), self.models),
            ("sae", sae_dirs, self._loader("sae"), self.saes),
        ):
            for path in dirs:
                self._load_one(kind, path, loader, target)
        if self.metrics is not None:
            self.metrics.models_loaded.labels("model").set(len(self.models))
            self.metrics.models_loaded.labels("sae").set(len(self.saes))
        log.info(
            "pool loaded", extra={"models": len(self.models), "saes": len(self.saes), "device": self.device}
        )

    def _loader(self, kind: str) -> Loader:
        """The configured loader of ``kind`` ("model" or "sae"), bound to the pool's device."""
        device = self.device or "cpu"
        if kind == "model":
            return self._model_loader or partial(_default_model_loader, device=device)
        return self._sae_loader or partial(_default_sae_loader, device=device)

    def register_sae(self, name: str) -> bool:
        """Make ``ZOO/saes/<name>`` resident (an SAE a training job just published); True when loaded."""
        if name in self.saes:
            return True
        if self.device is None:  # started on an empty zoo: pick the device now
            self.device = resolve_device(self.device_spec)
        self._load_one("sae", self.zoo / "saes" / name, self._loader("sae"), self.saes)
        if self.metrics is not None:
            self.metrics.models_loaded.labels("sae").set(len(self.saes))
        return name in self.saes

    @property
    def load_errors(self) -> dict[str, str]:
        """``"<kind>:<id>" -> error`` of every entry that failed to load."""
        return {key: item.error for key, item in self.unavailable.items()}

    def unavailable_of(self, kind: str) -> list[Unavailable]:
        """The broken entries of ``kind`` ("model" or "sae"), by id."""
        return sorted((u for u in self.unavailable.values() if u.kind == kind), key=lambda u: u.id)

    def require_model(self, model_id: str) -> Resident:
        """The resident model ``model_id``; 404 when the zoo has none, 503 when it is broken."""
        return self._require("model", model_id, self.models)

    def require_sae(self, sae_id: str) -> Resident:
        """The resident SAE ``sae_id``; 404 when the zoo has none, 503 when it is broken."""
        return self._require("sae", sae_id, self.saes)

    def _require(self, kind: str, item_id: str, resident: dict[str, Resident]) -> Resident:
        item = resident.get(item_id)
        if item is not None:
            return item
        broken = self.unavailable.get(f"{kind}:{item_id}")
        if broken is not None:
            raise self._unavailable_error(kind, item_id, broken.error)
        name = "model" if kind == "model" else "SAE"
        raise ResourceNotFound(f"No {name} {item_id!r}; list them with {LISTS[kind]}.")

    @staticmethod
    def _unavailable_error(kind: str, item_id: str, error: str) -> ZooEntryUnavailable:
        name = "model" if kind == "model" else "SAE"
        return ZooEntryUnavailable(
            f"The {name} {item_id!r} is in the zoo but cannot be used: {error}. "
            f"Operators: repair or re-copy ZOO/{kind}s/{item_id} and restart; meanwhile pick "
            f"another from {LISTS[kind]}.",
            entry=f"{kind}:{item_id}",
        )

    def entry_usable(self, kind: str, item_id: str) -> bool:
        """Whether the zoo entry ``kind`` ("model" or "sae") ``item_id`` can serve a job; blocking.

        For job submission, whose worker loads the entry from disk. True for a resident entry
        (checked when it was loaded) and False when the zoo has no such entry (no ``card.json``).
        Raises 503 ``zoo-entry-unavailable``, as :meth:`require_model` does, for an entry the pool
        recorded as broken, and for one that is on disk but not loaded (published or copied in after
        the pool loaded) when :func:`check_entry` fails on it. That check hashes the weights, so its
        verdict is kept per version of the entry's files (name, size, mtime of each) and a request
        naming an unchanged entry again does not read its weights.
        """
        resident = self.models if kind == "model" else self.saes
        if item_id in resident:
            return True
        broken = self.unavailable.get(f"{kind}:{item_id}")
        if broken is not None:
            raise self._unavailable_error(kind, item_id, broken.error)
        path = self.zoo / f"{kind}s" / item_id
        if not (path / "card.json").is_file():
            return False
        try:
            stamp = tuple(sorted((f.name, (st := f.stat()).st_size, st.st_mtime_ns) for f in path.iterdir()))
        except OSError as exc:
            raise self._unavailable_error(kind, item_id, f"{type(exc).__name__}: {exc}") from exc
        cached = self._verdicts.get((kind, item_id))
        if cached is None or cached[0] != stamp:
            try:
                check_entry(kind, path)
                error = None
            except _LOAD_ERRORS as exc:
                error = f"{type(exc).__name__}: {exc}"
            cached = self._verdicts[(kind, item_id)] = (stamp, error)
        if cached[1] is not None:
            raise self._unavailable_error(kind, item_id, cached[1])
        return True

    def _load_one(self, kind: str, path: Path, loader: Loader, target: dict[str, Resident]) -> None:
        item_id = path.name
        start = time.perf_counter()
        try:
            check_entry(kind, path)
            obj, card = loader(path)
            if hasattr(obj, "to"):
                obj = obj.to(self.device)
            if hasattr(obj, "eval"):
                obj.eval()
            if hasattr(obj, "set_precision"):
                obj.set_precision(self.precision)
        except _LOAD_ERRORS as exc:
            self._mark_unavailable(kind, path, f"{type(exc).__name__}: {exc}")
            return
        self.unavailable.pop(f"{kind}:{item_id}", None)
        card = dict(card)
        card.setdefault("id", item_id)
        target[item_id] = Resident(item_id, obj, card, self.device or "cpu", path)
        log.info(
            "loaded", extra={"kind": kind, "item": item_id, "seconds": round(time.perf_counter() - start, 3)}
        )

    def _mark_unavailable(self, kind: str, path: Path, error: str) -> None:
        try:
            card = read_card(path)
        except CorruptZooEntry:
            card = {}
        self.unavailable[f"{kind}:{path.name}"] = Unavailable(path.name, kind, error, card)
        log.error("failed to load", extra={"kind": kind, "item": path.name, "error": error})

    @property
    def ready(self) -> bool:
        """True when at least one model is resident."""
        return bool(self.models)

    def limiter(self, device: str | None = None) -> anyio.CapacityLimiter:
        """The capacity limiter of ``device`` (default: the pool's device), made on first use."""
        key = device or self.device or "cpu"
        if key not in self._limiters:
            self._limiters[key] = anyio.CapacityLimiter(self.concurrency)
        return self._limiters[key]

    async def run(
        self, fn: Callable[..., T], *args: Any, device: str | None = None, kind: str = "inference"
    ) -> T:
        """Run blocking ``fn(*args)`` in a worker thread, bounded per device; records its seconds."""
        dev = device or self.device or "cpu"
        start = time.perf_counter()
        try:
            return await anyio.to_thread.run_sync(partial(fn, *args), limiter=self.limiter(dev))
        finally:
            if self.metrics is not None:
                self.metrics.inference_seconds.labels(kind, dev).observe(time.perf_counter() - start)

    def close(self) -> None:
        """Drop every resident object and free cached GPU memory."""
        self.models.clear()
        self.saes.clear()
        self.prefix_cache.invalidate(lambda _k: True)
        if self.device and self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()
