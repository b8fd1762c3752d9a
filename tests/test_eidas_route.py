"""The eIDAS route end to end through the test client (issue 8, items 2-4 and 6): relying
party -> choose route (country) -> signed AuthnRequest to the simulated node -> its signed,
encrypted Response at /eidas/acs -> the login flow done -> finish() at the relying party.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from gateway.settings import Settings
from tests.eidas_helpers import (
    Env,
    continued,
    decode,
    flow_state,
    make_env,
    post_answer,
    sso_count,
    start_at_node,
)

SAMLP = "urn:oasis:names:tc:SAML:2.0:protocol"
SAML = "urn:oasis:names:tc:SAML:2.0:assertion"
EIDAS = "http://eidas.europa.eu/saml-extensions"
MD = "urn:oasis:names:tc:SAML:2.0:metadata"



def _result(env: Env, answer: Any) -> dict[str, Any]:
    page = env.client.get(continued(answer), follow_redirects=True)
    assert page.status_code == 200
    data: dict[str, Any] = json.loads(page.get_data(as_text=True))
    return data


@pytest.mark.parametrize(("person", "country"), [
    ("de-substantial", "DE"), ("es-substantial", "ES"), ("it-substantial", "IT"),
])
def test_a_citizen_logs_in_at_substantieel(env: Env, person: str, country: str) -> None:
    started = start_at_node(env, "substantieel", country)
    saml_response, acs = env.node.response_for(started.saml_request, person)
    assert acs == "http://127.0.0.1:8000/eidas/acs"
    result = _result(env, post_answer(env, started, saml_response))
    assert result["level"] == "substantieel"
    assert result["route"] == "eidas"
    assert result["amr"] == ["mfa"]
    assert result["subject_key"].startswith("eidas:") and len(result["subject_key"]) == 70
    attributes = result["attributes"]
    assert attributes["country"] == country
    assert attributes["given_name"] and attributes["family_name"]
    assert len(attributes["birthdate"]) == 10
    # Never the raw PersonIdentifier.
    assert not any("/NL/" in str(v) for v in attributes.values())
    assert flow_state(env.app, started.flow_id)[0] == "done"


def test_low_gives_midden_without_mfa(env: Env) -> None:
    started = start_at_node(env, "midden", "DE")
    root = etree.fromstring(decode(started.saml_request).encode())
    loa = root.find(f"{{{SAMLP}}}RequestedAuthnContext/{{{SAML}}}AuthnContextClassRef")
    assert loa is not None and loa.text == "http://eidas.europa.eu/LoA/low"
    saml_response, _ = env.node.response_for(started.saml_request, "de-low")
    result = _result(env, post_answer(env, started, saml_response))
    assert result["level"] == "midden" and result["amr"] == []


def test_high_for_a_substantial_request_logs_in_at_substantieel_when_only_that_is_taken(
    env: Env,
) -> None:
    started = start_at_node(env, "substantieel", "IT", exact=True)
    saml_response, _ = env.node.response_for(started.saml_request, "it-high")
    assert _result(env, post_answer(env, started, saml_response))["level"] == "substantieel"


def test_the_same_person_gets_the_same_subject_key(env: Env) -> None:
    keys = []
    for _ in range(2):
        env.client = env.app.test_client()  # a new browser: no single sign-on
        started = start_at_node(env, "substantieel", "ES")
        saml_response, _ = env.node.response_for(started.saml_request, "es-substantial")
        keys.append(_result(env, post_answer(env, started, saml_response))["subject_key"])
    assert keys[0] == keys[1]


def test_the_authn_request_follows_the_eidas_message_format(env: Env) -> None:
    started = start_at_node(env, "hoog", "BE")
    root = etree.fromstring(decode(started.saml_request).encode())
    assert root.get("ForceAuthn") == "true" and root.get("IsPassive") == "false"
    assert root.get("Destination") == env.node.sso_url
    assert root.find("{http://www.w3.org/2000/09/xmldsig#}Signature") is not None
    context = root.find(f"{{{SAMLP}}}RequestedAuthnContext")
    assert context is not None and context.get("Comparison") == "minimum"
    assert context[0].text == "http://eidas.europa.eu/LoA/high"
    policy = root.find(f"{{{SAMLP}}}NameIDPolicy")
    assert policy is not None
    assert policy.get("Format") == "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent"
    assert root.findtext(f"{{{SAMLP}}}Extensions/{{{EIDAS}}}SPType") == "public"
    requested = {
        a.get("FriendlyName"): a.get("isRequired")
        for a in root.iter(f"{{{EIDAS}}}RequestedAttribute")
    }
    assert requested == {
        "PersonIdentifier": "true", "CurrentFamilyName": "true", "CurrentGivenName": "true",
        "DateOfBirth": "true", "BirthName": "false", "PlaceOfBirth": "false",
        "CurrentAddress": "false", "Gender": "false",
    }
    # The simulator checks the signature against our metadata, as a real node does.
    assert env.node.parse_request(started.saml_request).id == root.get("ID")
    # The page works without JavaScript (a visible button) and allows the node as form-action.
    body = started.page.get_data(as_text=True)
    assert '<button type="submit"' in body and "<script>" not in body
    assert "form-action 'self' http://127.0.0.1:8002" in started.page.headers[
        "Content-Security-Policy"]


def test_the_sp_metadata_is_signed_and_names_both_keys(env: Env) -> None:
    page = env.client.get("/eidas/metadata")
    root = etree.fromstring(page.data)
    assert root.get("entityID") == "http://127.0.0.1:8000/eidas/metadata"
    assert root.find("{http://www.w3.org/2000/09/xmldsig#}Signature") is not None
    assert root.findtext(f"{{{MD}}}Extensions/{{{EIDAS}}}SPType") == "public"
    uses = sorted(k.get("use") or "" for k in root.iter(f"{{{MD}}}KeyDescriptor"))
    assert uses == ["encryption", "signing"]
    acs = root.find(f"{{{MD}}}SPSSODescriptor/{{{MD}}}AssertionConsumerService")
    assert acs is not None and acs.get("Location") == "http://127.0.0.1:8000/eidas/acs"


@pytest.mark.parametrize(("status", "error", "title"), [
    ("RequestDenied", "cancelled", "You stopped logging in"),
    ("AuthnFailed", "failed", "Logging in did not succeed"),
])
def test_an_error_status_fails_the_flow_with_a_page_and_a_way_back(
    env: Env, status: str, error: str, title: str,
) -> None:
    started = start_at_node(env, "substantieel", "DE")
    saml_response, _ = env.node.response_for(started.saml_request, "de-substantial",
                                             status=status)
    page = post_answer(env, started, saml_response)
    body = page.get_data(as_text=True)
    assert page.status_code == 200 and title in body
    assert f"/rp/done?flow={started.flow_id}" in body.replace("&amp;", "&")
    assert flow_state(env.app, started.flow_id)[0] == "failed"
    assert sso_count(env.app) == 0
    done = env.client.get(f"/rp/done?flow={started.flow_id}")
    assert json.loads(done.get_data(as_text=True)) == {"error": error}


def test_the_failure_page_is_in_dutch_for_a_dutch_browser(env: Env) -> None:
    started = start_at_node(env, "substantieel", "DE")
    saml_response, _ = env.node.response_for(started.saml_request, "de-substantial",
                                             status="RequestDenied")
    page = env.client.post("/eidas/acs?lang=nl", data={
        "SAMLResponse": saml_response, "RelayState": started.relay_state})
    assert 'lang="nl"' in page.get_data(as_text=True)
    assert "Terug naar de dienst" in page.get_data(as_text=True)


def test_an_unknown_country_goes_back_to_the_choice(env: Env) -> None:
    from tests.eidas_helpers import csrf

    page = env.client.get("/rp/start?level=substantieel&lang=en", follow_redirects=True)
    flow_id = page.request.path.rsplit("/", 1)[-1]
    page = env.client.post(f"/login/{flow_id}/route?lang=en", data={
        "csrf_token": csrf(page.get_data(as_text=True)), "route": "eidas", "country": "XX"})
    assert page.status_code == 400
    assert "Choose the country that issued your eID." in page.get_data(as_text=True)
    assert flow_state(env.app, flow_id)[0] == "choose_route"


def test_an_unreachable_node_says_so_and_the_flow_stays_usable(
    env: Env, caplog: pytest.LogCaptureFixture,
) -> None:
    from gateway.routes.eidas.node import http_fetch
    from gateway.routes.eidas.service import get_state

    state = get_state(env.app)
    state.node.url = "http://127.0.0.1:9/metadata"  # discard port: nothing listens
    state.node.fetch = http_fetch
    with caplog.at_level(logging.WARNING):
        flow_id, page = _choose_eidas(env)
    body = page.get_data(as_text=True)
    assert page.status_code == 400
    assert "Logging in with a European eID is not available at the moment" in body
    assert flow_state(env.app, flow_id)[0] == "choose_route"
    # The choice is still there: the person can try again or choose another way.
    assert 'name="country"' in body


def _choose_eidas(env: Env) -> tuple[str, Any]:
    """A relying party's login, then eIDAS (DE) on the choice page: the flow id and the answer."""
    from tests.eidas_helpers import csrf

    page = env.client.get("/rp/start?level=substantieel&lang=en", follow_redirects=True)
    flow_id = page.request.path.rsplit("/", 1)[-1]
    page = env.client.post(f"/login/{flow_id}/route?lang=en", data={
        "csrf_token": csrf(page.get_data(as_text=True)), "route": "eidas", "country": "DE"})
    return flow_id, page


