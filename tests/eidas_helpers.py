"""Shared set-up of the eIDAS route tests: an app with the route enabled, the simulated node
(gateway.eidas_sim) answering it, and a test relying party that starts logins and shows what
`finish()` gave it. The node's metadata reaches the route through its fetch function, so the
tests need no server; tests of an unreachable node use a closed loopback port.
"""

from __future__ import annotations

import base64
import html
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from flask import Blueprint, Flask, jsonify, request
from flask.testing import FlaskClient

from gateway.db import get_db
from gateway.levels import Level
from gateway.settings import DEFAULT_POLICIES_DIR, Settings

NODE_URL = "http://127.0.0.1:8002"
COUNTRIES = ["AT", "BE", "DE", "ES", "FR", "IT", "PL"]
_FIELD = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)">')
_ACTION = re.compile(r'<form method="post" action="([^"]+)" data-eidas-post>')
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def make_sp_keys_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One set of eIDAS SP keys for a module (3072-bit RSA takes a while to make)."""
    from gateway.routes.eidas.spkeys import FOLDER, load_or_create

    instance = tmp_path_factory.mktemp("eidas-sp-template")
    load_or_create(instance, "http://127.0.0.1:8000/eidas/metadata")
    return instance / FOLDER


def make_node_key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from gateway.eidas_sim.node import ensure_keys

    folder = tmp_path_factory.mktemp("eidas-node-keys")
    ensure_keys(folder)
    return folder


@dataclass
class Env:
    app: Flask
    client: FlaskClient
    node: Any  # gateway.eidas_sim.node.SimulatedNode


def write_policies(tmp_path: Path, **eidas: Any) -> Path:
    folder = tmp_path / "policies-eidas"
    if not folder.exists():
        shutil.copytree(DEFAULT_POLICIES_DIR, folder)
    block = {"enabled": True, "node_metadata_url": NODE_URL + "/metadata",
             "countries": COUNTRIES, **eidas}
    routes = {"desk_account": {"enabled": True}, "eidas": block}
    (folder / "routes.yaml").write_text(yaml.safe_dump({"routes": routes}))
    return folder


def make_env(
    make_app: Callable[..., Flask], settings: Settings, tmp_path: Path, sp_keys_template: Path,
    node_key_dir: Path, **eidas: Any,
) -> Env:
    from gateway.eidas_sim.node import SimulatedNode
    from gateway.routes.eidas.service import get_state

    target = settings.instance_dir / "eidas-sp"
    if not target.exists():
        shutil.copytree(sp_keys_template, target)
    from gateway.eidas_sim.node import CERT_FILE

    # The node's metadata is checked against the simulator's certificate, as outside dev.
    eidas.setdefault("node_metadata_signing_certificates", [str(node_key_dir / CERT_FILE)])
    app = make_app(policies_dir=write_policies(tmp_path, **eidas))
    add_rp(app)
    client = app.test_client()
    metadata = client.get("/eidas/metadata")
    assert metadata.status_code == 200
    node = SimulatedNode(NODE_URL, node_key_dir, metadata.data)
    get_state(app).node.fetch = lambda url, timeout: node.metadata()
    return Env(app, client, node)


def add_rp(app: Flask) -> None:
    """/rp/start?level=...&exact=1 starts a login; /rp/done shows finish()'s answer as JSON."""
    from gateway.flows.login import LoginError, finish, start_login
    from gateway.flows.types import RpRequest

    bp = Blueprint("eidas_test_rp", __name__)

    @bp.get("/rp/start")
    def start() -> Any:
        level = Level.from_label(request.args.get("level", "substantieel"))
        if request.args.get("exact"):
            rp_request = RpRequest(rp_id="rp", protocol="oidc", levels=(level,),
                                   resume_url="/rp/done", essential=True)
        else:
            rp_request = RpRequest.at_least(level, rp_id="rp", protocol="oidc",
                                            resume_url="/rp/done", essential=True)
        return start_login(rp_request)

    @bp.get("/rp/done")
    def done() -> Any:
        try:
            result = finish(request.args.get("flow", ""))
        except LoginError as exc:
            return jsonify(error=exc.error.code.value if exc.error else None)
        return jsonify(
            subject_key=result.subject_key, level=result.level.label, amr=list(result.amr),
            route=result.route, account_id=result.account_id,
            attributes=dict(result.attributes),
        )

    app.register_blueprint(bp)


def csrf(body: str) -> str:
    match = _CSRF.search(body)
    assert match, "no CSRF token on the page"
    return match.group(1)


def post_fields(body: str) -> tuple[str, dict[str, str]]:
    """The action and hidden fields of an auto-posting page (eidas/post.html)."""
    action = _ACTION.search(body)
    assert action, body[:2000]
    return html.unescape(action.group(1)), {
        html.unescape(k): html.unescape(v) for k, v in _FIELD.findall(body)
    }


@dataclass
class Started:
    flow_id: str
    saml_request: str
    relay_state: str
    country: str
    page: Any


def start_at_node(env: Env, level: str = "substantieel", country: str = "DE",
                  exact: bool = False) -> Started:
    """RP -> gateway -> choose route (eIDAS, `country`) -> the page that posts to the node."""
    page = env.client.get(f"/rp/start?level={level}{'&exact=1' if exact else ''}&lang=en",
                          follow_redirects=True)
    assert page.status_code == 200, page.get_data(as_text=True)[:500]
    flow_id = page.request.path.rsplit("/", 1)[-1]
    body = page.get_data(as_text=True)
    assert 'name="country"' in body, body[:3000]
    page = env.client.post(f"/login/{flow_id}/route?lang=en", data={
        "csrf_token": csrf(body), "route": "eidas", "country": country,
    })
    body = page.get_data(as_text=True)
    assert page.status_code == 200, body[:3000]
    action, fields = post_fields(body)
    assert action == env.node.sso_url
    return Started(flow_id, fields["SAMLRequest"], fields["RelayState"], fields["country"], page)


def post_answer(env: Env, started: Started, saml_response: str,
                relay_state: str | None = None) -> Any:
    return env.client.post("/eidas/acs?lang=en", data={
        "SAMLResponse": saml_response,
        "RelayState": started.relay_state if relay_state is None else relay_state,
    })


_CONTINUE = re.compile(r'<meta http-equiv="refresh" content="0;url=([^"]+)">')


def continued(answer: Any) -> str:
    """Where the page after a good answer sends the browser (a meta refresh and a link)."""
    body = answer.get_data(as_text=True)
    assert answer.status_code == 200, body[:2000]
    match = _CONTINUE.search(body)
    assert match, body[:2000]
    assert f'href="{match.group(1)}"' in body
    return html.unescape(match.group(1))


def flow_state(app: Flask, flow_id: str) -> tuple[str, str | None]:
    from gateway.flows.login import LoginFlow

    with get_db(app).begin() as s:
        flow = s.get(LoginFlow, flow_id)
        assert flow is not None
        return flow.state, flow.subject_key


def sso_count(app: Flask) -> int:
    from gateway.flows.sessions import SsoSession

    with get_db(app).begin() as s:
        return int(s.scalar(sa.select(sa.func.count()).select_from(SsoSession)) or 0)


def decode(saml_b64: str) -> str:
    return base64.b64decode(saml_b64).decode("utf-8")


def encode(xml: str | bytes) -> str:
    data = xml.encode("utf-8") if isinstance(xml, str) else xml
    return base64.b64encode(data).decode("ascii")
