"""Request ids and JSON logs, one object per line, without personal data.

A request id comes from the X-Request-ID header when it matches a strict pattern (a proxy in
front may set one), otherwise it is generated here; it is echoed on the response and
`request_id()` gives it to the audit log. Every request is logged once with its method, the
endpoint name and URL rule (never the raw path or the query string, which can hold codes and
personal data), the status and the duration. No form values, cookies or IP addresses.
Exceptions are logged with their type and stack frames but not their message: database errors
quote the values they choked on.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
import traceback
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Response, g, has_request_context, request

from gateway import metrics

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{7,63}\Z")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

request_log = logging.getLogger("gateway.request")


def request_id() -> str | None:
    """The current request's id (for the audit log); None outside a request."""
    if not has_request_context():
        return None
    value: str | None = g.get("gateway_request_id")
    if value is None:
        # Also for code that runs before the request hooks (or when one of them failed).
        incoming = request.headers.get(REQUEST_ID_HEADER, "")
        value = incoming if _REQUEST_ID.match(incoming) else secrets.token_hex(16)
        g.gateway_request_id = value
    return value


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id and extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or request_id(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in entry:
                entry[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            entry["exception"] = record.exc_info[0].__name__
            entry["stack"] = [
                f"{frame.filename}:{frame.lineno} in {frame.name}"
                for frame in traceback.extract_tb(record.exc_info[2])
            ]
        return json.dumps(entry, default=str, ensure_ascii=False)


class RequestIdFilter(logging.Filter):
    """Stamps the request id on each record while the request is still current."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id()
        return True


def configure_logging() -> None:
    """Send the gateway's logs to stderr as JSON lines (once per process)."""
    logger = logging.getLogger("gateway")
    if any(isinstance(h.formatter, JsonFormatter) for h in logger.handlers):
        return
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def _begin() -> None:
    request_id()
    g.gateway_started = time.perf_counter()


def _finish(response: Response) -> Response:
    rid = request_id()
    if rid:
        response.headers[REQUEST_ID_HEADER] = rid
    started: float | None = g.get("gateway_started")
    duration = time.perf_counter() - started if started is not None else 0.0
    endpoint = request.endpoint or "unmatched"
    method = request.method if request.method in _METHODS else "OTHER"
    status = str(response.status_code)
    metrics.HTTP_REQUESTS.labels(endpoint=endpoint, method=method, status=status).inc()
    metrics.HTTP_DURATION.labels(endpoint=endpoint).observe(duration)
    request_log.info(
        "request",
        extra={
            "method": method,
            "endpoint": endpoint,
            "route": request.url_rule.rule if request.url_rule is not None else None,
            "status": response.status_code,
            "duration_ms": round(duration * 1000, 1),
        },
    )
    return response


def init_app(app: Flask) -> None:
    configure_logging()
    app.before_request(_begin)
    # Registered first, so it runs after every other after_request hook.
    app.after_request(_finish)
