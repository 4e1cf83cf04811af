"""Slice datasets for training the 2-D models: prepared axial slices cached in memory.

Each case goes through :func:`~medseglens_core.data.preprocess.prepare_case` once; its slices
are kept as float16 ``(N, 4, S, S)`` and labels as uint8 ``(N, S, S)`` (about 150 kB per
96x96 slice pair, so a 30-case 2 mm cohort fits in ~0.3 GB). Batches are drawn with
tumour-balanced sampling: a fraction of each batch comes from slices containing tumour, the
rest uniformly from all brain slices (so the model also sees tumour-free anatomy).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from medseglens_core.data.preprocess import prepare_case
from medseglens_core.errors import InvalidInput


@dataclass(frozen=True)
class SliceDataset:
    """Prepared slices of several labelled cases.

    Attributes:
        images: ``(N, 4, S, S)`` float16, z-scored, MODALITIES channel order.
        labels: ``(N, S, S)`` uint8, BraTS 2023 labels 0..3.
        case_index: ``(N,)`` int64, index into ``case_ids`` of each slice's case.
        case_ids: ids of the cases, in load order.
        cohorts: cohort of each case (None when unknown), aligned with ``case_ids``.
    """

    images: torch.Tensor
    labels: torch.Tensor
    case_index: torch.Tensor
    case_ids: tuple[str, ...]
    cohorts: tuple[str | None, ...]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def tumour_slices(self) -> torch.Tensor:
        """Indices ``(M,)`` of slices holding any tumour label."""
        return torch.nonzero(self.labels.flatten(1).amax(dim=1) > 0).flatten()

    @classmethod
    def from_cases(cls, cases: Iterable, input_size: int) -> SliceDataset:
        """Prepare labelled :class:`~medseglens_core.io.case.Case` objects at ``input_size``."""
        images, labels, index, ids, cohorts = [], [], [], [], []
        for i, case in enumerate(cases):
            if case.label is None:
                raise InvalidInput(f"case {case.case_id} has no label map; training needs labelled cases")
            prepared = prepare_case(case, input_size)
            images.append(prepared.slices.to(torch.float16))
            labels.append(prepared.labels)
            index.append(torch.full((prepared.slices.shape[0],), i, dtype=torch.int64))
            ids.append(case.case_id)
            cohorts.append(getattr(case, "cohort", None))
        if not images:
            raise InvalidInput("no training cases given; point --data at folders of labelled case folders")
        return cls(torch.cat(images), torch.cat(labels), torch.cat(index), tuple(ids), tuple(cohorts))

    @classmethod
    def from_dirs(cls, case_dirs: Sequence[Path], input_size: int, cohort: str | None = None) -> SliceDataset:
        """Load case folders with ``io.load_case`` and prepare them."""
        from medseglens_core.io import load_case

        return cls.from_cases((load_case(d, cohort=cohort) for d in case_dirs), input_size)

    def sample(
        self, batch_size: int, generator: torch.Generator, tumour_fraction: float = 0.6
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch ``(x (B,4,S,S) float32, y (B,1,S,S) int64)``, tumour-balanced.

        ``round(tumour_fraction * B)`` slices come from tumour slices (when there are any),
        the rest uniformly from all slices.
        """
        tumour = self.tumour_slices
        n_t = round(tumour_fraction * batch_size) if len(tumour) else 0
        pick_t = tumour[torch.randint(len(tumour), (n_t,), generator=generator)] if n_t else tumour[:0]
        pick_a = torch.randint(len(self), (batch_size - n_t,), generator=generator)
        idx = torch.cat([pick_t, pick_a])
        return self.images[idx].float(), self.labels[idx].long()[:, None]


def augment(
    x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Light augmentation of a batch: left-right flips and per-channel intensity scale/shift.

    Args:
        x: ``(B, 4, S, S)`` z-scored slices (0 outside the brain); the first spatial axis is x
            (left-right), so flipping it mirrors the hemispheres.
        y: ``(B, 1, S, S)`` labels, flipped with ``x``.
    Scale ~ U(0.9, 1.1) and shift ~ U(-0.1, 0.1) per sample and channel, inside the brain only.
    """
    b = x.shape[0]
    flip = torch.rand(b, generator=generator) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(2), x)
    y = torch.where(flip[:, None, None, None], y.flip(2), y)
    scale = 0.9 + 0.2 * torch.rand(b, x.shape[1], 1, 1, generator=generator)
    shift = -0.1 + 0.2 * torch.rand(b, x.shape[1], 1, 1, generator=generator)
    brain = (x != 0).any(dim=1, keepdim=True)
    return torch.where(brain, x * scale + shift, x), y
