"""Issue 8, "Done when": a relying party logs simulated German, Spanish and Italian citizens in
at substantieel through OIDC and through SAML, end to end over real HTTP.

Three werkzeug servers on loopback, each in a thread: the gateway (eIDAS route enabled), the
demo portal (gateway.portal: an OIDC client with private_key_jwt and a python3-saml SP) and the
eIDAS node simulator (gateway.eidas_sim). A `requests` session is the browser: it follows every
page as a person would (the choose-route page with the country, the auto-posting forms to and
from the node, the simulator's person list) and ends on the portal's result page, which shows
what the portal verified (ID token or signed assertion, level, subject). The gateway fetches
the node's metadata over HTTP, and the node fetches the gateway's SP metadata over HTTP.

Also over the same servers: a person linked at a desk reaches a BSN-entitled SAML SP with the
BSN as NameID, and an unlinked one gets a clean SAML error there, not a wrong NameID.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from html import unescape
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa
from flask import Flask
from lxml import etree
from werkzeug.serving import BaseWSGIServer, make_server

from gateway.db import get_db
from gateway.levels import Level
from gateway.portal import create_portal
from gateway.portal.keys import PORTAL_URL_CONFIG
from gateway.portal.seed import seed_portal
from gateway.settings import Settings
from tests.eidas_helpers import write_policies
from tests.test_portal import _Dispatch

TIMEOUT = 20


@dataclass
class Live:
    gateway: Flask
    gateway_url: str
    portal_url: str
    node_url: str


@pytest.fixture
def live(make_app: Callable[..., Flask], settings: Settings, tmp_path: Path,
         sp_keys_template: Path, node_key_dir: Path) -> Iterator[Live]:
    from gateway.eidas_sim.app import create_sim_app

    servers: list[BaseWSGIServer] = []
    dispatchers: list[_Dispatch] = []
    for _ in range(3):
        dispatch = _Dispatch()
        servers.append(make_server("127.0.0.1", 0, dispatch, threaded=True))
        dispatchers.append(dispatch)
    gateway_url, portal_url, node_url = (f"http://127.0.0.1:{s.server_port}" for s in servers)
    shutil.copytree(sp_keys_template, settings.instance_dir / "eidas-sp")
    policies = write_policies(tmp_path, node_metadata_url=node_url + "/metadata")
    gateway = make_app(issuer=gateway_url, policies_dir=policies)
    gateway.config[PORTAL_URL_CONFIG] = portal_url
    with gateway.app_context():
        seed_portal(gateway)
    gateway_settings = settings.with_overrides(issuer=gateway_url)
    dispatchers[0].app = gateway
    dispatchers[1].app = create_portal(gateway_settings, portal_url=portal_url)
    # The node reads the gateway's SP metadata over HTTP at the first login.
    dispatchers[2].app = create_sim_app(gateway_settings, base_url=node_url,
                                        key_dir=node_key_dir)
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for thread in threads:
        thread.start()
    try:
        yield Live(gateway, gateway_url, portal_url, node_url)
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


# --- the browser ------------------------------------------------------------------------------


def _forms(page: requests.Response) -> list[tuple[str, dict[str, str], etree._Element]]:
    root = etree.HTML(page.text)
    found = []
    for element in root.iter("form"):
        action = requests.compat.urljoin(page.url, unescape(element.get("action") or ""))
        fields = {i.get("name"): i.get("value") or "" for i in element.iter("input")
                  if i.get("name") and i.get("type") not in ("radio", "checkbox")}
        found.append((action, fields, element))
    return found


def submit(web: requests.Session, page: requests.Response, contains: str,
           data: dict[str, str] | None = None, *, button: tuple[str, str] | None = None,
           ) -> requests.Response:
    """Submit the page's form whose action contains `contains` (and, with `button`, the one
    holding that submit button), as a browser would."""
    for action, fields, element in _forms(page):
        if contains not in action:
            continue
        if button is not None and not any(
            b.get("name") == button[0] and b.get("value") == button[1]
            for b in element.iter("button")
        ):
            continue
        extra = dict([button]) if button else {}
        return web.post(action, data={**fields, **extra, **(data or {})}, timeout=TIMEOUT)
    raise AssertionError(f"no form posting to ...{contains} on {page.url}: {page.text[:800]}")


def follow_continue(web: requests.Session, page: requests.Response) -> requests.Response:
    """The ACS's own steps: a same-origin re-post (for the cookie) and the page that moves on
    by itself (meta refresh with a link)."""
    for _ in range(3):
        if any("/eidas/acs" in action for action, _f, _e in _forms(page)):
            page = submit(web, page, "/eidas/acs")
            continue
        root = etree.HTML(page.text)
        links = [a.get("href") for a in root.iter("a") if a.get("data-eidas-continue") is not None]
        if links:
            page = web.get(requests.compat.urljoin(page.url, unescape(links[0])),
                           timeout=TIMEOUT)
            continue
        break
    return page


def eidas_login(live: Live, web: requests.Session, protocol: str, person: str,
                country: str) -> requests.Response:
    """From the portal's home page through the gateway and the node, back to the portal."""
    home = web.get(live.portal_url + "/?lang=en", timeout=TIMEOUT)
    page = submit(web, home, f"/login/{protocol}/substantieel")
    assert page.url.startswith(live.gateway_url + "/login/"), page.url
    # Substantieel: only the eIDAS route can reach it, so the page offers it with a country.
    assert "European eID" in page.text and "Username and password" not in page.text
    page = submit(web, page, "/route", {"country": country}, button=("route", "eidas"))
    assert page.status_code == 200, page.text[:800]
    # The gateway's auto-posting form carries the signed AuthnRequest to the node.
    page = submit(web, page, live.node_url + "/sso")
    assert page.status_code == 200 and page.url.startswith(live.node_url), page.text[:800]
    page = submit(web, page, "/sso/answer", {"person": person, "mode": "normal"},
                  button=("action", "login"))
    assert page.status_code == 200, page.text[:800]
    # The node's auto-posting form carries the signed, encrypted answer to the gateway's ACS.
    page = submit(web, page, live.gateway_url + "/eidas/acs")
    page = follow_continue(web, page)
    if protocol == "saml":
        page = submit(web, page, live.portal_url + "/saml/acs")
    return page


