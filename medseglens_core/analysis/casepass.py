"""One pass of the network over a case: per-case latent statistics and logit attributions.

The network runs once per slice batch: ``run_prefix`` to the hook, the SAE encodes the hook
activation, and (only when attributions are asked for) ``run_suffix`` re-runs the rest of the
network on the spliced activation ``h' = (h - dec(z)) + dec(z)`` so the gradient of a region's
logit reaches the codes ``z`` through the decoder while the prediction is unchanged.

Attribution of region ``r`` to latent ``j`` for one case:
``A_j = sum_{tokens} z_j * dL/dz_j`` with ``L`` the MEAN logit of class ``r`` over the pixels in
the attribution mask (default: pixels the model predicts as ``r``; ``"brain"``: every brain
pixel). Using the mean makes cases with tumours of different sizes comparable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from medseglens_core.analysis.encode import (
    LABEL_INDEX,
    ModelLike,
    SAELike,
    brain_token_mask,
    from_tokens,
    input_brain_mask,
    region_fractions,
    region_mass,
    to_tokens,
)
from medseglens_core.errors import InvalidInput

AttributionMask = Literal["predicted", "brain"]


@dataclass
class CaseRow:
    """Per-case latent statistics over brain tokens. Arrays are ``(d_sae,)`` unless stated.

    - ``firing_rate``: fraction of brain tokens where the latent is > 0.
    - ``mean_activation``: mean code over brain tokens (zeros included).
    - ``mean_active``: mean code over the tokens where it fires (0 when it never fires).
    - ``region_mass``: ``(d_sae, 4)`` activation mass over healthy/NCR/SNFH/ET tokens
      (NaN-filled when the case has no label).
    - ``attribution``: region name -> ``(d_sae,)`` attribution (see module docstring).
    """

    case_id: str
    n_tokens: int
    firing_rate: np.ndarray
    mean_activation: np.ndarray
    mean_active: np.ndarray
    region_mass: np.ndarray
    attribution: dict[str, np.ndarray] = field(default_factory=dict)
    region_tokens: np.ndarray | None = None  # (4,) token count per region (fractional), if labelled


def region_label(region: str | int) -> int:
    """Label index of a region name (``NCR``, ``SNFH``, ``ET``) or integer label 1..3."""
    if isinstance(region, int) and region in (1, 2, 3):
        return region
    if isinstance(region, str) and region.upper() in LABEL_INDEX:
        return LABEL_INDEX[region.upper()]
    raise InvalidInput(f"unknown region {region!r}: use one of NCR, SNFH, ET (or labels 1, 2, 3)")


def _attribute_batch(
    model: ModelLike, sae: SAELike, prefix: Any, labels: list[int], mask_mode: str, brain_px: torch.Tensor
) -> tuple[torch.Tensor, dict[int, torch.Tensor], dict[int, int]]:
    """Encode one batch with grad and return ``(z (N, d_sae), {label: (d_sae,) attr sum}, {label: n_px})``."""
    h = prefix.h
    b, _, hh, ww = h.shape
    tokens = to_tokens(h.float())
    with torch.no_grad():
        z0 = sae.encode(tokens).float()
    z = z0.clone().requires_grad_(True)
    with torch.enable_grad():
        x_hat = sae.decode(z)
        h_spliced = from_tokens((tokens - x_hat.detach()) + x_hat, b, hh, ww).to(h.dtype)
        logits = model.run_suffix(prefix, h_spliced)
        pred = logits.detach().argmax(dim=1)
        attr: dict[int, torch.Tensor] = {}
        counts: dict[int, int] = {}
        for i, lab in enumerate(labels):
            m = (pred == lab) if mask_mode == "predicted" else brain_px
            m = m & brain_px
            counts[lab] = int(m.sum())
            if counts[lab] == 0:
                attr[lab] = torch.zeros(z.shape[1])
                continue
            total = (logits[:, lab] * m).sum()
            (grad,) = torch.autograd.grad(total, z, retain_graph=i < len(labels) - 1)
            attr[lab] = (z0 * grad).sum(dim=0)
    return z0, attr, counts


def analyse_slices(
    model: ModelLike,
    sae: SAELike,
    slices: torch.Tensor,
    hook: str,
    *,
    case_id: str = "case",
    brain: torch.Tensor | None = None,
    label_slices: torch.Tensor | None = None,
    regions: tuple[str, ...] = (),
    attribution_mask: AttributionMask = "predicted",
    batch_size: int = 16,
    max_slices: int | None = None,
) -> CaseRow:
    """Statistics (and optional attributions) of one prepared case.

    Args:
        slices: ``(Z, 4, H, W)`` float32 model input (prepared, normalised).
        hook: hook point name passed to ``model.run_prefix``.
        brain: ``(Z, H, W)`` bool brain mask on the input grid; default: non-zero input.
        label_slices: ``(Z, H, W)`` labels {0..3} on the input grid, for region mass.
        regions: region names (``NCR``/``SNFH``/``ET``) to attribute; empty = no backward pass.
        attribution_mask: ``"predicted"`` (pixels predicted as the region) or ``"brain"``.
        max_slices: use at most this many brain slices, evenly spaced (None: all). Neighbouring
            slices are highly correlated, so a per-case rate from 16 slices is close to the
            all-slice one at a fraction of the cost.
    """
    if attribution_mask not in ("predicted", "brain"):
        raise InvalidInput(f"attribution_mask must be 'predicted' or 'brain'; got {attribution_mask!r}")
    labels = [region_label(r) for r in regions]
    brain = input_brain_mask(slices) if brain is None else brain.bool()
    keep = torch.nonzero(brain.flatten(1).any(dim=1)).flatten()
    if max_slices is not None and len(keep) > max_slices:
        keep = keep[torch.linspace(0, len(keep) - 1, max_slices).round().long().unique()]
    d_sae = int(sae.W_dec.shape[0])
    fire = torch.zeros(d_sae, dtype=torch.float64)
    act = torch.zeros(d_sae, dtype=torch.float64)
    mass = np.zeros((d_sae, 4)) if label_slices is not None else np.full((d_sae, 4), np.nan)
    rtok = np.zeros(4)
    attr_sum = {lab: torch.zeros(d_sae, dtype=torch.float64) for lab in labels}
    px = dict.fromkeys(labels, 0)
    n_tok = 0
    for i in range(0, len(keep), batch_size):
        idx = keep[i : i + batch_size]
        with torch.no_grad():
            prefix = model.run_prefix(slices[idx], hook)
        hh, ww = prefix.h.shape[-2:]
        if labels:
            z, attr, counts = _attribute_batch(model, sae, prefix, labels, attribution_mask, brain[idx])
            for lab in labels:
                attr_sum[lab] += attr[lab].double()
                px[lab] += counts[lab]
        else:
            with torch.no_grad():
                z = sae.encode(to_tokens(prefix.h.float())).float()
        tmask = brain_token_mask(brain[idx], (hh, ww))
        flat = tmask.flatten()
        zb = z[flat]
        n_tok += int(flat.sum())
        fire += (zb > 0).sum(dim=0).double()
        act += zb.sum(dim=0).double()
        if label_slices is not None:
            maps = from_tokens(z, len(idx), hh, ww)
            fr = region_fractions(label_slices[idx], brain[idx], (hh, ww))
            mass += region_mass(maps, fr, tmask)
            rtok += (fr * tmask[:, None].float()).sum(dim=(0, 2, 3)).double().numpy()
    n = max(n_tok, 1)
    return CaseRow(
        case_id=case_id,
        n_tokens=n_tok,
        firing_rate=(fire / n).numpy(),
        mean_activation=(act / n).numpy(),
        mean_active=(act / fire.clamp(min=1)).numpy(),
        region_mass=mass,
        attribution={
            name: (attr_sum[lab] / max(px[lab], 1)).numpy() for name, lab in zip(regions, labels, strict=True)
        },
        region_tokens=rtok if label_slices is not None else None,
    )


def prepare_for_analysis(
    case: Any, input_size: int
) -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``prepare_case`` plus the model-grid masks: ``(prepared, slices, brain (Z,H,W), labels|None)``."""
    from medseglens_core.data.preprocess import prepare_case

    prepared = prepare_case(case, input_size)
    slices = torch.as_tensor(prepared.slices).float()
    brain = _grid_attr(prepared, ("brain_slices", "brain_mask"), slices.shape)
    if brain is None:
        brain = input_brain_mask(slices)
    labels = _grid_attr(prepared, ("label_slices", "labels", "label"), slices.shape)
    return prepared, slices, brain.bool(), labels


