"""Serving with granian (a Rust HTTP server, hyper) over WSGI, for one worker process or many.

Workers share nothing in memory: sessions, counters and caches live in the database or Redis
(gateway.store), so any worker, or any instance behind a proxy, can serve any request.

What the server bounds, and what the app does:
- HTTP/1 only (a reverse proxy speaks it to us; HTTP/2 would only add attack surface here).
  The request head must fit in about HTTP1_BUFFER bytes (hyper may read up to twice that
  before it refuses) and arrive within HEADER_READ_TIMEOUT_MS (slowloris; an idle keep-alive
  connection is closed after as long); hyper also refuses more than 100 header fields. Too
  much is answered with 431 or 414, or the connection is closed, never by the app.
- Bodies are bounded by the app: MAX_CONTENT_LENGTH, 413 from the Content-Length before the
  body is read (granian then closes the connection rather than read the rest).
- Forwarded headers are not read by granian: the app believes them only from peers in
  GATEWAY_FORWARDED_ALLOW_IPS (gateway.forwarded).
- SIGTERM or SIGINT to the master: workers stop accepting, finish requests in flight, and are
  killed after KILL_TIMEOUT_S. A worker that dies is started again; SIGHUP restarts them all.
  Workers take stop signals from the master only (their own process group) and stop when it
  dies (see _only_the_master_signals_workers).
- There is no per-request worker timeout (gunicorn had 30 s): a hung request is bounded by the
  timeouts of what it waits for (SMTP, HTTP clients, the database and Redis connections).
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final

from flask import Flask

from gateway import metrics
from gateway.settings import Settings

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

#: Python threads per worker that run the app, by default (`gateway serve --threads`). They
#: share one GIL: bench/oidc_compare.py served the most flows per second with 2 or 3, fewer
#: with 1 (a worker idles while it waits for the database) and with 4 or more (the threads
#: spend CPU taking turns at the GIL: 8 used 20% more per flow than 2). A deployment whose
#: requests wait long on slow outside services (SMS provider, SMTP relay) may want more.
THREADS: Final = 2
#: Bytes of request head (request line and headers) a connection may send.
HTTP1_BUFFER: Final = 64 * 1024
#: Milliseconds a client gets to send the whole request head.
HEADER_READ_TIMEOUT_MS: Final = 10_000
#: Seconds a stopping worker gets to finish its requests before it is killed.
KILL_TIMEOUT_S: Final = 10


#: WSGI environ keys set for every request (by granian), whatever the process environment holds.
_ALWAYS_SET: Final = frozenset(
    {"REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "SERVER_NAME", "SERVER_PORT",
     "SERVER_PROTOCOL", "REMOTE_ADDR", "GATEWAY_INTERFACE", "SERVER_SOFTWARE"}
)


def _from_request_if_sent(key: str) -> bool:
    return key.startswith("HTTP_") or key in ("CONTENT_TYPE", "CONTENT_LENGTH")


class _RequestOnly:
    """granian starts every WSGI environ from a copy of os.environ: the secret key and database
    password would ride along in every request, and a variable such as HTTP_PROXY would read as
    a request header. This removes what came from the process environment: a variable that no
    request sets, always; a header (HTTP_*, CONTENT_*) when its value is the process's (a client
    that sent that header with that very value loses nothing it could not have known)."""

    def __init__(self, app: Flask) -> None:
        self._app = app
        process = dict(os.environ)
        self._drop = tuple(key for key in process
                           if key not in _ALWAYS_SET and not _from_request_if_sent(key))
        self._headers = tuple((key, value) for key, value in process.items()
                              if _from_request_if_sent(key))

    def __call__(self, environ: WSGIEnvironment,
                 start_response: StartResponse) -> Iterable[bytes]:
        for key in self._drop:
            environ.pop(key, None)
        for key, value in self._headers:
            if environ.get(key) == value:
                del environ[key]
        return self._app(environ, start_response)


def _only_the_master_signals_workers(master: int) -> None:
    """In a worker: leave the terminal's process group, and get SIGTERM if the master dies.

    A worker that gets two stop signals at once (Ctrl+C reaches the whole group, then the
    master's SIGTERM) sometimes misses both in granian 2.8 and is killed only after
    KILL_TIMEOUT_S; with one signal, from the master, it stops at once. And a worker outlives
    a master killed with SIGKILL, still serving the port, unless told (gunicorn's workers
    watched their parent)."""
    os.setpgid(0, 0)
    if sys.platform == "linux":
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != master:  # the master died before prctl: nobody would tell us
        os._exit(1)


def _worker_app(settings: Settings, master: int) -> _RequestOnly:
    """Run in each worker process: every worker builds its own app (no state is inherited)."""
    from gateway.app import create_app

    _only_the_master_signals_workers(master)
    return _RequestOnly(create_app(settings))


def run(
    settings: Settings, *, host: str, port: int, workers: int, threads: int = THREADS
) -> None:
    from granian.constants import HTTPModes, Interfaces
    from granian.http import HTTP1Settings
    from granian.server import Server

    # Each worker counts in files of its own there; /metrics adds them up. Emptied now, before
    # any worker starts, so counts from an earlier run never leak in.
    metrics.prepare_multiprocess_dir(settings.instance_dir / "prometheus-multiproc")
    server = Server(
        "gateway.app:create_app",  # a label only: the app comes from _worker_app
        address=host,  # an IPv6 address is bound as [host]:port
        port=port,
        interface=Interfaces.WSGI,
        workers=workers,
        blocking_threads=threads,
        http=HTTPModes.http1,
        http1_settings=HTTP1Settings(
            header_read_timeout=HEADER_READ_TIMEOUT_MS, max_buffer_size=HTTP1_BUFFER
        ),
        websockets=False,
        log_access=False,  # the app writes its own JSON request log without personal data
        respawn_failed_workers=True,
        workers_kill_timeout=KILL_TIMEOUT_S,
    )
    server.serve(
        target_loader=functools.partial(_worker_app, settings, os.getpid()), wrap_loader=False
    )
