"""The demo portal (issue 9, items 1 and 2) through two live loopback servers: the gateway and
the portal, each a werkzeug server in a thread, with a requests session as the browser.

OIDC at basis and midden (SMS code from the outbox), SAML at basis, the result page with the
level, single logout for both; hostile answers refused; the dev outbox page only under
`gateway demo`; what `gateway demo` prints.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from html import unescape
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from flask import Flask
from joserfc import jwt
from joserfc.jwk import RSAKey
from lxml import etree
from werkzeug.serving import BaseWSGIServer, make_server

from gateway.accounts.models import Account
from gateway.db import get_db
from gateway.levels import Level
from gateway.portal import create_portal
from gateway.portal.keys import PORTAL_URL_CONFIG, PortalAddresses
from gateway.portal.oidc_client import OidcClient, OidcError, PendingLogin
from gateway.portal.outbox import DEMO_FLAG
from gateway.portal.seed import seed_portal
from gateway.settings import DEFAULT_POLICIES_DIR, Settings
from tests.test_login_flow import PASSWORD, last_code, make_account

BSN = "999990019"
TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


class _Dispatch:
    """A WSGI app set after the server has bound its port (the app needs the port)."""

    app: Any = None

    def __call__(self, environ: Any, start_response: Any) -> Any:
        return self.app(environ, start_response)


@dataclass
class Live:
    gateway: Flask
    gateway_url: str
    portal_url: str

    def browser(self) -> requests.Session:
        return requests.Session()


@pytest.fixture
def live(make_app: Callable[..., Flask], settings: Settings) -> Iterator[Live]:
    servers: list[BaseWSGIServer] = []
    dispatchers = []
    for _ in range(2):
        dispatch = _Dispatch()
        servers.append(make_server("127.0.0.1", 0, dispatch, threaded=True))
        dispatchers.append(dispatch)
    gateway_url = f"http://127.0.0.1:{servers[0].server_port}"
    portal_url = f"http://127.0.0.1:{servers[1].server_port}"
    gateway = make_app(issuer=gateway_url)
    gateway.config[PORTAL_URL_CONFIG] = portal_url
    with gateway.app_context():
        lines = seed_portal(gateway)
        assert any(portal_url in line for line in lines)
    dispatchers[0].app = gateway
    dispatchers[1].app = create_portal(settings.with_overrides(issuer=gateway_url),
                                       portal_url=portal_url)
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for t in threads:
        t.start()
    try:
        yield Live(gateway, gateway_url, portal_url)
    finally:
        for s in servers:
            s.shutdown()
            s.server_close()


def citizen(app: Flask) -> None:
    account_id = make_account(app)
    with get_db(app).begin() as db:
        db.execute(sa.update(Account).where(Account.id == account_id).values(bsn=BSN))


def form(page: requests.Response, contains: str) -> tuple[str, dict[str, str]]:
    """The action and fields of the page's form whose action contains `contains`."""
    root = etree.HTML(page.text)
    for element in root.iter("form"):
        action = element.get("action") or ""
        if contains in action:
            fields = {i.get("name"): i.get("value") or "" for i in element.iter("input")
                      if i.get("name")}
            return requests.compat.urljoin(page.url, action), fields
    raise AssertionError(f"no form posting to ...{contains} on {page.url}: {page.text[:300]}")


def submit(web: requests.Session, page: requests.Response, contains: str,
           data: dict[str, str] | None = None) -> requests.Response:
    action, fields = form(page, contains)
    return web.post(action, data={**fields, **(data or {})}, timeout=10)


def login(live: Live, web: requests.Session, protocol: str, level: str,
          password: bool = True) -> requests.Response:
    """From the portal's home page to its result page, through the gateway's login pages."""
    home = web.get(live.portal_url + "/", timeout=10)
    page = submit(web, home, f"/login/{protocol}/{level}")
    assert page.url.startswith(live.gateway_url), page.url
    if password:
        page = submit(web, page, "/password", {"username": "jan.jansen", "password": PASSWORD})
    if level == "midden":
        page = submit(web, page, "/code", {"action": "send"})
        page = submit(web, page, "/code", {"action": "verify", "code": last_code(live.gateway)})
    if protocol == "saml":
        # The gateway's HTTP-POST binding page: a form the browser submits to the portal's ACS.
        action, _ = form(page, "/saml/acs")
        assert action == live.portal_url + "/saml/acs"
        page = submit(web, page, "/saml/acs")
    assert page.status_code == 200, page.text[:500]
    assert page.url == live.portal_url + "/result", page.url
    return page


