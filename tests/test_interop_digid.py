"""Interop with the Dutch DigiD client library django-digid-eherkenning (issue 7, item 7).

Many municipalities' websites log in with DigiD through this library (Maykin Media, on
maykin-python3-saml). Here it is a relying party of the gateway, configured the way it is
configured against DigiD: with the gateway's IdP metadata URL, an SP key pair, RSA-SHA256,
and the SP metadata it generates registered at the gateway with `--bsn`.

- The library runs in its own virtual environment `.venv-digid` (Django must not enter the
  gateway's), made by `./dev test` from tests/interop_digid/requirements.txt; the Django
  project in tests/interop_digid/ serves on a free loopback port as a subprocess.
- The browser is `requests` with cookies: the library's login page (an auto-submitting
  HTTP-POST AuthnRequest, signed), the gateway's password page and, for midden, its SMS code
  page (the code from the dev outbox), then back to the library.
- Artifact: the library's own ACS view resolves the artifact over SOAP (signed
  ArtifactResolve) and validates the Response (signatures, Destination, Audience,
  InResponseTo, time window), reads the BSN from the `s00000000:<BSN>` NameID and logs the
  user in. POST: the library's client validates a POSTed Response (`handle_post_response`)
  for a second SP entity whose ACS has the HTTP-POST binding and which wants encrypted
  assertions (its DigiD ACS view only takes artifacts, as DigiD only sends them).
- Single logout: the library's logout view (a signed HTTP-Redirect LogoutRequest with the
  `s00000000:<BSN>` NameID); the gateway ends its SSO session and redirects a signed
  LogoutResponse to the library's response location, which checks it.

Without .venv-digid the tests skip, except under CI=true, where they fail.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import re
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urljoin

import pytest
import requests
from flask import Flask
from lxml import etree
from sqlalchemy import select

from gateway.accounts.models import Account
from gateway.db import get_db
from gateway.levels import Level
from tests.test_login_flow import PASSWORD, last_code, make_account
from tests.test_oidc_interop import TOKEN, Live, _forms, _unavailable
from tests.test_oidc_interop import live as live
from tests.test_saml_idp import BSN, _key_pair, register

ROOT = Path(__file__).resolve().parent.parent
PROJECT = Path(__file__).parent / "interop_digid"
VENV_PYTHON = ROOT / ".venv-digid" / "bin" / "python"
START_TIMEOUT = 60.0
HTTP_TIMEOUT = 15
INPUT = re.compile(r"<input\b[^>]*>", re.IGNORECASE)
SAMLP_NS = "urn:oasis:names:tc:SAML:2.0:protocol"
SAML_NS = "urn:oasis:names:tc:SAML:2.0:assertion"


def _venv_python() -> Path:
    if not VENV_PYTHON.exists():
        _unavailable("no .venv-digid: `./dev test` makes it (pip install -r "
                     "tests/interop_digid/requirements.txt)")
    done = subprocess.run([str(VENV_PYTHON), "-c", "import digid_eherkenning, django"],
                          capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        _unavailable(f".venv-digid lacks django-digid-eherkenning: {done.stderr[-300:]}")
    return VENV_PYTHON


class DigidSp:
    """The Django project on a free loopback port (see tests/interop_digid/)."""

    def __init__(self, process: subprocess.Popen[str], base_url: str, stderr: list[str]) -> None:
        self.process = process
        self.base_url = base_url
        self.stderr = stderr

    def log(self) -> str:
        """The project's log (its stderr so far), for assertion messages."""
        return "".join(self.stderr)[-4000:]


