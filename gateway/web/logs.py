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

import collections
import contextlib
import functools
import json
import logging
import os
import re
import secrets
import threading
import time
import traceback
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Response
from flask.globals import _cv_app, _cv_request

from gateway import metrics

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID_ENVIRON = "HTTP_" + REQUEST_ID_HEADER.upper().replace("-", "_")
_REQUEST_ID = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{7,63}\Z")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

request_log = logging.getLogger("gateway.request")


def request_id() -> str | None:
    """The current request's id (for the audit log); None outside a request."""
    ctx = _cv_request.get(None)  # as has_request_context(), without the proxies
    if ctx is None:
        return None
    g = _cv_app.get().g
    value: str | None = g.get("gateway_request_id")
    if value is None:
        # Also for code that runs before the request hooks (or when one of them failed).
        # request.headers.get(REQUEST_ID_HEADER, "") reads this environ key.
        incoming = ctx.request.environ.get(_REQUEST_ID_ENVIRON, "")
        value = incoming if _REQUEST_ID.match(incoming) else secrets.token_hex(16)
        g.gateway_request_id = value
    return value


#: What json.dumps(entry, default=str, ensure_ascii=False) builds for every call (stateless).
_JSON = json.JSONEncoder(default=str, ensure_ascii=False)


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
        return _JSON.encode(entry)


class RequestIdFilter(logging.Filter):
    """Stamps the request id on each record while the request is still current."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id()
        return True


#: Request-log lines wait at most this long, or until this many characters are waiting,
#: before they are written (as nginx's `access_log ... buffer= flush=`).
FLUSH_SECONDS = 1.0
FLUSH_CHARS = 32 * 1024


class JsonLinesHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to stderr: the request log's lines in blocks, every other record at once.

    One write (and flush) per request line, under the handler's lock, cost more CPU than the
    rest of the log line (issue 6, "Performance": the threads of a worker took turns at the
    lock and the GIL). A request-log line (`gateway.request`, INFO) is therefore formatted
    without the lock and queued; the queue is written in one block when FLUSH_CHARS wait or
    the oldest line is FLUSH_SECONDS old (a timer thread writes them out when no request
    comes). Any other record (a warning, an error) is written at once, after the lines
    queued before it, so the order stays. At exit everything queued is written: at
    interpreter exit by `logging.shutdown`, in a worker process (multiprocessing, as
    granian's) by its exit finalizers. A crash of the process loses at most FLUSH_SECONDS of
    request lines.
    """

    def __init__(self) -> None:
        super().__init__()
        self._waiting: collections.deque[str] = collections.deque()
        self._chars = 0  # about: updated without the lock
        self._oldest = 0.0
        self._timer_pid = 0

    def handle(self, record: logging.LogRecord) -> bool:
        # As logging.Handler.handle, but emit() takes the lock only to write.
        if not self.filter(record):
            return False
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        now = time.monotonic()
        if not self._waiting:
            self._oldest = now
        self._waiting.append(line)  # deque.append is atomic: no lock needed
        self._chars += len(line)
        if (
            record.name != request_log.name or record.levelno > logging.INFO
            or self._chars >= FLUSH_CHARS or now - self._oldest >= FLUSH_SECONDS
        ):
            self.flush()
        elif self._timer_pid != os.getpid():
            self._start_timer()

    def _write(self) -> None:
        """Write what is queued, in order (the caller holds the lock)."""
        lines = []
        with contextlib.suppress(IndexError):
            while True:
                lines.append(self._waiting.popleft())
        self._chars = 0
        if not lines or getattr(self.stream, "closed", False):
            return  # stderr closed at interpreter exit (a test runner's capture, say)
        try:
            self.stream.write("".join(lines))
            self.stream.flush()
        except Exception:  # as StreamHandler: a broken stderr never breaks a request
            self.handleError(logging.makeLogRecord({"msg": "request log lines lost"}))

    def flush(self) -> None:
        self.acquire()
        try:
            self._write()
        finally:
            self.release()

    def forget(self) -> None:
        """In a forked child: the parent writes what it had queued, not the child too."""
        self._waiting.clear()
        self._chars = 0
        self._timer_pid = 0

    def _start_timer(self) -> None:
        self.acquire()
        try:
            if self._timer_pid == os.getpid():
                return
            self._timer_pid = os.getpid()
        finally:
            self.release()

        pause = threading.Event()  # never set: its wait() is the timer's sleep

        def tick() -> None:
            # Event.wait, not time.sleep: a test that replaces time.sleep for its own module
            # replaces it for this thread too, which would then spin.
            while self._timer_pid == os.getpid():
                pause.wait(FLUSH_SECONDS / 2)
                if self._waiting and time.monotonic() - self._oldest >= FLUSH_SECONDS:
                    self.flush()

        threading.Thread(target=tick, name="gateway-log-flush", daemon=True).start()


def _flush_at_worker_exit(handler: JsonLinesHandler) -> None:
    """In a multiprocessing child (a granian worker), which ends with os._exit after its
    exit finalizers, not with logging.shutdown."""
    import multiprocessing.util

    multiprocessing.util.Finalize(handler, handler.flush, exitpriority=100)


def configure_logging() -> None:
    """Send the gateway's logs to stderr as JSON lines (once per process)."""
    logger = logging.getLogger("gateway")
    if any(isinstance(h.formatter, JsonFormatter) for h in logger.handlers):
        return
    import multiprocessing.util

    handler = JsonLinesHandler()
    os.register_at_fork(after_in_child=handler.forget)
    multiprocessing.util.register_after_fork(handler, _flush_at_worker_exit)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    # Nothing the JSON lines show comes from the caller's frame, thread or process, so each
    # record need not look them up (the Logging HOWTO's "Optimization": these switches).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


@functools.lru_cache(maxsize=4096)
def _series(endpoint: str, method: str, status: int) -> tuple[Any, Any]:
    """The metrics' children for one endpoint, method and status (prometheus_client's
    `labels()` takes a lock and builds its key on every call; the children never change).
    Bounded: endpoints, methods and statuses are few, and the cache forgets beyond that."""
    return (
        metrics.HTTP_REQUESTS.labels(endpoint=endpoint, method=method, status=str(status)),
        metrics.HTTP_DURATION.labels(endpoint=endpoint),
    )


def _begin() -> None:
    request_id()
    _cv_app.get().g.gateway_started = time.perf_counter()


def _finish(response: Response) -> Response:
    rid = request_id()
    if rid:
        response.headers[REQUEST_ID_HEADER] = rid
    # The context variables once, not a LocalProxy lookup per attribute.
    request = _cv_request.get().request
    started: float | None = _cv_app.get().g.get("gateway_started")
    duration = time.perf_counter() - started if started is not None else 0.0
    endpoint = request.endpoint or "unmatched"
    method = request.method if request.method in _METHODS else "OTHER"
    status = response.status_code
    count, timing = _series(endpoint, method, status)
    count.inc()
    timing.observe(duration)
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
