"""Serving with gunicorn, a production-grade WSGI server, for one worker or many.

Workers share nothing in memory: sessions, counters and caches live in the database or Redis
(gateway.store), so any worker, or any instance behind a proxy, can serve any request.
"""

from __future__ import annotations

from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication

from gateway import metrics
from gateway.settings import Settings


class _Gunicorn(BaseApplication):  # type: ignore[misc]
    def __init__(self, settings: Settings, options: dict[str, Any]) -> None:
        self._settings = settings
        self._options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        from gateway.app import create_app

        return create_app(self._settings)


def run(settings: Settings, *, host: str, port: int, workers: int) -> None:
    # Each worker counts in files of its own there; /metrics adds them up. Emptied now, before
    # any worker starts, so counts from an earlier run never leak in.
    metrics.prepare_multiprocess_dir(settings.instance_dir / "prometheus-multiproc")
    options = {
        "bind": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        "workers": workers,
        "worker_class": "gthread",
        "threads": 4,
        "timeout": 30,
        "graceful_timeout": 10,
        # Bodies are bounded by the app (MAX_CONTENT_LENGTH); headers by gunicorn.
        "limit_request_line": 8190,
        "limit_request_fields": 100,
        "accesslog": None,  # the app writes its own JSON request log without personal data
        "forwarded_allow_ips": settings.environ.get("GATEWAY_FORWARDED_ALLOW_IPS", "127.0.0.1"),
        "preload_app": False,
        "child_exit": lambda _server, worker: metrics.worker_exited(worker.pid),
    }
    _Gunicorn(settings, options).run()
