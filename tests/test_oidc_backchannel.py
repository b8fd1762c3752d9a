"""Back-channel logout (OIDC Back-Channel Logout 1.0; gateway/idp/oidc/backchannel.py).

Relying parties are real HTTP servers on loopback ports (`Receiver`); logins go through the
real login flow (password page), so the SSO session, its grants and its end are the real ones.
Each received logout token is verified like a relying party would: signature by the published
JWKS, `typ`, iss, aud, iat/exp, jti, events, sid and sub, and no nonce.
"""

from __future__ import annotations

import base64
import json
import logging
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import pytest
from flask import Flask
from flask.testing import FlaskClient
from joserfc import jwe, jwt
from joserfc.jwk import KeySet, RSAKey

from gateway.idp.oidc import backchannel
from gateway.idp.oidc.backchannel import LOGOUT_EVENT
from gateway.levels import Level
from tests.oidc_helpers import RP, add_client, authorize, exchange, pkce, query
from tests.test_login_flow import PASSWORD, make_account, post_form, token

WAIT = 10.0


@dataclass
class Received:
    path: str
    content_type: str
    body: dict[str, list[str]]
    headers: dict[str, str]


class Receiver:
    """A relying party's back-channel logout endpoint on a free loopback port.

    Paths: `/ok` answers 200, `/fail` 500, `/redirect` a 302 to `/ok` (which must not be
    followed), `/slow` sleeps longer than the gateway's read timeout."""

    def __init__(self) -> None:
        self.received: queue.Queue[Received] = queue.Queue()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode("ascii", "replace")
                outer.received.put(Received(
                    self.path, self.headers.get("Content-Type", ""), parse_qs(raw),
                    dict(self.headers.items()),
                ))
                if self.path == "/slow":
                    time.sleep(backchannel.READ_TIMEOUT + 1)
                if self.path == "/redirect":
                    self.send_response(302)
                    self.send_header("Location", outer.url("/ok"))
                else:
                    self.send_response(500 if self.path == "/fail" else 200)
                self.send_header("Content-Length", "0")
                self.send_header("Cache-Control", "no-store")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_port}{path}"

    def get(self, timeout: float = WAIT) -> Received:
        return self.received.get(timeout=timeout)

    def nothing_more(self) -> bool:
        backchannel.dispatcher.drain()
        return self.received.empty()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    backchannel.dispatcher.drain()
    r.close()


def verify_logout_token(
    token: str, jwks: dict[str, Any], issuer: str, client_id: str,
    decrypt_key: RSAKey | None = None,
) -> dict[str, Any]:
    """Back-Channel Logout 1.0 section 2.6, as a relying party checks it."""
    if decrypt_key is not None:
        token = jwe.decrypt_compact(
            token, decrypt_key, algorithms=["RSA-OAEP-256", "A256GCM"]
        ).plaintext.decode()  # type: ignore[union-attr]
    decoded = jwt.decode(token, KeySet.import_key_set(jwks), algorithms=["RS256", "ES256"])
    assert decoded.header["typ"] == "logout+jwt"
    claims = dict(decoded.claims)
    assert claims["iss"] == issuer
    assert claims["aud"] == client_id
    assert claims["events"] == {LOGOUT_EVENT: {}}
    assert isinstance(claims["jti"], str) and len(claims["jti"]) >= 16
    assert 0 < claims["exp"] - claims["iat"] <= 120
    assert "nonce" not in claims
    assert claims.get("sub") or claims.get("sid")
    return claims


def peek(token: str) -> dict[str, Any]:
    """The claims of a JWS without checking it (only to pick the expected audience)."""
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def login(app: Flask, web: FlaskClient, client_id: str, secret: str | None) -> dict[str, Any]:
    """Log in at basis for `client_id` (password on the first call, SSO after); the ID token's
    claims and the tokens."""
    verifier, challenge = pkce()
    response = authorize(web, client_id, challenge=challenge,
                         acr_values=Level.BASIS.context_class)
    while response.status_code in (302, 303) and not response.location.startswith(RP):
        response = web.get(response.location)
    if response.status_code == 200:
        response = post_form(web, response, "/password",
                             {"username": "jan.jansen", "password": PASSWORD}, follow=False)
        while response.status_code in (302, 303) and not response.location.startswith(RP):
            response = web.get(response.location)
    assert response.status_code == 303 and response.location.startswith(RP)
    code = query(response.location)["code"]
    body = exchange(web, code, verifier, client_id=client_id, secret=secret).get_json()
    keys = KeySet.import_key_set(web.get("/oidc/jwks").get_json())
    claims = dict(jwt.decode(body["id_token"], keys, algorithms=["RS256", "ES256"]).claims)
    return {"claims": claims, **body}


