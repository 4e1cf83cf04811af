"""Dangling rows: database rows whose artefact files are missing on disk (read-only scan).

Which rows need which files (paths are relative to the data directory unless they say ``ZOO``):

=============== ==========================================================================
volume          every ``files[].path`` (the uploaded modalities and label map)
segmentation    ``<path>/mask.nii.gz`` and ``<path>/labels.npy``
intervention    ``<path>/mask.nii.gz``
diff_report     ``<path>`` (a row of the ``diff_reports`` table)
job             a succeeded job's result: ``jobs/<id>/recovery.json`` (recovery),
                ``ZOO/reports/<id>/report.json`` (diff report), ``ZOO/saes/<id>/card.json``
                (SAE training)
=============== ==========================================================================

Files made on request (latent maps, overlays, SEG exports, previews) are not required: the routes
make them again from the files above. The scan only stats files, never reads them, and stops
after ``limit`` rows (``truncated`` then says so), so ``/readyz`` can afford it. It runs outside
any tenant scope and sees every project's rows. Missing files of a row answer 410
``artefact-gone`` on its artefact routes; this scan is how an operator finds them all.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from service.jobs.tasks.recovery import RESULT_FILE
from service.models_db import DiffReport, Intervention, Job, JobState, Segmentation, Volume
from service.segmenting import LABELS_FILE, MASK_FILE
from service.storage import Storage

KINDS = ("volume", "segmentation", "intervention", "diff_report", "job")
_ZOO_NAME = r"(?P<id>[A-Za-z0-9][A-Za-z0-9_.-]{0,127})"
# A succeeded job's result link -> (``data`` or ``zoo``, the file under that root that backs it).
_RESULT_FILES = (
    (re.compile(r"^/v1/jobs/(?P<id>[0-9a-f]{32})/result$"), "data", "jobs/{id}/" + RESULT_FILE),
    (re.compile(rf"^/v1/diff-reports/{_ZOO_NAME}$"), "zoo", "reports/{id}/report.json"),
    (re.compile(rf"^/v1/saes/{_ZOO_NAME}$"), "zoo", "saes/{id}/card.json"),
)


@dataclass(frozen=True)
class Dangling:
    """One row with missing files: ``kind`` (see :data:`KINDS`), its id and project, what is missing.

    ``missing`` holds paths relative to the data directory, or ``ZOO/...`` for zoo files.
    """

    kind: str
    id: str
    project_id: str
    missing: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "id": self.id,
            "project_id": self.project_id,
            "missing": list(self.missing),
        }


@dataclass
class StorageReport:
    """The outcome of a scan: rows checked per kind, the dangling ones, and whether it stopped early."""

    checked: Counter[str] = field(default_factory=Counter)
    dangling: list[Dangling] = field(default_factory=list)
    truncated: bool = False

    @property
    def by_kind(self) -> dict[str, int]:
        """Dangling rows per kind (every kind listed, 0 included)."""
        counts = Counter(d.kind for d in self.dangling)
        return {kind: counts[kind] for kind in KINDS}

    def summary(self) -> dict[str, Any]:
        """Counts only (no ids), for ``/readyz``."""
        return {
            "dangling": len(self.dangling),
            "by_kind": self.by_kind,
            "checked": sum(self.checked.values()),
            "truncated": self.truncated,
        }

    def to_json(self) -> dict[str, Any]:
        """Counts and every dangling row, for ``medseglens storage check --json``."""
        return {
            **self.summary(),
            "checked_by_kind": {kind: self.checked[kind] for kind in KINDS},
            "rows": [d.to_json() for d in self.dangling],
        }


class _Files:
    """Existence checks of stored relative paths under the data directory and the zoo."""

    def __init__(self, storage: Storage, zoo: Path) -> None:
        self.root, self.zoo = storage.root, zoo

    def _path(self, relative: str) -> str | None:
        # A stat per path, no realpath: stored paths are server-made; one that is absolute or climbs
        # out with ".." could not be served (Storage.resolve refuses it), so it counts as missing.
        parts = PurePosixPath(relative)
        if parts.is_absolute() or ".." in parts.parts:
            return None
        return os.path.join(self.root, relative)

    def missing(self, relatives: list[str]) -> tuple[str, ...]:
        """The stored relative paths (data directory) that are not files."""
        return tuple(rel for rel in relatives if not ((p := self._path(rel)) and os.path.isfile(p)))

    def missing_dir(self, relative: str) -> tuple[str, ...]:
        """``(relative,)`` when nothing (file or folder) is at that stored path, else ``()``."""
        path = self._path(relative)
        return () if path and os.path.exists(path) else (relative,)

    def missing_result(self, ref: str) -> tuple[str, ...]:
        """The file behind a succeeded job's result link, when it is missing."""
        for pattern, root, template in _RESULT_FILES:
            match = pattern.match(ref)
            if match is None:
                continue
            rel = template.format(id=match.group("id"))
            if root == "data":
                return self.missing([rel])
            return () if (self.zoo / rel).is_file() else (f"ZOO/{rel}",)
        return ()  # a result link this scan does not know: nothing to check


