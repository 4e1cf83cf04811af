"""Schemas shared by every resource: the RFC 9457 problem document."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Problem(BaseModel):
    """An RFC 9457 problem detail, served as ``application/problem+json``.

    ``type`` is stable per condition (``https://medseglens.dev/problems/<slug>``); clients branch on
    it, never on ``detail``. ``instance`` is the request path; ``request_id`` echoes ``X-Request-ID``.
    """

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="Stable URI naming the condition.")
    title: str = Field(description="Short summary of the condition; the same for every occurrence.")
    status: int = Field(description="HTTP status code.")
    detail: str = Field(description="What went wrong in this request and what to do about it.")
    instance: str = Field(description="The request path that produced the problem.")
    request_id: str | None = Field(default=None, description="The request id (X-Request-ID).")
    errors: list[dict] | None = Field(default=None, description="Per-field validation errors (422).")