def test_discovery_advertises_backchannel_logout(client: FlaskClient) -> None:
    document = client.get("/.well-known/openid-configuration").get_json()
    assert document["backchannel_logout_supported"] is True
    assert document["backchannel_logout_session_supported"] is True


def test_end_session_notifies_every_registered_client(app: Flask, receiver: Receiver) -> None:
    web = app.test_client()
    make_account(app)
    _c, secret1 = add_client(app, "rp1", backchannel_logout_uri=receiver.url("/ok"))
    _c, secret2 = add_client(app, "rp2", backchannel_logout_uri=receiver.url("/ok"),
                             id_token_alg="ES256")
    _c, secret3 = add_client(app, "rp3")  # no back-channel URI: never told
    first = login(app, web, "rp1", secret1)
    second = login(app, web, "rp2", secret2)
    login(app, web, "rp3", secret3)
    assert receiver.nothing_more()

    response = web.get("/oidc/logout", query_string={"id_token_hint": first["id_token"]})
    assert response.status_code == 200  # logged out, no redirect URI given
    jwks = web.get("/oidc/jwks").get_json()
    got = {}
    for _ in range(2):
        received = receiver.get()
        assert received.path == "/ok"
        assert received.content_type == "application/x-www-form-urlencoded"
        [logout_token] = received.body["logout_token"]
        client_id = peek(logout_token)["aud"]
        claims = verify_logout_token(logout_token, jwks, "http://127.0.0.1:8000", client_id)
        login_ = {"rp1": first, "rp2": second}[client_id]
        assert claims["sub"] == login_["claims"]["sub"]
        assert claims["sid"] == login_["claims"]["sid"]
        got[client_id] = claims
    assert set(got) == {"rp1", "rp2"}
    assert got["rp1"]["jti"] != got["rp2"]["jti"]
    assert receiver.nothing_more()
    # The session's tokens are revoked too.
    bearer = {"Authorization": "Bearer " + second["access_token"]}
    assert web.get("/oidc/userinfo", headers=bearer).status_code == 401


def test_the_flows_own_logout_notifies_too(app: Flask, receiver: Receiver) -> None:
    web = app.test_client()
    make_account(app)
    _c, secret = add_client(app, "rp1", backchannel_logout_uri=receiver.url("/ok"))
    done = login(app, web, "rp1", secret)
    page = web.get("/logout")
    post_form(web, page, "/logout", {})
    [logout_token] = receiver.get().body["logout_token"]
    claims = verify_logout_token(logout_token, web.get("/oidc/jwks").get_json(),
                                 "http://127.0.0.1:8000", "rp1")
    assert claims["sid"] == done["claims"]["sid"] and claims["sub"] == done["claims"]["sub"]
    bearer = {"Authorization": "Bearer " + done["access_token"]}
    assert web.get("/oidc/userinfo", headers=bearer).status_code == 401
    # Logging out again (no session left) sends nothing.
    post_form(web, web.get("/logout"), "/logout", {})
    assert receiver.nothing_more()


def test_encrypted_logout_token_for_a_client_with_an_encryption_key(
    app: Flask, receiver: Receiver
) -> None:
    web = app.test_client()
    make_account(app)
    key = RSAKey.generate_key(2048, private=True)
    public = {**key.as_dict(private=False), "use": "enc", "alg": "RSA-OAEP-256", "kid": "e1"}
    _c, secret = add_client(app, "rp1", backchannel_logout_uri=receiver.url("/ok"),
                            encryption_jwk=public)
    verifier, challenge = pkce()
    response = authorize(web, "rp1", challenge=challenge)
    response = post_form(web, web.get(response.location), "/password",
                         {"username": "jan.jansen", "password": PASSWORD}, follow=False)
    while not response.location.startswith(RP):
        response = web.get(response.location)
    body = exchange(web, query(response.location)["code"], verifier, client_id="rp1",
                    secret=secret).get_json()
    # Without an id_token_hint the person confirms on a CSRF-protected form.
    page = web.get("/oidc/logout", query_string={"client_id": "rp1"})
    web.post("/oidc/logout/confirm", data={"csrf_token": token(page)})
    [logout_token] = receiver.get().body["logout_token"]
    assert logout_token.count(".") == 4  # a JWE
    claims = verify_logout_token(logout_token, web.get("/oidc/jwks").get_json(),
                                 "http://127.0.0.1:8000", "rp1", decrypt_key=key)
    assert claims["sid"]
    assert body["id_token"].count(".") == 4


