"""The data directory: layout, server-made ids and atomic file operations.

Layout under ``Settings.data_dir``::

    medseglens.db               SQLite database (default)
    volumes/<volume_id>/        uploaded files as sent (``<role>.nii[.gz]``), preview.png
    segmentations/<id>/         segmentation artefacts (written by the segmentation routes)
    interventions/<id>/         intervention artefacts
    reports/<id>/               diff reports made by jobs
    tmp/                        staging for uploads and atomic writes (same filesystem -> rename)
    trash/                      directories being deleted

Every id is made by :func:`new_id` (uuid4 hex). Client input never becomes a path: a path is built
only from an id that matched :data:`ID_RE`, so ``../../etc`` cannot reach the filesystem.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

ID_PATTERN = r"^[0-9a-f]{32}$"
ID_RE = re.compile(ID_PATTERN)
AREAS = ("volumes", "segmentations", "interventions", "reports")


def new_id() -> str:
    """A fresh server-made id: 32 lowercase hex characters (uuid4)."""
    return uuid.uuid4().hex


def is_valid_id(value: str) -> bool:
    """True when ``value`` is a server-made id (and so safe as one path component)."""
    return bool(ID_RE.fullmatch(value))


class Storage:
    """Files of the service under one root directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.tmp = self.root / "tmp"
        self.trash = self.root / "trash"

    def ensure(self) -> None:
        """Create the layout and clear leftovers of a crash (staging and trash are never live data)."""
        for area in (*AREAS, "tmp", "trash"):
            (self.root / area).mkdir(parents=True, exist_ok=True)
        for leftover_root in (self.tmp, self.trash):
            for leftover in leftover_root.iterdir():
                if leftover.is_dir():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink(missing_ok=True)

    def area_dir(self, area: str, item_id: str) -> Path:
        """``<root>/<area>/<item_id>``; refuses anything but a known area and a server-made id."""
        if area not in AREAS:
            raise ValueError(f"Unknown storage area {area!r}; expected one of {AREAS}.")
        if not is_valid_id(item_id):
            raise ValueError("Not a server-made id (32 lowercase hex characters).")
        return self.root / area / item_id

    def relative(self, path: Path) -> str:
        """``path`` relative to the root, as stored in the database."""
        return Path(path).relative_to(self.root).as_posix()

    def resolve(self, relative: str) -> Path:
        """The absolute path of a stored relative path; refuses one that leaves the root."""
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ValueError("Stored path leaves the data directory.")
        return path

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A fresh directory under ``tmp/``, removed on exit unless it was moved away by :meth:`publish`."""
        path = Path(tempfile.mkdtemp(prefix="stage-", dir=self.tmp))
        try:
            yield path
        finally:
            if path.exists():
                shutil.rmtree(path, ignore_errors=True)

    def publish(self, staged: Path, dest: Path) -> None:
        """Move a staged directory into place in one rename (atomic on one filesystem)."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, dest)

    def remove_dir(self, path: Path) -> None:
        """Remove a directory: first renamed into ``trash/`` (atomic), then deleted."""
        if not path.exists():
            return
        doomed = self.trash / f"{path.name}-{new_id()}"
        os.replace(path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
