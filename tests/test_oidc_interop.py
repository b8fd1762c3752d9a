"""Interop with an independent, certified relying-party library (issue 6 item 6, "Done when").

The gateway runs on a real HTTP server on a free loopback port; `tests/interop/rp.mjs` (node,
`openid-client` 6, OpenID Certified, not built on authlib) does discovery, builds the
authorization URL (PKCE S256, state, nonce, acr_values), exchanges the code, validates the ID
token (JWKS signature, iss, aud, exp, nonce, RFC 9207 `iss`, acr) and calls userinfo. The
browser part is done here with `requests` against the live server: the password page, and the
SMS code from the dev outbox for midden. Back-channel logout tokens are verified with node
`jose` as well.

node_modules is installed with `npm ci` when missing. Without `node` the tests skip, except
under CI=true, where they must run.
"""

from __future__ import annotations

import fcntl
import html
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import pytest
import requests
from flask import Flask
from werkzeug.serving import make_server

from gateway.levels import Level
from tests.oidc_helpers import RP, add_client
from tests.test_login_flow import PASSWORD, last_code, make_account
from tests.test_oidc_backchannel import Receiver, receiver  # noqa: F401 - fixture

INTEROP = Path(__file__).parent / "interop"
NODE_TIMEOUT = 60
TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')
FORM = re.compile(r"<form\b[^>]*>", re.IGNORECASE)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"interop must run under CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def node() -> str:
    """The node binary, with tests/interop's packages installed (npm ci, once per machine)."""
    binary = shutil.which("node")
    if binary is None:
        _unavailable("node is not installed (Node.js 20+ runs the openid-client interop)")
    assert binary is not None
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
    major = int(version.stdout.strip().lstrip("v").split(".")[0])
    if major < 20:
        _unavailable(f"openid-client 6 needs Node.js 20 or newer, found {version.stdout.strip()}")
    # pytest-xdist workers share the folder: one installs, the other waits.
    lock_path = Path(tempfile.gettempdir()) / f"gateway-interop-{os.getuid()}.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (INTEROP / "node_modules" / "openid-client" / "package.json").exists():
            npm = shutil.which("npm")
            if npm is None:
                _unavailable("npm is not installed")
            assert npm is not None
            done = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund"], cwd=INTEROP, capture_output=True,
                text=True, timeout=300,
            )
            assert done.returncode == 0, done.stderr[-2000:]
    return binary


