"""Activation shards on disk: writing in bounded memory, streaming shuffled batches back.

Layout of a shard directory::

    manifest.json                  d_in, dtype, shards [{name, n_tokens}], cases [{case_id, cohort,
                                   n_tokens}], meta (model id, hook, grid, background_keep, ...)
    shard_00000.tokens.npy         (n, d_in) float16 (default) or float32 tokens
    shard_00000.prov.npz           provenance, one entry per token:
                                     case  int32  index into manifest ``cases``
                                     z     int16  slice index on the case grid (axial, RAS z)
                                     y, x  int16  row, column at the hook's resolution (h, w)
                                     label uint8  BraTS label under the token at that resolution

Readers memory-map token files, so peak memory is one shard plus the shuffle buffer,
independent of how many tokens the set holds.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseglens_core.sae.errors import NoActivations

__all__ = ["MANIFEST", "PROVENANCE_FIELDS", "ActivationShards", "ShardWriter"]

MANIFEST = "manifest.json"
PROVENANCE_FIELDS = {"case": np.int32, "z": np.int16, "y": np.int16, "x": np.int16, "label": np.uint8}


@dataclass
class ActivationShards:
    """A read-only view of a shard directory (see the module docstring for the layout)."""

    root: Path
    d_in: int
    dtype: str
    shards: list[dict[str, Any]]
    cases: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def open(cls, root: str | Path) -> ActivationShards:
        """Read ``root/manifest.json``; raise :class:`NoActivations` if missing or empty."""
        root = Path(root)
        path = root / MANIFEST
        if not path.is_file():
            raise NoActivations(f"no {MANIFEST} in the activation directory; run activation collection first")
        m = json.loads(path.read_text())
        out = cls(root, int(m["d_in"]), m["dtype"], m["shards"], m.get("cases", []), m.get("meta", {}))
        if out.n_tokens == 0:
            raise NoActivations("the activation set holds no tokens; check the case list and brain masks")
        return out

    @property
    def n_tokens(self) -> int:
        return int(sum(s["n_tokens"] for s in self.shards))

    def tokens(self, i: int) -> np.ndarray:
        """Shard ``i``'s tokens ``(n, d_in)``, memory-mapped."""
        return np.load(self.root / f"{self.shards[i]['name']}.tokens.npy", mmap_mode="r")

    def provenance(self, i: int) -> dict[str, np.ndarray]:
        """Shard ``i``'s provenance arrays (see :data:`PROVENANCE_FIELDS`), each ``(n,)``."""
        with np.load(self.root / f"{self.shards[i]['name']}.prov.npz") as f:
            return {k: f[k] for k in PROVENANCE_FIELDS}

    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        """About ``n`` tokens ``(n', d_in)`` float32 drawn evenly from every shard."""
        rng = np.random.default_rng(seed)
        per = max(1, -(-n // len(self.shards)))
        parts = []
        for i, s in enumerate(self.shards):
            take = min(per, s["n_tokens"])
            idx = np.sort(rng.choice(s["n_tokens"], size=take, replace=False))
            parts.append(np.asarray(self.tokens(i)[idx], dtype=np.float32))
        return torch.from_numpy(np.concatenate(parts)[:n])

    def iter_tokens(self, chunk: int = 65536) -> Iterator[torch.Tensor]:
        """Every token once, in order, as float32 chunks ``(<= chunk, d_in)``."""
        for i in range(len(self.shards)):
            arr = self.tokens(i)
            for s in range(0, arr.shape[0], chunk):
                yield torch.from_numpy(np.array(arr[s : s + chunk], dtype=np.float32))

    def iter_batches(
        self, batch_size: int, *, buffer_tokens: int = 262_144, seed: int = 0, loop: bool = True
    ) -> Iterator[torch.Tensor]:
        """Shuffled float32 batches ``(batch_size, d_in)``, streamed.

        Shards are read in a random order each epoch into a buffer of ``buffer_tokens`` tokens
        (kept in the stored dtype); when full it is shuffled, its first half is emitted as
        batches and the rest stays to mix with the next shards. With ``loop`` the stream cycles
        forever; otherwise it ends after one epoch (dropping a last partial batch).
        """
        rng = np.random.default_rng(seed)
        buffer_tokens = max(buffer_tokens, 2 * batch_size)
        buf = np.empty((0, self.d_in), dtype=np.dtype(self.dtype))
        while True:
            for i in rng.permutation(len(self.shards)):
                buf = np.concatenate([buf, np.asarray(self.tokens(int(i)))])
                if buf.shape[0] < buffer_tokens:
                    continue
                buf = buf[rng.permutation(buf.shape[0])]
                n_emit = (buf.shape[0] // 2) // batch_size * batch_size
                for s in range(0, n_emit, batch_size):
                    yield torch.from_numpy(buf[s : s + batch_size].astype(np.float32))
                buf = buf[n_emit:]
            if not loop:
                break
        buf = buf[rng.permutation(buf.shape[0])]
        for s in range(0, buf.shape[0] - batch_size + 1, batch_size):
            yield torch.from_numpy(buf[s : s + batch_size].astype(np.float32))


class ShardWriter:
    """Accumulates tokens with provenance and flushes a shard every ``shard_tokens`` tokens."""

    def __init__(
        self,
        root: str | Path,
        d_in: int,
        *,
        shard_tokens: int = 65_536,
        dtype: str = "float16",
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.d_in, self.shard_tokens, self.dtype = d_in, shard_tokens, dtype
        self.meta = dict(meta or {})
        self.cases: list[dict[str, Any]] = []
        self.shards: list[dict[str, Any]] = []
        self._tok: list[np.ndarray] = []
        self._prov: dict[str, list[np.ndarray]] = {k: [] for k in PROVENANCE_FIELDS}
        self._pending = 0

    def add_case(self, case_id: str, cohort: str | None) -> int:
        """Register a case; returns its index for :meth:`add`'s ``case`` provenance."""
        self.cases.append({"case_id": case_id, "cohort": cohort, "n_tokens": 0})
        return len(self.cases) - 1

    def add(self, tokens: np.ndarray, **prov: np.ndarray) -> None:
        """Append tokens ``(n, d_in)`` with provenance arrays ``case, z, y, x, label`` each ``(n,)``."""
        n = tokens.shape[0]
        self._tok.append(np.asarray(tokens, dtype=self.dtype))
        for k, dt in PROVENANCE_FIELDS.items():
            self._prov[k].append(np.broadcast_to(np.asarray(prov[k], dtype=dt), (n,)).copy())
        for c, cnt in zip(*np.unique(self._prov["case"][-1], return_counts=True), strict=True):
            self.cases[int(c)]["n_tokens"] += int(cnt)
        self._pending += n
        while self._pending >= self.shard_tokens:
            self._flush(self.shard_tokens)

    def _flush(self, n: int) -> None:
        tok = np.concatenate(self._tok)
        prov = {k: np.concatenate(v) for k, v in self._prov.items()}
        name = f"shard_{len(self.shards):05d}"
        np.save(self.root / f"{name}.tokens.npy", tok[:n])
        np.savez(self.root / f"{name}.prov.npz", **{k: v[:n] for k, v in prov.items()})
        self.shards.append({"name": name, "n_tokens": int(n)})
        self._tok = [tok[n:]]
        self._prov = {k: [v[n:]] for k, v in prov.items()}
        self._pending -= n

    def close(self) -> ActivationShards:
        """Flush the last partial shard, write the manifest and return the reader."""
        if self._pending:
            self._flush(self._pending)
        manifest = {
            "d_in": self.d_in,
            "dtype": self.dtype,
            "shards": self.shards,
            "cases": self.cases,
            "meta": self.meta,
        }
        (self.root / MANIFEST).write_text(json.dumps(manifest, indent=2))
        return ActivationShards.open(self.root)
