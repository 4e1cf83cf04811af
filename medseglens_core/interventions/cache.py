"""PrefixCache: one volume run up to the hook point once, for many interventions.

An intervention changes the activation at the hook only, so everything before it is fixed
per (volume, model, hook). :class:`PrefixCache` runs ``model.run_prefix`` over the volume's
prepared slices once and keeps the results, the unedited logits and labels, and a map from
every case-grid voxel to the hook-grid token it falls in, so scope masks on the case grid
(RAS ``[x, y, z]``) become token masks.

Token order (the global token index ``t``) follows the tokens convention of the SAE package:
slice ``k`` of the prepared stack, row ``i``, column ``j`` of the hook grid ``(h, w)`` ->
``t = (k * h + i) * w + j`` -- i.e. ``h.permute(0, 2, 3, 1).reshape(-1, C)`` over the stack.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medseglens_core.data.preprocess import first_argmax
from medseglens_core.models.base import Prefix, SegModel


def logits_to_labels(prepared: Any, logits: torch.Tensor) -> np.ndarray:
    """Map slice logits ``(Z, 4, H, W)`` to a label map ``(X, Y, Z)`` uint8 on the case grid.

    Softmax over classes, then the volume-inference path (``PreparedCase.argmax_to_case_grid``,
    the labels of ``models.inference.probs_to_labels``: background outside the crop and the brain mask) for a real ``PreparedCase``; any other
    object only needs ``to_case_grid`` (argmax of the resampled probabilities).
    """
    probs = torch.softmax(logits.float(), dim=1)
    if hasattr(prepared, "record") and hasattr(prepared, "brain_mask"):
        return prepared.argmax_to_case_grid(probs)
    grid = prepared.to_case_grid(probs)
    grid = grid if isinstance(grid, np.ndarray) else grid.detach().cpu().numpy()
    return np.argmax(grid, axis=0).astype(np.uint8)


def _take_prefix(prefix: Prefix, rows: torch.Tensor) -> Prefix | None:
    """The prefix restricted to batch rows ``rows``, or None if its cache is not batch-first."""
    b = prefix.h.shape[0]
    if any(c.ndim == 0 or c.shape[0] != b for c in prefix.cache):
        return None
    return Prefix(
        hook=prefix.hook,
        h=prefix.h[rows],
        cache=tuple(c[rows] for c in prefix.cache),
        out_size=prefix.out_size,
    )


@dataclass
class PrefixCache:
    """Prefix activations of one prepared volume for one model and hook.

    Attributes:
        model: the segmentation model (eval mode).
        hook: hook point name.
        prepared: the ``PreparedCase`` (``.slices`` ``(Z, 4, H, W)``, ``.to_case_grid``).
        chunks: ``(start, stop, Prefix)`` per slice batch, covering slices ``0..Z``.
        baseline_logits: unedited logits ``(Z, 4, H, W)`` float32, on CPU.
        baseline_labels: unedited label map ``(X, Y, Z)`` uint8, case grid.
        token_of_voxel: ``(X, Y, Z)`` int64 global token index of every case voxel, -1 outside
            the prepared crop.
        hook_shape: ``(h, w)`` of the hook grid; ``channels`` the activation width ``C``.
    """

    model: SegModel
    hook: str
    prepared: Any
    chunks: list[tuple[int, int, Prefix]]
    baseline_logits: torch.Tensor
    baseline_labels: np.ndarray
    token_of_voxel: np.ndarray
    hook_shape: tuple[int, int]
    channels: int
    _tokens: torch.Tensor | None = field(default=None, repr=False)
    _region_tokens: dict[tuple[str, int], np.ndarray] = field(default_factory=dict, repr=False)
    _protected: dict[tuple[str, ...], np.ndarray] = field(default_factory=dict, repr=False)

    @classmethod
    @torch.no_grad()
    def build(
        cls, model: SegModel, prepared: Any, hook: str | None = None, *, batch_size: int = 16
    ) -> PrefixCache:
        """Run the prefix over ``prepared.slices`` in batches of ``batch_size`` slices.

        ``hook`` defaults to ``model.default_hook``. The model is put in eval mode.
        """
        hook = hook or model.default_hook
        model.check_hook(hook)
        model.eval()
        device = next(model.parameters()).device
        slices = prepared.slices
        slices = slices if isinstance(slices, torch.Tensor) else torch.from_numpy(np.asarray(slices))
        chunks: list[tuple[int, int, Prefix]] = []
        logits = []
        for start in range(0, slices.shape[0], batch_size):
            stop = min(start + batch_size, slices.shape[0])
            p = model.run_prefix(slices[start:stop].to(device, torch.float32), hook)
            chunks.append((start, stop, p))
            logits.append(model.run_suffix(p, p.h).float().cpu())
        baseline_logits = torch.cat(logits)
        _, c, h, w = chunks[0][2].h.shape
        cache = cls(
            model=model,
            hook=hook,
            prepared=prepared,
            chunks=chunks,
            baseline_logits=baseline_logits,
            baseline_labels=logits_to_labels(prepared, baseline_logits),
            token_of_voxel=_voxel_to_token(prepared, slices.shape, (h, w)),
            hook_shape=(h, w),
            channels=c,
        )
        return cache

    @property
    def n_slices(self) -> int:
        """Number of prepared slices ``Z``."""
        return self.chunks[-1][1]

    @property
    def n_tokens(self) -> int:
        """Tokens in the volume: ``Z * h * w``."""
        return self.n_slices * self.hook_shape[0] * self.hook_shape[1]

    def tokens(self) -> torch.Tensor:
        """All hook activations as tokens ``(Z*h*w, C)`` (a cached view; do not modify)."""
        if self._tokens is None:
            self._tokens = torch.cat(
                [p.h.permute(0, 2, 3, 1).reshape(-1, self.channels) for _, _, p in self.chunks]
            )
        return self._tokens

    @torch.no_grad()
    def tokens_at(self, hook: str) -> tuple[torch.Tensor, np.ndarray]:
        """Tokens ``(Z*h'*w', C')`` and voxel->token map at another ``hook`` of the same model.

        Runs the model's prefix to ``hook`` over the prepared slices once (kept on the cache);
        ``hook == self.hook`` returns the cache's own tokens and map.
        """
        if hook == self.hook:
            return self.tokens(), self.token_of_voxel
        other = self.__dict__.setdefault("_other_hooks", {})
        if hook not in other:
            self.model.check_hook(hook)
            device = next(self.model.parameters()).device
            slices = self.prepared.slices
            slices = slices if isinstance(slices, torch.Tensor) else torch.from_numpy(np.asarray(slices))
            parts = []
            for start, stop, _ in self.chunks:
                h = self.model.run_prefix(slices[start:stop].to(device, torch.float32), hook).h
                parts.append(h.permute(0, 2, 3, 1).reshape(-1, h.shape[1]))
            grid = tuple(h.shape[-2:])
            other[hook] = (torch.cat(parts), _voxel_to_token(self.prepared, slices.shape, grid))
        return other[hook]

    def region_tokens(self, region: str, dilation: int) -> np.ndarray:
        """Token mask ``(Z*h*w,)`` of the unedited prediction's ``region`` dilated by ``dilation``
        voxels (kept on the cache, read-only: a search applies the same scope to every edit of
        hundreds of specs, and the 3-D dilation is the dearest part of an edit)."""
        key = (region, int(dilation))
        if key not in self._region_tokens:
            from medseglens_core.interventions.apply import dilate, region_mask

            t = self.voxels_to_tokens(dilate(region_mask(self.baseline_labels, region), dilation))
            t.setflags(write=False)
            self._region_tokens[key] = t
        return self._region_tokens[key]

    def protect(self, labels: np.ndarray, zs: Sequence[int], regions: Sequence[str]) -> np.ndarray:
        """``labels`` ``(X, Y, len(zs))`` of case-grid slices ``zs`` with every voxel the unedited
        prediction puts in one of ``regions`` set back to its unedited label (in place; returned).
        The union mask is kept on the cache, read-only."""
        if not regions:
            return labels
        key = tuple(sorted(set(regions)))
        if key not in self._protected:
            from medseglens_core.interventions.apply import region_mask

            m = np.logical_or.reduce([region_mask(self.baseline_labels, r) for r in key])
            m.setflags(write=False)
            self._protected[key] = m
        zs = list(zs)
        keep = self._protected[key][:, :, zs]
        labels[keep] = self.baseline_labels[:, :, zs][keep]
        return labels

    def voxels_to_tokens(self, mask: np.ndarray) -> np.ndarray:
        """Case-grid boolean mask ``(X, Y, Z)`` -> token mask ``(Z*h*w,)``: a token is in when
        any voxel of its cell is."""
        out = np.zeros(self.n_tokens, dtype=bool)
        idx = self.token_of_voxel[mask & (self.token_of_voxel >= 0)]
        out[idx] = True
        return out

    @torch.no_grad()
    def run_edited(self, token_delta: dict[int, torch.Tensor]) -> tuple[torch.Tensor, int]:
        """Logits ``(Z, 4, H, W)`` with ``delta`` added to the hook activation at some tokens.

        ``token_delta`` maps a slice index ``k`` to a tuple-free dense delta ``(C, h, w)``. Only
        slices with a delta re-run the suffix; the others keep the cached logits bit for bit.
        Returns the logits and the number of slices re-run.
        """
        logits = self.baseline_logits.clone()
        for start, stop, p in self.chunks:
            ks = sorted(k for k in token_delta if start <= k < stop)
            if not ks:
                continue
            rows = torch.tensor([k - start for k in ks], device=p.h.device)
            sub = _take_prefix(p, rows)
            if sub is None:  # opaque cache: re-run the whole batch, keep only the edited rows
                sub, keep = p, rows
            else:
                keep = torch.arange(len(ks), device=p.h.device)
            h_new = sub.h.clone()
            for r, k in zip(keep.tolist(), ks, strict=True):
                h_new[r] = sub.h[r] + token_delta[k].to(sub.h.device, sub.h.dtype)
            out = self.model.run_suffix(sub, h_new).float().cpu()
            logits[ks] = out[keep.cpu()]
        return logits, len(token_delta)


def _voxel_to_token(prepared: Any, slices_shape: torch.Size, hook_shape: tuple[int, int]) -> np.ndarray:
    """For each case voxel, the global token index its value comes from (-1 outside the crop).

    Built without knowing the preprocessing: coordinate maps (slice index, pixel row, pixel
    column, ones) are pushed through ``prepared.to_case_grid`` like probabilities would be.
    """
    z, _, hh, ww = slices_shape
    h, w = hook_shape
    k = torch.arange(z, dtype=torch.float32).view(z, 1, 1).expand(z, hh, ww)
    rows = torch.arange(hh, dtype=torch.float32).view(1, hh, 1).expand(z, hh, ww)
    cols = torch.arange(ww, dtype=torch.float32).view(1, 1, ww).expand(z, hh, ww)
    ones = torch.ones(z, hh, ww)
    grid = prepared.to_case_grid(torch.stack([k, rows, cols, ones], dim=1))
    grid = grid if isinstance(grid, np.ndarray) else grid.detach().cpu().numpy()
    valid = grid[3] > 0.999
    kk = np.clip(np.rint(grid[0]), 0, z - 1).astype(np.int64)
    ii = np.clip(np.floor(np.rint(grid[1]) * h / hh), 0, h - 1).astype(np.int64)
    jj = np.clip(np.floor(np.rint(grid[2]) * w / ww), 0, w - 1).astype(np.int64)
    out = (kk * h + ii) * w + jj
    out[~valid] = -1
    return out


def slice_labels(cache: PrefixCache, ks: Sequence[int], logits: torch.Tensor) -> np.ndarray:
    """Case-grid labels ``(X, Y, n)`` uint8 of prepared slices ``ks`` from their logits ``(n, 4, H, W)``.

    Equal to ``logits_to_labels(prepared, full)[:, :, z0 + ks]`` for a real ``PreparedCase``;
    other prepared objects (tests) go through the full path with the baseline elsewhere.
    """
    prep = cache.prepared
    ks = list(ks)
    if not (hasattr(prep, "record") and hasattr(prep, "brain_mask")):
        full = cache.baseline_logits.clone()
        full[ks] = logits.float().cpu()
        return logits_to_labels(prep, full)[..., ks]
    rec = prep.record
    x0, x1, y0, y1, z0, _ = rec.crop
    probs = torch.softmax(logits.float().cpu(), dim=1)
    if tuple(probs.shape[-2:]) != tuple(rec.padded_shape):
        probs = F.interpolate(probs, size=rec.padded_shape, mode="bilinear", align_corners=False)
    px0, _, py0, _ = rec.pad
    probs = probs[:, :, px0 : px0 + x1 - x0, py0 : py0 + y1 - y0]
    out = np.zeros((rec.case_shape[0], rec.case_shape[1], len(ks)), dtype=np.uint8)
    out[x0:x1, y0:y1] = first_argmax(probs).permute(1, 2, 0).numpy()
    zs = [z0 + k for k in ks]
    out[~prep.brain_mask[:, :, zs]] = 0
    return out


def slice_z(cache: PrefixCache, ks: Sequence[int]) -> list[int]:
    """Case-grid z index of prepared slices ``ks`` (identity for objects without a record)."""
    rec = getattr(cache.prepared, "record", None)
    z0 = rec.crop[4] if rec is not None else 0
    return [z0 + k for k in ks]