def test_a_slow_node_says_so_and_the_flow_stays_usable(
    env: Env, node_key_dir: Path, settings: Settings,
) -> None:
    """A node that answers only after the route's timeout (the simulator with --delay, on a
    real loopback server): the person gets the same clear page at once, not a hung login."""
    import threading

    from werkzeug.serving import make_server

    from gateway.eidas_sim.app import create_sim_app
    from gateway.routes.eidas.node import http_fetch
    from gateway.routes.eidas.service import get_state
    from tests.eidas_helpers import csrf

    server = make_server("127.0.0.1", 0, lambda e, s: [], threaded=True)
    base = f"http://127.0.0.1:{server.server_port}"
    server.app = create_sim_app(settings, base_url=base, key_dir=node_key_dir,
                                sp_metadata=env.client.get("/eidas/metadata").data, delay=3.0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        state = get_state(env.app)
        state.node.url, state.node.fetch, state.node.timeout = base + "/metadata", http_fetch, 0.5
        page = env.client.get("/rp/start?level=substantieel&lang=nl", follow_redirects=True)
        flow_id = page.request.path.rsplit("/", 1)[-1]
        page = env.client.post(f"/login/{flow_id}/route?lang=nl", data={
            "csrf_token": csrf(page.get_data(as_text=True)), "route": "eidas",
            "country": "DE"})
        body = page.get_data(as_text=True)
        assert page.status_code == 400
        assert "Inloggen met een Europese eID is op dit moment niet mogelijk" in body, body[:3000]
        assert flow_state(env.app, flow_id)[0] == "choose_route"
        assert 'name="country"' in body
    finally:
        server.shutdown()
        thread.join(5)


def test_a_login_over_http_with_the_simulator_app(
    make_app: Any, settings: Settings, tmp_path: Path, sp_keys_template: Path,
    node_key_dir: Path,
) -> None:
    """The simulator as a real server on loopback: the route fetches its metadata over HTTP,
    the browser's steps at the node go over HTTP too, and the answer comes back to the ACS."""
    import re
    import socket
    import threading

    import requests
    from werkzeug.serving import make_server

    from gateway.eidas_sim.app import create_sim_app
    from gateway.routes.eidas.node import http_fetch
    from gateway.routes.eidas.service import get_state
    from tests.eidas_helpers import csrf

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    env = make_env(make_app, settings, tmp_path, sp_keys_template, node_key_dir,
                   node_metadata_url=base + "/metadata")
    state = get_state(env.app)
    state.node.fetch = http_fetch
    sim = create_sim_app(settings, base_url=base, key_dir=node_key_dir,
                         sp_metadata=env.client.get("/eidas/metadata").data)
    server = make_server("127.0.0.1", port, sim, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        env.node = type(env.node)(base, node_key_dir)  # only its sso_url is compared
        started = start_at_node(env, "substantieel", "IT")
        browser = requests.Session()
        page = browser.post(base + "/sso?lang=en", data={
            "SAMLRequest": started.saml_request, "RelayState": started.relay_state,
            "country": started.country,
        }, timeout=10)
        assert page.status_code == 200, page.text[:1000]
        handle = re.search(r'name="request" value="([^"]+)"', page.text)
        assert handle
        page = browser.post(base + "/sso/answer?lang=en", data={
            "csrf_token": csrf(page.text), "request": handle.group(1), "action": "login",
            "person": "it-substantial", "mode": "normal",
        }, timeout=10)
        assert page.status_code == 200, page.text[:1000]
        fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">',
                                 page.text))
        answer = env.client.post("/eidas/acs?lang=en", data=fields)
        result = _result(env, answer)
        assert result["level"] == "substantieel"
        assert result["attributes"]["country"] == "IT"
    finally:
        server.shutdown()
        thread.join(5)


