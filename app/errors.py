"""One error base for the API and the one JSON shape every error answers with.

    {"error": {"status": 400, "reason": "bad_token", "field": "parent", "message": "..."}}

``reason`` is machine-readable and stable; ``field`` names the offending
input (a body path like ``events.3.ts``, a parameter, or a header) or null.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


class JsonResponse(JSONResponse):
    """JSON rendered with orjson (fast, and it serializes datetimes as ISO 8601)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class ApiError(Exception):
    """An error answered to the client. ``retriable`` mirrors 429/503 semantics."""

    def __init__(
        self,
        status: int,
        reason: str,
        message: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.field = field
        self.headers = headers
        self.extra = extra or {}

    @property
    def retriable(self) -> bool:
        return self.status in (429, 503)


def error_body(
    status: int, reason: str, message: str, field: str | None, **extra: Any
) -> dict[str, Any]:
    return {
        "error": {"status": status, "reason": reason, "field": field, "message": message, **extra}
    }


def _loc_to_field(loc: tuple[Any, ...] | list[Any]) -> str | None:
    parts = (
        [str(p) for p in loc if p != "body"] if loc and loc[0] == "body" else [str(p) for p in loc]
    )
    return ".".join(parts) or None


def install_error_handlers(app: FastAPI) -> None:
    """Makes every error, including FastAPI's own, answer in the one shape."""

    async def api_error(_: Request, exc: Exception) -> JsonResponse:
        assert isinstance(exc, ApiError)
        return JsonResponse(
            error_body(exc.status, exc.reason, exc.message, exc.field, **exc.extra),
            status_code=exc.status,
            headers=exc.headers,
        )

    async def validation_error(_: Request, exc: Exception) -> JsonResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [
            {"field": _loc_to_field(e["loc"]), "type": e["type"], "message": e["msg"]}
            for e in exc.errors()
        ]
        first = errors[0] if errors else {"field": None, "message": "invalid request"}
        return JsonResponse(
            error_body(422, "invalid", str(first["message"]), first["field"], errors=errors),
            status_code=422,
        )

    async def http_error(_: Request, exc: Exception) -> JsonResponse:
        assert isinstance(exc, StarletteHTTPException)
        reason = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JsonResponse(
            error_body(exc.status_code, reason, str(exc.detail), None),
            status_code=exc.status_code,
            headers=exc.headers,
        )

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def missing_key(kind: str, reason: str = "unauthorized") -> ApiError:
    """401 for a request without a bearer key of ``kind`` (read, admin, ...)."""
    return ApiError(
        401,
        reason,
        f"send Authorization: Bearer <{kind} key>",
        "authorization",
        headers={"WWW-Authenticate": "Bearer"},
    )
