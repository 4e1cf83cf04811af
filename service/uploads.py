"""Streaming multipart uploads: straight to disk, counted, hashed, limited.

Nothing is held whole in memory: each file part is written to ``<dest>/<role>.part`` as its bytes
arrive, with a running sha256. The byte limit is enforced twice: ``Content-Length`` is checked before
a single body byte is read, and the bytes actually received are counted while streaming (for chunked
bodies or a lying header). Client file names and part headers are never kept, logged or returned.
:class:`MultipartReceiver` is the one receiver of both uploads: NIfTI (:func:`receive_multipart`,
one file per role, hashed) and DICOM (``service.dicom.receive_dicom_multipart``, many file parts).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import python_multipart
from python_multipart.multipart import parse_options_header
from starlette.requests import ClientDisconnect, Request

from service.errors import InvalidUpload, PayloadTooLarge, ServiceError, UnsupportedMediaType

GZIP_MAGIC = b"\x1f\x8b"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


@dataclass
class UploadedFile:
    """One received file part: where it is, its sha256 (hex) and size in bytes."""

    role: str
    path: Path
    sha256: str
    size: int


@dataclass
class ParsedUpload:
    """Every part of a multipart body: file parts by role, text fields by name."""

    files: dict[str, UploadedFile] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=dict)


def check_content_length(request: Request, max_bytes: int) -> None:
    """Refuse (413) a request whose declared ``Content-Length`` is over ``max_bytes``; reads no body."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(
            f"Upload of {int(declared)} bytes is over the limit of {max_bytes} bytes "
            "(MEDSEGLENS_MAX_UPLOAD_BYTES); send smaller files or raise the limit.",
            headers={"Connection": "close"},
        )


@dataclass
class ReceivedFile:
    """One file part as the receiver left it: its form field, its file, byte count and sha256 (hex;
    None when not hashed)."""

    name: str
    path: Path
    size: int
    sha256: str | None


class MultipartReceiver:
    """python-multipart callbacks (for :func:`stream_multipart`): file parts to disk, small text fields.

    Each part named in ``file_fields`` streams to its own file in ``dest`` as its bytes arrive:
    ``<name>.part``, each field at most once, or, with ``repeat_files``, ``part-NNNNNN.bin`` in
    arrival order, a field as often as the client sends it. With ``hash_files`` a running sha256 is
    kept per file. A part named in ``text_fields`` (each at most once) is kept as UTF-8 text of at most
    ``max_text`` bytes. Any other name, a part without a name, an empty file part, an oversize or
    non-UTF-8 text field is an error raised while the body streams: 400 for a part without a name,
    422 ``invalid-upload`` otherwise. ``hint`` ends the messages that say what to send.
    """

    def __init__(
        self,
        dest: Path,
        *,
        file_fields: frozenset[str],
        text_fields: frozenset[str],
        hint: str,
        max_text: int = 64 * 1024,
        hash_files: bool = False,
        repeat_files: bool = False,
    ) -> None:
        self.dest = dest
        self.file_fields = file_fields
        self.text_fields = text_fields
        self.hint = hint
        self.max_text = max_text
        self.hash_files = hash_files
        self.repeat_files = repeat_files
        self.files: list[ReceivedFile] = []
        self.fields: dict[str, str] = {}
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._name = ""
        self._path = dest
        self._fh: IO[bytes] | None = None
        self._hash: Any = None
        self._size = 0
        self._text = bytearray()
        self.ended = False

    def on_end(self) -> None:
        self.ended = True

    def on_part_begin(self) -> None:
        self._disposition = b""
        self._name = ""

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        if self._header_name.strip().lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = b""
        self._header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        raw_name = options.get(b"name")
        if raw_name is None:
            raise ServiceError(f"A multipart part has no name; {self.hint}.")
        name = raw_name.decode("latin-1")
        allowed = sorted(self.file_fields | self.text_fields)
        if name not in allowed:
            shown = repr(name) if _SAFE_NAME.match(name) else "with an unexpected name"
            raise InvalidUpload(f"Unknown form field {shown}; expected some of {', '.join(allowed)}.")
        repeatable = self.repeat_files and name in self.file_fields
        if not repeatable and (name in self.fields or any(f.name == name for f in self.files)):
            raise InvalidUpload(f"Form field {name!r} was sent twice; send each part once.")
        self._name = name
        if name in self.file_fields:
            leaf = f"part-{len(self.files):06d}.bin" if self.repeat_files else f"{name}.part"
            self._path = self.dest / leaf
            self._fh = open(self._path, "wb")  # noqa: SIM115 - closed in on_part_end/close
            self._hash = hashlib.sha256() if self.hash_files else None
            self._size = 0
        else:
            self._text = bytearray()

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._fh is not None:
            self._fh.write(chunk)
            if self._hash is not None:
                self._hash.update(chunk)
            self._size += len(chunk)
        else:
            if len(self._text) + len(chunk) > self.max_text:
                raise InvalidUpload(f"Form field {self._name!r} is over {self.max_text} bytes.")
            self._text.extend(chunk)

    def on_part_end(self) -> None:
        if self._fh is None:
            try:
                self.fields[self._name] = self._text.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidUpload(f"Form field {self._name!r} is not UTF-8 text.") from exc
            return
        self._fh.close()
        self._fh = None
        if self._size == 0:
            which = f"part #{len(self.files) + 1}" if self.repeat_files else repr(self._name)
            raise InvalidUpload(f"File {which} is empty; {self.hint}.")
        digest = self._hash.hexdigest() if self._hash is not None else None
        self.files.append(ReceivedFile(self._name, self._path, self._size, digest))

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