def test_failures_never_block_logout_and_log_no_personal_data(
    app: Flask, receiver: Receiver, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(backchannel, "READ_TIMEOUT", 0.5)
    web = app.test_client()
    make_account(app)
    secrets_ = {}
    for client_id, path in (("rp-fail", "/fail"), ("rp-redirect", "/redirect"),
                            ("rp-slow", "/slow")):
        secrets_[client_id] = add_client(app, client_id,
                                         backchannel_logout_uri=receiver.url(path))[1]
    # A port nobody listens on: the connection is refused.
    dead = Receiver()
    dead_url = dead.url("/ok")
    dead.close()
    secrets_["rp-dead"] = add_client(app, "rp-dead", backchannel_logout_uri=dead_url)[1]
    subs = [login(app, web, cid, secret)["claims"]["sub"] for cid, secret in secrets_.items()]

    # Which thread delivers each token: never the request's own, so no relying party (slow,
    # failing or dead) can hold up the logout page. Checked by thread, not by the clock.
    delivered_on: list[threading.Thread] = []
    original_deliver = backchannel.deliver

    def recording_deliver(notice: Any) -> bool:
        delivered_on.append(threading.current_thread())
        return original_deliver(notice)

    monkeypatch.setattr(backchannel, "deliver", recording_deliver)
    caplog.set_level(logging.INFO, logger="gateway.idp.oidc.backchannel")
    page = web.get("/logout")
    response = post_form(web, page, "/logout", {})
    assert response.status_code == 200
    paths = sorted(receiver.get().path for _ in range(3))
    assert paths == ["/fail", "/redirect", "/slow"]
    backchannel.dispatcher.drain(backchannel.READ_TIMEOUT + 5)
    assert len(delivered_on) == 4
    assert threading.current_thread() not in delivered_on
    assert receiver.received.empty()  # the redirect to /ok was not followed
    text = caplog.text
    for client_id in secrets_:
        assert f"client {client_id}" in text
    assert "HTTP 500" in text and "HTTP 302" in text
    assert "ReadTimeout" in text and "ConnectionError" in text
    for sub in subs:
        assert sub not in text
    assert "logout_token" not in text and "eyJ" not in text


def test_replaced_session_notifies(app: Flask, receiver: Receiver) -> None:
    """Another person logging in in the same browser ends the first person's session."""
    web = app.test_client()
    make_account(app)
    make_account(app, "piet.pieters", phone="+31612345679")
    _c, secret = add_client(app, "rp1", backchannel_logout_uri=receiver.url("/ok"))
    first = login(app, web, "rp1", secret)
    _verifier, challenge = pkce()
    response = authorize(web, "rp1", challenge=challenge, prompt="login")
    while response.status_code in (302, 303) and not response.location.startswith(RP):
        response = web.get(response.location)
    response = post_form(web, response, "/password",
                         {"username": "piet.pieters", "password": PASSWORD}, follow=False)
    while response.status_code in (302, 303) and not response.location.startswith(RP):
        response = web.get(response.location)
    assert "code" in query(response.location)
    [logout_token] = receiver.get().body["logout_token"]
    claims = verify_logout_token(logout_token, web.get("/oidc/jwks").get_json(),
                                 "http://127.0.0.1:8000", "rp1")
    assert claims["sub"] == first["claims"]["sub"]


def test_a_session_that_never_reached_a_client_sends_nothing(
    app: Flask, receiver: Receiver
) -> None:
    web = app.test_client()
    make_account(app)
    add_client(app, "rp1", backchannel_logout_uri=receiver.url("/ok"))
    # Logged in for rp1 but the code never exchanged: rp1 holds no session to end.
    verifier, challenge = pkce()
    response = authorize(web, "rp1", challenge=challenge)
    response = post_form(web, web.get(response.location), "/password",
                         {"username": "jan.jansen", "password": PASSWORD}, follow=False)
    while not response.location.startswith(RP):
        response = web.get(response.location)
    post_form(web, web.get("/logout"), "/logout", {})
    assert receiver.nothing_more()
    del verifier


def test_registration_refuses_plain_http_outside_loopback(app: Flask) -> None:
    from gateway.idp.oidc.clients import ClientError

    with pytest.raises(ClientError, match="--backchannel-logout-uri"):
        add_client(app, "rp1", backchannel_logout_uri="http://rp.example.nl/logout")
    with pytest.raises(ClientError, match="--backchannel-logout-uri"):
        add_client(app, "rp1", backchannel_logout_uri="https://rp.example.nl/logout#x")


def test_deliver_refuses_an_unsafe_uri_at_send_time(caplog: pytest.LogCaptureFixture) -> None:
    notice = backchannel.Notice("rp1", "http://rp.example.nl/logout", "x.y.z")
    assert backchannel.deliver(notice) is False
    assert "unsafe URI" in caplog.text
