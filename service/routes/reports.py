"""Diff reports shipped in the zoo (``ZOO/reports/<id>/report.json`` and ``report.html``).

Ids are looked up among the directory names present, never joined onto a path from client input.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from service.deps import CatalogId, ReadKey, SettingsDep
from service.errors import ResourceNotFound, problem_responses, problem_statuses
from service.schemas.catalog import ReportList, ReportSummary

router = APIRouter(prefix="/diff-reports", tags=["diff-reports"])


def zoo_reports(zoo: Path) -> dict[str, Path]:
    """Report id -> its directory, for every ``ZOO/reports/<id>/report.json``."""
    root = zoo / "reports"
    if not root.is_dir():
        return {}
    return {p.name: p for p in sorted(root.iterdir()) if (p / "report.json").is_file()}


def _report_dir(zoo: Path, report_id: str) -> Path:
    path = zoo_reports(zoo).get(report_id)
    if path is None:
        raise ResourceNotFound(f"No diff report {report_id!r}; list them with GET /v1/diff-reports.")
    return path


def _read_json(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    return data if isinstance(data, dict) else {"data": data}


@router.get("", response_model=ReportList, responses=problem_responses(*problem_statuses()))
def list_diff_reports(_key: ReadKey, settings: SettingsDep) -> ReportList:
    """Diff reports available, by id."""
    items = []
    for report_id, path in zoo_reports(settings.zoo_dir).items():
        title = _read_json(path / "report.json").get("title", "")
        items.append(ReportSummary(id=report_id, title=str(title), has_html=(path / "report.html").is_file()))
    return ReportList(items=items)


@router.get(
    "/{report_id}", response_model=dict[str, Any], responses=problem_responses(*problem_statuses((404,)))
)
def get_diff_report(_key: ReadKey, report_id: CatalogId, settings: SettingsDep) -> dict[str, Any]:
    """The report's JSON as written by the analysis (shared and population-specific latents, tests)."""
    return _read_json(_report_dir(settings.zoo_dir, report_id) / "report.json")


@router.get(
    "/{report_id}/html",
    response_class=HTMLResponse,
    responses=problem_responses(*problem_statuses((404,))),
)
def get_diff_report_html(_key: ReadKey, report_id: CatalogId, settings: SettingsDep) -> HTMLResponse:
    """The report rendered as a self-contained HTML page."""
    html = _report_dir(settings.zoo_dir, report_id) / "report.html"
    if not html.is_file():
        raise ResourceNotFound(f"Diff report {report_id!r} has no HTML rendering; fetch its JSON instead.")
    return HTMLResponse(html.read_text(encoding="utf-8"))
