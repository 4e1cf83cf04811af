"""Helpers shared by task functions: zoo lookups, staging directories, uploaded-volume views."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from medseglens_core.errors import InvalidInput, NotFound

_CATALOG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_SERVER_ID = re.compile(r"^[0-9a-f]{32}$")
# Uploaded roles (service.uploads) -> BraTS 2023 file suffixes, so core loaders read the folder.
_ROLE_SUFFIX = {"t1n": "t1n", "t1c": "t1c", "t2w": "t2w", "t2f": "t2f", "label": "seg"}


def catalog_dir(root: Path, name: str, what: str) -> Path:
    """``root/name`` for a zoo entry name, which must exist; refuses path-like names."""
    if not _CATALOG.match(name):
        raise InvalidInput(f"{what} {name!r} is not a valid zoo name (letters, digits, '_', '.', '-').")
    path = root / name
    if not path.is_dir():
        known = (
            sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
            if root.is_dir()
            else []
        )
        raise NotFound(f"{what} {name!r} is not in the zoo ({root}); known: {known or 'none'}.")
    return path


def fresh_dir(path: Path) -> Path:
    """An empty directory at ``path`` (a leftover of a crashed attempt is removed first)."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def publish_dir(staged: Path, dest: Path) -> None:
    """Move ``staged`` to ``dest`` in one rename; refuses to overwrite an existing entry."""
    if dest.exists():
        raise InvalidInput(f"{dest} already exists; refusing to overwrite it.")
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staged, dest)


def volumes_as_cases(data_dir: Path, volume_ids: Iterable[str], out: Path) -> Path:
    """Symlink uploaded volumes into ``out/<id>/<id>-<mod>.nii[.gz]`` (BraTS 2023 names); returns ``out``.

    Volumes live at ``<data_dir>/volumes/<id>/<role>.nii[.gz]`` (see ``service.storage``).
    """
    fresh_dir(out)
    for vid in volume_ids:
        if not _SERVER_ID.match(vid):
            raise InvalidInput(f"volume id {vid!r} is not a server-made id (32 lowercase hex).")
        src = data_dir / "volumes" / vid
        if not src.is_dir():
            raise NotFound(f"volume {vid} does not exist; list volumes with GET /v1/volumes.")
        case = out / vid
        case.mkdir()
        for f in sorted(src.iterdir()):
            role, _, ext = f.name.partition(".")
            if role in _ROLE_SUFFIX and ext in ("nii", "nii.gz"):
                (case / f"{vid}-{_ROLE_SUFFIX[role]}.{ext}").symlink_to(f.resolve())
        if not any(case.iterdir()):
            raise InvalidInput(
                f"volume {vid} has no per-modality files; 4-D uploads cannot be used for training."
            )
    return out


def remove_staging(zoo: Path, data_dir: Path, job_id: str) -> None:
    """Delete what a dead attempt of ``job_id`` may have left (staging dirs, scratch); never published data."""
    for path in (
        zoo / "saes" / f".staging-{job_id}",
        zoo / "reports" / f".staging-{job_id}",
        data_dir / "jobs" / job_id / "cases",
    ):
        shutil.rmtree(path, ignore_errors=True)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON through a temp file + rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)
