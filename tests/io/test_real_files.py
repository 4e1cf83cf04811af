"""Real NIfTI files nobody here wrote (nibabel's bundled test data): each loads or fails typed."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest
from nibabel.testing import data_path

from medseglens_core.io import MODALITIES, load_case_4d, load_case_from_files, read_nifti
from medseglens_core.io.errors import (
    NonFiniteVoxels,
    NotNifti,
    UnsupportedNifti,
    WrongDimensionality,
)

# file -> None (loads as a 3-D modality) or the documented error for a 3-D modality.
EXPECTED: dict[str, type[Exception] | None] = {
    "anatomical.nii": None,  # big-endian int16, LAS
    "reoriented_anat_moved.nii": None,  # big-endian float32, RAS
    "standard.nii.gz": None,  # uint8, gzip
    "example4d.nii.gz": WrongDimensionality,  # 4-D, 2 volumes
    "example_nifti2.nii.gz": WrongDimensionality,  # NIfTI-2, 4-D
    "functional.nii": WrongDimensionality,  # 4-D, 20 volumes
    "row_major.dconn.nii": WrongDimensionality,  # CIFTI-2 dense connectome (6-D NIfTI-2)
    "resampled_anat_moved.nii": NonFiniteVoxels,  # NaN outside the resampled field of view
    "analyze.hdr": NotNifti,  # ANALYZE 7.5 header, no NIfTI magic
    "nifti1.hdr": UnsupportedNifti,  # header of a .hdr/.img pair
    "nifti2.hdr": UnsupportedNifti,
    "test.mgz": NotNifti,  # FreeSurfer MGH, gzip
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bundled_file_loads_or_fails_typed(name):
    path = os.path.join(data_path, name)
    files = dict.fromkeys(MODALITIES, path)
    expected = EXPECTED[name]
    if expected is not None:
        with pytest.raises(expected, match=rf"^t1n \({name}\)"):
            load_case_from_files(files)
        return
    case = load_case_from_files(files)
    canonical = nib.as_closest_canonical(nib.load(path))
    ref = np.asarray(canonical.get_fdata(), dtype=np.float32)
    for c in range(4):
        np.testing.assert_array_equal(case.image[c], ref)
    np.testing.assert_allclose(case.geometry.affine, canonical.affine, atol=1e-6)
    assert case.geometry.original_shape == nib.load(path).shape
    np.testing.assert_array_equal(case.geometry.to_original(case.image[0]), nib.load(path).get_fdata())


def test_real_4d_files_load_with_the_4d_reader_when_counts_match():
    path = os.path.join(data_path, "example_nifti2.nii.gz")
    vol = read_nifti(path, name="image", ndim=4, channels=2)
    np.testing.assert_array_equal(vol.data, np.asarray(nib.load(path).get_fdata(), dtype=np.float32))
    with pytest.raises(WrongDimensionality, match="holds 2 volumes but 4 modalities"):
        load_case_4d(os.path.join(data_path, "example4d.nii.gz"), MODALITIES)
