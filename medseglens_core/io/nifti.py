"""Safe reading of one NIfTI-1/NIfTI-2 file from disk or from bytes.

Order of checks (each before anything large is read or allocated):

1. the compressed/raw size against ``IOLimits.max_file_bytes`` (``os.stat`` / ``len``);
2. the first bytes: gzip is detected by its magic, whatever the file name says; anything that
   is not a single-file NIfTI-1 (``n+1``) or NIfTI-2 (``n+2``) header is :class:`NotNifti`;
3. the header: dimensions, data type, dimensionality, voxel count against ``max_voxels``;
4. the data: read in chunks (so memory follows the bytes actually present, not what the
   header claims) up to the size the header declares; fewer bytes is :class:`TruncatedNifti`;
5. gzip integrity: the rest of the stream is inflated (and discarded) so the CRC is verified;
   a damaged stream is :class:`CorruptGzip`, one that stops early :class:`TruncatedGzip`.

Only then is the image built with nibabel (``from_bytes``, i.e. a ``FileHolder`` over the
bytes) and its array read. Errors name the caller's label (e.g. ``"t1n (x-t1n.nii.gz)"``).
"""

from __future__ import annotations

import gzip
import io
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from medseglens_core.io.case import IOLimits
from medseglens_core.io.errors import (
    CaseNotFound,
    CorruptGzip,
    FileTooLarge,
    NonFiniteVoxels,
    NotNifti,
    TooManyVoxels,
    TruncatedGzip,
    TruncatedNifti,
    UnsupportedNifti,
    WrongDimensionality,
)

__all__ = ["NiftiVolume", "check_finite_voxels", "read_nifti", "source_label"]

_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 2**20  # small: memory follows the bytes actually inflated, not the claimed size
# Bytes past the declared data that a gzip stream may still inflate to before we give up
# verifying it (bounds the CPU a decompression bomb can cost).
_MAX_TRAILING = 64 * 2**20
_SIGNATURES = {
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"PK\x03\x04": "a ZIP archive",
    b"%PDF": "a PDF document",
    b"BZh": "a bzip2 stream",
}


@dataclass(frozen=True)
class NiftiVolume:
    """A validated NIfTI image.

    Attributes:
        data: array in the file's own voxel order, (I, J, K) or (I, J, K, C); float32 when read
            with ``as_float=True`` (scaled by ``scl_slope``/``scl_inter``), else as stored
            after scaling (nibabel's ``dataobj``).
        affine: (4, 4) voxel-to-world affine as nibabel resolves it (sform, else qform).
        sform_code, qform_code: the header's transform codes.
        dtype: on-disk data type, e.g. ``"int16"``.
    """

    data: np.ndarray
    affine: np.ndarray
    sform_code: int
    qform_code: int
    dtype: str


def source_label(source: Path | str | bytes, name: str) -> str:
    """How errors name a source: the modality name, plus the basename for files."""
    if isinstance(source, bytes | bytearray | memoryview):
        return name
    return f"{name} ({Path(source).name})"


def read_nifti(
    source: Path | str | bytes,
    *,
    name: str,
    limits: IOLimits = IOLimits(),
    ndim: int = 3,
    channels: int | None = None,
    as_float: bool = True,
    check_finite: bool = True,
) -> NiftiVolume:
    """Read and validate one NIfTI file (``.nii`` or ``.nii.gz``, or their bytes).

    Args:
        source: a path, or the file's bytes (gzip-compressed or not).
        name: what errors call this file (a modality name such as ``"t1n"`` or ``"seg"``).
        limits: size ceilings; ``max_voxels`` applies to the spatial (first three) axes.
        ndim: 3 for a volume, 4 for one volume per channel on the 4th axis. Trailing axes of
            length 1 beyond the third are ignored (``(X, Y, Z, 1)`` counts as 3-D).
        channels: for ``ndim=4``, the required length of the 4th axis.
        as_float: return float32 data; otherwise the stored values.
        check_finite: with ``as_float``, raise :class:`NonFiniteVoxels` on NaN/Inf (the 4-D
            loader turns this off and checks per modality so the message names it).

    Raises:
        CaseNotFound, FileTooLarge, NotNifti, CorruptGzip, TruncatedGzip, TruncatedNifti,
        UnsupportedNifti, WrongDimensionality, TooManyVoxels, NonFiniteVoxels.
    """
    label = source_label(source, name)
    with _open(source, label, limits) as (stream, compressed, raw_size):
        buf, shape = _read_validated(stream, compressed, raw_size, label, limits, ndim, channels)
    klass = nib.Nifti2Image if _sizeof_hdr(buf) == 540 else nib.Nifti1Image
    try:
        img = klass.from_bytes(buf)
    except (HeaderDataError, ImageFileError, ValueError) as exc:
        raise UnsupportedNifti(f"{label}: nibabel rejects the header ({type(exc).__name__}).") from None
    hdr = img.header
    if as_float:
        data = np.asarray(img.dataobj, dtype=np.float32).reshape(shape, order="A")
        if check_finite:
            check_finite_voxels(data, label)
    else:
        data = np.asanyarray(img.dataobj).reshape(shape, order="A")
    return NiftiVolume(
        data=data,
        affine=np.asarray(img.affine, dtype=np.float64),
        sform_code=int(hdr["sform_code"]),
        qform_code=int(hdr["qform_code"]),
        dtype=str(hdr.get_data_dtype().newbyteorder("=")),
    )


