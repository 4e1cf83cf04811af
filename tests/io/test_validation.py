"""One test per validation error, each on a real malformed file written to tmp_path."""

from __future__ import annotations

import gzip
import struct
import time
import tracemalloc
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseglens_core.errors import InvalidInput, TooLarge
from medseglens_core.io import MODALITIES, IOLimits, load_case, load_case_4d, load_case_from_files, read_nifti
from medseglens_core.io.errors import (
    AffineMismatch,
    CorruptGzip,
    FileTooLarge,
    InvalidLabelValues,
    ModalityShapeMismatch,
    NonFiniteVoxels,
    NotNifti,
    TooManyVoxels,
    TruncatedGzip,
    TruncatedNifti,
    UnsupportedNifti,
    WrongDimensionality,
)
from tests.io.builders import PATIENT_TEXT, make_arrays, oblique_lps_affine, save

CASE = "BraTS-GLI-00001-000"


def expect(exc_type: type[Exception], fn, *args, match: str, tmp_path: Path, **kwargs) -> str:
    """Run ``fn``; it must raise ``exc_type`` whose message matches and leaks no path or header text."""
    with pytest.raises(exc_type, match=match) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert str(tmp_path) not in msg and PATIENT_TEXT.decode() not in msg and "db-secret" not in msg
    return msg


def one_file(tmp_path: Path, arr: np.ndarray, name: str = "x-t1n.nii.gz") -> Path:
    return save(arr, oblique_lps_affine(), tmp_path / name)


def structured_volume() -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.integers(0, 50, size=(40, 40, 30), dtype=np.int16)