def run_rp(node: str, mode: str, data: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run(
        [node, "rp.mjs", mode], cwd=INTEROP, input=json.dumps(data), capture_output=True,
        text=True, timeout=NODE_TIMEOUT,
    )
    assert done.stdout, done.stderr[-2000:]
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


@dataclass
class Live:
    app: Flask
    issuer: str


@pytest.fixture
def live(make_app: Callable[..., Flask]) -> Iterator[Live]:
    """The gateway on a real server; the port is known before the app (its issuer) exists."""
    holder: dict[str, Flask] = {}

    def wsgi(environ: Any, start_response: Any) -> Any:
        return holder["app"](environ, start_response)

    server = make_server("127.0.0.1", 0, wsgi, threaded=True)
    issuer = f"http://127.0.0.1:{server.server_port}"
    holder["app"] = make_app(issuer=issuer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Live(holder["app"], issuer)
    finally:
        server.shutdown()
        server.server_close()


def _forms(page: str) -> list[str]:
    actions = []
    for tag in FORM.findall(page):
        match = re.search(r'action="([^"]*)"', tag)
        if match:
            actions.append(html.unescape(match.group(1)))
    return actions


class Browser:
    """A person at a browser: follows redirects, fills in the login pages."""

    def __init__(self, live: Live) -> None:
        self.live = live
        self.http = requests.Session()
        self.http.trust_env = False  # loopback only, never through a proxy
        self.pages: list[str] = []

    def _post(self, page: requests.Response, contains: str, data: dict[str, str]) -> Any:
        action = next(a for a in _forms(page.text) if contains in a)
        match = TOKEN.search(page.text)
        assert match, "no CSRF token on the page"
        return self.http.post(urljoin(page.url, action),
                              data={"csrf_token": match.group(1), **data},
                              allow_redirects=False, timeout=10)

    def login(self, url: str) -> str:
        """Follow `url` through the login pages; returns the callback URL for the RP."""
        self.pages = []
        response = self.http.get(url, allow_redirects=False, timeout=10)
        for _ in range(30):
            if response.status_code in (302, 303):
                location = urljoin(response.url, response.headers["Location"])
                if location.startswith(RP):
                    return location
                assert location.startswith(self.live.issuer), location
                response = self.http.get(location, allow_redirects=False, timeout=10)
                continue
            assert response.status_code == 200, (response.status_code, response.text[:500])
            actions = _forms(response.text)
            if any("/password" in a for a in actions):
                self.pages.append("password")
                response = self._post(response, "/password",
                                      {"username": "jan.jansen", "password": PASSWORD})
            elif any("/code" in a for a in actions) and 'name="code"' in response.text:
                self.pages.append("code")
                response = self._post(response, "/code",
                                      {"action": "verify", "code": last_code(self.live.app)})
            elif any("/code" in a for a in actions):
                self.pages.append("send")
                response = self._post(response, "/code", {"action": "send"})
            else:
                raise AssertionError(f"unexpected page: {response.text[:500]}")
        raise AssertionError("too many steps")


def _rp_login(
    node: str, live: Live, browser: Browser, client_id: str, secret: str, level: Level
) -> dict[str, Any]:
    rp = {"issuer": live.issuer, "client_id": client_id, "client_secret": secret,
          "redirect_uri": RP}
    start = run_rp(node, "authorize", {**rp, "acr_values": level.context_class})
    assert "error" not in start, start
    args = parse_qs(urlsplit(start["url"]).query)
    assert args["code_challenge_method"] == ["S256"] and args["nonce"] == [start["nonce"]]
    callback = browser.login(start["url"])
    done = run_rp(node, "callback", {
        **rp, "callback_url": callback, "verifier": start["verifier"], "state": start["state"],
        "nonce": start["nonce"], "expected_acr": level.context_class,
    })
    assert "error" not in done, done
    return done


def test_openid_client_logs_in_at_basis_then_midden_by_step_up(node: str, live: Live) -> None:
    make_account(live.app)
    _client, secret = add_client(live.app, "interop-rp")
    assert secret
    browser = Browser(live)

    basis = _rp_login(node, live, browser, "interop-rp", secret, Level.BASIS)
    assert browser.pages == ["password"]
    claims = basis["claims"]
    assert claims["iss"] == live.issuer and claims["aud"] == "interop-rp"
    assert claims["acr"] == Level.BASIS.context_class and claims["amr"] == ["pwd"]
    assert basis["header"]["alg"] == "RS256" and basis["header"]["kid"]
    assert basis["userinfo"]["sub"] == claims["sub"]

    # Step-up on the same browser session: no password, an SMS code.
    midden = _rp_login(node, live, browser, "interop-rp", secret, Level.MIDDEN)
    assert browser.pages == ["send", "code"]
    assert midden["claims"]["acr"] == Level.MIDDEN.context_class
    assert midden["claims"]["amr"] == ["pwd", "sms"]
    assert midden["claims"]["sub"] == claims["sub"]
    assert midden["claims"]["sid"] == claims["sid"]
    assert midden["userinfo"] == {"sub": claims["sub"], "acr": Level.MIDDEN.context_class}


def test_openid_client_refuses_a_mismatched_acr(node: str, live: Live) -> None:
    """The script's acr check can fail: a basis login presented as midden is refused."""
    make_account(live.app)
    _client, secret = add_client(live.app, "interop-rp")
    assert secret
    browser = Browser(live)
    rp = {"issuer": live.issuer, "client_id": "interop-rp", "client_secret": secret,
          "redirect_uri": RP}
    start = run_rp(node, "authorize", {**rp, "acr_values": Level.BASIS.context_class})
    callback = browser.login(start["url"])
    done = run_rp(node, "callback", {
        **rp, "callback_url": callback, "verifier": start["verifier"], "state": start["state"],
        "nonce": start["nonce"], "expected_acr": Level.MIDDEN.context_class,
    })
    assert done["error"] == "AcrMismatch"
    # And the library itself refuses a callback whose state was tampered with.
    start = run_rp(node, "authorize", {**rp, "acr_values": Level.BASIS.context_class})
    callback = browser.login(start["url"])
    done = run_rp(node, "callback", {
        **rp, "callback_url": callback, "verifier": start["verifier"], "state": "other",
        "nonce": start["nonce"], "expected_acr": Level.BASIS.context_class,
    })
    assert done.get("code") == "OAUTH_INVALID_RESPONSE", done
    assert "state" in done["cause"], done


def test_backchannel_logout_token_verified_by_jose(
    node: str, live: Live, receiver: Receiver  # noqa: F811 - the imported fixture
) -> None:
    make_account(live.app)
    _client, secret = add_client(live.app, "interop-rp",
                                 backchannel_logout_uri=receiver.url("/ok"))
    assert secret
    browser = Browser(live)
    login = _rp_login(node, live, browser, "interop-rp", secret, Level.BASIS)

    page = browser.http.get(live.issuer + "/logout", timeout=10)
    response = browser._post(page, "/logout", {})
    assert response.status_code == 200
    [logout_token] = receiver.get().body["logout_token"]
    checked = run_rp(node, "logout-token", {
        "issuer": live.issuer, "client_id": "interop-rp", "client_secret": secret,
        "logout_token": logout_token,
    })
    assert "error" not in checked, checked
    assert checked["header"]["typ"] == "logout+jwt"
    assert checked["payload"]["sub"] == login["claims"]["sub"]
    assert checked["payload"]["sid"] == login["claims"]["sid"]
    # jose refuses the token for another audience.
    wrong = run_rp(node, "logout-token", {
        "issuer": live.issuer, "client_id": "someone-else", "client_secret": secret,
        "logout_token": logout_token,
    })
    assert wrong.get("code") == "ERR_JWT_CLAIM_VALIDATION_FAILED"
