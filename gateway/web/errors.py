"""Error answers: friendly pages in the user's language, or RFC 9457 problem details.

A person sees what went wrong and what to do next, in Dutch or English, never a stack trace.
Machines (paths under /desk/api/, or a request that prefers JSON over HTML) get
`application/problem+json` (RFC 9457). An unexpected exception is logged with the request id,
and the page shows that id as a reference for the help desk.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify, render_template, request
from markupsafe import escape
from sqlalchemy import exc as sa_exc
from sqlalchemy.exc import DBAPIError
from werkzeug.exceptions import HTTPException, InternalServerError
from werkzeug.http import HTTP_STATUS_CODES

from gateway.i18n import lazy_gettext
from gateway.store import StoreUnavailable
from gateway.web.csrf import CSRFError
from gateway.web.logs import request_id

log = logging.getLogger("gateway.web")

API_PREFIXES = ("/desk/api/",)

_PAGES: dict[int, tuple[Any, Any]] = {
    400: (
        lazy_gettext("Bad request"),
        lazy_gettext("The request could not be processed. Go back and try again."),
    ),
    403: (lazy_gettext("Access denied"), lazy_gettext("You do not have access to this page.")),
    404: (
        lazy_gettext("Page not found"),
        lazy_gettext("This page does not exist. Check the address, or go to the home page."),
    ),
    405: (
        lazy_gettext("Action not allowed"),
        lazy_gettext(
            "This page cannot be used this way. Go back and try again, or go to the home page."
        ),
    ),
    413: (
        lazy_gettext("Too much data"),
        lazy_gettext("What you sent is too large. Go back and send less."),
    ),
    429: (
        lazy_gettext("Too many attempts"),
        lazy_gettext("You have tried too often. Please wait a while and try again."),
    ),
    500: (
        lazy_gettext("Something went wrong"),
        lazy_gettext(
            "Something went wrong on our side. Please try again later. If it keeps happening, "
            "contact us and mention the reference below."
        ),
    ),
    503: (
        lazy_gettext("Service temporarily unavailable"),
        lazy_gettext("The service is temporarily unavailable. Please try again in a few minutes."),
    ),
}


def wants_problem_json() -> bool:
    if request.path.startswith(API_PREFIXES):
        return True
    best = request.accept_mimetypes.best_match(
        ["text/html", "application/problem+json", "application/json"], default="text/html"
    )
    return best != "text/html"


def error_response(code: int, error: HTTPException | None = None) -> Response:
    """The answer for HTTP status `code`, as a page or as problem details."""
    title, message = _PAGES.get(code, _PAGES[500 if code >= 500 else 400])
    if isinstance(error, CSRFError):
        title, message = lazy_gettext("This form has expired"), error.description
    headers = [
        (name, value)
        for name, value in (error.get_headers() if error is not None else [])
        if name.lower() not in ("content-type", "content-length")
    ]
    if wants_problem_json():
        # The title stays English and stable for machines; "detail" follows the language.
        problem = {
            "type": "about:blank",
            "title": error.name if error is not None else HTTP_STATUS_CODES.get(code, "Error"),
            "status": code,
            "detail": str(message),
            "request_id": request_id(),
        }
        response = jsonify(problem)
        response.status_code = code
        response.mimetype = "application/problem+json"
    else:
        try:
            body = render_template(
                "error.html", code=code, title=title, message=message, reference=request_id()
            )
        except Exception:  # the error page itself must never fail
            log.exception("error page failed to render")
            body = f"<!doctype html><title>{code}</title><p>{escape(str(message))}</p>"
        response = Response(body, status=code, mimetype="text/html")
    response.headers.extend(headers)
    return response


def _http_error(error: HTTPException) -> Response:
    return error_response(error.code or 500, error)


def _internal_error(error: InternalServerError) -> Response:
    original = getattr(error, "original_exception", None)
    if isinstance(original, StoreUnavailable):
        return _store_unavailable(original)
    if original is not None:
        exc_info = (type(original), original, original.__traceback__)
        log.error("unhandled exception", exc_info=exc_info)
    return error_response(500)


def _store_unavailable(error: StoreUnavailable) -> Response:
    # Fail closed: the request is refused, the cause is logged without connection details.
    log.error("shared store unavailable", extra={"cause": str(error)})
    return error_response(503)


#: Seconds a client is asked to wait after the database failed it (RFC 9110 Retry-After).
DATABASE_RETRY_AFTER = 30


def _database_unavailable(error: DBAPIError | sa_exc.TimeoutError) -> Response:
    """The database could not serve the request: unreachable, a lock or statement past its
    time limit, SQLite busy past its timeout, or no pooled connection free. Fail closed with a
    503 (the request's transaction is rolled back at teardown) and log the driver's error
    class only: its text may quote SQL."""
    orig = getattr(error, "orig", None)
    log.error("database unavailable", extra={"cause": type(orig or error).__name__})
    response = error_response(503)
    response.headers["Retry-After"] = str(DATABASE_RETRY_AFTER)
    return response


def _no_flask_exception_log(_exc_info: Any) -> None:
    """Flask's own exception log line quotes the raw path; `_internal_error` logs instead."""


def init_app(app: Flask) -> None:
    app.log_exception = _no_flask_exception_log  # type: ignore[method-assign,assignment]
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(InternalServerError, _internal_error)
    app.register_error_handler(StoreUnavailable, _store_unavailable)
    for unavailable in (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError):
        app.register_error_handler(unavailable, _database_unavailable)


def init_companion_app(app: Flask, template: str, label: str) -> None:
    """Error pages for the gateway's small companion apps (the demo portal, the eIDAS node
    simulator): `template` renders `status` and `name`; an unexpected error is logged by
    type only and shown as a plain 500 page, never a stack trace (ASVS 7.4.1)."""

    def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        body = render_template(template, status=status, name=exc.name)
        return Response(body, status=status, mimetype="text/html")

    def unexpected(exc: Exception) -> Response:
        if isinstance(exc, HTTPException):
            return http_error(exc)
        app.logger.error("%s error: %s", label, type(exc).__name__)
        body = render_template(template, status=500, name="Internal Server Error")
        return Response(body, status=500, mimetype="text/html")

    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(Exception, unexpected)