@pytest.fixture
def digid_sp(live: Live, tmp_path: Path) -> Iterator[DigidSp]:
    python = _venv_python()
    work = tmp_path / "digidsp"
    work.mkdir()
    key, cert = _key_pair("digid-sp")
    (work / "sp.key").write_text(key)
    (work / "sp.crt").write_text(cert)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "DJANGO_SETTINGS_MODULE": "digidsp.settings",
        "DIGIDSP_DIR": str(work),
        "NO_PROXY": "127.0.0.1,localhost",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    process = subprocess.Popen(
        [str(python), "manage.py", "interop_serve",
         "--idp-metadata-url", live.issuer + "/saml/idp/metadata",
         "--cert", str(work / "sp.crt"), "--key", str(work / "sp.key")],
        cwd=PROJECT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    stderr: list[str] = []
    threading.Thread(target=lambda: stderr.extend(process.stderr or []), daemon=True).start()
    first: list[str] = []
    reader = threading.Thread(target=lambda: first.append(process.stdout.readline()
                                                          if process.stdout else ""),
                              daemon=True)
    reader.start()
    reader.join(START_TIMEOUT)
    try:
        if not first or not first[0]:
            raise AssertionError("the DigiD SP did not start: " + "".join(stderr)[-3000:])
        yield DigidSp(process, json.loads(first[0])["base_url"], stderr)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def _inputs(page: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for tag in INPUT.findall(page):
        name = re.search(r'\bname="([^"]*)"', tag)
        value = re.search(r'\bvalue="([^"]*)"', tag)
        if name:
            fields[html.unescape(name.group(1))] = html.unescape(value.group(1)) if value else ""
    return fields


def _form_action(page: str) -> str:
    actions = _forms(page)
    assert len(actions) == 1, actions
    return actions[0]


class Person:
    """A person at a browser, going from the library's site through the gateway and back."""

    def __init__(self, live: Live, sp: DigidSp) -> None:
        self.live = live
        self.sp = sp
        self.http = requests.Session()
        self.http.trust_env = False  # loopback only, never through a proxy
        self.pages: list[str] = []
        self.authn_request: etree._Element | None = None
        self.posted: dict[str, str] = {}

    def _get(self, url: str) -> requests.Response:
        return self.http.get(url, allow_redirects=False, timeout=HTTP_TIMEOUT)

    def _post(self, url: str, data: dict[str, str]) -> requests.Response:
        return self.http.post(url, data=data, allow_redirects=False, timeout=HTTP_TIMEOUT)

    def _gateway_form(self, page: requests.Response, contains: str,
                      data: dict[str, str]) -> requests.Response:
        action = next(a for a in _forms(page.text) if contains in a)
        match = TOKEN.search(page.text)
        assert match, "no CSRF token on the page"
        return self._post(urljoin(page.url, action), {"csrf_token": match.group(1), **data})

    def login(self, start_path: str) -> str:
        """From the library's login page to its landing page; returns that page's text."""
        self.pages = []
        page = self._get(self.sp.base_url + start_path)
        assert page.status_code == 200, (page.status_code, page.text[:500])
        fields = _inputs(page.text)
        sso = _form_action(page.text)
        assert sso == self.live.issuer + "/saml/idp/sso"
        self.authn_request = etree.fromstring(base64.b64decode(fields["SAMLRequest"]))
        response = self._post(sso, {k: fields[k] for k in ("SAMLRequest", "RelayState")
                                    if k in fields})
        for _ in range(30):
            if response.status_code in (302, 303):
                location = urljoin(response.url, response.headers["Location"])
                response = self._get(location)
                if location.startswith(self.sp.base_url):
                    self.pages.append("sp")
                    return self._landing(response)
                continue
            assert response.status_code == 200, (response.status_code, response.text[:800])
            actions = _forms(response.text)
            if len(actions) == 1 and actions[0].startswith(self.sp.base_url):
                # The gateway's HTTP-POST binding page: the browser submits it to the ACS.
                self.pages.append("post")
                self.posted = _inputs(response.text)
                return self._landing(self._post(actions[0], self.posted))
            if any(a.endswith("/route") for a in actions):
                # The route choice (when more routes than the desk account are enabled).
                self.pages.append("route")
                response = self._gateway_form(response, "/route", {"route": "desk_account"})
            elif any("/password" in a for a in actions):
                self.pages.append("password")
                response = self._gateway_form(response, "/password",
                                              {"username": "jan.jansen", "password": PASSWORD})
            elif any("/code" in a for a in actions) and 'name="code"' in response.text:
                self.pages.append("code")
                response = self._gateway_form(
                    response, "/code", {"action": "verify", "code": last_code(self.live.app)})
            elif any("/code" in a for a in actions):
                self.pages.append("send")
                response = self._gateway_form(response, "/code", {"action": "send"})
            else:
                raise AssertionError(f"unexpected page: {response.text[:800]}")
        raise AssertionError("too many steps")

    def logout(self) -> tuple[list[str], str]:
        """The library's single logout (HTTP-Redirect LogoutRequest, signed); returns the
        URLs passed through and the landing page."""
        visited: list[str] = []
        response = self._get(self.sp.base_url + "/digid/logout/")
        for _ in range(6):
            if response.status_code not in (302, 303):
                break
            location = urljoin(response.url, response.headers["Location"])
            visited.append(location)
            response = self._get(location)
        assert response.status_code == 200, (response.status_code, response.text[:800])
        return visited, response.text

    def _landing(self, response: requests.Response) -> str:
        for _ in range(5):
            if response.status_code not in (302, 303):
                break
            response = self._get(urljoin(response.url, response.headers["Location"]))
        assert response.status_code == 200, (response.status_code, response.text[:800])
        return response.text

    def requested(self) -> tuple[str | None, list[str]]:
        """Comparison and class refs of the AuthnRequest the library sent."""
        assert self.authn_request is not None
        element = self.authn_request.find(f"{{{SAMLP_NS}}}RequestedAuthnContext")
        assert element is not None
        refs = [e.text or "" for e in element.findall(f"{{{SAML_NS}}}AuthnContextClassRef")]
        return element.get("Comparison"), refs


def _bsn(page: str) -> str | None:
    match = re.search(r'<span id="bsn">([^<]*)</span>', page)
    return match.group(1) if match else None


def _context(page: str) -> str | None:
    match = re.search(r'<span id="context">([^<]*)</span>', page)
    return match.group(1) if match else None


def _with_bsn(app: Flask) -> None:
    make_account(app)
    with get_db(app).begin() as db:
        db.scalars(select(Account)).one().bsn = BSN


def _register(live: Live, sp: DigidSp, path: str) -> str:
    metadata = requests.get(sp.base_url + path, timeout=HTTP_TIMEOUT)
    assert metadata.status_code == 200, metadata.text[:500]
    register(live.app, metadata.content, bsn=True)
    root = etree.fromstring(metadata.content)
    entity_id: str = root.get("entityID") or ""
    return entity_id


def test_digid_library_logs_in_over_artifact_at_basis_then_midden_and_logs_out(
    live: Live, digid_sp: DigidSp
) -> None:
    _with_bsn(live.app)
    entity_id = _register(live, digid_sp, "/metadata/digid")
    assert entity_id == digid_sp.base_url + "/digid"
    person = Person(live, digid_sp)

    page = person.login("/digid/login/?loa=basis")
    assert person.requested() == ("minimum", [Level.BASIS.context_class])
    assert person.pages == ["password", "sp"]  # Artifact: a redirect to the ACS, no form
    assert _bsn(page) == BSN, digid_sp.log()

    # Midden: the gateway's SSO session has the password; only the SMS code is asked.
    page = person.login("/digid/login/?loa=midden")
    assert person.requested() == ("minimum", [Level.MIDDEN.context_class])
    assert person.pages[-1] == "sp" and "code" in person.pages
    assert "password" not in person.pages
    assert _bsn(page) == BSN, page

    # Single logout from the library: the gateway ends the SSO session and answers with a
    # signed LogoutResponse that the library checks before it logs the user out.
    visited, page = person.logout()
    assert any(u.startswith(live.issuer + "/saml/idp/slo?SAMLRequest=") for u in visited)
    assert any(u.startswith(digid_sp.base_url + "/digid/slo/redirect/?SAMLResponse=")
               for u in visited), visited
    assert "anonymous" in page and "error" not in digid_sp.log().lower(), digid_sp.log()
    person.login("/digid/login/?loa=basis")
    assert person.pages[0] == "password"  # the gateway's SSO session is gone


def test_digid_library_logs_in_over_post_encrypted_at_basis_then_midden(
    live: Live, digid_sp: DigidSp
) -> None:
    _with_bsn(live.app)
    _register(live, digid_sp, "/post/metadata")
    person = Person(live, digid_sp)

    page = person.login("/post/login/?loa=basis")
    assert person.pages == ["password", "post"]
    assert _bsn(page) == BSN, digid_sp.log()
    assert _context(page) == Level.BASIS.context_class
    # This entity's metadata has an encryption key: the library decrypted the assertion.
    assert b"EncryptedAssertion" in base64.b64decode(person.posted["SAMLResponse"])

    page = person.login("/post/login/?loa=midden")
    assert person.pages[-1] == "post" and "code" in person.pages
    assert _bsn(page) == BSN, page
    assert _context(page) == Level.MIDDEN.context_class


def test_digid_library_refuses_an_artifact_it_did_not_ask_for(
    live: Live, digid_sp: DigidSp
) -> None:
    """The library's ACS with a made-up artifact: the gateway answers RequestDenied and the
    library logs nobody in (a guard that the success above is the library's own check)."""
    _with_bsn(live.app)
    _register(live, digid_sp, "/metadata/digid")
    source = hashlib.sha1((live.issuer + "/saml/idp/metadata").encode()).digest()
    artifact = base64.b64encode(b"\x00\x04\x00\x01" + source + b"\x00" * 20).decode()
    http = requests.Session()
    http.trust_env = False
    landing = http.get(digid_sp.base_url + "/digid/acs/", params={"SAMLart": artifact},
                       timeout=HTTP_TIMEOUT)
    assert landing.status_code == 200
    assert _bsn(landing.text) is None and "anonymous" in landing.text

