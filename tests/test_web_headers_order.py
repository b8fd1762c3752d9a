"""Security headers and Vary: the one-step paths give the same headers, in the same order,
as setting each header one by one (gateway.web.headers, gateway.web.sessions)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask import Flask, Response, session
from flask.testing import FlaskClient
from werkzeug.datastructures import Headers

from gateway.web.headers import _DEFAULT_POLICY, PERMISSIONS_POLICY

SECURITY = [
    ("Content-Security-Policy", _DEFAULT_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Permissions-Policy", PERMISSIONS_POLICY),
]


@pytest.fixture
def client(make_app: Callable[..., Flask]) -> FlaskClient:
    app = make_app()

    @app.route("/t/plain")
    def plain() -> Response:
        return Response("ok", mimetype="text/plain")

    @app.route("/t/own")
    def own() -> Response:
        response = Response("ok", mimetype="text/plain")
        response.headers["X-Frame-Options"] = "SAMEORIGIN"
        response.headers["X-Own"] = "1"
        response.headers.add("x-frame-options", "ALLOW-FROM x")
        response.headers["Cache-Control"] = "private"
        return response

    @app.route("/t/vary/<value>")
    def vary(value: str) -> Response:
        session["k"] = "v"
        response = Response("<p>ok</p>", mimetype="text/html")
        response.headers["Vary"] = value
        return response

    return app.test_client()


def test_security_headers_follow_the_view_headers_in_order(client: FlaskClient) -> None:
    response = client.get("/t/plain")
    names = [name for name, _ in response.headers]
    start = names.index("Content-Security-Policy")
    assert list(response.headers)[start : start + len(SECURITY)] == SECURITY


def test_a_view_header_is_replaced_where_it_stands(client: FlaskClient) -> None:
    response = client.get("/t/own")
    expected = Headers(
        [("X-Frame-Options", "SAMEORIGIN"), ("X-Own", "1"), ("x-frame-options", "ALLOW-FROM x"),
         ("Cache-Control", "private")]
    )
    for name, value in SECURITY:
        expected[name] = value
    got = [(n, v) for n, v in response.headers if n not in ("Content-Type", "Content-Length",
                                                             "X-Request-ID")]
    assert got == list(expected)
    assert response.headers.getlist("X-Frame-Options") == ["DENY"]
    assert response.headers["Cache-Control"] == "private"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Origin", "Origin, Accept-Language, Cookie"),
        ("cookie", "cookie, Accept-Language"),
        ('"Cookie", Origin', 'Cookie, Origin, Accept-Language'),
    ],
)
def test_vary_on_cookie_once(client: FlaskClient, value: str, expected: str) -> None:
    response = client.get(f"/t/vary/{value}")
    assert response.headers.getlist("Vary") == [expected]
