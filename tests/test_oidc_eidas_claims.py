"""OIDC for eIDAS logins (issue 8 item 4; gateway.idp.oidc.release): the BSN of a linked
eID's account for --bsn clients, eID attributes as standard claims for clients registered
for them and asking their scope, and `amr` left out when the login has no methods to name.

The login flow is replaced by `FakeLogin` (tests/oidc_helpers.py) ending in an eIDAS
`AuthnResult` as gateway.flows.login.finish() gives it for an external route.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient

from gateway import clock
from gateway.accounts.models import Account
from gateway.app import get_settings
from gateway.cli import main
from gateway.db import get_db
from gateway.flows.types import AuthnResult, RpRequest
from gateway.idp.oidc import views
from gateway.idp.oidc.clients import OidcClient
from gateway.idp.oidc.release import claims_of, parse_policy
from gateway.idp.oidc.tokens import OidcGrant
from gateway.levels import Level
from tests.oidc_helpers import FakeLogin, add_client, exchange, get_code
from tests.test_oidc_endpoints import verify_id_token

SUBJECT = "eidas:" + "ef" * 32
ATTRIBUTES = {
    "given_name": "Javier", "family_name": "García López", "birthdate": "1965-01-01",
    "gender": "Male", "birth_name": "García", "place_of_birth": "Madrid",
    "address": "Calle Mayor 1, 28013 Madrid, ES", "country": "ES",
}
PROFILE = {"given_name", "family_name", "birthdate", "gender", "birth_family_name",
           "place_of_birth"}


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeLogin:
    login = FakeLogin()
    monkeypatch.setattr(views, "start_login", login.start)
    monkeypatch.setattr(views, "finish_login", login.finish)
    return login


@pytest.fixture
def web(app: Flask) -> FlaskClient:
    return app.test_client()


def _eidas(fake: FakeLogin, *, account_id: str | None = None, level: Level = Level.SUBSTANTIEEL,
           amr: tuple[str, ...] = ("mfa",)) -> None:
    def outcome(rp_request: RpRequest) -> AuthnResult:
        return AuthnResult(
            subject_key=SUBJECT, account_id=account_id, route="eidas", level=level, amr=amr,
            auth_time=clock.now(), sso_session_id="sso-e", attributes=ATTRIBUTES,
        )
    fake.outcome = outcome


def _login(web: FlaskClient, client_id: str, secret: str, scope: str = "openid"
           ) -> dict[str, Any]:
    code, verifier = get_code(web, client_id, scope=scope)
    response = exchange(web, code, verifier, client_id=client_id, secret=secret)
    assert response.status_code == 200, response.get_json()
    body: dict[str, Any] = response.get_json()
    return body


def _userinfo(web: FlaskClient, body: dict[str, Any]) -> dict[str, Any]:
    info = web.get("/oidc/userinfo", headers={"Authorization": "Bearer " + body["access_token"]})
    assert info.status_code == 200
    data: dict[str, Any] = info.get_json()
    return data


def _linked_account(app: Flask, bsn: str | None = "999990019") -> str:
    now = clock.now()
    with get_db(app).begin() as db:
        account = Account(
            username="javier", username_key="javier", password_hash="x", bsn=bsn,
            surname="García López", given_names="Javier", birth_date=now.date().replace(
                year=1965), nationality="ESP", status="active", created_at=now)
        db.add(account)
        db.flush()
        return account.id


def test_linked_eid_login_gives_bsn_clients_the_bsn(
    web: FlaskClient, fake: FakeLogin, app: Flask
) -> None:
    _eidas(fake, account_id=_linked_account(app))
    _c, gov = add_client(app, "gov", bsn=True)
    _c, shop = add_client(app, "shop")
    assert gov and shop
    body = _login(web, "gov", gov)
    claims = verify_id_token(web, body["id_token"])
    assert claims["bsn"] == "999990019" and claims["acr"] == Level.SUBSTANTIEEL.context_class
    assert claims["amr"] == ["mfa"]
    assert _userinfo(web, body)["bsn"] == "999990019"
    body = _login(web, "shop", shop)
    assert "bsn" not in verify_id_token(web, body["id_token"])
    assert "bsn" not in _userinfo(web, body)


def test_unlinked_eid_login_gives_no_bsn(web: FlaskClient, fake: FakeLogin, app: Flask) -> None:
    _eidas(fake, account_id=None)
    _c, gov = add_client(app, "gov", bsn=True)
    assert gov
    body = _login(web, "gov", gov)
    assert "bsn" not in verify_id_token(web, body["id_token"])
    assert "bsn" not in _userinfo(web, body)


def test_profile_claims_for_a_client_registered_for_them(
    web: FlaskClient, fake: FakeLogin, app: Flask
) -> None:
    _eidas(fake)
    _c, secret = add_client(app, "rp1", claims=("profile",))
    assert secret
    body = _login(web, "rp1", secret, scope="openid profile address")
    assert body["scope"] == "openid profile"  # address: not registered for it
    info = _userinfo(web, body)
    assert set(info) == {"sub", "acr"} | PROFILE
    assert info["given_name"] == "Javier" and info["family_name"] == "García López"
    assert info["birthdate"] == "1965-01-01" and info["gender"] == "male"
    assert info["birth_family_name"] == "García"
    assert info["place_of_birth"] == {"locality": "Madrid"}
    # Scope-requested claims go to UserInfo, never into the ID token (OIDC Core 5.4).
    id_claims = verify_id_token(web, body["id_token"])
    assert not PROFILE & set(id_claims) and "address" not in id_claims
    # Kept with the grant only sealed.
    with get_db(app).begin() as db:
        sealed = db.scalars(sa.select(OidcGrant.claims_sealed)).one()
    assert sealed and "Javier" not in sealed and "1965" not in sealed


def test_address_and_a_narrow_policy(web: FlaskClient, fake: FakeLogin, app: Flask) -> None:
    _eidas(fake)
    _c, both = add_client(app, "rp1", claims=("given_name,address",))
    assert both
    info = _userinfo(web, _login(web, "rp1", both, scope="openid profile address"))
    assert info["given_name"] == "Javier"
    assert info["address"] == {"formatted": "Calle Mayor 1, 28013 Madrid, ES"}
    assert not {"family_name", "birthdate", "gender", "country"} & set(info)
    # Allowed, but not asked for: nothing.
    assert set(_userinfo(web, _login(web, "rp1", both))) == {"sub", "acr"}


def test_no_policy_no_attributes(web: FlaskClient, fake: FakeLogin, app: Flask) -> None:
    _eidas(fake)
    _c, secret = add_client(app, "rp1")
    assert secret
    body = _login(web, "rp1", secret, scope="openid profile address")
    assert body["scope"] == "openid"
    assert set(_userinfo(web, body)) == {"sub", "acr"}


def test_amr_left_out_when_empty(web: FlaskClient, fake: FakeLogin, app: Flask) -> None:
    _eidas(fake, level=Level.MIDDEN, amr=())
    _c, secret = add_client(app, "rp1")
    assert secret
    claims = verify_id_token(web, _login(web, "rp1", secret)["id_token"])
    assert "amr" not in claims and claims["acr"] == Level.MIDDEN.context_class


def test_discovery_names_the_scopes_and_claims(web: FlaskClient) -> None:
    document = web.get("/.well-known/openid-configuration").get_json()
    assert {"openid", "profile", "address"} <= set(document["scopes_supported"])
    assert PROFILE | {"address", "bsn"} <= set(document["claims_supported"])


def test_claims_of_leaves_out_empty_and_malformed_values() -> None:
    assert claims_of({"given_name": "  ", "birthdate": "01-01-1965", "gender": "Female",
                      "country": "ES", "family_name": 5}) == {"gender": "female"}
    assert parse_policy(["birthdate, profile", "given_name"]) == (
        "given_name", "family_name", "birthdate", "gender", "birth_family_name",
        "place_of_birth")


def test_cli_registers_and_lists_the_policy(app: Flask) -> None:
    env = dict(get_settings(app).environ)
    runner = CliRunner()
    bad = runner.invoke(main, ["rp", "add-oidc", "--client-id", "x", "--redirect-uri",
                               "https://rp.example.nl/cb", "--claims", "given_name,bsn"], env=env)
    assert bad.exit_code != 0 and "--claims" in bad.output and len(bad.output.splitlines()) == 1
    good = runner.invoke(main, ["rp", "add-oidc", "--client-id", "x", "--redirect-uri",
                                "https://rp.example.nl/cb", "--claims", "profile"], env=env)
    assert good.exit_code == 0, good.output
    with get_db(app).begin() as db:
        row = db.get(OidcClient, "x")
        assert row is not None and json.loads(row.claims) == list(parse_policy(["profile"]))
    listed = [json.loads(line) for line in runner.invoke(main, ["rp", "list"], env=env)
              .output.splitlines()]
    assert listed[0]["claims"] == list(parse_policy(["profile"]))
