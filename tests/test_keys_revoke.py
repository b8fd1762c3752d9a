"""`KeyStore.revoke` and `gateway keys revoke KID`: a leaked signing key is unpublished at once
(JWK Set, SAML metadata), its private key deleted, and a new key signs in its place."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from flask import Flask
from flask.testing import FlaskClient
from joserfc import jwt
from joserfc.jwk import KeySet
from lxml import etree
from onelogin.saml2.utils import OneLogin_Saml2_Utils

from gateway import clock
from gateway.audit import iter_entries
from gateway.cli import main
from gateway.db import get_db
from gateway.idp.oidc import tokens
from gateway.idp.oidc import views as oidc_views
from gateway.idp.saml import registry as saml_registry
from gateway.idp.saml import views as saml_views
from gateway.keys import PUBLISH_BEFORE_SIGN, RETIRE_AFTER, KeyStore, KeyStoreError, get_keys
from gateway.levels import Level
from gateway.settings import Settings
from tests import test_saml_idp as saml
from tests.oidc_helpers import FakeLogin, add_client, exchange, get_code

T0 = datetime(2030, 3, 1, 9, 0, tzinfo=UTC)
ALGS = ("RS256", "ES256")


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    with clock.frozen(T0):
        s = KeyStore(tmp_path / "keys")
        s.ensure()
    return s


def kids(keys: KeyStore, now: datetime | None = None) -> list[str]:
    return [k["kid"] for k in keys.published(now)]


def files(keys: KeyStore) -> list[str]:
    return sorted(p.name for p in keys.folder.iterdir())


def can_sign(keys: KeyStore, alg: str) -> str:
    """Sign a JWT as ID tokens are signed and verify it against the published JWK Set;
    returns the kid it was signed with."""
    token = tokens.sign(keys, {"iss": "x", "sub": "y"}, alg)
    decoded = jwt.decode(token, KeySet.import_key_set(keys.jwks()), algorithms=[alg])  # type: ignore[arg-type]
    kid = decoded.header["kid"]
    assert isinstance(kid, str)
    return kid


# --- the store ----------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ALGS)
def test_revoking_the_active_key_unpublishes_it_and_a_new_key_signs(
    store: KeyStore, alg: str
) -> None:
    other_alg = "ES256" if alg == "RS256" else "RS256"
    old = store.active(alg, T0)
    old_jwk = old.public_jwk()
    other = store.active(other_alg, T0).kid
    elsewhere = KeyStore(store.folder)  # another process, with the old manifest loaded
    assert old.kid in kids(elsewhere, T0)
    t1 = T0 + timedelta(days=3)

    result = store.revoke(old.kid, t1)

    assert (result.revoked.kid, result.revoked.state) == (old.kid, "active")
    assert result.replacement is not None and result.replacement.alg == alg
    new = result.replacement.kid
    for keys in (store, elsewhere, KeyStore(store.folder)):
        assert old.kid not in kids(keys, t1)
        assert keys.active(alg, t1).kid == new
        assert keys.active(other_alg, t1).kid == other  # the other alg is untouched
        with clock.frozen(t1):
            assert can_sign(keys, alg) == new
    assert not old.key_path.exists()
    expected = [old.key_path] + ([old.cert_path] if old.cert_path else [])
    assert result.deleted == tuple(expected)
    for path in expected:
        assert not path.exists()
    if alg == "RS256":
        pems = [c.public_bytes(serialization.Encoding.PEM) for c in store.certificates(t1)]
        assert pems == [(store.folder / f"{new}.crt.pem").read_bytes()]
    manifest = json.loads(store.manifest_path.read_text())
    assert {(k["kid"], k["state"]) for k in manifest["keys"]} == {(new, "active"),
                                                                 (other, "active")}
    (record,) = manifest["retired"]
    assert record["kid"] == old.kid and record["state"] == "retired"
    assert record["revoked_at"] == t1.isoformat() and record["public_jwk"] == old_jwk
    # Not published again later, and the files of the keys still in use are all there.
    assert old.kid not in kids(store, t1 + RETIRE_AFTER * 10)
    assert old.kid + ".key.pem" not in files(store)
    assert {f"{new}.key.pem", f"{other}.key.pem"} <= set(files(store))


def test_revoking_a_retiring_key_unpublishes_it_before_its_retire_at(store: KeyStore) -> None:
    with clock.frozen(T0 + timedelta(days=1)):
        rotation = store.rotate(clock.now(), publish_for=timedelta(0))
        old = {i.alg: i.kid for i in rotation.retiring}
        active = {alg: store.active(alg).kid for alg in ALGS}
        assert old["RS256"] in kids(store)
        result = store.revoke(old["RS256"], clock.now())
        assert result.revoked.state == "retiring" and result.replacement is None
        assert kids(store) == [active["RS256"], active["ES256"], old["ES256"]]
        assert {alg: store.active(alg).kid for alg in ALGS} == active
        assert len(store.certificates()) == 1
        assert not (store.folder / f"{old['RS256']}.key.pem").exists()
        assert not (store.folder / f"{old['RS256']}.crt.pem").exists()
        # The prune at retire_at still retires the other old key, and only that one.
        clock.advance(RETIRE_AFTER)
        assert store.prune(clock.now()) == (old["ES256"],)


def test_revoking_a_waiting_key_keeps_the_active_one(store: KeyStore) -> None:
    active = {alg: store.active(alg, T0).kid for alg in ALGS}
    store.rotate(T0)
    waiting = {k.alg: k.kid for k in store.entries(T0) if k.state == "next"}
    result = store.revoke(waiting["RS256"], T0)
    assert result.revoked.state == "next" and result.replacement is None
    assert waiting["RS256"] not in kids(store, T0)
    assert not (store.folder / f"{waiting['RS256']}.key.pem").exists()
    # At activate_at the ES256 set switches as planned; RS256 keeps its active key.
    switch = T0 + PUBLISH_BEFORE_SIGN
    assert {alg: store.active(alg, switch).kid for alg in ALGS} == {
        "RS256": active["RS256"], "ES256": waiting["ES256"]
    }
    KeyStore(store.folder).ensure()  # the manifest it wrote is one a fresh start accepts


def test_revoking_the_active_key_while_a_set_waits_creates_a_fresh_key(store: KeyStore) -> None:
    old = store.active("RS256", T0).kid
    store.rotate(T0)
    waiting = {k.alg: k for k in store.entries(T0) if k.state == "next"}["RS256"]
    t1 = T0 + timedelta(hours=1)
    result = store.revoke(old, t1)
    assert result.replacement is not None
    fresh = result.replacement.kid
    assert fresh not in (old, waiting.kid)
    assert result.waiting == waiting  # not activated: it may have leaked with the old key
    assert store.active("RS256", t1).kid == fresh
    assert kids(store, t1)[0] == fresh and waiting.kid in kids(store, t1)
    # The planned switch still happens; the fresh key then retires as a replaced key does.
    switch = T0 + PUBLISH_BEFORE_SIGN
    assert store.active("RS256", switch).kid == waiting.kid
    assert kids(store, switch) == [waiting.kid, store.active("ES256", switch).kid,
                                   fresh, store.active("ES256", T0).kid]


def test_revoking_an_unknown_retired_or_revoked_key_is_refused(store: KeyStore) -> None:
    old = store.active("ES256", T0).kid
    store.rotate(T0, publish_for=timedelta(0))
    late = T0 + RETIRE_AFTER
    assert store.prune(late) != ()
    revoked = store.active("RS256", late).kid
    store.revoke(revoked, late)
    written = store.manifest_path.read_bytes()
    before = files(store)
    for kid, message in [
        ("A" * 43, f"KID: no key {'A' * 43!r} in {store.manifest_path}"),
        ("../x\nsecond line", f"KID: no key {'../x' + chr(10) + 'second line'!r} in "
                              f"{store.manifest_path}"),
        (old, f"KID: key {old} is already retired (unpublished, private key deleted)"),
        (revoked, f"KID: key {revoked} was already revoked at {late.isoformat()}"),
    ]:
        with pytest.raises(KeyStoreError) as info:
            store.revoke(kid, late)
        assert str(info.value) == message
        assert "\n" not in str(info.value)
        with pytest.raises(KeyStoreError):
            store.revocable(kid, late)
    assert store.manifest_path.read_bytes() == written
    assert files(store) == before


def test_a_key_whose_file_is_already_unusable_can_be_revoked(store: KeyStore) -> None:
    rs = store.active("RS256", T0)
    rs.key_path.write_text("damaged\n")
    with pytest.raises(KeyStoreError):
        KeyStore(store.folder).ensure()
    result = store.revoke(rs.kid, T0)
    assert result.replacement is not None
    fresh = KeyStore(store.folder)
    fresh.ensure()  # starts again
    assert fresh.active("RS256", T0).kid == result.replacement.kid
    (record,) = json.loads(store.manifest_path.read_text())["retired"]
    assert record["kid"] == rs.kid and record["public_jwk"] is None


def test_revoke_never_creates_a_keys_folder(tmp_path: Path) -> None:
    folder = tmp_path / "nothing-here"
    with pytest.raises(KeyStoreError, match=r"GATEWAY_INSTANCE_DIR: .*cannot read"):
        KeyStore(folder).revoke("A" * 43, T0)
    assert not folder.exists()


# --- a running app ------------------------------------------------------------------------


def cli_env(settings: Settings) -> dict[str, str]:
    return {
        "GATEWAY_INSTANCE_DIR": str(settings.instance_dir),
        "GATEWAY_DATABASE_URL": settings.database_url,
        "GATEWAY_SECRET_KEY": settings.secret_key.decode(),
    }


def revoke(settings: Settings, *args: str, answer: str | None = None) -> Any:
    return CliRunner().invoke(main, ["keys", "revoke", *args], env=cli_env(settings),
                              input=answer)


@pytest.fixture
def oidc_fake(monkeypatch: pytest.MonkeyPatch) -> FakeLogin:
    login = FakeLogin()
    monkeypatch.setattr(oidc_views, "start_login", login.start)
    monkeypatch.setattr(oidc_views, "finish_login", login.finish)
    return login


def id_token(web: FlaskClient, secret: str) -> str:
    code, verifier = get_code(web)
    token = exchange(web, code, verifier, secret=secret).get_json()["id_token"]
    assert isinstance(token, str)
    return token


def header_kid(token: str, web: FlaskClient) -> str:
    decoded = jwt.decode(token, KeySet.import_key_set(web.get("/oidc/jwks").get_json()),
                         algorithms=["RS256"])
    kid = decoded.header["kid"]
    assert isinstance(kid, str)
    return kid


def test_a_running_app_stops_publishing_and_accepting_a_revoked_oidc_key(
    app: Flask, settings: Settings, oidc_fake: FakeLogin
) -> None:
    web = app.test_client()
    _client, secret = add_client(app, post_logout_redirect_uris=("https://rp.example.nl/bye",))
    assert secret
    keys = get_keys(app)
    old = keys.active("RS256").kid
    before = id_token(web, secret)
    assert header_kid(before, web) == old
    assert tokens.verify_own_token(settings, keys, before, check_expiry=False) is not None

    result = revoke(settings, old, "--yes")
    assert result.exit_code == 0, result.output

    jwks = web.get("/oidc/jwks").get_json()
    assert old not in [k["kid"] for k in jwks["keys"]]
    new = keys.active("RS256").kid
    assert new != old and new in [k["kid"] for k in jwks["keys"]]
    assert header_kid(id_token(web, secret), web) == new
    # What the gateway itself accepts: an ID token signed with the revoked key is no longer a
    # valid id_token_hint (opaque access and refresh tokens do not depend on the key).
    assert tokens.verify_own_token(settings, keys, before, check_expiry=False) is None
    response = web.get("/oidc/logout", query_string={
        "id_token_hint": before, "post_logout_redirect_uri": "https://rp.example.nl/bye"})
    assert response.status_code == 400 and "Location" not in response.headers


@pytest.fixture
def saml_fake(monkeypatch: pytest.MonkeyPatch) -> saml.FakeLogin:
    login = saml.FakeLogin()
    monkeypatch.setattr(saml_views, "start_login", login.start)
    monkeypatch.setattr(saml_views, "finish_login", login.finish)
    monkeypatch.setattr(saml_views, "has_sso_session", lambda: login.sso)
    monkeypatch.setattr(saml_views, "reachable_levels", lambda: frozenset({Level.BASIS}))
    return login


def metadata_certificates(metadata: str) -> set[str]:
    root = etree.fromstring(metadata.encode())
    return {c.text or "" for c in root.iterfind(
        f".//{{{saml_registry.MD_NS}}}KeyDescriptor//{{http://www.w3.org/2000/09/xmldsig#}}"
        "X509Certificate")}


def pem_body(pem: bytes | None) -> str:
    assert pem is not None
    return "".join(pem.decode().splitlines()[1:-1])


def test_a_running_app_stops_publishing_and_signing_with_a_revoked_saml_key(
    app: Flask, settings: Settings, saml_fake: saml.FakeLogin
) -> None:
    web = app.test_client()
    keys = get_keys(app)
    old = keys.active("RS256")
    old_cert = old.certificate_pem()
    before = web.get("/saml/idp/metadata").get_data(as_text=True)
    assert metadata_certificates(before) == {pem_body(old_cert)}
    stale_sp = saml.sp_settings(before)  # an SP that has not refetched our metadata
    saml.register(app, saml.sp_metadata(stale_sp), attributes=())

    result = revoke(settings, old.kid, "--yes")
    assert result.exit_code == 0, result.output

    after = web.get("/saml/idp/metadata").get_data(as_text=True)
    new_cert = keys.active("RS256").certificate_pem()
    assert metadata_certificates(after) == {pem_body(new_cert)}
    assert pem_body(old_cert) not in after
    assert new_cert is not None
    assert OneLogin_Saml2_Utils.validate_metadata_sign(after, new_cert.decode())

    fresh_sp = saml.sp_settings(after)  # an SP that refetched it
    request_id, page = saml.start_sso(web, fresh_sp)
    _action, fields = saml.form_fields(page.get_data(as_text=True))
    auth = saml.consume(fresh_sp, fields, request_id)
    assert auth.get_errors() == [], auth.get_last_error_reason()
    assert auth.is_authenticated()
    # Signed with the new key: the SP that still trusts only the revoked one refuses it.
    stale = saml.consume(stale_sp, fields, request_id)
    assert not stale.is_authenticated()


# --- the command line ---------------------------------------------------------------------


def test_cli_revoke_prints_each_effect_and_writes_an_audit_entry(
    app: Flask, settings: Settings
) -> None:
    keys = get_keys(app)
    old = keys.active("RS256")
    assert old.cert_path is not None
    result = revoke(settings, old.kid, "--yes")
    assert result.exit_code == 0, result.output
    new = keys.active("RS256").kid
    assert result.stdout.splitlines() == [
        f"RS256 key {old.kid} revoked: unpublished now (it was active)",
        f"new RS256 key {new} (active)",
        f"deleted {old.key_path}",
        f"deleted {old.cert_path}",
        f"audit log entry 1: keys.revoke key:{old.kid}",
    ]
    assert "BEGIN" not in result.output
    assert not old.key_path.exists()
    with app.app_context(), get_db(app).begin() as db:
        (entry,) = iter_entries(db)
        assert (entry.actor, entry.role, entry.action, entry.object_ref, entry.outcome) == (
            "cli", "operator", "keys.revoke", f"key:{old.kid}", "ok")


def test_cli_revoke_asks_first_and_no_changes_nothing(
    app: Flask, settings: Settings
) -> None:
    keys = get_keys(app)
    kid = keys.active("ES256").kid
    written = keys.manifest_path.read_bytes()
    for answer in ("n\n", "\n", ""):
        result = revoke(settings, kid, answer=answer)
        assert result.exit_code == 1, result.output
        assert f"Revoke ES256 key {kid} (active)?" in result.stderr
        # The test runner does not echo a typed answer, so the prompt may share the line.
        assert result.stderr.splitlines()[-1].endswith(
            "gateway: nothing revoked: not confirmed (--yes skips the question)")
        assert result.stdout == ""
        assert keys.manifest_path.read_bytes() == written
        assert keys.active("ES256").kid == kid
    result = revoke(settings, kid, answer="y\n")
    assert result.exit_code == 0, result.output
    assert keys.active("ES256").kid != kid
    assert f"ES256 key {kid} revoked" in result.stdout


@pytest.mark.parametrize("which", ["unknown", "dash", "garbage", "revoked"])
def test_cli_revoke_refuses_in_one_line_with_exit_2(
    app: Flask, settings: Settings, which: str
) -> None:
    keys = get_keys(app)
    # "dash": a kid (base64url) may begin with "-"; it is still read as the KID, never as an
    # unknown option (a usage error, exit 2 with click's "No such option").
    kid = {"unknown": "B" * 43, "dash": "-N" + "B" * 41, "garbage": "x\ny",
           "revoked": keys.active("RS256").kid}[which]
    if which == "revoked":
        assert revoke(settings, kid, "--yes").exit_code == 0
    written = keys.manifest_path.read_bytes()
    result = revoke(settings, kid, "--yes")
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gateway: KID: "), lines
    assert "Traceback" not in result.output
    assert keys.manifest_path.read_bytes() == written


def test_cli_revoke_fails_in_one_line_when_the_folder_is_unusable(
    settings: Settings, make_app: Callable[..., Flask], tmp_path: Path
) -> None:
    env = {**cli_env(settings), "GATEWAY_INSTANCE_DIR": str(tmp_path / "missing")}
    result = CliRunner().invoke(main, ["keys", "revoke", "A" * 43, "--yes"], env=env)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gateway: GATEWAY_INSTANCE_DIR: ")


def test_cli_revoke_still_revokes_when_the_audit_log_cannot_be_written(
    settings: Settings, tmp_path: Path
) -> None:
    keys = KeyStore.for_settings(settings)
    kid = keys.active("ES256").kid
    broken = f"sqlite:///{tmp_path / 'no-such-folder' / 'gateway.db'}"
    env = {**cli_env(settings), "GATEWAY_DATABASE_URL": broken}
    result = CliRunner().invoke(main, ["keys", "revoke", kid, "--yes"], env=env)
    # The emergency action does not wait for the database; the failure is said in one line.
    assert result.exit_code == 2, result.output
    assert kid not in kids(keys)
    assert f"ES256 key {kid} revoked: unpublished now (it was active)" in result.stdout
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"gateway: GATEWAY_DATABASE_URL: key {kid} is revoked, but the audit log entry could "
        "not be written (OperationalError); record the revocation by hand"
    ]
