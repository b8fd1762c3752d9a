"""The gateway's own pages: home, liveness, readiness and metrics (shared/INTERFACE.md, "Health"
and "Metrics").

`/healthz` says the process answers; `/readyz` checks the database and, when configured, Redis,
and names what failed (never a URL or credential) with a 503 so a load balancer stops sending
traffic; `/metrics` is the Prometheus text format, aggregates only.

`/metrics` is not public: counters that move when one person's request does (an SMS code sent
for a recovery, say) would tell an outsider whether an account exists. With
GATEWAY_METRICS_TOKEN set it answers only a matching bearer token (RFC 6750; compared in
constant time); without it, it is open in dev and absent (404) in production.
"""

from __future__ import annotations

import hashlib
import hmac
import logging

from flask import Blueprint, Response, abort, jsonify, render_template, request

from gateway import metrics
from gateway.app import get_settings
from gateway.db import get_db
from gateway.store import StoreUnavailable, get_store

bp = Blueprint("web", __name__)
log = logging.getLogger("gateway.web")


@bp.get("/")
def home() -> str:
    return render_template("home.html")


@bp.get("/healthz")
def healthz() -> Response:
    return _no_cache(jsonify(status="ok"))


@bp.get("/readyz")
def readyz() -> Response:
    failed: list[str] = []
    try:
        get_db().ping()
    except Exception as exc:  # any failure means not ready; the cause stays in our log
        log.warning("readiness: database failed", extra={"cause": type(exc).__name__})
        failed.append("database")
    try:
        get_store().ping()
    except StoreUnavailable:
        log.warning("readiness: shared store failed")
        failed.append("redis" if get_settings().redis_url else "database")
    if failed:
        response = jsonify(status="unavailable", failed=sorted(set(failed)))
        response.status_code = 503
    else:
        response = jsonify(status="ready")
    return _no_cache(response)


@bp.get("/metrics")
def metrics_view() -> Response:
    settings = get_settings()
    if settings.metrics_token is None:
        if not settings.dev:
            abort(404)
    elif not _bearer_matches(settings.metrics_token):
        response = Response("a valid bearer token is required\n", status=401,
                            mimetype="text/plain")
        response.headers["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return _no_cache(response)
    body, content_type = metrics.render()
    return _no_cache(Response(body, content_type=content_type))


def _bearer_matches(token: str) -> bool:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    # Digests of equal length, so the comparison time says nothing about the token's length.
    return scheme.lower() == "bearer" and hmac.compare_digest(
        hashlib.sha256(given.strip().encode()).digest(), hashlib.sha256(token.encode()).digest()
    )


def _no_cache(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    return response