def set_saml_bsn(app: Flask, *, bsn: bool) -> None:
    """Whether the portal's SAML SP is entitled to the BSN (`rp add-saml --bsn`)."""
    from gateway.idp.saml.registry import SamlServiceProvider

    with get_db(app).begin() as db:
        db.execute(sa.update(SamlServiceProvider).values(bsn=bsn))


def facts(page: requests.Response) -> dict[str, str]:
    """The result page's list of what the portal received (dt -> dd text)."""
    root = etree.HTML(page.text)
    found: dict[str, str] = {}
    for dl in root.iter("dl"):
        terms = list(dl)
        for term, value in zip(terms[::2], terms[1::2], strict=False):
            found["".join(term.itertext()).strip()] = " ".join("".join(value.itertext()).split())
    return found


# --- the "done when" ------------------------------------------------------------------


@pytest.mark.parametrize(("person", "country", "name"), [
    ("de-substantial", "DE", "Jürgen Weiß"),
    ("es-substantial", "ES", "María Ángeles Núñez Peña"),
    ("it-substantial", "IT", "Niccolò D'Angelo"),
])
def test_oidc_and_saml_log_in_a_foreign_citizen_at_substantieel(
    live: Live, person: str, country: str, name: str
) -> None:
    # OIDC: the portal verified the ID token (signature, iss, aud, nonce, acr >= substantieel).
    page = eidas_login(live, requests.Session(), "oidc", person, country)
    assert page.status_code == 200 and page.url == live.portal_url + "/result", page.text[:800]
    seen = facts(page)
    assert Level.SUBSTANTIEEL.context_class in seen["Level"]
    # amr: a substantial eID is multi-factor (Implementing Regulation (EU) 2015/1502, 2.2.1).
    assert seen["Route and means (amr)"] == "mfa"
    assert seen["Who you are"].startswith("No BSN")  # not linked: a pairwise sub only
    oidc_sub = seen["Subject (sub)"]
    assert len(oidc_sub) == 43

    # SAML: a service that is not entitled to the BSN gets a pairwise NameID and the names.
    set_saml_bsn(live.gateway, bsn=False)
    page = eidas_login(live, requests.Session(), "saml", person, country)
    assert page.status_code == 200 and page.url == live.portal_url + "/result", page.text[:800]
    seen = facts(page)
    assert Level.SUBSTANTIEEL.context_class in seen["Level"]
    assert seen["Name"] == name
    assert seen["NameID"] and seen["NameID"] != oidc_sub and ":" not in seen["NameID"]


def test_a_bsn_sp_gets_a_clean_error_for_an_unlinked_eid(live: Live) -> None:
    """A --bsn SAML SP reads the NameID as `s00000000:<BSN>`: a person without one gets
    Responder/RequestDenied (docs/saml-idp.md), which the portal shows as a failed login."""
    page = eidas_login(live, requests.Session(), "saml", "de-substantial", "DE")
    assert page.url == live.portal_url + "/saml/acs"
    assert page.status_code == 400 and "RequestDenied" in page.text, page.text[:800]