async def receive_multipart(
    request: Request,
    dest: Path,
    *,
    max_bytes: int,
    file_fields: frozenset[str],
    text_fields: frozenset[str],
    max_text_bytes: int = 64 * 1024,
) -> ParsedUpload:
    """Stream a ``multipart/form-data`` body into ``dest``; raise 415/413/400/422 service errors.

    ``dest`` must be a fresh staging directory; on error the caller discards it (partial files stay
    inside it). File parts (each role once, sha256 kept) land as ``<dest>/<role>.nii.gz`` (gzip magic)
    or ``<role>.nii``.
    """
    boundary = multipart_boundary(
        request, max_bytes, "Send the upload as multipart/form-data (one part per file)."
    )
    receiver = MultipartReceiver(
        dest,
        file_fields=file_fields,
        text_fields=text_fields,
        hint="send each file as a part named by its role (t1n, t1c, ...)",
        max_text=max_text_bytes,
        hash_files=True,
    )
    await stream_multipart(request, boundary, receiver, max_bytes)
    result = ParsedUpload(fields=receiver.fields)
    for part in receiver.files:
        with open(part.path, "rb") as fh:
            gz = fh.read(2) == GZIP_MAGIC
        # The loader picks gzip by suffix: name the file by its content, never by the client's name.
        final = part.path.rename(dest / (f"{part.name}.nii.gz" if gz else f"{part.name}.nii"))
        result.files[part.name] = UploadedFile(part.name, final, str(part.sha256), part.size)
    return result


def multipart_boundary(request: Request, max_bytes: int, wrong_type: str) -> bytes:
    """The boundary of a ``multipart/form-data`` request (415 ``wrong_type`` otherwise); checks the
    declared Content-Length against ``max_bytes`` before any byte is read."""
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data":
        raise UnsupportedMediaType(wrong_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise ServiceError("The multipart Content-Type has no boundary parameter.")
    check_content_length(request, max_bytes)
    return boundary


async def stream_multipart(request: Request, boundary: bytes, receiver: Any, max_bytes: int) -> int:
    """Feed the request body to ``receiver`` (python-multipart callbacks ``on_part_begin`` ...
    ``on_end``, an ``ended`` flag and ``close()``), at most ``max_bytes`` (413); returns bytes read.

    Malformed, truncated or interrupted bodies are 400 service errors; ``receiver`` is always closed.
    """
    callbacks = {
        "on_part_begin": receiver.on_part_begin,
        "on_header_field": receiver.on_header_field,
        "on_header_value": receiver.on_header_value,
        "on_header_end": receiver.on_header_end,
        "on_headers_finished": receiver.on_headers_finished,
        "on_part_data": receiver.on_part_data,
        "on_part_end": receiver.on_part_end,
        "on_end": receiver.on_end,
    }
    parser = python_multipart.MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes:
                raise PayloadTooLarge(
                    f"Upload is over the limit of {max_bytes} bytes (MEDSEGLENS_MAX_UPLOAD_BYTES).",
                    headers={"Connection": "close"},
                )
            parser.write(chunk)
        parser.finalize()
        if not receiver.ended:
            raise ServiceError(
                "The multipart body ended before its closing boundary; the upload was cut short."
            )
    except python_multipart.exceptions.FormParserError as exc:
        raise ServiceError("Malformed multipart body; check the boundary and part headers.") from exc
    except ClientDisconnect as exc:
        raise ServiceError("The upload was interrupted before the body ended; send it again.") from exc
    finally:
        receiver.close()
    return received