class _open:
    """Context manager yielding (readable stream, is_gzip, on-disk size) after the size check."""

    def __init__(self, source: Path | str | bytes, label: str, limits: IOLimits) -> None:
        self.source, self.label, self.limits = source, label, limits
        self._fh: BinaryIO | None = None

    def __enter__(self) -> tuple[BinaryIO, bool, int]:
        src = self.source
        if isinstance(src, bytes | bytearray | memoryview):
            size = len(src)
            self._check_size(size)
            raw: BinaryIO = io.BytesIO(bytes(src))
        else:
            path = Path(src)
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                raise CaseNotFound(f"{self.label}: file not found; check the name.") from None
            if not path.is_file():
                raise NotNifti(f"{self.label}: not a regular file; pass a .nii or .nii.gz file.")
            self._check_size(size)
            raw = path.open("rb")
        self._fh = raw
        magic = raw.read(2)
        raw.seek(0)
        if magic == _GZIP_MAGIC:
            return gzip.GzipFile(fileobj=raw, mode="rb"), True, size
        return raw, False, size

    def __exit__(self, *exc: object) -> None:
        if self._fh is not None:
            self._fh.close()

    def _check_size(self, size: int) -> None:
        if size > self.limits.max_file_bytes:
            raise FileTooLarge(
                f"{self.label}: file is {size} bytes, over the limit of {self.limits.max_file_bytes} bytes; "
                "crop or downsample it, or raise IOLimits.max_file_bytes."
            )


def _read_validated(
    stream: BinaryIO,
    compressed: bool,
    raw_size: int,
    label: str,
    limits: IOLimits,
    ndim: int,
    channels: int | None,
) -> tuple[bytes, tuple[int, ...]]:
    """Read header + declared data from ``stream``; returns (bytes, squeezed shape)."""
    head = _read_upto(stream, 540, label)
    hdr, sizeof = _parse_header(head, label)
    shape, nvox = _check_dims(hdr, label, limits, ndim, channels)
    try:
        dtype = hdr.get_data_dtype()
    except (KeyError, HeaderDataError):
        raise UnsupportedNifti(f"{label}: unknown NIfTI datatype code {int(hdr['datatype'])}.") from None
    if dtype.kind not in "biuf":
        raise UnsupportedNifti(
            f"{label}: data type {dtype} is not supported; save the image as integers or floats."
        )
    offset = int(hdr["vox_offset"])
    if offset < sizeof:
        raise UnsupportedNifti(f"{label}: vox_offset {offset} points inside the header; fix the header.")
    need = offset + nvox * dtype.itemsize
    if not compressed and raw_size < need:
        raise TruncatedNifti(_truncated_msg(label, need - offset, raw_size - offset))
    chunks = [head]
    have = len(head)
    while have < need:
        chunk = _read_upto(stream, min(_CHUNK, need - have), label)
        if not chunk:
            break
        chunks.append(chunk)
        have += len(chunk)
    if have < need:
        raise TruncatedNifti(_truncated_msg(label, need - offset, have - offset))
    if compressed:
        _drain(stream, label)
    return b"".join(chunks), shape


def _truncated_msg(label: str, claimed: int, present: int) -> str:
    return (
        f"{label}: the header declares {claimed} bytes of voxel data but the file holds {max(present, 0)}; "
        "the file is truncated or its header is wrong. Re-export or re-upload it."
    )


def _read_upto(stream: BinaryIO, n: int, label: str) -> bytes:
    """Read up to ``n`` bytes, turning gzip damage into typed errors."""
    try:
        return stream.read(n)
    except EOFError:
        raise TruncatedGzip(
            f"{label}: the gzip stream ends early (truncated file); re-copy or re-upload it."
        ) from None
    except (gzip.BadGzipFile, zlib.error):
        raise CorruptGzip(
            f"{label}: the gzip stream is corrupt (bad data or checksum); re-export the file."
        ) from None