def test_oidc_basis_then_midden_then_single_logout(live: Live) -> None:
    citizen(live.gateway)
    web = live.browser()
    page = login(live, web, "oidc", "basis")
    text = unescape(page.text)
    assert Level.BASIS.context_class in text and BSN in text
    assert '"pwd"' not in text and "pwd" in text  # amr shown
    assert "private_key_jwt" in text  # the explanation of the steps

    # Step-up: the gateway asks only for the SMS code (SSO keeps the password step).
    page = login(live, web, "oidc", "midden", password=False)
    text = unescape(page.text)
    assert Level.MIDDEN.context_class in text and "sms" in text

    page = submit(web, page, "/logout")
    assert page.status_code == 200 and page.url.startswith(live.portal_url + "/oidc/logged-out")
    assert "id_token_hint" in page.text
    # The portal forgot the person, and the gateway's SSO session is over: a new login asks
    # for the password again.
    assert web.get(live.portal_url + "/result", timeout=10).url == live.portal_url + "/"
    home = web.get(live.portal_url + "/", timeout=10)
    again = submit(web, home, "/login/oidc/basis")
    assert 'name="password"' in again.text


def test_saml_basis_and_single_logout(live: Live) -> None:
    citizen(live.gateway)
    web = live.browser()
    page = login(live, web, "saml", "basis")
    text = unescape(page.text)
    assert Level.BASIS.context_class in text
    assert f"s00000000:{BSN}" in text  # the DigiD NameID form for a --bsn SP
    assert "given_name" in text and "Jansen" in text  # attributes released to the SP
    page = submit(web, page, "/logout")
    assert page.status_code == 200 and page.url.startswith(live.portal_url + "/saml/sls")
    assert "LogoutResponse" in page.text
    home = web.get(live.portal_url + "/", timeout=10)
    again = submit(web, home, "/login/saml/basis")
    assert 'name="password"' in again.text  # the SSO session really ended


def test_saml_midden_in_english(live: Live) -> None:
    citizen(live.gateway)
    web = live.browser()
    web.get(live.portal_url + "/?lang=en", timeout=10)
    page = login(live, web, "saml", "midden")
    assert Level.MIDDEN.context_class in page.text and "You are logged in" in page.text
    dutch = web.get(live.portal_url + "/result?lang=nl", timeout=10)
    assert "U bent ingelogd" in dutch.text


def test_hostile_answers_are_refused(live: Live) -> None:
    citizen(live.gateway)
    web = live.browser()
    # No login started: a callback or a posted Response is refused, not believed.
    response = web.get(live.portal_url + "/oidc/callback?code=x&state=y", timeout=10)
    assert response.status_code == 400
    response = web.post(live.portal_url + "/saml/acs", data={"SAMLResponse": "PHg+"},
                        timeout=10)
    assert response.status_code == 400
    # A login started, then a forged state, then a forged SAML Response.
    home = web.get(live.portal_url + "/", timeout=10)
    submit(web, home, "/login/oidc/basis")
    response = web.get(live.portal_url + "/oidc/callback",
                       params={"code": "x", "state": "forged", "iss": live.gateway_url},
                       timeout=10)
    assert response.status_code == 400 and "<script" not in response.text
    home = web.get(live.portal_url + "/", timeout=10)
    submit(web, home, "/login/saml/basis")
    response = web.post(live.portal_url + "/saml/acs",
                        data={"SAMLResponse": "<script>alert(1)</script>"}, timeout=10)
    assert response.status_code == 400 and "<script>alert" not in response.text
    # Unknown level, missing CSRF token, logout without a login.
    assert web.post(live.portal_url + "/login/oidc/hoog",
                    data={"csrf_token": form(home, "/login/oidc/basis")[1]["csrf_token"]},
                    timeout=10).status_code == 404
    assert web.post(live.portal_url + "/login/oidc/basis", timeout=10).status_code == 400
    assert web.get(live.portal_url + "/oidc/logged-out?state=x", timeout=10).status_code == 400
    # Security headers: no inline script or style allowed.
    csp = home.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert home.headers["X-Frame-Options"] == "DENY"