def _rows(session: Session, limit: int | None) -> Iterator[tuple[str, str, str, Any]]:
    """``(kind, id, project_id, what to check)`` of every row that references files, oldest first."""
    queries = (
        ("volume", select(Volume.id, Volume.project_id, Volume.files).order_by(Volume.created)),
        (
            "segmentation",
            select(Segmentation.id, Segmentation.project_id, Segmentation.path).order_by(
                Segmentation.created
            ),
        ),
        (
            "intervention",
            select(Intervention.id, Intervention.project_id, Intervention.path).order_by(
                Intervention.created
            ),
        ),
        (
            "diff_report",
            select(DiffReport.id, DiffReport.project_id, DiffReport.path).order_by(DiffReport.created),
        ),
        (
            "job",
            select(Job.id, Job.project_id, Job.result_ref)
            .where(Job.state == JobState.succeeded.value, Job.result_ref.is_not(None))
            .order_by(Job.created),
        ),
    )
    for kind, query in queries:
        for row in session.execute(query if limit is None else query.limit(limit + 1)):
            yield kind, row[0], row[1], row[2]


def find_dangling(
    session: Session, storage: Storage, zoo: Path, *, limit: int | None = None
) -> StorageReport:
    """Scan the database for rows whose files are gone; reads nothing but the rows and ``stat``.

    ``limit`` bounds the rows checked in all (None: every row); a scan that hit it has
    ``truncated`` set and reports what it saw up to there.
    """
    files = _Files(storage, zoo)
    report = StorageReport()
    for kind, item_id, project_id, ref in _rows(session, limit):
        if limit is not None and sum(report.checked.values()) >= limit:
            report.truncated = True
            break
        report.checked[kind] += 1
        missing = _missing(files, kind, ref)
        if missing:
            report.dangling.append(Dangling(kind, item_id, project_id, missing))
    return report


def _missing(files: _Files, kind: str, ref: Any) -> tuple[str, ...]:
    """What row ``ref`` (a volume's ``files``, a folder path or a job's result link) lacks on disk."""
    if kind == "volume":
        return files.missing([str(f["path"]) for f in ref or [] if isinstance(f, dict) and f.get("path")])
    if kind == "segmentation":
        return files.missing([f"{ref}/{MASK_FILE}", f"{ref}/{LABELS_FILE}"])
    if kind == "intervention":
        return files.missing([f"{ref}/{MASK_FILE}"])
    if kind == "diff_report":
        return files.missing_dir(str(ref))
    return files.missing_result(str(ref))


class CachedScan:
    """:func:`find_dangling` for a readiness probe: at most ``limit`` rows, redone after ``ttl_s``.

    Probes come every few seconds; the scan stats a few files per row (about 0.3 s per 10 000
    rows on SQLite, measured on a shared 2-core machine), so a fresh one per probe would cost more
    than the probe is worth. Thread-safe (probes run in the threadpool).
    """

    def __init__(self, *, ttl_s: float = 30.0, limit: int = 5_000) -> None:
        self.ttl_s, self.limit = ttl_s, limit
        self._lock = threading.Lock()
        self._at: float | None = None
        self._summary: dict[str, Any] = {}

    def summary(self, factory: sessionmaker[Session], storage: Storage, zoo: Path) -> dict[str, Any]:
        """The counts of a scan no older than ``ttl_s`` (``{"error": ...}`` when the scan failed)."""
        with self._lock:
            now = time.monotonic()
            if self._at is None or now - self._at >= self.ttl_s:
                self._summary = self._scan(factory, storage, zoo)
                self._at = now
            return dict(self._summary)

    def _scan(self, factory: sessionmaker[Session], storage: Storage, zoo: Path) -> dict[str, Any]:
        try:
            with factory() as session:
                return find_dangling(session, storage, zoo, limit=self.limit).summary()
        except (SQLAlchemyError, OSError) as exc:  # reported, not raised: readiness has its own checks
            return {"error": f"storage scan failed: {type(exc).__name__}"}
