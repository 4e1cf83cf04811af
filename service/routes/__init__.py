"""HTTP routes, one module per resource, each with its own ``router`` (prefix and tag).

``V1_MODULES`` lists the modules mounted under ``/v1``, in OpenAPI order: to add a resource, write
``service/routes/<resource>.py`` with ``router = APIRouter(prefix="/<resource>", tags=["<resource>"])``
and append its name here. Route function names become operationIds and must be unique.
"""

from __future__ import annotations

import importlib

from fastapi import APIRouter

V1_MODULES: tuple[str, ...] = (
    "volumes",
    "models",
    "latents",
    "segmentations",
    "interventions",
    "reports",
    "jobs",
    "dicom",
    "audit",
    "keys",
)


def v1_routers() -> list[APIRouter]:
    """The ``router`` of every module in ``V1_MODULES``."""
    return [importlib.import_module(f"service.routes.{name}").router for name in V1_MODULES]