def _drain(stream: BinaryIO, label: str) -> None:
    """Inflate the rest of a gzip stream so its CRC is checked; bounded by ``_MAX_TRAILING``."""
    extra = 0
    while chunk := _read_upto(stream, _CHUNK, label):
        extra += len(chunk)
        if extra > _MAX_TRAILING:
            raise UnsupportedNifti(
                f"{label}: the file holds far more data than its header declares; re-export it."
            )


def _sizeof_hdr(head: bytes) -> int | None:
    if len(head) < 4:
        return None
    for endian in "<>":
        (size,) = struct.unpack(endian + "i", head[:4])
        if size in (348, 540):
            return size
    return None


def _parse_header(head: bytes, label: str) -> tuple[nib.Nifti1Header, int]:
    """Parse a NIfTI-1/2 header from the first bytes; :class:`NotNifti` for anything else."""
    sizeof = _sizeof_hdr(head)
    ok1 = sizeof == 348 and len(head) >= 348 and head[344:348] in (b"n+1\x00", b"ni1\x00")
    ok2 = sizeof == 540 and len(head) >= 540 and head[4:8] in (b"n+2\x00", b"ni2\x00")
    if not (ok1 or ok2):
        raise NotNifti(
            f"{label}: not a NIfTI-1 or NIfTI-2 file ({_describe(head, sizeof)}); upload a .nii or .nii.gz image."
        )
    if (head[345:346] if sizeof == 348 else head[5:6]) == b"i":  # "ni1" / "ni2": header only
        raise UnsupportedNifti(
            f"{label}: a header-only NIfTI (.hdr/.img pair); convert it to a single .nii or .nii.gz file."
        )
    endian = "<" if struct.unpack("<i", head[:4])[0] == sizeof else ">"
    klass = nib.Nifti2Header if sizeof == 540 else nib.Nifti1Header
    hdr = klass(binaryblock=head[:sizeof], endianness=endian, check=False)
    return hdr, sizeof


def _describe(head: bytes, sizeof: int | None) -> str:
    for magic, what in _SIGNATURES.items():
        if head.startswith(magic):
            return f"it looks like {what}"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "it looks like a DICOM file; convert it to NIfTI first (e.g. dcm2niix)"
    if sizeof == 348:
        return "an ANALYZE 7.5 header without the NIfTI magic"
    if len(head) < 348:
        return f"only {len(head)} bytes long"
    return "unrecognised header"


def _check_dims(
    hdr: nib.Nifti1Header, label: str, limits: IOLimits, ndim: int, channels: int | None
) -> tuple[tuple[int, ...], int]:
    """Validate ``dim``; returns (shape with trailing length-1 axes beyond 3 dropped, voxel count)."""
    dim = [int(d) for d in hdr["dim"]]
    if not 1 <= dim[0] <= 7 or any(d < 1 for d in dim[1 : 1 + dim[0]]):
        raise UnsupportedNifti(
            f"{label}: invalid dimensions in the header (dim={dim[: 1 + max(dim[0], 0)]})."
        )
    shape = tuple(dim[1 : 1 + dim[0]])
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != ndim:
        want = "3-D (one volume)" if ndim == 3 else "4-D (one volume per modality on the 4th axis)"
        raise WrongDimensionality(f"{label}: image is {len(shape)}-D with shape {shape}; expected {want}.")
    if channels is not None and shape[3] != channels:
        raise WrongDimensionality(
            f"{label}: the 4th axis holds {shape[3]} volumes but {channels} modalities were declared."
        )
    spatial = math.prod(shape[:3])
    n_volumes = math.prod(shape[3:])
    # A 4-D file may hold one volume per declared channel (4 when none are declared).
    max_volumes = channels if channels is not None else (1 if ndim == 3 else 4)
    if n_volumes > max_volumes:
        raise TooManyVoxels(
            f"{label}: the header declares {n_volumes} volumes; at most {max_volumes} are accepted."
        )
    if spatial > limits.max_voxels:
        raise TooManyVoxels(
            f"{label}: the header declares {spatial} voxels per volume (shape {shape[:3]}), over the limit "
            f"of {limits.max_voxels}; crop or downsample the image, or raise IOLimits.max_voxels."
        )
    return shape, math.prod(dim[1 : 1 + dim[0]])


def check_finite_voxels(data: np.ndarray, label: str) -> None:
    """Raise :class:`NonFiniteVoxels` (naming ``label``) when ``data`` holds NaN or Inf."""
    finite = np.isfinite(data)
    if finite.all():
        return
    n_nan = int(np.isnan(data).sum())
    n_inf = int(finite.size - finite.sum()) - n_nan
    raise NonFiniteVoxels(
        f"{label}: image has {n_nan} NaN and {n_inf} infinite voxels (after conversion to float32); "
        "replace them (e.g. with 0) before uploading."
    )