def test_a_pending_request_expires_with_its_flow(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """The pending request lives in the shared store no longer than its flow: an answer made
    after that finds nothing (the store forgets it by itself)."""
    from gateway import clock
    from gateway.eidas_sim.node import encode
    from gateway.eidas_sim.persons import PERSONS
    from gateway.routes.eidas import pending
    from gateway.store import get_store

    started = start_at_node(env, "substantieel", "DE")
    info = env.node.parse_request(started.saml_request)
    request_id = info.id
    with env.app.app_context():
        assert pending.peek(get_store(), request_id) is not None
    from tests.conftest import TEST_REDIS

    if TEST_REDIS:
        pytest.skip("Redis expires keys by its own clock")
    with clock.frozen(clock.now() + pending.PENDING_LIFETIME + timedelta(seconds=1)):
        with env.app.app_context():
            assert pending.peek(get_store(), request_id) is None
        saml_response = encode(env.node.response_xml(info, PERSONS["de-substantial"]))
        with caplog.at_level(logging.WARNING, logger="gateway.routes.eidas.views"):
            # (the browser session has timed out too, so the answer is posted once more)
            page = env.client.post("/eidas/acs?lang=en", data={
                "SAMLResponse": saml_response, "RelayState": started.relay_state,
                "continue": "1"})
    assert page.status_code == 400
    assert "eIDAS response refused: unsolicited" in caplog.messages
    assert flow_state(env.app, started.flow_id)[0] != "done"
    assert sso_count(env.app) == 0


def test_node_metadata_is_cached_and_a_short_outage_is_bridged(tmp_path: Path) -> None:
    from gateway import clock
    from gateway.routes.eidas.node import NodeMetadataCache, NodeUnavailable

    calls: list[str] = []
    good = _sim_metadata(tmp_path)

    def fetch(url: str, timeout: float) -> bytes:
        calls.append(url)
        if len(calls) > 1:
            raise NodeUnavailable("down")
        return good

    cache = NodeMetadataCache("http://127.0.0.1:8002/metadata", tmp_path / "certs",
                              max_age=timedelta(minutes=10), timeout=1.0, fetch=fetch)
    with clock.frozen():
        first = cache.get()
        assert cache.get() is first and len(calls) == 1  # cached
        clock.advance(timedelta(minutes=11))
        assert cache.get() is first and len(calls) == 2  # stale, but within the grace
        clock.advance(timedelta(minutes=30))
        with pytest.raises(NodeUnavailable):
            cache.get()
    assert first.sso_url == "http://127.0.0.1:8002/sso"
    assert len(first.signing_cert_files) == 1


@pytest.mark.parametrize("data", [
    b"<!DOCTYPE x []><x/>", b"not xml", b"<x/>",
    b'<md:EntityDescriptor xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata" entityID="e"/>',
])
def test_unusable_node_metadata_is_refused(tmp_path: Path, data: bytes) -> None:
    from gateway import clock
    from gateway.routes.eidas.node import NodeUnavailable, parse_metadata

    with pytest.raises(NodeUnavailable):
        parse_metadata(data, tmp_path, clock.now())


def _sim_metadata(tmp_path: Path) -> bytes:
    from gateway.eidas_sim.node import SimulatedNode

    data: bytes = SimulatedNode("http://127.0.0.1:8002", tmp_path / "node").metadata()
    return data


@pytest.mark.parametrize(("block", "field"), [
    ({"countries": ["DE"]}, "node_metadata_url"),
    ({"node_metadata_url": "ftp://x/metadata", "countries": ["DE"]}, "node_metadata_url"),
    ({"node_metadata_url": "http://x/metadata", "countries": []}, "countries"),
    ({"node_metadata_url": "http://x/metadata", "countries": ["de"]}, "countries"),
    ({"node_metadata_url": "http://x/metadata", "countries": ["NL"]}, "countries"),
    ({"node_metadata_url": "http://x/metadata", "countries": ["DE"], "colour": 1}, "colour"),
    ({"node_metadata_url": "http://x/metadata", "countries": ["DE"],
      "metadata_timeout_seconds": 0}, "metadata_timeout_seconds"),
])
def test_a_bad_routes_yaml_block_names_the_field(block: dict[str, Any], field: str) -> None:
    from gateway.routes.eidas.config import parse_config

    with pytest.raises(ValueError, match=f"^{field}: "):
        parse_config(block)


@pytest.mark.parametrize(("config", "options"), [
    ({"require_encrypted_assertions": False}, {"encrypt": False}),
    ({"require_signed_response": False}, {"sign_response": False}),
])
def test_a_node_that_does_not_encrypt_or_sign_the_response_can_be_allowed(
    make_app: Any, settings: Settings, tmp_path: Path, sp_keys_template: Path,
    node_key_dir: Path, config: dict[str, bool], options: dict[str, bool],
) -> None:
    env = make_env(make_app, settings, tmp_path, sp_keys_template, node_key_dir, **config)
    started = start_at_node(env, "substantieel", "ES")
    saml_response, _ = env.node.response_for(started.saml_request, "es-substantial", **options)
    assert _result(env, post_answer(env, started, saml_response))["level"] == "substantieel"


def test_a_linked_eid_logs_in_to_its_desk_account(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """account_id comes from gateway.desks.eidas_links for the subject key (issue 8 item 4)."""
    from gateway.desks import eidas_links
    from tests.test_login_flow import make_account

    account_id = make_account(env.app)
    asked: list[str] = []

    def linked(db: Any, subject_key: str) -> str | None:
        asked.append(subject_key)
        return account_id

    monkeypatch.setattr(eidas_links, "linked_account_id", linked)
    started = start_at_node(env, "substantieel", "PL")
    saml_response, _ = env.node.response_for(started.saml_request, "pl-substantial")
    result = _result(env, post_answer(env, started, saml_response))
    assert result["account_id"] == account_id
    assert asked == [result["subject_key"]]


# --- the node's metadata is signed by a trust anchor ------------------------------------------


def _parse_trusted(data: bytes, tmp_path: Path, trust: Path) -> Any:
    from gateway import clock
    from gateway.idp.saml.crypto import CryptoBackendXmlSecInProcess
    from gateway.routes.eidas.node import parse_metadata

    return parse_metadata(data, tmp_path / "certs", clock.now(), trust=(str(trust),),
                          backend=CryptoBackendXmlSecInProcess())


def _signed_metadata(node_key_dir: Path) -> bytes:
    from gateway.eidas_sim.node import SimulatedNode

    data: bytes = SimulatedNode("http://127.0.0.1:8002", node_key_dir).metadata()
    return data


@pytest.mark.parametrize("declaration", [b"", b'<?xml version="1.0" encoding="UTF-8"?>\n'])
def test_metadata_signed_by_the_trust_anchor_is_used(
    tmp_path: Path, node_key_dir: Path, declaration: bytes,
) -> None:
    from gateway.eidas_sim.node import CERT_FILE

    data = declaration + _signed_metadata(node_key_dir)
    info = _parse_trusted(data, tmp_path, node_key_dir / CERT_FILE)
    assert info.sso_url == "http://127.0.0.1:8002/sso"


def _tampered_sso(data: bytes) -> bytes:
    return data.replace(b'Location="http://127.0.0.1:8002/sso"',
                        b'Location="http://127.0.0.1:6666/sso"')


def _unsigned(data: bytes) -> bytes:
    root = etree.fromstring(data)
    signature = root.find("{http://www.w3.org/2000/09/xmldsig#}Signature")
    assert signature is not None
    root.remove(signature)
    return etree.tostring(root)


def _wrapped(data: bytes) -> bytes:
    """The genuine signed descriptor hidden in the Extensions of a forged one whose
    SingleSignOnService points elsewhere (XML signature wrapping)."""
    genuine = etree.fromstring(data)
    forged = etree.fromstring(_unsigned(_tampered_sso(data)))
    forged.set("ID", "_forged")
    extensions = forged.find(f"{{{MD}}}Extensions")
    assert extensions is not None
    extensions.append(genuine)
    return etree.tostring(forged)


@pytest.mark.parametrize("spoil", [_tampered_sso, _unsigned, _wrapped])
def test_metadata_not_signed_as_it_is_by_the_trust_anchor_is_refused(
    tmp_path: Path, node_key_dir: Path, spoil: Any,
) -> None:
    from gateway.eidas_sim.node import CERT_FILE
    from gateway.routes.eidas.node import NodeUnavailable

    data = spoil(_signed_metadata(node_key_dir))
    with pytest.raises(NodeUnavailable, match="sign"):
        _parse_trusted(data, tmp_path, node_key_dir / CERT_FILE)


def test_metadata_signed_by_another_key_is_refused(tmp_path: Path, node_key_dir: Path) -> None:
    from gateway.eidas_sim.node import CERT_FILE, ensure_keys
    from gateway.routes.eidas.node import NodeUnavailable

    other = ensure_keys(tmp_path / "other-node").cert_path
    with pytest.raises(NodeUnavailable, match="trusted certificate"):
        _parse_trusted(_signed_metadata(node_key_dir), tmp_path, other)
    # Two anchors during a rollover: either one will do.
    from gateway import clock
    from gateway.idp.saml.crypto import CryptoBackendXmlSecInProcess
    from gateway.routes.eidas.node import parse_metadata

    parse_metadata(_signed_metadata(node_key_dir), tmp_path / "certs", clock.now(),
                   trust=(str(other), str(node_key_dir / CERT_FILE)),
                   backend=CryptoBackendXmlSecInProcess())


def test_a_login_meets_a_node_with_an_untrusted_metadata_signer(
    make_app: Any, settings: Settings, tmp_path: Path, sp_keys_template: Path,
    node_key_dir: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    from gateway.eidas_sim.node import ensure_keys

    other = ensure_keys(tmp_path / "other-node").cert_path
    env = make_env(make_app, settings, tmp_path, sp_keys_template, node_key_dir,
                   node_metadata_signing_certificates=[str(other)])
    with caplog.at_level(logging.WARNING):
        flow_id, page = _choose_eidas(env)
    assert page.status_code == 400
    assert "Logging in with a European eID is not available at the moment" in page.get_data(
        as_text=True)
    assert any("trusted certificate" in m for m in caplog.messages)
    assert flow_state(env.app, flow_id)[0] == "choose_route"


def test_outside_dev_the_trust_anchor_is_required_and_must_be_a_certificate(
    settings: Settings, tmp_path: Path, node_key_dir: Path,
) -> None:
    from gateway.eidas_sim.node import CERT_FILE, KEY_FILE
    from gateway.routes.eidas import EidasRoute

    production = settings.with_overrides(env="production", policies_dir=node_key_dir)
    block = {"node_metadata_url": "https://node.example/metadata", "countries": ["DE"]}
    with pytest.raises(ValueError, match=r"^node_metadata_signing_certificates: required"):
        EidasRoute().configure(production, block)
    with pytest.raises(ValueError, match="is not a PEM certificate"):
        EidasRoute().configure(production, {**block,
                                            "node_metadata_signing_certificates": [KEY_FILE]})
    with pytest.raises(ValueError, match="cannot read"):
        EidasRoute().configure(production, {**block,
                                            "node_metadata_signing_certificates": ["none.pem"]})
    route = EidasRoute()
    # A relative path is taken from the policies folder.
    route.configure(production, {**block, "node_metadata_signing_certificates": CERT_FILE})
    assert route.config is not None
    assert route.config.node_metadata_signing_certificates == (
        str((node_key_dir / CERT_FILE).resolve()),
    )
