"""OpenAI error envelope for every failure the adapter answers with.

    {"error": {"message": str, "type": str, "param": str | None, "code": str | None}}

`APIError` subclasses are raised anywhere (routes, the Triton client, dependencies)
and turned into that envelope by the handlers `install_error_handlers` registers.
FastAPI's own `{"detail": ...}` bodies never reach a client: validation errors,
unknown routes and unexpected exceptions go through the same envelope.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger("adapter")


class ClientGone(Exception):
    """The HTTP client went away before the answer was ready (its requests are cancelled)."""


class APIError(Exception):
    status_code = 500
    error_type = "server_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(APIError):
    status_code = 400
    error_type = "invalid_request_error"


class NotSupported(InvalidRequest):
    """A valid OpenAI field or value this server does not implement yet."""

    def __init__(self, param: str, what: str, *, plural: bool = False) -> None:
        verb = "are" if plural else "is"
        super().__init__(
            f"{what} {verb} not supported yet", param=param, code="unsupported_parameter"
        )


class Unauthorized(APIError):
    status_code = 401
    error_type = "invalid_request_error"

    def __init__(self, message: str) -> None:
        super().__init__(message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


class NotFound(APIError):
    status_code = 404
    error_type = "invalid_request_error"


class ModelNotFound(NotFound):
    def __init__(self, model: str, available: list[str] | None = None) -> None:
        known = f"; available: {', '.join(available)}" if available else ""
        super().__init__(
            f"The model '{model}' does not exist{known}", param="model", code="model_not_found"
        )


class BodyTooLarge(APIError):
    status_code = 413
    error_type = "invalid_request_error"

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"Request body is larger than the limit of {limit} bytes", code="request_too_large"
        )


class TooManyRequests(APIError):
    status_code = 429
    error_type = "rate_limit_error"

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(
            message, code="rate_limit_exceeded", headers={"Retry-After": str(retry_after_s)}
        )


class ServiceUnavailable(APIError):
    status_code = 503
    error_type = "server_error"

    def __init__(self, message: str) -> None:
        super().__init__(message, code="service_unavailable")


class GatewayTimeout(APIError):
    status_code = 504
    error_type = "timeout_error"

    def __init__(self, message: str) -> None:
        super().__init__(message, code="timeout")


class ModelError(APIError):
    """500: the model failed or broke the contract; the message is logged, not shown."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="model_error")


class InternalError(APIError):
    """500: the details are logged under the request id, never sent to the client."""

    def __init__(self, request_id: str) -> None:
        super().__init__(
            f"The server had an error while processing your request (request id {request_id})",
            code="internal_error",
        )


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status_code, headers=error.headers)


def request_id_of(request: Request) -> str:
    return str(request.scope.get("state", {}).get("request_id", "unknown"))


def validation_error(errors: list[Any]) -> InvalidRequest:
    """The first pydantic error as a 400 naming the field, e.g. param 'messages.0.role'."""
    first = errors[0] if errors else {}
    location = _field_path(first.get("loc", ()))
    param = ".".join(location) or None
    kind = first.get("type", "")
    if kind == "extra_forbidden":
        return InvalidRequest(
            f"Unrecognized request argument supplied: {param}",
            param=param,
            code="unknown_parameter",
        )
    if kind in ("json_invalid", "model_attributes_type") or param is None:
        return InvalidRequest(
            "We could not parse the JSON body of your request: expected a JSON object"
            f" ({first.get('msg', 'invalid body')})",
            code="invalid_json",
        )
    if kind == "missing":
        return InvalidRequest(f"Missing required parameter: '{param}'", param=param, code="missing")
    received = first.get("input")
    shown = repr(received) if len(repr(received)) <= 80 else repr(received)[:77] + "..."
    return InvalidRequest(
        f"Invalid value for '{param}': {first.get('msg', 'invalid')} (got {shown})",
        param=param,
        code="invalid_value",
    )


# pydantic puts the union member that failed into `loc` ("str", "list[int]", ...);
# the user's field path ends before it.
_UNION_TAGS = {"str", "int", "float", "bool", "none", "dict", "list"}


def _field_path(location: tuple[Any, ...] | list[Any]) -> list[str]:
    parts = [str(part) for part in location]
    if parts[:1] == ["body"]:
        parts = parts[1:]
    for position, part in enumerate(parts):
        if "[" in part or part in _UNION_TAGS:
            return parts[:position]
    return parts


# FastAPI's HTTPException detail when the body cannot be decoded (e.g. invalid UTF-8).
_BODY_NOT_DECODED = "There was an error parsing the body"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def on_api_error(request: Request, error: APIError) -> JSONResponse:
        if error.status_code == 500 and not isinstance(error, InternalError):
            # A 500's message may hold model internals: logged here, an id for the client.
            request_id = request_id_of(request)
            logger.error("request %s failed: %s", request_id, error.message)
            error = InternalError(request_id)
        return error_response(error)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(list(error.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        if error.status_code == 404:
            api_error: APIError = NotFound(
                f"Unknown route: {request.method} {request.url.path}", code="unknown_url"
            )
        elif error.status_code == 405:
            api_error = InvalidRequest(
                f"Method {request.method} is not allowed on {request.url.path}",
                code="method_not_allowed",
            )
            api_error.status_code = 405
        elif error.status_code == 400 and error.detail == _BODY_NOT_DECODED:
            # FastAPI's words for a body that is not UTF-8: say what to send instead.
            api_error = InvalidRequest(
                "We could not parse the body of your request: send JSON encoded as UTF-8",
                code="invalid_json",
            )
        else:
            api_error = APIError(str(error.detail))
            api_error.status_code = error.status_code
            api_error.error_type = "invalid_request_error"
        return error_response(api_error)

    @app.exception_handler(ClientGone)
    async def on_client_gone(request: Request, error: ClientGone) -> Response:
        # Nobody is listening; 499 (nginx's "client closed request") is for the access log.
        return Response(status_code=499)

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, error: Exception) -> JSONResponse:
        request_id = request_id_of(request)
        logger.exception("unhandled error (request id %s)", request_id)
        return error_response(InternalError(request_id))