def test_truncated_gzip(tmp_path):
    blob = one_file(tmp_path, structured_volume()).read_bytes()
    cut = tmp_path / "cut-t1n.nii.gz"
    cut.write_bytes(blob[: len(blob) * 6 // 10])
    expect(
        TruncatedGzip,
        read_nifti,
        cut,
        name="t1n",
        match=r"t1n \(cut-t1n.nii.gz\).*truncated",
        tmp_path=tmp_path,
    )
    # Only the gzip trailer (CRC, size) missing: the voxels are all there, the file is still cut.
    expect(
        TruncatedGzip,
        read_nifti,
        blob[:-4],
        name="t1n",
        match="^t1n: the gzip stream ends early",
        tmp_path=tmp_path,
    )


def test_corrupt_gzip(tmp_path):
    blob = bytearray(one_file(tmp_path, structured_volume()).read_bytes())
    mid = len(blob) // 2
    blob[mid : mid + 16] = bytes(b ^ 0xFF for b in blob[mid : mid + 16])
    bad = tmp_path / "bad-t1c.nii.gz"
    bad.write_bytes(bytes(blob))
    expect(
        CorruptGzip, read_nifti, bad, name="t1c", match=r"t1c \(bad-t1c.nii.gz\).*corrupt", tmp_path=tmp_path
    )


def test_nan_and_inf_voxels_name_the_modality(tmp_path, write_case):
    images, _ = make_arrays()
    t2w = images["t2w"].copy()
    t2w[1, 2, 3] = np.nan
    t2w[0, 0, 0] = np.inf
    folder = write_case(tmp_path / "c", images={"t2w": t2w})
    expect(
        NonFiniteVoxels, load_case, folder, match=rf"^t2w \({CASE}-t2w.nii.gz\): image has 1 NaN and 1 infinite",
        tmp_path=tmp_path,
    )  # fmt: skip


def test_mismatched_shapes(tmp_path, write_case):
    images, label = make_arrays()
    folder = write_case(tmp_path / "c", images={"t1c": images["t1c"][:, :, :7]})
    expect(
        ModalityShapeMismatch,
        load_case,
        folder,
        match=r"t1c .* shape \(12, 10, 7\) but t1n",
        tmp_path=tmp_path,
    )
    folder = write_case(tmp_path / "d", label=label[:11])
    expect(ModalityShapeMismatch, load_case, folder, match=r"^seg ", tmp_path=tmp_path)


def test_mismatched_affines_beyond_tolerance_only(tmp_path, write_case):
    moved = oblique_lps_affine()
    moved[:3, 3] += [0.0, 2.0, 0.0]
    folder = write_case(tmp_path / "c", affines={"t2f": moved})
    expect(
        AffineMismatch,
        load_case,
        folder,
        match=r"t2f .* and t1n .* different affines \(largest difference 2,",
        tmp_path=tmp_path,
    )
    nudged = oblique_lps_affine()
    nudged[:3, 3] += 1e-5  # float noise between modalities of one scan: accepted
    assert load_case(write_case(tmp_path / "d", affines={"t2f": nudged})).image.shape == (4, 12, 10, 8)


def test_2d_image(tmp_path, write_case):
    images, _ = make_arrays()
    folder = write_case(tmp_path / "c", images={"t1n": images["t1n"][:, :, 0]}, label=None)
    expect(
        WrongDimensionality,
        load_case,
        folder,
        match=r"^t1n .* is 2-D with shape \(12, 10\)",
        tmp_path=tmp_path,
    )


def test_5d_image(tmp_path, write_case):
    images, _ = make_arrays()
    five = np.stack([images["t2w"], images["t2w"]], axis=-1)[:, :, :, None, :]
    folder = write_case(tmp_path / "c", images={"t2w": five}, label=None)
    expect(WrongDimensionality, load_case, folder, match=r"^t2w .* is 5-D", tmp_path=tmp_path)


def test_trailing_singleton_axis_counts_as_3d_but_real_4d_does_not(tmp_path):
    vol = make_arrays()[0]["t1n"]
    assert read_nifti(one_file(tmp_path, vol[..., None]), name="t1n").data.shape == (12, 10, 8)
    four = one_file(tmp_path, np.stack([vol, vol], -1), "four.nii.gz")
    expect(WrongDimensionality, read_nifti, four, name="t1n", match="4-D", tmp_path=tmp_path)


def _huge_header_file(tmp_path: Path, compress: bool) -> Path:
    """A tiny file whose header claims 2500 x 2000 x 2000 = 10**10 uint8 voxels."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((2500, 2000, 2000))
    hdr.set_data_dtype(np.uint8)
    hdr["vox_offset"] = 352
    blob = hdr.binaryblock + b"\0" * 4 + bytes(range(64))
    path = tmp_path / ("huge.nii.gz" if compress else "huge.nii")
    path.write_bytes(gzip.compress(blob) if compress else blob)
    return path


@pytest.mark.parametrize("compress", [True, False])
def test_header_claiming_1e10_voxels_fails_fast_without_allocating(tmp_path, compress):
    path = _huge_header_file(tmp_path, compress)
    assert path.stat().st_size < 1000
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        expect(TooManyVoxels, read_nifti, path, name="t1n", match="10000000000 voxels", tmp_path=tmp_path)
        # With the ceiling lifted, the header still claims more data than the file holds.
        limits = IOLimits(max_voxels=10**11)
        msg = expect(
            TruncatedNifti, read_nifti, path, name="t1n", limits=limits, match="truncated", tmp_path=tmp_path
        )
        assert "declares 10000000000 bytes" in msg and "holds 64" in msg
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 1.0
    assert peak < 2 * 2**20  # 10**10 bytes were claimed; nothing near that was allocated


def _png_bytes(width: int = 8, height: int = 4) -> bytes:
    """A valid 8-bit greyscale PNG (signature, IHDR, IDAT, IEND with CRCs)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes(range(y * width, (y + 1) * width)) for y in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def test_png_renamed_nii_gz(tmp_path):
    fake = tmp_path / f"{CASE}-t1n.nii.gz"
    fake.write_bytes(_png_bytes())
    expect(
        NotNifti, read_nifti, fake, name="t1n", match="not a NIfTI.*looks like a PNG image", tmp_path=tmp_path
    )
    files = {m: fake.read_bytes() for m in MODALITIES}  # the same as an upload
    expect(NotNifti, load_case_from_files, files, match="^t1n: not a NIfTI", tmp_path=tmp_path)


def test_file_over_byte_limit(tmp_path):
    path = one_file(tmp_path, structured_volume())
    size = path.stat().st_size
    limits = IOLimits(max_file_bytes=size - 1)
    err = expect(
        FileTooLarge, read_nifti, path, name="t1n", limits=limits, match=f"{size} bytes", tmp_path=tmp_path
    )
    assert "max_file_bytes" in err
    expect(
        FileTooLarge,
        read_nifti,
        path.read_bytes(),
        name="t1n",
        limits=limits,
        match="^t1n:",
        tmp_path=tmp_path,
    )
    assert read_nifti(path, name="t1n", limits=IOLimits(max_file_bytes=size)).data.shape == (40, 40, 30)


@pytest.mark.parametrize(
    ("layout", "bad_value", "shown"),
    [("brats2023", 4, "4"), ("brats2021", 7, "7"), ("brats2023", 1.5, "1.5")],
)
def test_label_values_out_of_range(tmp_path, write_case, layout, bad_value, shown):
    _, label = make_arrays()
    label = label.astype(np.float32)
    label[0, 0, 0] = bad_value
    folder = write_case(tmp_path / "c", layout, label=label)
    expect(InvalidLabelValues, load_case, folder, match=rf"^seg .*1 voxels.*\({shown}\)", tmp_path=tmp_path)


def test_unsupported_dtype_and_short_garbage(tmp_path):
    cplx = one_file(tmp_path, np.ones((4, 4, 4), np.complex64), "c.nii")
    expect(UnsupportedNifti, read_nifti, cplx, name="t1n", match="complex64", tmp_path=tmp_path)
    expect(NotNifti, read_nifti, b"hello", name="t1n", match="only 5 bytes", tmp_path=tmp_path)


def test_error_classes_sit_under_the_library_bases():
    for cls in (TruncatedGzip, CorruptGzip, NotNifti, TruncatedNifti, NonFiniteVoxels, InvalidLabelValues):
        assert issubclass(cls, InvalidInput)
    assert issubclass(FileTooLarge, TooLarge) and issubclass(TooManyVoxels, TooLarge)


def test_nan_in_4d_file_names_the_modality_of_its_volume(tmp_path):
    images, _ = make_arrays()
    stacked = np.stack([images[m] for m in MODALITIES], axis=-1)
    stacked[2, 2, 2, 3] = np.nan  # 4th volume, declared as t1c below
    path = save(stacked, oblique_lps_affine(), tmp_path / "four.nii.gz")
    expect(
        NonFiniteVoxels, load_case_4d, path, ["t1n", "t2w", "t2f", "t1c"],
        match=r"^t1c \(image \(four.nii.gz\), volume 3\): image has 1 NaN", tmp_path=tmp_path,
    )  # fmt: skip
