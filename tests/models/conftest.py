"""Fixtures for the model tests: tiny planted cases built in memory or written with nibabel."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from medseglens_core.io import Case, Geometry


def planted_case(
    shape=(36, 40, 12), affine=None, seed: int = 0, cohort: str = "adult", case_id: str = "c0"
) -> Case:
    """A box 'brain' with a planted spherical tumour: ET rim, NCR core, SNFH shell.

    Contrast: FLAIR (t2f) bright in SNFH, T1c bright in ET, T2 bright in the core, so a model
    can learn the labels from intensities alone.
    """
    rng = np.random.default_rng(seed)
    X, Y, Z = shape
    image = np.zeros((4, X, Y, Z), np.float32)
    brain = np.zeros(shape, bool)
    brain[3 : X - 3, 3 : Y - 3, 1 : Z - 1] = True
    image[:, brain] = 1.0 + 0.05 * rng.standard_normal((4, int(brain.sum())))
    xx, yy, zz = np.meshgrid(np.arange(X), np.arange(Y), np.arange(Z), indexing="ij")
    cx, cy, cz = X // 2 + rng.integers(-4, 5), Y // 2 + rng.integers(-4, 5), Z // 2
    r = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2 + (2.0 * (zz - cz)) ** 2)
    label = np.zeros(shape, np.uint8)
    label[(r < 9) & brain] = 2
    label[r < 5] = 3
    label[r < 3] = 1
    image[3][label == 2] += 1.5  # FLAIR oedema
    image[1][label == 3] += 1.5  # enhancing rim
    image[2][label == 1] += 1.5  # T2-bright necrosis
    geometry = Geometry.from_affine(np.eye(4) if affine is None else affine, shape)
    return Case(case_id=case_id, image=image, label=label, geometry=geometry, cohort=cohort)


def write_case_dir(case: Case, folder, affine) -> None:
    """Write ``case`` (assumed already in the file's voxel order) as a BraTS-2023 folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, m in enumerate(("t1n", "t1c", "t2w", "t2f")):
        nib.save(nib.Nifti1Image(case.image[i], affine), folder / f"{case.case_id}-{m}.nii.gz")
    nib.save(nib.Nifti1Image(case.label, affine), folder / f"{case.case_id}-seg.nii.gz")


@pytest.fixture
def oblique_affine() -> np.ndarray:
    """An oblique, anisotropic (1.2 x 0.9 x 3 mm), axis-permuted and flipped affine."""
    theta = np.deg2rad(20)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    perm = np.array([[0, 1, 0], [-1, 0, 0], [0, 0, 1]], float)  # file axis 0 runs posterior-anterior
    aff = np.eye(4)
    aff[:3, :3] = rot @ perm @ np.diag([1.2, 0.9, 3.0])
    aff[:3, 3] = [-20.0, 30.0, -10.0]
    return aff


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest on one thread; with several, OpenMP barriers stall on a busy machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
