"""Bounded JSON nesting: a JSON body or form JSON field nested deeper than :data:`MAX_JSON_DEPTH`
is a 422 problem naming the limit, before any parser, validator or error renderer recurses into it.

A "JSON bomb" of a few thousand ``[`` is parsed by no one: :func:`json_too_deep` scans the bytes once
(strings and escapes skipped, stopping as soon as the limit is passed; bodies with fewer brackets
than the limit are not scanned at all), iteratively, so it cannot overflow the stack. :class:`JsonDepthMiddleware` applies it to every request whose content type is
JSON (``application/json`` or ``*+json``) and replays the body to the app unchanged otherwise;
:func:`loads_bounded` is the same rule for JSON carried in form fields (``POST /v1/volumes``).
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import ServiceError

__all__ = ["MAX_JSON_DEPTH", "JsonDepthMiddleware", "JsonTooDeep", "json_too_deep", "loads_bounded"]

# No request of this API nests deeper than a handful of levels; 32 leaves room for free-form
# metadata while staying far below any recursion limit (Python's json, pydantic's serializer).
MAX_JSON_DEPTH = 32

_OPEN, _CLOSE, _QUOTE, _BACKSLASH = frozenset(b"[{"), frozenset(b"]}"), 0x22, 0x5C


class JsonTooDeep(ServiceError):
    """A JSON document nested deeper than :data:`MAX_JSON_DEPTH`."""

    status, slug, title = 422, "json-too-deep", "JSON nested too deeply"


class _Scanner:
    """Incremental nesting-depth scan of JSON bytes (chunk by chunk)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.depth, self.in_string, self.escape = limit, 0, False, False

    def feed(self, data: bytes) -> bool:
        """Scan ``data``; ``True`` as soon as the depth passes the limit."""
        for byte in data:
            if self.in_string:
                if self.escape:
                    self.escape = False
                elif byte == _BACKSLASH:
                    self.escape = True
                elif byte == _QUOTE:
                    self.in_string = False
            elif byte == _QUOTE:
                self.in_string = True
            elif byte in _OPEN:
                self.depth += 1
                if self.depth > self.limit:
                    return True
            elif byte in _CLOSE:
                self.depth -= 1
        return False


def json_too_deep(data: bytes | str, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether JSON text nests ``[`` / ``{`` deeper than ``limit`` levels.

    Text with at most ``limit`` brackets in all cannot: counted in C, not scanned.
    """
    raw = data.encode() if isinstance(data, str) else data
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    return _Scanner(limit).feed(raw)


def _too_deep(what: str) -> str:
    return (
        f"{what} is nested deeper than {MAX_JSON_DEPTH} levels (the limit of this API); "
        "send a flatter document."
    )


def loads_bounded(text: str, what: str) -> Any:
    """``json.loads(text)``, refusing (422 :class:`JsonTooDeep`) nesting over :data:`MAX_JSON_DEPTH`.

    ``what`` names the field in the message, e.g. ``"'metadata'"``. Invalid JSON still raises
    :class:`json.JSONDecodeError` for the caller to word.
    """
    if json_too_deep(text):
        raise JsonTooDeep(_too_deep(what))
    return json.loads(text)


def _is_json(scope: Scope) -> bool:
    for key, value in scope.get("headers") or ():
        if key == b"content-type":
            media = value.split(b";", 1)[0].strip().lower()
            return media == b"application/json" or media.endswith(b"+json")
    return False


class JsonDepthMiddleware:
    """Pure ASGI middleware: a JSON request body nested too deeply gets a 422 problem+json."""

    def __init__(self, app: ASGIApp, limit: int = MAX_JSON_DEPTH) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _is_json(scope):
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request" or not message.get("more_body", False):
                break  # the whole body, or a disconnect handed on as it came
        body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.request")
        if json_too_deep(body, self.limit):
            from starlette.requests import Request

            from service.errors import problem_response

            exc = JsonTooDeep(_too_deep("The JSON body"))
            response = problem_response(
                Request(scope), status=exc.status, slug=exc.slug, title=exc.title, detail=exc.detail
            )
            await response(scope, receive, send)
            return
        replay = iter(messages)

        async def replayed() -> Message:
            try:
                return next(replay)
            except StopIteration:
                return await receive()

        await self.app(scope, replayed, send)
