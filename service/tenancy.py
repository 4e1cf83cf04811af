"""Projects as tenants: every ORM query made while serving a request sees only the caller's project.

The authentication dependency (``service.auth.require_scope``, an async dependency so that what it
sets stays in the request's context) calls :func:`enter` with the key's project and marks the
request's session (``session.info["tenant"]``); from then on the request's session, and every other
session opened in that request's context (and in the threads ``anyio.to_thread`` starts from it,
which copy the context: the job store, for instance), is scoped by two session-wide listeners:

- ``do_orm_execute``: every ORM SELECT / UPDATE / DELETE of a tenant table
  (:data:`service.models_db.TENANT_MODELS`) gets ``WHERE project_id = <caller's>`` through
  ``with_loader_criteria`` - ``session.get``, lists, counts in subqueries and bulk updates alike,
  so another project's id simply is not found (404, never 403: ids do not leak);
- ``before_flush``: a new tenant row without ``project_id`` gets the caller's project.

A ``superuser`` key sees every project (no criteria); its new rows go to its own key's project.
Code outside a request (CLI, job workers, the reaper) runs unscoped; rows it creates without a
project land in the ``default`` project (column default).

New routes get this for free as long as they authenticate with ``require_scope`` first (the
``*Key`` dependencies in ``service.deps``) and read through the ORM.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import ORMExecuteState, Session, with_loader_criteria

from service.models_db import TENANT_MODELS


@dataclass(frozen=True)
class Tenant:
    """The project a request acts in; ``everything`` for superuser keys (read across projects)."""

    project_id: str
    project: str
    everything: bool = False


_current: contextvars.ContextVar[Tenant | None] = contextvars.ContextVar("medseglens_tenant", default=None)


def enter(tenant: Tenant, session: Session | None = None) -> None:
    """Scope the rest of the current request (context) and ``session`` to ``tenant``."""
    _current.set(tenant)
    if session is not None:
        session.info["tenant"] = tenant


def current() -> Tenant | None:
    """The tenant of the current context, None outside a request."""
    return _current.get()


def unscoped() -> contextvars.Context:
    """A context without a tenant, to run trusted bookkeeping (audit, auth) in: ``ctx.run(fn)``."""
    ctx = contextvars.copy_context()
    ctx.run(_current.set, None)
    return ctx


def _criteria(tenant: Tenant) -> list[Any]:
    pid = tenant.project_id
    return [
        with_loader_criteria(
            model, lambda cls: cls.project_id == pid, include_aliases=True, track_closure_variables=True
        )
        for model in TENANT_MODELS
    ]


def _tenant_of(session: Session) -> Tenant | None:
    tenant = session.info.get("tenant")
    return tenant if tenant is not None else _current.get()


@event.listens_for(Session, "do_orm_execute")
def _scope_queries(state: ORMExecuteState) -> None:
    tenant = _tenant_of(state.session)
    if tenant is None or tenant.everything:
        return
    if state.is_select or state.is_update or state.is_delete:
        state.statement = state.statement.options(*_criteria(tenant))


@event.listens_for(Session, "before_flush")
def _stamp_new_rows(session: Session, _context: Any, _instances: Any) -> None:
    tenant = _tenant_of(session)
    if tenant is None:
        return
    for obj in session.new:
        if isinstance(obj, TENANT_MODELS) and getattr(obj, "project_id", None) is None:
            obj.project_id = tenant.project_id