def test_id_token_checks(live: Live, settings: Settings) -> None:
    """ID tokens that are not from the gateway, or not for this login, do not verify."""
    client = OidcClient(PortalAddresses(live.portal_url, live.gateway_url),
                        RSAKey.generate_key(2048))
    pending = PendingLogin("s", "nonce-1", "v", int(Level.BASIS))
    forger = RSAKey.generate_key(2048, parameters={"kid": "forged"})
    claims = {"iss": live.gateway_url, "sub": "x", "aud": "demo-portal", "exp": 2**40,
              "iat": 1, "nonce": "nonce-1", "acr": Level.BASIS.context_class}
    forged = jwt.encode({"alg": "RS256", "kid": "forged"}, claims, forger)
    with pytest.raises(OidcError):
        client.verify_id_token(forged, pending)
    unsigned = jwt.encode({"alg": "none"}, claims, None, algorithms=["none"])
    with pytest.raises(OidcError):
        client.verify_id_token(unsigned, pending)
    with pytest.raises(OidcError, match="state"):
        client.finish({"state": "other", "iss": live.gateway_url, "code": "c"}, pending)
    with pytest.raises(OidcError, match="issuer"):
        client.finish({"state": "s", "iss": "http://evil.example", "code": "c"}, pending)


def _write_outboxes(settings: Settings) -> None:
    settings.sms_outbox.parent.mkdir(parents=True, exist_ok=True)
    with settings.sms_outbox.open("w", encoding="utf-8") as fh:
        for text in ("first 111111", "<script>alert(1)</script> 222222"):
            fh.write(json.dumps({"to": "+31612345678", "channel": "sms", "text": text,
                                 "sent_at": "2025-01-01T00:00:00Z"}) + "\n")
        fh.write("not json\n")
    with settings.mail_outbox.open("w", encoding="utf-8") as fh:
        fh.write(json.dumps({"to": "a@example.org", "subject": "Uw code <b>",
                             "text": "code 333333", "sent_at": "x"}) + "\n")


def test_outbox_page_only_in_demo_mode(make_app: Callable[..., Flask],
                                       settings: Settings) -> None:
    _write_outboxes(settings)
    plain = make_app()
    assert plain.test_client().get("/dev/outbox").status_code == 404
    demo = make_app(environ={**settings.environ, DEMO_FLAG: "1"})
    response = demo.test_client().get("/dev/outbox?lang=en")
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_data(as_text=True)
    assert "<script>alert" not in body and "&lt;script&gt;alert(1)&lt;/script&gt;" in body
    assert body.index("222222") < body.index("111111")  # newest first
    assert "333333" in body and "Uw code &lt;b&gt;" in body


def test_outbox_page_absent_outside_dev(settings: Settings) -> None:
    from gateway.portal.outbox import enabled

    assert enabled(settings.with_overrides(environ={DEMO_FLAG: "1"}))
    assert not enabled(settings.with_overrides(environ={DEMO_FLAG: "1"}, env="production"))
    assert not enabled(settings.with_overrides(environ={DEMO_FLAG: "yes"}))
    assert not enabled(settings)


def test_demo_prints_the_portal_and_what_to_open(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.demo import prepare_demo

    for name in list(__import__("os").environ):
        if name.startswith("GATEWAY_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("GATEWAY_INSTANCE_DIR", str(tmp_path / "instance"))
    monkeypatch.setenv("GATEWAY_DATABASE_URL", f"sqlite:///{tmp_path / 'demo.db'}")
    settings, lines, portal_url = prepare_demo("127.0.0.1", 8100, 8101)
    text = "\n".join(lines)
    assert portal_url == "http://127.0.0.1:8101"
    assert "Demo portal (RP):   http://127.0.0.1:8101/" in text
    assert "http://127.0.0.1:8100/dev/outbox" in text
    assert "http://127.0.0.1:8100/apply" in text
    assert "demo.officer" in text and "TOTP secret" in text
    assert settings.issuer == "http://127.0.0.1:8100" and settings.environ[DEMO_FLAG] == "1"
    # The demo turns the eIDAS route on (the shipped policies leave it off) and says where
    # the simulated node and its test persons are.
    assert "eIDAS node (sim):   http://127.0.0.1:8002/" in text
    from gateway.policy import load_policies

    assert load_policies(settings.policies_dir).routes.routes["eidas"].enabled
    assert not load_policies(DEFAULT_POLICIES_DIR).routes.routes["eidas"].enabled
    # A second run re-registers the portal (idempotent).
    _settings, again, _url = prepare_demo("127.0.0.1", 8100, 8101)
    assert any("demo-portal" in line for line in again)


def test_demo_refuses_the_same_port_twice(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from gateway.cli import main

    result = CliRunner().invoke(main, ["demo", "--port", "8100", "--portal-port", "8100"],
                                env={"GATEWAY_INSTANCE_DIR": str(tmp_path)})
    assert result.exit_code == 1
    assert result.output.strip() == "gateway: --portal-port: must differ from --port"