def _grid_attr(prepared: Any, names: tuple[str, ...], shape: torch.Size) -> torch.Tensor | None:
    """The first attribute of ``prepared`` in ``names`` that is a ``(Z, H, W)`` model-grid array."""
    want = (shape[0], shape[2], shape[3])
    for name in names:
        value = getattr(prepared, name, None)
        if value is not None and tuple(np.shape(value)) == want:
            return torch.as_tensor(np.asarray(value))
    return None


def input_size_of(model: Any, card: dict | None = None, input_size: int | None = None) -> int:
    """Model input size (H = W): explicit, else ``card['input_size']``, else ``model.config['input_size']``."""
    for candidate in (
        input_size,
        (card or {}).get("input_size"),
        (card or {}).get("input_spec", {}).get("input_size")
        if isinstance((card or {}).get("input_spec"), dict)
        else None,
        getattr(model, "config", {}).get("input_size")
        if isinstance(getattr(model, "config", None), dict)
        else None,
    ):
        if candidate:
            return int(candidate)
    raise InvalidInput("model input size unknown: pass input_size or use a model card with 'input_size'")


def load_if_path(case: Any, cohort: str | None = None) -> Any:
    """A ``Case`` as is; a path is loaded with ``medseglens_core.io.load_case``."""
    if isinstance(case, str | Path):
        from medseglens_core.io import load_case

        return load_case(Path(case), cohort=cohort)
    return case
