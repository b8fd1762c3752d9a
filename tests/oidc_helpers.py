"""Helpers for the OIDC tests: clients, PKCE, a stand-in login flow, token calls.

`FakeLogin` replaces the login flow's two entry points used by `gateway.idp.oidc.views`
(`start_login`, `finish_login`) with a real `AuthnResult` (or `AuthnError`) chosen by the
test, so the protocol side can be driven without typing passwords; tests/test_oidc_login.py
goes through the real login flow.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

from flask import Flask, redirect
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from gateway import clock
from gateway.app import get_settings
from gateway.db import get_db
from gateway.flows.types import AuthnError, AuthnResult, ErrorCode, RpRequest
from gateway.idp.oidc import clients as registry
from gateway.levels import Level

RP = "https://rp.example.nl/callback"
ATTACKER = "https://attacker.example/callback"


def add_client(
    app: Flask, client_id: str = "rp1", redirect_uris: tuple[str, ...] = (RP,), **kwargs: Any
) -> tuple[registry.Client, str | None]:
    with app.app_context(), get_db(app).begin() as db:
        reg = registry.register(
            db, get_settings(app), client_id=client_id, redirect_uris=redirect_uris, **kwargs
        )
    return reg.client, reg.client_secret


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def basic(client_id: str, secret: str) -> dict[str, str]:
    raw = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": "Basic " + raw}


def query(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


class FakeLogin:
    """Stands in for gateway.flows.login: every flow ends with `outcome(rp_request)`."""

    def __init__(self) -> None:
        self.requests: list[RpRequest] = []
        self._pending: dict[str, RpRequest] = {}
        self.account_id: str | None = None
        self.level = Level.MIDDEN
        self.auth_time: datetime | None = None
        self.sso_session_id: str | None = "sso-1"
        self.error: ErrorCode | None = None
        self.outcome: Callable[[RpRequest], AuthnResult | AuthnError] = self._default

    def _default(self, rp_request: RpRequest) -> AuthnResult | AuthnError:
        if self.error is not None:
            return AuthnError(self.error, rp_request)
        return AuthnResult(
            subject_key=f"account:{self.account_id or 'a-1'}",
            account_id=self.account_id,
            route="desk_account",
            level=self.level,
            amr=("pwd", "sms") if self.level >= Level.MIDDEN else ("pwd",),
            auth_time=self.auth_time or clock.now(),
            sso_session_id=self.sso_session_id,
        )

    def start(self, rp_request: RpRequest) -> Any:
        flow_id = secrets.token_urlsafe(32)
        self.requests.append(rp_request)
        self._pending[flow_id] = rp_request
        return redirect(rp_request.resume_url + "?flow=" + flow_id, code=303)

    def finish(self, flow_id: str) -> tuple[RpRequest, AuthnResult | AuthnError] | None:
        rp_request = self._pending.pop(flow_id, None)
        if rp_request is None:
            return None
        return rp_request, self.outcome(rp_request)


def authorize(
    web: FlaskClient, client_id: str = "rp1", *, challenge: str | None, method: str = "GET",
    **params: str | None,
) -> TestResponse:
    """Authorization request; follows the (fake) login back to the gateway's answer."""
    data: dict[str, str] = {
        "response_type": "code", "client_id": client_id, "redirect_uri": RP,
        "scope": "openid", "state": "st-1", "nonce": "n-1",
    }
    if challenge is not None:
        data.update(code_challenge=challenge, code_challenge_method="S256")
    for key, value in params.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    if method == "POST":
        response = web.post("/oidc/authorize", data=data)
    else:
        response = web.get("/oidc/authorize", query_string=data)
    if response.status_code == 303 and "/oidc/authorize/resume" in response.location:
        response = web.get(response.location)
    return response


def get_code(web: FlaskClient, client_id: str = "rp1", **params: str | None) -> tuple[str, str]:
    """A code and its PKCE verifier."""
    verifier, challenge = pkce()
    response = authorize(web, client_id, challenge=challenge, **params)
    assert response.status_code == 303, response.get_data(as_text=True)[:500]
    args = query(response.location)
    assert "code" in args, args
    return args["code"], verifier


def exchange(
    web: FlaskClient, code: str, verifier: str | None, *, client_id: str = "rp1",
    secret: str | None = None, post_secret: bool = False, extra: dict[str, str] | None = None,
) -> TestResponse:
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": RP}
    if verifier is not None:
        data["code_verifier"] = verifier
    headers: dict[str, str] = {}
    if secret is not None and not post_secret:
        headers = basic(client_id, secret)
    else:
        data["client_id"] = client_id
        if secret is not None:
            data["client_secret"] = secret
    data.update(extra or {})
    return web.post("/oidc/token", data=data, headers=headers)
